"""Where a guarded call's time goes: the guard's phases, timed inside real calls and alone.

``bench_work.py`` counts what the guard does; this says what it costs where it runs. The
real ``AsyncOpenAI`` over an in-process ``MockTransport`` (no socket), guarded on the
memory store; timestamps taken at the guarded method's entry and exit, around
``Engine.prepare`` (reading and planning the request), the store's reserve and settle,
and around the SDK's own method (the send). Two settings, alternated:

* in situ: every call goes through the SDK, as in ``bench_async.py``;
* alone: the SDK's method is replaced by one that returns a stored response at once, so
  only the guard runs, call after call, with its code and data hot in the CPU's caches.

It prints the median of each phase per call in both settings, and, from the same run,
the bare SDK's and the guarded client's whole call: the guarded call's extra time beyond
the guard's own in-situ phases is what the SDK's work loses beside the guard's. Last, how
much slower the bare SDK's call runs right after this process has read unrelated memory
(a walk over N small dicts before each call): what the guard's slowdown of the SDK is
made of on a machine whose caches are small or shared.

Run:  TIKTOKEN_CACHE_DIR=/work/shared/tiktoken-cache python bench/bench_phases.py
      [--calls 2000] [--rounds 2] [--endpoint chat|responses|embeddings]
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
sys.path.insert(0, os.path.dirname(__file__))

import openai
from bench_work import call_for, mock_clients

import guardrail
from guardrail.engine.core import Engine
from guardrail.providers.clients import state_of

_now = time.perf_counter_ns
PHASES = (
    ("entry to prepare", "entry", "prepare0"),
    ("prepare (read, plan)", "prepare0", "prepare1"),
    ("to reserve (flow start)", "prepare1", "reserve0"),
    ("reserve", "reserve0", "reserve1"),
    ("to send", "reserve1", "send0"),
    ("response to settle", "send1", "settle0"),
    ("settle", "settle0", "settle1"),
    ("settle to exit", "settle1", "exit"),
)
TOUCHED = (0, 300, 1000, 3000)  # unrelated dicts read before a bare call (0: none)
RESOURCE = {
    "chat": ("chat.completions", "create"),
    "responses": ("responses", "create"),
    "embeddings": ("embeddings", "create"),
}


def timed(stamps: dict[str, int], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stamps[name + "0"] = _now()
        try:
            return function(*args, **kwargs)
        finally:
            stamps[name + "1"] = _now()

    return wrapper


async def phases(
    call: Callable[[], Awaitable[Any]], stamps: dict[str, int], calls: int
) -> dict[str, float]:
    """Median microseconds of each phase (and of the guard's own time) per call."""
    for _ in range(100):
        await call()
    seen: dict[str, list[int]] = {name: [] for name, _, _ in PHASES}
    seen["the guard's own time"] = []
    for _ in range(calls):
        stamps["entry"] = _now()
        await call()
        stamps["exit"] = _now()
        own = 0
        for name, start, end in PHASES:
            seen[name].append(stamps[end] - stamps[start])
            own += stamps[end] - stamps[start]
        seen["the guard's own time"].append(own)
    return {name: statistics.median(values) / 1e3 for name, values in seen.items()}


async def whole(
    bare: Callable[[], Awaitable[Any]], guarded: Callable[[], Awaitable[Any]], calls: int
) -> tuple[float, float]:
    """Median microseconds of a bare and of a guarded call, taking turns call by call."""
    for _ in range(100):
        await bare()
        await guarded()
    seen: tuple[list[int], list[int]] = ([], [])
    for _ in range(calls):
        for call, times in zip((bare, guarded), seen, strict=True):
            started = _now()
            await call()
            times.append(_now() - started)
    return statistics.median(seen[0]) / 1e3, statistics.median(seen[1]) / 1e3


async def after_touching(call: Callable[[], Awaitable[Any]], calls: int) -> dict[int, float]:
    """Median microseconds of ``call`` right after reading N unrelated dicts, for each N of
    ``TOUCHED``; the Ns take turns call by call, so a drift of the machine's speed falls
    on all of them alike."""
    junk: list[dict[str, Any]] = [{"n": i, "s": str(i)} for i in range(max(TOUCHED))]
    for _ in range(50):
        await call()
    seen: dict[int, list[int]] = {dicts: [] for dicts in TOUCHED}
    for i in range(calls):
        dicts = TOUCHED[i % len(TOUCHED)]
        total = 0
        for item in junk[:dicts]:
            total += item["n"]
        started = _now()
        await call()
        seen[dicts].append(_now() - started)
    return {dicts: statistics.median(values) / 1e3 for dicts, values in seen.items()}


async def measure(endpoint: str, calls: int, rounds: int) -> None:
    http, bare, guard, guarded = mock_clients(endpoint, {"x-request-id": "req_1"})
    stamps: dict[str, int] = {}
    bare_call, guarded_call = call_for(endpoint, bare), call_for(endpoint, guarded)
    stored = await bare_call()
    await guarded_call()  # the guarded method's SDK target is looked up once, here
    path, name = RESOURCE[endpoint]
    targets = state_of(getattr(guarded, path.split(".")[0]))._targets
    real = targets[(path, name)]

    async def through_sdk(**kwargs: Any) -> Any:
        stamps["send0"] = _now()
        response = await real(**kwargs)
        stamps["send1"] = _now()
        return response

    async def stored_response(**kwargs: Any) -> Any:
        stamps["send0"] = stamps["send1"] = _now()
        return stored

    store = guard.store
    store.reserve = timed(stamps, "reserve", store.reserve)  # type: ignore[method-assign]
    store.settle = timed(stamps, "settle", store.settle)  # type: ignore[method-assign]
    prepare = Engine.prepare
    Engine.prepare = timed(stamps, "prepare", prepare)  # type: ignore[method-assign]
    try:
        results: dict[str, list[dict[str, float]]] = {"in situ": [], "alone": []}
        totals: dict[str, list[float]] = {"bare SDK": [], "guarded": []}
        touched: dict[int, list[float]] = {dicts: [] for dicts in TOUCHED}
        for _ in range(rounds):
            targets[(path, name)] = through_sdk
            results["in situ"].append(await phases(guarded_call, stamps, calls))
            targets[(path, name)] = stored_response
            results["alone"].append(await phases(guarded_call, stamps, calls))
            targets[(path, name)] = real
            pair = await whole(bare_call, guarded_call, calls)
            totals["bare SDK"].append(pair[0])
            totals["guarded"].append(pair[1])
            for dicts, median in (await after_touching(bare_call, calls)).items():
                touched[dicts].append(median)
    finally:
        Engine.prepare = prepare  # type: ignore[method-assign]
        targets[(path, name)] = real
    await http.aclose()

    def med(setting: str, phase: str) -> float:
        return statistics.median(r[phase] for r in results[setting])

    print(f"{'phase (median us per call)':28}  {'in situ':>8}  {'alone':>8}  {'ratio':>6}")
    for phase in [p for p, _, _ in PHASES] + ["the guard's own time"]:
        situ, alone = med("in situ", phase), med("alone", phase)
        print(f"{phase:28}  {situ:8.1f}  {alone:8.1f}  {situ / alone:5.2f}x")
    base, guarded_total = (statistics.median(totals[k]) for k in ("bare SDK", "guarded"))
    own = med("in situ", "the guard's own time")
    print(
        f"\nwhole call: bare SDK {base:.1f} us, guarded {guarded_total:.1f} us "
        f"(+{guarded_total - base:.1f} us, {guarded_total / base:.3f}x); the guard's own "
        f"phases {own:.1f} us, the SDK's work slower by {guarded_total - base - own:.1f} us"
    )
    alone = statistics.median(touched[0])
    print("the bare SDK's call right after reading N unrelated dicts (about 300 bytes each):")
    for dicts in TOUCHED[1:]:
        after = statistics.median(touched[dicts])
        print(f"  N = {dicts:>5,}: {after:7.1f} us ({after - alone:+.1f} us, {after / alone:.3f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--endpoint", choices=sorted(RESOURCE), default="chat")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print(
        f"python {sys.version.split()[0]} · openai {openai.__version__} · guardrail "
        f"{guardrail.__version__} · endpoint {args.endpoint} · {args.calls} calls x "
        f"{args.rounds} rounds per setting, in-process transport"
    )
    asyncio.run(measure(args.endpoint, args.calls, args.rounds))


if __name__ == "__main__":
    main()
