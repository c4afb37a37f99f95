"""The guarded ``AsyncOpenAI`` under concurrency, against the bare SDK, in the same run.

The fake OpenAI server runs in its own process (so that its work does not share this
process's GIL and CPU with the clients under test). This process runs, in alternating
short rounds, chat completions (or Responses calls, or embeddings) at a given concurrency
through:

* the bare SDK (``AsyncOpenAI(max_retries=0)``), and a second bare client: the spread of
  their ratio is the benchmark's own noise;
* the least a guard can do (``LeastGuard`` below: an exact token count, an integer
  reservation in a dict, the call, the usage read, the settlement), for scale: what any
  guard written in Python costs here before it has a policy, prices, retries or records;
* the same client guarded by a ``Guard`` on the memory store;
* the same client guarded on a ``RedisStore`` (a Redis at 127.0.0.1:6379, when one answers).

On a shared virtual machine the speed of this process drifts by 10-30% within seconds, so
long rounds compared by their medians mostly measure the drift. Here every cycle runs one
short round of each contender (the order rotated every cycle), and each contender's round
is divided by the bare SDK's round of the same cycle: the figures are medians of those
paired ratios (requests per second, and CPU time of this process per call), with their
interquartile range. Goal (issue 14): the guarded client within 5% of the bare SDK's
requests per second at concurrency 32 on the memory store.

Run:  TIKTOKEN_CACHE_DIR=/work/shared/tiktoken-cache python bench/bench_async.py
      [--requests 100] [--rounds 60] [--concurrency 1 32]
      [--endpoint chat|responses|embeddings]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("TIKTOKEN_CACHE_DIR", "/work/shared/tiktoken-cache")

import openai
import tiktoken

import guardrail

SERVER = """
import sys, time
from guardrail.testing import FakeOpenAIServer
# prompt_tokens: the default, the prompt as guardrail counts it (a fixed figure above the
# count would be an overrun, logged as a warning on every guarded call).
server = FakeOpenAIServer(reply="The report says revenue grew.").start()
print(server.base_url, flush=True)
sys.stdin.read()  # until the parent closes it
"""

MESSAGES = [
    {"role": "system", "content": "You are a terse analyst."},
    {"role": "user", "content": "Summarise the quarterly report in one sentence, please."},
]


class LeastGuard:
    """The least a guard does per call: not a product, a floor to read the others by.

    It counts the prompt exactly (o200k_base; a chat message is its role, its content and
    3 tokens, the reply's priming 3 more), reserves the worst case in integer money under
    a lock, calls the SDK, reads the usage and settles. No policy, no price table, no
    retries, no records, no errors beyond a refusal: everything ``Guard`` adds on top of
    this is what its ratio loses beyond this one's.
    """

    RATE_IN, RATE_OUT, OUTPUT_CAP = 150, 600, 16_384  # per token, in a small integer unit

    def __init__(self, client: openai.AsyncOpenAI, cap: int = 10**18) -> None:
        self._client, self._cap = client, cap
        self._encode = tiktoken.get_encoding("o200k_base").encode_ordinary
        self._lock = threading.Lock()
        self._holds: dict[str, int] = {}
        self._held = self.spent = 0
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._chat))
        self.responses = SimpleNamespace(create=self._responses)
        self.embeddings = SimpleNamespace(create=self._embeddings)

    async def _chat(self, **kwargs: Any) -> Any:
        encode = self._encode
        tokens = 3 + sum(
            3 + len(encode(m["role"])) + len(encode(m["content"])) for m in kwargs["messages"]
        )
        create = self._client.chat.completions.create
        return await self._guarded(create, kwargs, tokens, "prompt_tokens", "completion_tokens")

    async def _responses(self, **kwargs: Any) -> Any:
        tokens = 7 + len(self._encode(kwargs["input"]))
        create = self._client.responses.create
        return await self._guarded(create, kwargs, tokens, "input_tokens", "output_tokens")

    async def _embeddings(self, **kwargs: Any) -> Any:
        tokens = len(self._encode(kwargs["input"]))
        create = self._client.embeddings.create
        return await self._guarded(create, kwargs, tokens, "prompt_tokens", "")

    async def _guarded(
        self, create: Any, kwargs: dict[str, Any], tokens: int, read_in: str, read_out: str
    ) -> Any:
        worst = tokens * self.RATE_IN + (self.OUTPUT_CAP * self.RATE_OUT if read_out else 0)
        rid = os.urandom(16).hex()
        with self._lock:
            if self.spent + self._held + worst > self._cap:
                raise RuntimeError("over the cap")
            self._held += worst
            self._holds[rid] = worst
        try:
            response = await create(**kwargs)
        except BaseException:
            with self._lock:
                self._held -= self._holds.pop(rid)
            raise
        usage = response.usage
        cost = getattr(usage, read_in) * self.RATE_IN
        if read_out:
            cost += getattr(usage, read_out) * self.RATE_OUT
        with self._lock:
            self._held -= self._holds.pop(rid)
            self.spent += cost
        return response


def redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def call_for(endpoint: str, client: Any) -> Callable[[], Awaitable[Any]]:
    if endpoint == "responses":
        return lambda: client.responses.create(model="gpt-4o-mini", input=MESSAGES[1]["content"])
    if endpoint == "embeddings":
        return lambda: client.embeddings.create(
            model="text-embedding-3-small", input=MESSAGES[1]["content"]
        )
    return lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


async def run(
    call: Callable[[], Awaitable[Any]], requests: int, concurrency: int
) -> tuple[float, float]:
    """(requests per second, CPU seconds of this process per call)."""
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return requests / wall, cpu / requests


def contenders_for(base_url: str) -> tuple[dict[str, Any], list[Any]]:
    """The clients under test by name, and the SDK clients to close afterwards."""
    bare = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    again = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    policy = guardrail.Policy(daily_spend_usd=1_000_000, loop_limit=None)
    contenders: dict[str, Any] = {
        "bare SDK": bare,
        "bare SDK, second client": again,
        "least a guard does": LeastGuard(bare),
        "guarded, memory store": guardrail.Guard(policy).wrap(bare),
    }
    if redis_answers():
        store = guardrail.RedisStore.from_url(
            "redis://127.0.0.1:6379/0", prefix=f"bench-{uuid.uuid4().hex[:8]}"
        )
        contenders["guarded, Redis store"] = guardrail.Guard(policy, store=store).wrap(bare)
    return contenders, [bare, again]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    low, mid, high = statistics.quantiles(values, n=4)
    return low, mid, high


async def measure(base_url: str, args: argparse.Namespace) -> list[list[str]]:
    contenders, clients = contenders_for(base_url)
    rows = []
    for concurrency in args.concurrency:
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        for client in contenders.values():  # warm up: connections, caches, scripts
            await run(call_for(args.endpoint, client), 200, concurrency)
        names = list(contenders)
        for r in range(args.rounds):  # one short round each, the order rotated every cycle
            for name in names[r % len(names) :] + names[: r % len(names)]:
                results[name].append(
                    await run(call_for(args.endpoint, contenders[name]), args.requests, concurrency)
                )
        bare = results["bare SDK"]
        for name, mine in results.items():
            rps = [m[0] / b[0] for m, b in zip(mine, bare, strict=True)]
            cpu = [m[1] / b[1] for m, b in zip(mine, bare, strict=True)]
            added = [m[1] - b[1] for m, b in zip(mine, bare, strict=True)]
            low, mid, high = quartiles(rps)
            rows.append(
                [
                    str(concurrency),
                    name,
                    f"{statistics.median(m[0] for m in mine):,.0f}",
                    f"{mid:.3f}x" if name != "bare SDK" else "1x",
                    f"{low:.3f}-{high:.3f}" if name != "bare SDK" else "-",
                    f"{statistics.median(m[1] for m in mine) * 1e3:.3f} ms",
                    f"{statistics.median(added) * 1e3:+.3f} ms" if name != "bare SDK" else "-",
                    f"{statistics.median(cpu):.3f}x" if name != "bare SDK" else "1x",
                ]
            )
    for client in clients:
        await client.close()
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="per round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=60, help="cycles of one round each")
    parser.add_argument("--endpoint", choices=("chat", "responses", "embeddings"), default="chat")
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        print(
            f"python {platform.python_version()} · {os.cpu_count()} cores · openai "
            f"{openai.__version__} · guardrail {guardrail.__version__} · endpoint {args.endpoint}"
            f" · {args.rounds} cycles of {args.requests} requests per contender"
        )
        load = os.getloadavg()[0]
        rows = asyncio.run(measure(base_url, args))
        print(f"load average (1 min) {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
        headers = [
            "concurrency",
            "client",
            "requests/s",
            "vs bare",
            "vs bare IQR",
            "CPU/call",
            "added CPU",
            "CPU vs bare",
        ]
        print(table(headers, rows))
        print("(vs bare, added CPU, CPU vs bare: medians of each cycle's ratio to its bare round)")
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
