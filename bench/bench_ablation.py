"""What each part of the guard costs a call, beside the SDK's work and alone: an ablation.

``bench_work.py`` counts the guard's bytecodes; this times them. It runs the real
``AsyncOpenAI`` over an in-process ``MockTransport`` (no socket, as ``bench_work.py``), the
bare SDK and the same client guarded on the memory store, in alternating rounds, and then
takes the guard apart one piece at a time (cumulatively: each line also lacks the pieces
above it), replacing the piece with a canned answer made by the real one:

* the keeper (no hold tracked while the call is sent);
* the store (``reserve`` and ``settle`` answer at once);
* planning (``Engine.prepare``: reading and checking the request, counting, pricing);
* the usage read (the response's usage, read once);
* the engine (the guarded method sends its request at once: only the wrapper is left).

A first line times ``bench_async.py``'s floor (``LeastGuard``: an exact count, a dict, no
flow) the same way, for scale. For each line it prints the CPU time the guard adds to a
call beside the SDK's work (the median of paired rounds, with their interquartile
range), and the same guarded call alone: driven with a canned response and no SDK in
between, so that the guard's code and data stay in the CPU's caches. The difference
between the two is what interleaving with the SDK's much larger working set costs the
guard's code (it runs cold).

These lines are not products: the pieces taken out are what keeps a budget. They say
where the time of a guarded call goes, to read ``bench_async.py``'s figures by.

Run:  TIKTOKEN_CACHE_DIR=/work/shared/tiktoken-cache python bench/bench_ablation.py
      [--rounds 25] [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("TIKTOKEN_CACHE_DIR", "/work/shared/tiktoken-cache")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import openai
from bench_async import LeastGuard
from bench_work import MESSAGES, call_for, mock_clients

import guardrail
import guardrail.engine.drivers as drivers
import guardrail.providers.clients as clients
from guardrail.engine.core import Engine
from guardrail.providers.common import run_async
from guardrail.providers.openai.chat import OpenAIAdapter
from guardrail.stores.memory import MemoryStore

Call = Callable[[], Awaitable[Any]]


class _NoKeeper:
    def track(self, *args: Any) -> None:
        return None


def _canned(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` answering every call with its first answer."""
    answers: list[Any] = []

    def once(*args: Any, **kwargs: Any) -> Any:
        if not answers:
            answers.append(method(*args, **kwargs))
        return answers[0]

    return once


def without_keeper() -> None:
    drivers.async_keeper = _NoKeeper  # type: ignore[assignment]


def without_store() -> None:
    MemoryStore.reserve = _canned(MemoryStore.reserve)  # type: ignore[method-assign]
    MemoryStore.settle = lambda self, reservation, settlement: "settled"  # type: ignore[method-assign]


def without_planning() -> None:
    Engine.prepare = _canned(Engine.prepare)  # type: ignore[method-assign]


def without_usage_read() -> None:
    OpenAIAdapter.usage = _canned(OpenAIAdapter.usage)  # type: ignore[method-assign]


def without_engine() -> None:
    async def send_only(
        guard: Any, adapter: Any, binding: Any, kwargs: Any, send: Any, count: Any = None
    ) -> Any:
        return await send(kwargs)

    clients.run_async = send_only  # type: ignore[assignment]


STEPS: list[tuple[str, Callable[[], None] | None]] = [
    ("guarded (all of it)", None),
    ("- the keeper", without_keeper),
    ("- the store", without_store),
    ("- planning", without_planning),
    ("- the usage read", without_usage_read),
    ("- the engine (the wrapper only)", without_engine),
]


async def _cpu(call: Call, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        await call()
    return time.process_time() - start


async def in_situ(bare: Call, guarded: Call, rounds: int, calls: int) -> list[float]:
    """The CPU µs the guard adds per call, per paired round (bare then guarded)."""
    added = []
    for _ in range(rounds):
        b = await _cpu(bare, calls)
        g = await _cpu(guarded, calls)
        added.append((g - b) / calls * 1e6)
    return added


async def alone(guard: guardrail.Guard, response: Any, calls: int) -> float:
    """µs per guarded call driven with a canned response (no SDK work in between)."""
    kwargs = {"model": "gpt-4o-mini", "messages": MESSAGES}
    adapter = OpenAIAdapter()

    async def send(kw: dict[str, Any]) -> Any:
        return response

    run = clients.run_async if clients.run_async is not run_async else run_async
    for _ in range(200):
        await run(guard, adapter, None, kwargs, send)
    start = time.perf_counter()
    for _ in range(calls):
        await run(guard, adapter, None, kwargs, send)
    return (time.perf_counter() - start) / calls * 1e6


async def measure(rounds: int, calls: int) -> list[list[str]]:
    http, bare, guard, guarded = mock_clients("chat")
    call_bare, call_guarded = call_for("chat", bare), call_for("chat", guarded)
    response = await call_bare()
    # For scale: bench_async.py's floor (an exact count and a dict, no flow), beside the SDK.
    least = call_for("chat", LeastGuard(bare))
    for _ in range(50):
        await least()
    floor = await in_situ(call_bare, least, rounds, calls)
    q1, _, q3 = statistics.quantiles(floor, n=4)
    rows = [
        [
            "the least a guard does (bench_async)",
            f"{statistics.median(floor):.0f}",
            f"{q1:.0f}-{q3:.0f}",
            "",
        ]
    ]
    for name, step in STEPS:
        if step is not None:
            step()
        for _ in range(50):  # warm: caches, the canned answers
            await call_bare()
            await call_guarded()
        added = await in_situ(call_bare, call_guarded, rounds, calls)
        q1, _, q3 = statistics.quantiles(added, n=4)
        solo = await alone(guard, response, calls * 10)
        rows.append([name, f"{statistics.median(added):.0f}", f"{q1:.0f}-{q3:.0f}", f"{solo:.0f}"])
    bare_us = await _cpu(call_bare, calls) / calls * 1e6
    await http.aclose()
    rows.append(["(the bare SDK call itself)", f"{bare_us:.0f}", "", ""])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print(
        f"openai {openai.__version__} · guardrail {guardrail.__version__} · Python "
        f"{sys.version.split()[0]} · chat, memory store, {args.rounds} paired rounds of "
        f"{args.calls} calls"
    )
    headers = ["", "added beside the SDK (µs/call)", "IQR", "alone (µs/call)"]
    rows = asyncio.run(measure(args.rounds, args.calls))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


if __name__ == "__main__":
    main()
