"""OpenTelemetry metrics and spans of guarded calls: an in-memory metric reader and span
exporter, the real SDK against the fake servers, names, attributes and values asserted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import guardrail
from guardrail import BudgetExceeded, Guard, MemoryStore, Policy, Telemetry, UsageRecord
from guardrail.observe import METRIC_NAMES, PrometheusMetrics

HELLO = [{"role": "user", "content": "a secret prompt about otters"}]


class OTel:
    """An SDK set-up whose metrics and spans a test reads."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))

    def telemetry(self, **options: Any) -> Telemetry:
        return Telemetry(meter_provider=self.meters, tracer_provider=self.tracers, **options)

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def unit(self, name: str) -> str:
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        return str(metric.unit)
        raise AssertionError(f"no metric {name}")

    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def otel() -> Iterator[OTel]:
    setup = OTel()
    yield setup
    setup.meters.shutdown()
    setup.tracers.shutdown()


def _client(guard: Guard, server: Any) -> Any:
    return guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0))


def _by(points: list[Any], **attrs: str) -> Any:
    matches = [p for p in points if all(p.attributes.get(k) == v for k, v in attrs.items())]
    assert len(matches) == 1, (attrs, [dict(p.attributes) for p in points])
    return matches[0]


def test_a_call_records_the_genai_metrics_and_guardrails_own(server: Any, otel: OTel) -> None:
    server.prompt_tokens = lambda request: 120
    records: list[UsageRecord] = []
    guard = Guard(Policy(), telemetry=otel.telemetry(), sinks=[records.append])
    _client(guard, server).for_tenant("u-1").chat.completions.create(
        model="gpt-4o", messages=HELLO, max_tokens=50
    )
    (record,) = records
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o",
    }
    usage = otel.points("gen_ai.client.token.usage")
    assert len(usage) == 2
    inp = _by(usage, **common, **{"gen_ai.token.type": "input"})
    out = _by(usage, **common, **{"gen_ai.token.type": "output"})
    assert (inp.count, inp.sum) == (1, 120)
    assert (out.count, out.sum) == (1, record.output_tokens) and record.output_tokens > 0
    assert list(inp.explicit_bounds[:4]) == [1, 4, 16, 64]
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert dict(duration.attributes) == common
    assert duration.count == 1 and duration.sum == pytest.approx(record.latency_seconds)
    assert otel.unit("gen_ai.client.token.usage") == "{token}"
    assert otel.unit("gen_ai.client.operation.duration") == "s"
    (spend,) = otel.points("guardrail.spend.usd")
    assert spend.value == pytest.approx(float(record.cost_usd)) and record.cost_usd > 0
    assert "guardrail.tenant" not in spend.attributes  # no per-tenant series by default
    assert otel.points("gen_ai.client.operation.time_to_first_chunk") == []
    assert otel.points("guardrail.refusals") == otel.points("guardrail.retries") == []
    ops = {
        p.attributes["guardrail.store.operation"]
        for p in otel.points("guardrail.store.operation.duration")
    }
    assert ops == {"reserve", "settle"}
    (in_flight,) = otel.points("guardrail.reservations.in_flight")
    assert in_flight.value == 0


def test_the_span_follows_the_genai_conventions_without_content(server: Any, otel: OTel) -> None:
    server.prompt_tokens = lambda request: 40
    server.cached_tokens = 16
    guard = Guard(Policy(max_attempts=3), telemetry=otel.telemetry(), sleep=lambda s: None)
    server.enqueue_error(500)
    _client(guard, server).for_tenant("u-7", parents=["org-1"]).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=20
    )
    (span,) = otel.spans()
    assert span.name == "chat gpt-4o-mini"
    assert span.kind is SpanKind.CLIENT
    attrs = dict(span.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.usage.input_tokens"] == 40
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 16
    assert attrs["guardrail.tenant"] == "u-7"
    assert attrs["guardrail.scopes"] == ("u-7", "org-1")
    assert attrs["guardrail.attempts"] == 2
    assert attrs["gen_ai.response.id"].startswith("req_")
    names = [e.name for e in span.events]
    assert names == [
        "guardrail.reserve",
        "guardrail.retry",
        "guardrail.reserve",
        "guardrail.settle",
    ]
    retry = span.events[1]
    assert retry.attributes["error_type"] == "InternalServerError"
    assert retry.attributes["attempt"] == 2
    assert span.start_time <= span.events[0].timestamp <= span.events[-1].timestamp
    assert span.events[-1].timestamp <= span.end_time
    assert span.status.status_code is StatusCode.UNSET
    everything = repr(attrs) + repr([dict(e.attributes) for e in span.events])
    assert "otter" not in everything and "secret" not in everything
    assert _by(otel.points("guardrail.retries")).value == 1


def test_a_refusal_counts_by_limit_and_ends_its_span_in_error(server: Any, otel: OTel) -> None:
    guard = Guard(
        Policy(daily_spend_usd="0.000001"), telemetry=otel.telemetry(tenant_attribute=True)
    )
    with pytest.raises(BudgetExceeded):
        _client(guard, server).for_tenant("u-2").chat.completions.create(
            model="gpt-4o", messages=HELLO, max_tokens=50
        )
    (refusal,) = otel.points("guardrail.refusals")
    assert dict(refusal.attributes) == {
        "guardrail.limit": "daily_spend_usd",
        "guardrail.refusal.kind": "budget",
        "guardrail.tenant": "u-2",
    }
    assert refusal.value == 1
    assert otel.points("gen_ai.client.token.usage") == []  # nothing was sent
    assert otel.points("gen_ai.client.operation.duration") == []
    (span,) = otel.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "BudgetExceeded"
    event = span.events[-1]
    assert event.name == "guardrail.refusal"
    assert event.attributes["limit"] == "daily_spend_usd"
    assert Decimal(event.attributes["cap"]) == Decimal("0.000001")
    assert server.chat_requests == []


def test_a_stream_records_its_time_to_first_chunk(server: Any, otel: OTel) -> None:
    guard = Guard(Policy(), telemetry=otel.telemetry())
    records: list[UsageRecord] = []
    guard.engine.recorder.sinks.append(records.append)
    stream = _client(guard, server).chat.completions.create(
        model="gpt-4o", messages=HELLO, max_tokens=30, stream=True
    )
    (held,) = otel.points("guardrail.reservations.in_flight")
    assert held.value == 1  # reserved, not yet settled: the stream is open
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    (record,) = records
    assert record.time_to_first_chunk_seconds is not None
    assert 0 < record.time_to_first_chunk_seconds <= record.latency_seconds
    (first,) = otel.points("gen_ai.client.operation.time_to_first_chunk")
    assert first.count == 1 and first.sum == pytest.approx(record.time_to_first_chunk_seconds)
    assert first.attributes["gen_ai.request.model"] == "gpt-4o"
    assert _by(otel.points("guardrail.reservations.in_flight")).value == 0
    (span,) = otel.spans()
    assert span.attributes["guardrail.outcome"] == "stream_completed"
    assert span.attributes["gen_ai.response.time_to_first_chunk"] == pytest.approx(
        record.time_to_first_chunk_seconds
    )


def test_trims_and_a_failing_store_are_counted(server: Any, otel: OTel) -> None:
    class DownStore(MemoryStore):
        def reserve(self, request: Any) -> Any:
            raise ConnectionError("store down")

    guard = Guard(
        Policy(trim=True, max_input_tokens=60),
        store=DownStore(),
        on_store_error="fail_open",
        telemetry=otel.telemetry(),
    )
    history = [{"role": "user", "content": f"message {n} " + "word " * 20} for n in range(6)]
    _client(guard, server).chat.completions.create(model="gpt-4o", messages=history, max_tokens=10)
    assert _by(otel.points("guardrail.trims")).value == 1
    error = _by(otel.points("guardrail.store.errors"), **{"guardrail.store.operation": "reserve"})
    assert error.value == 1 and error.attributes["error.type"] == "ConnectionError"
    (span,) = otel.spans()
    assert span.events[0].name == "guardrail.trim"
    assert span.events[0].attributes["dropped_messages"] >= 1


def test_anthropic_calls_name_their_provider(fake: Any, otel: OTel) -> None:
    guard = Guard(Policy(), telemetry=otel.telemetry())
    client = guard.wrap(
        anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0),
        exact_count=False,
    )
    client.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=HELLO)
    usage = otel.points("gen_ai.client.token.usage")
    assert {p.attributes["gen_ai.provider.name"] for p in usage} == {"anthropic"}
    (span,) = otel.spans()
    assert span.attributes["gen_ai.provider.name"] == "anthropic"


def test_without_an_sdk_the_api_is_a_no_op(server: Any) -> None:
    guard = Guard(Policy(), telemetry=True)  # the global providers: no SDK configured
    reply = _client(guard, server).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].message.content


def test_guardrail_works_without_opentelemetry_installed() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the [otel] extra were not installed
        import openai, guardrail
        from guardrail.testing import FakeOpenAIServer
        with FakeOpenAIServer() as server:
            guard = guardrail.Guard(alerts=guardrail.Alerts(destinations=[]))
            client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
            hi = [{"role": "user", "content": "hi"}]
            client.chat.completions.create(model="gpt-4o", messages=hi)
            try:
                guardrail.Telemetry()
            except guardrail.ConfigurationError as exc:
                print("refused:", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'guardrail-limits[otel]'" in done.stdout


def test_prometheus_names_include_the_genai_and_refusal_metrics(server: Any) -> None:
    prometheus = PrometheusMetrics()
    guard = Guard(Policy(daily_spend_usd="0.001"), telemetry=prometheus.telemetry(traces=False))
    client = _client(guard, server)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=10)
    with pytest.raises(BudgetExceeded):
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=4000)
    text = prometheus.render().decode()
    assert "gen_ai_client_token_usage_bucket{" in text
    assert 'gen_ai_token_type="input"' in text and 'gen_ai_request_model="gpt-4o-mini"' in text
    assert "gen_ai_client_operation_duration_seconds_count{" in text
    assert 'guardrail_refusals_total{guardrail_limit="daily_spend_usd"' in text
    assert "guardrail_spend_usd_total{" in text
    assert prometheus.content_type.startswith("text/plain")
    # the one-liner's endpoint serves the same text over HTTP
    endpoint = prometheus.serve(port=0, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{endpoint.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            served = response.read().decode()
        assert "gen_ai_client_token_usage" in served and "guardrail_refusals_total" in served
    finally:
        prometheus.shutdown()


def test_every_metric_name_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "observability.md").read_text()
    for name in METRIC_NAMES:
        assert f"`{name}`" in doc, name
    assert guardrail.Telemetry is Telemetry


async def test_async_calls_are_measured_the_same(server: Any, otel: OTel) -> None:
    guard = Guard(Policy(), telemetry=otel.telemetry())
    client = guard.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0))
    await client.for_tenant("u-3").chat.completions.create(model="gpt-4o", messages=HELLO)
    stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    async for _ in stream:
        pass
    assert _by(otel.points("gen_ai.client.operation.duration")).count == 2
    assert _by(otel.points("gen_ai.client.operation.time_to_first_chunk")).count == 1
    assert _by(otel.points("guardrail.reservations.in_flight")).value == 0
    assert sorted(s.attributes["guardrail.tenant"] for s in otel.spans()) == ["default", "u-3"]


def test_a_refusal_is_logged_with_its_figures(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import logging

    guard = Guard(Policy(tokens_per_minute=100))
    with caplog.at_level(logging.INFO, logger="guardrail.usage"), pytest.raises(BudgetExceeded):
        _client(guard, server).chat.completions.create(
            model="gpt-4o", messages=HELLO, max_tokens=500
        )
    (line,) = [r.getMessage() for r in caplog.records if r.name == "guardrail.usage"]
    logged = json.loads(line)
    assert logged["refusal"] == {
        "kind": "budget",
        "limit": "tokens_per_minute",
        "scope": "default",
        "requested": logged["refusal"]["requested"],
        "cap": 100,
        "unit": "tokens",
        "remaining": 100,
        "retry_after": logged["refusal"]["retry_after"],
        "resets_at": None,
    }
    assert logged["refusal"]["requested"] > 100 and logged["provider"] == "openai"
    assert "events" not in logged and "limits" not in logged


def test_the_prometheus_one_liner_serves_the_guards_metrics(server: Any) -> None:
    from guardrail.observe import serve_prometheus

    telemetry = serve_prometheus(port=0, traces=False)
    try:
        guard = Guard(Policy(), telemetry=telemetry)
        _client(guard, server).chat.completions.create(model="gpt-4o", messages=HELLO)
        port = telemetry.prometheus._server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            served = response.read().decode()
        assert "gen_ai_client_operation_duration_seconds_bucket{" in served
    finally:
        telemetry.prometheus.shutdown()


def test_embeddings_are_their_own_operation(server: Any, otel: OTel) -> None:
    guard = Guard(Policy(), telemetry=otel.telemetry())
    _client(guard, server).embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    (point,) = otel.points("gen_ai.client.token.usage")  # input only: embeddings bill no output
    assert dict(point.attributes) == {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "text-embedding-3-small",
        "gen_ai.response.model": "text-embedding-3-small",
        "gen_ai.token.type": "input",
    }
    (span,) = otel.spans()
    assert span.name == "embeddings text-embedding-3-small"
