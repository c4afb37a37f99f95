"""The added cost of a guarded Responses call and a guarded embeddings call, as
``bench_guard.py`` measures it for Chat Completions (issue 14; goal: under 5% of a
loopback call).

For each request, in one run:

1. **End to end.** The real ``openai`` SDK against :class:`guardrail.testing.FakeOpenAIServer`
   on a loopback port: an unguarded client (``OpenAI(base_url=..., max_retries=0)``) and the
   same client wrapped by ``Guard(policy).wrap(...)`` (memory store, warm caches), called in
   alternation; per-round medians.
2. **In process.** guardrail's own work without HTTP: what the guarded method does
   (``providers.common.run_sync``: ``engine.prepare`` plus the reserve / send / settle flow
   driven by the sync driver, after the endpoint's own ``prepare``), with a stub send
   returning one response the SDK parsed from the fake server (its ``_request_id`` set).
   Reported as a share of the unguarded call's median.
3. **In process after HTTP.** The same, timed right after an unguarded HTTP call (the CPU
   caches as a real call leaves them).

Requests: a Responses call whose ``input`` is the 20-message conversation of
``bench_guard.py`` (the system message as ``instructions``), model ``gpt-4o``; an
embeddings call of one short string, and one of 20 strings (the same conversation's
texts), model ``text-embedding-3-small``.

Run:  TIKTOKEN_CACHE_DIR=/work/shared/tiktoken-cache python bench/bench_endpoints.py
      [--quick] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TIKTOKEN_CACHE_DIR", "/work/shared/tiktoken-cache")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import openai
import tiktoken
from bench_guard import SEED, conversation, fmt_us, make_guard, table

import guardrail
from guardrail.providers.clients import Endpoint
from guardrail.providers.common import run_sync
from guardrail.providers.openai.client import EMBEDDINGS, RESPONSES
from guardrail.testing import FakeOpenAIServer


def requests() -> dict[str, tuple[str, Endpoint, dict[str, Any]]]:
    """name: (SDK resource, endpoint, kwargs)."""
    messages = conversation(random.Random(SEED), 20)
    system, turns = messages[0], messages[1:]
    return {
        "responses, 20 messages": (
            "responses",
            RESPONSES,
            {"model": "gpt-4o", "instructions": system["content"], "input": turns},
        ),
        "embeddings, 1 string": (
            "embeddings",
            EMBEDDINGS,
            {"model": "text-embedding-3-small", "input": "Quarterly revenue grew by 4%."},
        ),
        "embeddings, 20 strings": (
            "embeddings",
            EMBEDDINGS,
            {"model": "text-embedding-3-small", "input": [m["content"] for m in messages]},
        ),
    }


def sdk_call(client: Any, resource: str) -> Callable[..., Any]:
    return client.responses.create if resource == "responses" else client.embeddings.create


def in_process_call(
    guard: guardrail.Guard, endpoint: Endpoint, response: Any
) -> Callable[[dict[str, Any]], Any]:
    """What the guarded method does minus HTTP (``providers.clients.guarded``)."""
    adapter = endpoint.adapter
    assert adapter is not None

    def call(kwargs: dict[str, Any]) -> Any:
        return run_sync(guard, adapter, None, endpoint.prepare(kwargs), lambda kw: response)

    return call


def measure(
    server: FakeOpenAIServer,
    resource: str,
    endpoint: Endpoint,
    kwargs: dict[str, Any],
    pairs: int,
    rounds: int,
    number: int,
) -> dict[str, Any]:
    raw = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    guarded = make_guard().wrap(openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0))
    raw_call, guarded_call = sdk_call(raw, resource), sdk_call(guarded, resource)
    response = raw_call(**kwargs)  # the SDK's own parsed response, request id set
    local = in_process_call(make_guard(), endpoint, response)
    clock = time.perf_counter
    for _ in range(max(5, pairs // 10)):  # warm: connections, caches, SDK code paths
        raw_call(**kwargs)
        guarded_call(**kwargs)
        local(kwargs)
    raw_m, guarded_m, inproc, after = [], [], [], []
    for r in range(rounds):
        server.reset()
        gc.collect()
        a: list[float] = []
        b: list[float] = []
        c: list[float] = []
        for i in range(pairs):
            first, second = (
                (raw_call, guarded_call) if (i + r) % 2 == 0 else (guarded_call, raw_call)
            )
            t0 = clock()
            first(**kwargs)
            t1 = clock()
            second(**kwargs)
            t2 = clock()
            local(kwargs)  # right after an HTTP call
            t3 = clock()
            (a if first is raw_call else b).append(t1 - t0)
            (b if first is raw_call else a).append(t2 - t1)
            c.append(t3 - t2)
        raw_m.append(statistics.median(a))
        guarded_m.append(statistics.median(b))
        after.append(statistics.median(c))
        gc.collect()
        t0 = clock()
        for _ in range(number):
            local(kwargs)
        inproc.append((clock() - t0) / number)
    server.reset()
    return {"raw": raw_m, "guarded": guarded_m, "inproc": inproc, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pairs, number = (60, 300) if args.quick else (400, 2000)
    started = time.perf_counter()
    print(
        f"python {platform.python_version()} · {os.cpu_count()} cores · openai "
        f"{openai.__version__} · tiktoken {tiktoken.__version__} · guardrail "
        f"{guardrail.__version__} · load average {os.getloadavg()[0]:.2f}"
    )
    results = {}
    with FakeOpenAIServer() as server:
        for name, (resource, endpoint, kwargs) in requests().items():
            results[name] = measure(server, resource, endpoint, kwargs, pairs, args.rounds, number)
    rows = []
    for name, res in results.items():
        raw, guarded = statistics.median(res["raw"]), statistics.median(res["guarded"])
        ip, after = statistics.median(res["inproc"]), statistics.median(res["after"])
        rows.append(
            [
                name,
                fmt_us(raw),
                fmt_us(guarded),
                f"{guarded / raw:.3f}x",
                f"{(guarded - raw) * 1e6:+,.0f} µs",
                fmt_us(ip),
                f"{ip / raw * 100:.2f}%",
                fmt_us(after),
                f"{after / raw * 100:.2f}%",
                "met" if ip / raw < 0.05 else "NOT met",
            ]
        )
    print()
    print("Guarded call overhead (medians of per-round medians; in-process: stub send, no HTTP)")
    print(
        table(
            [
                "request",
                "unguarded (HTTP)",
                "guarded (HTTP)",
                "guarded/unguarded",
                "difference",
                "in-process guard",
                "÷ unguarded",
                "after HTTP",
                "÷ unguarded",
                "goal <5%",
            ],
            rows,
        )
    )
    for name, res in results.items():
        print(
            f"  {name}: per round unguarded "
            + ", ".join(fmt_us(x) for x in res["raw"])
            + " | guarded "
            + ", ".join(fmt_us(x) for x in res["guarded"])
            + " | in-process "
            + ", ".join(fmt_us(x) for x in res["inproc"])
        )
    print(
        f"load average {os.getloadavg()[0]:.2f} at the end; total time "
        f"{time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
