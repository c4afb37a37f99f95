"""The added cost of metrics, traces and alerts on a guarded call.

The in-process guarded call of ``bench_guard.py`` (``engine.prepare`` plus the reserve /
send / settle flow driven by the sync driver, a stub ``Send`` returning one canned
``ChatCompletion``; memory store, warm caches, 20 messages, gpt-4o), with each of:

* ``none``: ``Guard(policy)``, as in bench_guard (no usage record is even built);
* ``otel API only``: ``telemetry=True`` with no OpenTelemetry SDK configured (the API's
  no-op providers);
* ``metrics``, ``traces``, ``metrics+traces``: ``PrometheusMetrics().telemetry(...)``
  (guardrail's own aggregation rendered as Prometheus text, as the gateway's ``/metrics``)
  and/or an SDK ``TracerProvider`` whose ``BatchSpanProcessor`` exports to an exporter
  that drops the spans;
* ``metrics (OTel SDK)``: ``Telemetry(meter_provider=...)`` on an SDK ``MeterProvider``
  read by a ``PrometheusMetricReader``: the path of a user who brings their own SDK;
* ``alerts``: ``alerts=Alerts()`` (every rule; a destination that drops events), whose
  worker thread evaluates the records off the call path;
* ``all``: metrics, traces and alerts.

Variants run in alternation, ``--rounds`` rounds of ``--number`` calls each; each figure is
the median of the per-round means. The alert worker's own CPU (it shares the GIL) is part
of the figure: the time is wall time on the calling thread while the worker runs.

Run:  TIKTOKEN_CACHE_DIR=/work/shared/tiktoken-cache python bench/bench_observe.py
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
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

os.environ.setdefault("TIKTOKEN_CACHE_DIR", "/work/shared/tiktoken-cache")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_guard import SEED, canned_completion, conversation, fmt_us, in_process_call, table
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import guardrail
from guardrail.observe import PrometheusMetrics


class Discard(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def guards() -> dict[str, guardrail.Guard]:
    policy = guardrail.Policy(daily_spend_usd=Decimal(1_000_000), loop_limit=None)
    prometheus = PrometheusMetrics()
    tracers = TracerProvider()
    # a queue no run fills: a full one drops spans, which would understate their cost
    tracers.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=200_000))

    def telemetry(**options: bool) -> guardrail.Telemetry:
        return prometheus.telemetry(tracer_provider=tracers, **options)

    def alerts() -> guardrail.Alerts:
        return guardrail.Alerts(destinations=[lambda event: None])

    return {
        "none": guardrail.Guard(policy),
        "otel API only": guardrail.Guard(policy, telemetry=True),
        "metrics": guardrail.Guard(policy, telemetry=telemetry(traces=False)),
        "metrics (OTel SDK)": guardrail.Guard(
            policy,
            telemetry=guardrail.Telemetry(meter_provider=prometheus.meter_provider, traces=False),
        ),
        "traces": guardrail.Guard(policy, telemetry=telemetry(metrics=False)),
        "metrics+traces": guardrail.Guard(policy, telemetry=telemetry()),
        "alerts": guardrail.Guard(policy, alerts=alerts()),
        "all": guardrail.Guard(policy, telemetry=telemetry(), alerts=alerts()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    started = time.perf_counter()
    messages = conversation(random.Random(SEED), 20)
    kwargs = {"model": "gpt-4o", "messages": messages}
    made = guards()
    calls: dict[str, Callable[[dict[str, Any]], Any]] = {
        name: in_process_call(guard, canned_completion()) for name, guard in made.items()
    }
    for call in calls.values():  # warm every path
        for _ in range(200):
            call(kwargs)
    means: dict[str, list[float]] = {name: [] for name in calls}
    clock = time.perf_counter
    for r in range(args.rounds):
        order = list(calls.items())
        order = order[r % len(order) :] + order[: r % len(order)]
        for name, call in order:
            gc.collect()
            t0 = clock()
            for _ in range(args.number):
                call(kwargs)
            means[name].append((clock() - t0) / args.number)
        for guard in made.values():  # between rounds: the workers catch up, untimed
            if guard.alerts is not None:
                guard.alerts.flush(30)
    base = statistics.median(means["none"])
    rows = []
    for name, values in means.items():
        median = statistics.median(values)
        rows.append(
            [
                name,
                fmt_us(median),
                f"{fmt_us(min(values))}–{fmt_us(max(values))}",
                "–" if name == "none" else f"+{fmt_us(median - base)}",
                "–" if name == "none" else f"{median / base:.2f}x",
            ]
        )
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cpus, "
        f"{args.rounds} rounds x {args.number} calls, 20 messages"
    )
    print(table(["variant", "per call", "range of rounds", "added", "÷ none"], rows))
    for name, guard in made.items():
        if guard.alerts is not None:
            guard.alerts.flush(30)
            stats = guard.alerts.stats
            print(f"{name}: {stats.records} records evaluated, dropped {stats.dropped_total}")
            guard.alerts.close()
    print(f"total time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
