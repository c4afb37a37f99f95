"""Benchmark: the Redis store's reserve + settle per guarded call, against the local Redis.

In one run, against the same server:

* guardrail: ``reserve`` + ``settle`` pairs (what every guarded call costs the store), sync
  with 1 and 8 threads, async with 1 and 8 tasks; one scope, and three scopes (user + org +
  global) per call;
* the floor: single ``EVALSHA`` calls of a comparable script (check and increment a
  counter with a TTL) through the same redis-py client, the same ways;
* ``redis-benchmark`` running that ``EVALSHA`` (1 and 8 clients);
* the ``limits`` library's moving-window limiter (``hit`` with cost 1), 1 and 8 threads;
* memory: ``MEMORY USAGE`` of one tenant's keys after N calls, against the limits moving
  window's key after the same N calls charged in tokens (it stores one entry per unit).

Round trips are counted from ``INFO commandstats`` (evalsha calls per pair).

    pip install limits     # bench/requirements.txt
    python bench/bench_redis.py [--url redis://127.0.0.1:6379/0] [--seconds 2] [--write]

``--write`` puts the results into bench/RESULTS.md under "## Redis store".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import redis

from guardrail.stores.base import ReservationRequest, ScopeLimits, Settlement
from guardrail.stores.redis import RedisStore

COMPARABLE = """
-- KEYS[1] = counter; ARGV[1] = amount, ARGV[2] = cap, ARGV[3] = ttl seconds
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
USER = ScopeLimits("bench-user", daily_nanos=10**15, tokens_per_minute=10**12)
ORG = ScopeLimits("bench-org", daily_nanos=10**15, monthly_nanos=2 * 10**15)
GLOBAL = ScopeLimits("_global", tokens_per_day=10**13)
SETTLEMENT = Settlement(cost_nanos=1_234_567, input_tokens=900, output_tokens=150, model="gpt-4o")


@dataclass
class Result:
    name: str
    workers: str
    ops: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    def pct(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1e3 if data else float("nan")


def run_threads(name: str, workers: int, seconds: float, op: Callable[[], None]) -> Result:
    stop = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(workers)]
    barrier = threading.Barrier(workers + 1)

    def loop(out: list[float]) -> None:
        barrier.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= stop:
                return
            op()
            out.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=loop, args=(latencies[i],)) for i in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    stop = start + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    flat = [x for lat in latencies for x in lat]
    kind = "thread" if workers == 1 else "threads"
    return Result(name, f"{workers} {kind}", len(flat), elapsed, flat)


def run_tasks(name: str, workers: int, seconds: float, op: Callable[[], Any]) -> Result:
    async def main() -> Result:
        latencies: list[float] = []
        start = time.perf_counter()
        stop = start + seconds

        async def loop() -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                await op()
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(loop() for _ in range(workers)))
        kind = "task" if workers == 1 else "tasks"
        return Result(
            name, f"{workers} async {kind}", len(latencies), time.perf_counter() - start, latencies
        )

    return asyncio.run(main())


def evalsha_stats(client: redis.Redis) -> tuple[int, int]:
    """(calls, microseconds) of EVALSHA so far, as Redis counts them."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def pair_op(store: RedisStore, scopes: tuple[ScopeLimits, ...]) -> Callable[[], None]:
    def op() -> None:
        request = ReservationRequest(
            os.urandom(16).hex(), scopes, 5_000_000, 1_200, 900.0, "gpt-4o"
        )
        store.settle(store.reserve(request), SETTLEMENT)

    return op


def apair_op(store: RedisStore, scopes: tuple[ScopeLimits, ...]) -> Callable[[], Any]:
    async def op() -> None:
        request = ReservationRequest(
            os.urandom(16).hex(), scopes, 5_000_000, 1_200, 900.0, "gpt-4o"
        )
        await store.asettle(await store.areserve(request), SETTLEMENT)

    return op


def redis_benchmark(url: str, sha: str, clients: int, requests: int) -> float | None:
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    parsed = redis.connection.parse_url(url)
    cmd = [exe, "-h", parsed.get("host", "127.0.0.1"), "-p", str(parsed.get("port", 6379))]
    cmd += ["-n", str(requests), "-c", str(clients), "--csv"]
    cmd += ["EVALSHA", sha, "1", "bench:{rb}:counter", "1", str(10**15), "60"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith('"EVALSHA')]
    return float(rows[-1].split(",")[1].strip('"')) if rows else None


def limits_benchmark(url: str, seconds: float) -> tuple[list[Result], int, int] | None:
    try:
        from limits import RateLimitItemPerDay, storage, strategies
    except ImportError:
        return None
    backend = storage.storage_from_string(url)
    limiter = strategies.MovingWindowRateLimiter(backend)
    item = RateLimitItemPerDay(10**9)
    results = []
    for workers in (1, 8):
        key = f"lim-{uuid.uuid4().hex[:6]}"
        results.append(
            run_threads(
                "limits moving window hit",
                workers,
                seconds,
                lambda key=key: limiter.hit(item, key),  # type: ignore[misc]
            )
        )
    # Memory: one tenant, N calls of 1,050 tokens each, charged as cost (one entry per token).
    calls, tokens = 200, 1_050
    key = f"mem-{uuid.uuid4().hex[:6]}"
    for _ in range(calls):
        limiter.hit(item, key, cost=tokens)
    client = redis.Redis.from_url(url)
    total = sum(client.memory_usage(k) or 0 for k in client.scan_iter(match=f"*{key}*", count=1000))
    for k in client.scan_iter(match="*lim-*", count=1000):
        client.delete(k)
    for k in client.scan_iter(match=f"*{key}*", count=1000):
        client.delete(k)
    return results, calls * tokens, total


def tenant_memory(url: str, calls: int) -> dict[str, int]:
    store = RedisStore.from_url(url, prefix=f"bm{uuid.uuid4().hex[:6]}", spool_path="/tmp/bm.jsonl")
    op = pair_op(store, (USER,))
    for _ in range(calls):
        op()
    sizes: dict[str, int] = {}
    for key in store.client.scan_iter(match=f"{store.prefix}:*"):
        kind = key.decode().split(":")[3]
        sizes[kind] = sizes.get(kind, 0) + (store.client.memory_usage(key) or 0)
    for key in store.client.scan_iter(match=f"{store.prefix}:*"):
        store.client.delete(key)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    secs = args.seconds

    client = redis.Redis.from_url(args.url)
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    store = RedisStore.from_url(args.url, prefix=prefix, spool_path=f"/tmp/{prefix}.jsonl")
    script = store.client.register_script(COMPARABLE)
    store.client.script_load(COMPARABLE)  # the floor calls EVALSHA directly: load it first
    key = f"{prefix}:{{floor}}:counter"
    floor_args = ["1", str(10**15), "60"]

    def floor() -> None:  # the cheapest EVALSHA through the client: what the store does
        store.client.evalsha(script.sha, 1, key, *floor_args)

    results: list[Result] = []
    # Warm up (connections, script cache).
    run_threads("warmup", 1, 0.3, pair_op(store, (USER,)))
    run_threads("warmup", 1, 0.2, floor)

    calls0, usec0 = evalsha_stats(client)
    one = run_threads("guardrail reserve+settle", 1, secs, pair_op(store, (USER,)))
    calls1, usec1 = evalsha_stats(client)
    round_trips = (calls1 - calls0) / one.ops
    results.append(one)
    results.append(run_threads("EVALSHA floor (redis-py)", 1, secs, floor))
    calls2, usec2 = evalsha_stats(client)
    server_us = ((usec1 - usec0) / (calls1 - calls0), (usec2 - usec1) / (calls2 - calls1))
    results.append(run_threads("guardrail reserve+settle", 8, secs, pair_op(store, (USER,))))
    results.append(run_threads("EVALSHA floor (redis-py)", 8, secs, floor))
    results.append(
        run_threads(
            "guardrail reserve+settle, 3 scopes", 8, secs, pair_op(store, (USER, ORG, GLOBAL))
        )
    )

    # Async: each asyncio.run gets its own event loop, and the store its own client on it.
    async def afloor() -> None:  # through the store's own async client (one per loop)
        await store._async()[0].evalsha(script.sha, 1, key, *floor_args)

    for workers in (1, 8):
        results.append(
            run_tasks("guardrail reserve+settle", workers, secs, apair_op(store, (USER,)))
        )
        results.append(run_tasks("EVALSHA floor (redis-py)", workers, secs, afloor))

    rb = {c: redis_benchmark(args.url, script.sha, c, int(12_000 * secs)) for c in (1, 8)}
    lim = limits_benchmark(args.url, secs)
    if lim is not None:
        results += lim[0]
    memory = tenant_memory(args.url, 10_000)
    for k in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(k)

    report = render(results, round_trips, server_us, rb, lim, memory, args)
    print(report)
    if args.write:
        write_results(report)


def render(
    results: list[Result],
    round_trips: float,
    server_us: tuple[float, float],
    rb: dict[int, float | None],
    lim: tuple[list[Result], int, int] | None,
    memory: dict[str, int],
    args: argparse.Namespace,
) -> str:
    info = redis.Redis.from_url(args.url).info("server")
    lines = [
        "## Redis store",
        "",
        "`bench/bench_redis.py`: what the Redis store costs per guarded call (one `reserve` and",
        "one `settle`, each one EVALSHA), beside the floor of single EVALSHA calls of a",
        "comparable script (check and increment a counter with a TTL) through the same redis-py",
        "client, `redis-benchmark` running that EVALSHA, and the `limits` library's moving",
        "window, all against the same local Redis in the same run.",
        "",
        f"Command ({date.today()}, Python {platform.python_version()}, redis-py "
        f"{redis.__version__}, Redis {info['redis_version']}, 2-core VM shared with other jobs):",
        "",
        "```sh",
        "/work/venv/bin/pip install -r <(grep limits bench/requirements.txt)",
        f"/work/venv/bin/python bench/bench_redis.py --seconds {args.seconds:g} --write",
        "```",
        "",
        f"Round trips per guarded call, counted by Redis (INFO commandstats): "
        f"**{round_trips:.2f}** EVALSHA. Time inside Redis per EVALSHA (commandstats): "
        f"{server_us[0]:.1f} µs for the store's scripts (mean of reserve and settle), "
        f"{server_us[1]:.1f} µs for the floor script.",
        "",
        "| what | workers | per second | p50 | p99 |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.workers} | {r.rate:,.0f} | {r.pct(0.5):.3f} ms "
            f"| {r.pct(0.99):.3f} ms |"
        )
    for clients, rate in rb.items():
        shown = "not installed" if rate is None else f"{rate:,.0f}"
        lines.append(f"| redis-benchmark EVALSHA | {clients} clients | {shown} | | |")
    lines += ["", "Pairs per second as a share of single EVALSHA calls per second (goal: 40%):", ""]
    floors = {r.workers: r for r in results if r.name.startswith("EVALSHA floor")}
    for r in results:
        if r.name == "guardrail reserve+settle" and r.workers in floors:
            floor = floors[r.workers]
            lines.append(
                f"- {r.workers}: {r.rate / floor.rate:.0%} (a pair costs "
                f"{floor.rate / r.rate:.2f} floor calls; 40% needs 2.50 or less)"
            )
    total = sum(memory.values())
    parts = ", ".join(f"`{k}` {v:,} B" for k, v in sorted(memory.items()))
    lines += [
        "",
        f"Memory of one tenant after 10,000 calls in one day (MEMORY USAGE): **{total:,} B** "
        f"({parts}): the live hash `s` (buckets, holds, counters) and the day hash `d` "
        "(usage per model, kept `retention_days`). A settled call leaves nothing behind, so "
        "this does not grow with the number of calls.",
    ]
    if lim is not None:
        entries, size = lim[1], lim[2]
        lines.append(
            f"The `limits` moving window after 200 calls of 1,050 tokens charged as cost: "
            f"{entries:,} entries, **{size:,} B** ({size / entries:.1f} B per token)."
        )
    lines += [
        "",
        f"Server time: the store's scripts take {server_us[0]:.1f} µs inside Redis per call "
        f"(mean of reserve and settle), the floor script {server_us[1]:.1f} µs. A pair is "
        "two round trips, so its ceiling is 50% of single calls; what it costs beyond two "
        "floor calls is the scripts' own work in Redis (check and take every limit, token "
        "buckets, per-model usage) and packing their larger requests.",
    ]
    return "\n".join(lines) + "\n"


def write_results(section: str) -> None:
    path = Path(__file__).parent / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"  # re-read right before
    pattern = re.compile(r"^## Redis store\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
