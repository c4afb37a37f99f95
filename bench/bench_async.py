"""The guarded ``AsyncOpenAI`` under concurrency, against the bare SDK, in the same run.

The fake OpenAI server runs in its own process (so that its work does not share this
process's GIL and CPU with the clients under test). This process runs, in alternating
rounds, N chat completions (or Responses calls, or embeddings) at a given concurrency
through:

* the bare SDK (``AsyncOpenAI(max_retries=0)``),
* the same client guarded by a ``Guard`` on the memory store,
* the same client guarded on a ``RedisStore`` (a Redis at 127.0.0.1:6379, when one answers).

It prints requests per second and the CPU time this process spent per call (the client's
own cost: the HTTP client, the SDK, and the guard), each guarded figure as a ratio of the
bare SDK's (medians of the rounds; the contenders' order rotates every round). Goal
(issue 14): the guarded client within 5% of the bare SDK's requests per second at
concurrency 32 on the memory store.

Run:  TIKTOKEN_CACHE_DIR=/work/shared/tiktoken-cache python bench/bench_async.py
      [--requests 2000] [--concurrency 1 32] [--rounds 3] [--endpoint chat|responses|embeddings]
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
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("TIKTOKEN_CACHE_DIR", "/work/shared/tiktoken-cache")

import openai

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


async def measure(base_url: str, args: argparse.Namespace) -> list[list[str]]:
    bare = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    policy = guardrail.Policy(daily_spend_usd=1_000_000, loop_limit=None)
    contenders: dict[str, Any] = {
        "bare SDK": bare,
        "guarded, memory store": guardrail.Guard(policy).wrap(bare),
    }
    if redis_answers():
        store = guardrail.RedisStore.from_url(
            "redis://127.0.0.1:6379/0", prefix=f"bench-{uuid.uuid4().hex[:8]}"
        )
        contenders["guarded, Redis store"] = guardrail.Guard(policy, store=store).wrap(bare)
    rows = []
    for concurrency in args.concurrency:
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        for client in contenders.values():  # warm up: connections, caches, scripts
            await run(call_for(args.endpoint, client), 200, concurrency)
        names = list(contenders)
        for r in range(args.rounds):  # alternating, the order rotated every round
            for name in names[r % len(names) :] + names[: r % len(names)]:
                results[name].append(
                    await run(call_for(args.endpoint, contenders[name]), args.requests, concurrency)
                )
        base_rps = statistics.median(r for r, _ in results["bare SDK"])
        base_cpu = statistics.median(c for _, c in results["bare SDK"])
        for name in contenders:
            rps = statistics.median(r for r, _ in results[name])
            cpu = statistics.median(c for _, c in results[name])
            spread = (
                f"{min(r for r, _ in results[name]):,.0f}-{max(r for r, _ in results[name]):,.0f}"
            )
            rows.append(
                [
                    str(concurrency),
                    name,
                    f"{rps:,.0f}",
                    spread,
                    f"{rps / base_rps:.3f}x",
                    f"{cpu * 1e3:.3f} ms",
                    f"{(cpu - base_cpu) * 1e3:+.3f} ms" if name != "bare SDK" else "-",
                    f"{cpu / base_cpu:.3f}x",
                ]
            )
    await bare.close()
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3)
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
            f" · {args.requests} requests x {args.rounds} rounds per contender"
        )
        load = os.getloadavg()[0]
        rows = asyncio.run(measure(base_url, args))
        print(f"load average (1 min) {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
        headers = [
            "concurrency",
            "client",
            "requests/s",
            "range",
            "vs bare",
            "CPU/call",
            "added CPU",
            "CPU vs bare",
        ]
        print(table(headers, rows))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
