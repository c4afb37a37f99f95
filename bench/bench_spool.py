"""Benchmark: settlements written to the spool while Redis is down (``fail_open``).

Every settlement that Redis cannot take is appended to the spool, durably (fsync'd
before ``settle`` returns). With many threads settling at once, what matters is the
latency of one settlement: p50, p99 and the worst. Two measurements:

* ``spool``: ``Spool.append`` alone, from N threads at once, into a file under a fresh
  temporary directory;
* ``store``: ``RedisStore.settle`` against a port where nothing listens (each settle
  fails to connect, then spools), from N threads at once: the path of a guarded call
  with Redis down.

    python bench/bench_spool.py [--threads 32] [--records 40] [--dir /var/tmp]

The spool directory defaults to a temporary directory on the disk of ``--dir`` (use a
real disk: tmpfs makes fsync free).
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from guardrail.stores.base import Reservation, Settlement
from guardrail.stores.spool import Spool

SETTLEMENT = Settlement(cost_nanos=1_234_567, input_tokens=900, output_tokens=150, model="gpt-4o")


def reservation(n: int) -> Reservation:
    return Reservation(
        id=f"bench-{n:08d}",
        scopes=("bench-user", "bench-org"),
        cost_nanos=2_000_000,
        tokens=1_100,
        day="2026-11-23",
        month="2026-11",
        created_at=1795435200.0,
        expires_at=1795436100.0,
        model="gpt-4o",
        token="bench-00000000",
    )


def run(threads: int, records: int, op: Callable[[int], None]) -> list[float]:
    latencies: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def work(k: int) -> None:
        barrier.wait()
        for i in range(records):
            started = time.perf_counter()
            op(k * records + i)
            latencies[k].append(time.perf_counter() - started)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sorted(x for xs in latencies for x in xs)


def pct(data: list[float], q: float) -> float:
    return data[min(len(data) - 1, int(q * len(data)))] * 1e3


def report(name: str, threads: int, data: list[float], seconds: float) -> None:
    print(
        f"| {name} | {threads} | {len(data)} | {len(data) / seconds:,.0f}/s | "
        f"{pct(data, 0.5):.2f} ms | {pct(data, 0.99):.2f} ms | {data[-1] * 1e3:.2f} ms |"
    )


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: nothing listens there


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    print("| path | threads | settlements | throughput | p50 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        spool = Spool(Path(folder) / "spool.jsonl")
        record = {"op": "settle", "r": vars(reservation(0)), "s": vars(SETTLEMENT)}
        started = time.perf_counter()
        data = run(args.threads, args.records, lambda n: spool.append(record))
        report("spool append", args.threads, data, time.perf_counter() - started)

        from guardrail.stores.redis import RedisStore

        store = RedisStore.from_url(
            f"redis://127.0.0.1:{dead_port()}/0", spool_path=Path(folder) / "store.jsonl"
        )
        started = time.perf_counter()
        data = run(args.threads, args.records, lambda n: store.settle(reservation(n), SETTLEMENT))
        report("store settle, Redis down", args.threads, data, time.perf_counter() - started)
        store.close()


if __name__ == "__main__":
    main()
