"""guardrail's own aggregation (what PrometheusMetrics records into) renders exactly what
the OpenTelemetry SDK read by its Prometheus exporter renders, for the same measurements."""

from __future__ import annotations

import logging
import random
from decimal import Decimal
from importlib.metadata import version
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from guardrail import Telemetry, UsageRecord
from guardrail.observe import PrometheusMetrics
from guardrail.observe import aggregate as aggregate_module
from guardrail.observe.aggregate import LocalMeterProvider
from guardrail.observe.sinks import Refusal


class Reference:
    """The OpenTelemetry path: the SDK, its Prometheus reader, the same Resource."""

    def __init__(self, resource: Any, **options: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reader = PrometheusMetricReader(registry=self.registry, **options)
        self.meters = MeterProvider(metric_readers=[self.reader], resource=resource)

    def render(self) -> str:
        return generate_latest(self.registry).decode()


def _records(rng: random.Random, n: int) -> list[UsageRecord]:
    models = [("gpt-4o", "gpt-4o-2024-08-06"), ("gpt-4o-mini", None), ("claude-3-5-haiku", "x")]
    found = []
    for i in range(n):
        model, response = rng.choice(models)
        outcome = rng.choice(["ok", "ok", "ok", "error", "rejected", "cancelled"])
        refusal = None
        if outcome == "rejected" and rng.random() < 0.8:
            limit = rng.choice(["daily_spend_usd", "context_window"])
            refusal = Refusal("budget", limit, "t", Decimal(1), Decimal(2), "USD")
        found.append(
            UsageRecord(
                tenant=f"t{i % 3}",
                scopes=(f"t{i % 3}",),
                model=model,
                requested_model=model,
                outcome=outcome,  # type: ignore[arg-type]
                input_tokens=rng.randint(0, 100_000),
                output_tokens=rng.choice([0, 1, 4, 16, rng.randint(0, 5000)]),
                cost_usd=Decimal(rng.randint(0, 10_000)) / 1_000_000,
                latency_seconds=rng.choice([0.01, 0.02, rng.random() * 30]),
                attempts=rng.choice([0, 1, 1, 2, 3]),
                trimmed_messages=rng.choice([0, 0, 2]),
                usage_source=rng.choice(["provider", "local_count", "none"]),
                error="APIError: boom" if outcome in ("error", "cancelled") else None,
                provider=rng.choice(["openai", "anthropic", ""]),
                operation=rng.choice(["chat", "chat", "embeddings"]),
                response_model=response,
                time_to_first_chunk_seconds=rng.choice([None, 0.001, rng.random()]),
                refusal=refusal,
            )
        )
    return found


def _drive(telemetry: Telemetry, rng: random.Random, records: list[UsageRecord]) -> None:
    for record in records:
        telemetry.in_flight(1)
        telemetry.store_operation("reserve", rng.random() / 100, None)
        telemetry(record)
        operation = rng.choice(["settle", "release"])
        error = ConnectionError("down") if rng.random() < 0.1 else None
        telemetry.store_operation(operation, rng.choice([0.0001, rng.random()]), error)
        telemetry.in_flight(-1 if rng.random() < 0.9 else 0)
        if rng.random() < 0.1:
            telemetry.alert_fired(rng.choice(["spend", "refusal"]))
        if rng.random() < 0.05:
            telemetry.alert_dropped("records")


REPLICATED = (1, 45, 2)
"""The OTel SDK (and its Prometheus exporter 0.66b2) whose rendering the local aggregation
reproduces byte for byte: earlier releases render without the ``otel_scope_*`` labels,
take no ``cardinality_limits`` and fail on sequence attribute values, so they are not the
reference (guardrail renders the same text whatever SDK is installed)."""
SDK = tuple(int(part) for part in version("opentelemetry-sdk").split(".")[:3])
against_the_sdk = pytest.mark.skipif(
    SDK < REPLICATED, reason=f"the reference rendering is opentelemetry-sdk {REPLICATED}+"
)


@against_the_sdk
@pytest.mark.parametrize("tenant_attribute", [False, True])
def test_the_local_aggregation_renders_what_the_sdk_renders(tenant_attribute: bool) -> None:
    local = PrometheusMetrics()
    reference = Reference(local.resource)
    options = {"traces": False, "tenant_attribute": tenant_attribute}
    mine = local.telemetry(**options)
    theirs = Telemetry(meter_provider=reference.meters, **options)
    assert local.render() == reference.render().encode()  # in-flight and target_info only
    for seed in range(3):
        records = _records(random.Random(seed), 300)
        _drive(mine, random.Random(seed), records)
        _drive(theirs, random.Random(seed), records)
        assert local.render().decode() == reference.render()
    local.shutdown()
    reference.meters.shutdown()
    assert local.render() == b""


def test_nothing_is_rendered_before_a_telemetry_is_made() -> None:
    assert PrometheusMetrics().render() == b""


def test_instruments_of_your_own_on_the_sdk_meter_provider() -> None:
    local = PrometheusMetrics()
    reference = Reference(local.resource)
    for provider in (local.meter_provider, reference.meters):
        provider.get_meter("mine", "2").create_counter("my.count", "{x}", "d").add(3, {"a": "b"})
    assert local.render().decode() == reference.render()  # one target_info, then theirs
    telemetry = local.telemetry(traces=False)
    telemetry.alert_fired("spend")
    text = local.render().decode()
    assert text.count("# TYPE target_info") == 1
    assert "my_count_total{" in text and "guardrail_alerts_fired_total{" in text
    local.shutdown()
    reference.meters.shutdown()


@against_the_sdk
def test_the_cardinality_limit_and_negative_amounts_as_in_the_sdk(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.sdk.metrics import Counter, Histogram

    monkeypatch.setattr(aggregate_module, "CARDINALITY_LIMIT", 5)
    local = PrometheusMetrics()
    reference = Reference(local.resource, cardinality_limits={Counter: 5, Histogram: 5})
    for meter in (
        local.local.get_meter("guardrail", "1"),
        reference.meters.get_meter("guardrail", "1"),
    ):
        counter = meter.create_counter("c.n", "{call}", "d")
        histogram = meter.create_histogram("h.n", "s", "d")
        for i in range(8):
            counter.add(1, {"k": str(i)})
            histogram.record(i / 10, {"k": str(i), "j": "x"})
        counter.add(2, {"k": "0"})  # a series under the limit still counts
        histogram.record(1.0, {"j": "x", "k": "1"})  # the same set in another order
        with caplog.at_level(logging.WARNING):
            counter.add(-1, {"k": "0"})
            histogram.record(-1.0, {"k": "0"})
    assert len([r for r in caplog.records if "non-negative" in r.getMessage()]) == 4
    text = local.render().decode()
    assert 'otel_metric_overflow="true"' in text
    assert text == reference.render()
    reference.meters.shutdown()
    for i in range(1000):  # sets past the limit are not remembered: memory stays bounded
        local.local.get_meter("guardrail", "1").create_counter("c.n").add(1, {"k": f"x{i}"})
    assert len(local.local.get_meter("guardrail", "1").create_counter("c.n")._series) <= 6


@against_the_sdk
def test_sequence_and_typed_values_render_as_in_the_sdk() -> None:
    local = PrometheusMetrics()
    reference = Reference(local.resource)
    for meter in (local.local.get_meter("m"), reference.meters.get_meter("m")):
        counter = meter.create_counter("c", "{x}")
        for _ in range(2):
            counter.add(1, {"list": ["a", "b"], "int": 3, "bool": True, "float": 0.5})
            counter.add(2.5, {"tuple": ("a",)})
            counter.add(1)
    assert local.render().decode() == reference.render()
    reference.meters.shutdown()


def test_an_instrument_asked_for_twice_is_one_instrument() -> None:
    meter = LocalMeterProvider().get_meter("guardrail")
    assert meter.create_counter("a.b") is meter.create_counter("A.b")
