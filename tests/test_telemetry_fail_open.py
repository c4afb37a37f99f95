"""``guardrail.reservations.in_flight`` counts a fail-open call's reservation (made in the
process's offline budget while Redis is down) as it counts its settlement: it went one
lower for every such call, for good (found by a review)."""

from __future__ import annotations

import uuid
from pathlib import Path

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from guardrail import Guard, Policy, Telemetry
from guardrail.stores.redis import RedisStore
from tests._redis_helpers import free_port


def _in_flight(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "guardrail.reservations.in_flight":
                    return int(metric.data.data_points[0].value)
    raise AssertionError("no in_flight metric")


def test_fail_open_calls_leave_the_in_flight_gauge_at_zero(server, tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: Redis is down
    store = RedisStore.from_url(
        dead, prefix=f"rv-{uuid.uuid4().hex[:8]}", spool_path=tmp_path / "s.jsonl"
    )
    guard = Guard(
        Policy(loop_limit=None),
        store=store,
        on_store_error="fail_open",
        telemetry=Telemetry(meter_provider=meters, traces=False),
    )
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    try:
        for _ in range(3):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
        assert _in_flight(reader) == 0  # nothing is in flight any more
    finally:
        store.close()
        meters.shutdown()
