"""OpenTelemetry metrics and traces, built from usage records.

``Guard(telemetry=True)`` (or ``telemetry=Telemetry(...)``) records, through the
OpenTelemetry API (the ``[otel]`` extra), what every guarded call did, following the GenAI
semantic conventions. Without an SDK configured the API is a no-op; without the API
installed, asking for telemetry raises ConfigurationError with the install line.

GenAI metrics: ``gen_ai.client.token.usage`` (histogram, ``{token}``, one point per token
type), ``gen_ai.client.operation.duration`` (``s``), and for streams
``gen_ai.client.operation.time_to_first_chunk`` (``s``); attributes
``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.response.model`` (when the provider says), ``error.type`` (on failures).

guardrail's own: ``guardrail.spend.usd``, ``guardrail.refusals`` (by ``guardrail.limit``
and ``guardrail.refusal.kind``), ``guardrail.reservations.in_flight``,
``guardrail.store.operation.duration`` and ``guardrail.store.errors`` (by
``guardrail.store.operation``), ``guardrail.retries``, ``guardrail.trims``,
``guardrail.alerts.fired`` (by ``guardrail.alert.rule``) and ``guardrail.alerts.dropped``
(by ``guardrail.alert.queue``). Tenants are not a metric attribute unless
``tenant_attribute=True``: one series per tenant overwhelms most metric backends.

Traces: one CLIENT span per guarded call, named ``{operation} {model}`` (``chat gpt-4o``),
with its real start and
end, the GenAI attributes, ``guardrail.tenant``, and span events for reserve, each retry,
trim and settle (and the refusal). No prompt or completion content is ever recorded: the
usage records that spans are built from do not hold any. The span is built when the call
ends, so it is a sibling, not a parent, of the HTTP client's own spans.
"""

from __future__ import annotations

import importlib.metadata
import threading
from typing import Any

from guardrail.errors import ConfigurationError
from guardrail.observe.sinks import UsageRecord

__all__ = ["METRIC_NAMES", "Telemetry"]

TOKEN_BUCKETS: list[float] = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304]
TOKEN_BUCKETS += [16777216, 67108864]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48]
DURATION_BUCKETS += [40.96, 81.92]
FIRST_CHUNK_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0]
FIRST_CHUNK_BUCKETS += [2.5, 5.0, 7.5, 10.0]
STORE_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25]
STORE_BUCKETS += [0.5, 1.0, 2.5]

METRIC_NAMES = {
    # OpenTelemetry name: (instrument, unit, description)
    "gen_ai.client.token.usage": (
        "histogram",
        "{token}",
        "Number of input and output tokens used.",
    ),
    "gen_ai.client.operation.duration": ("histogram", "s", "GenAI operation duration."),
    "gen_ai.client.operation.time_to_first_chunk": (
        "histogram",
        "s",
        "Time to receive the first chunk of a streaming response.",
    ),
    "guardrail.spend.usd": ("counter", "{USD}", "Settled spend, in USD."),
    "guardrail.refusals": ("counter", "{call}", "Calls refused before they were sent."),
    "guardrail.reservations.in_flight": (
        "observable_updowncounter",
        "{reservation}",
        "Reservations held and not yet settled or released.",
    ),
    "guardrail.store.operation.duration": ("histogram", "s", "Budget store operation time."),
    "guardrail.store.errors": ("counter", "{error}", "Budget store operations that failed."),
    "guardrail.retries": ("counter", "{retry}", "Attempts after a call's first."),
    "guardrail.trims": ("counter", "{call}", "Calls whose history was trimmed to fit."),
    "guardrail.alerts.fired": ("counter", "{alert}", "Alerts fired (once per window)."),
    "guardrail.alerts.dropped": (
        "counter",
        "{alert}",
        "Alerts (or records) lost to a full queue or a failed delivery.",
    ),
}
_BUCKETS: dict[str, list[float]] = {
    "gen_ai.client.token.usage": TOKEN_BUCKETS,
    "gen_ai.client.operation.duration": DURATION_BUCKETS,
    "gen_ai.client.operation.time_to_first_chunk": FIRST_CHUNK_BUCKETS,
    "guardrail.store.operation.duration": STORE_BUCKETS,
}
_FAILED = ("error", "rejected", "stream_error", "cancelled")


def _version() -> str:
    try:
        return importlib.metadata.version("guardrail-limits")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree
        return "0"


class _Attrs:
    """The attribute sets of one (provider, model, response model), built once."""

    __slots__ = ("base", "input", "output", "short")

    def __init__(
        self, operation: str, provider: str, model: str, response_model: str | None
    ) -> None:
        self.base = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider or "unknown",
            "gen_ai.request.model": model,
        }
        if response_model:
            self.base["gen_ai.response.model"] = response_model
        self.input = {**self.base, "gen_ai.token.type": "input"}
        self.output = {**self.base, "gen_ai.token.type": "output"}
        self.short = {"gen_ai.provider.name": provider or "unknown", "gen_ai.request.model": model}


def _histogram(meter: Any, name: str, unit: str, description: str) -> Any:
    """A histogram with the conventions' buckets (an advisory the API takes since 1.30;
    older APIs get the SDK's default buckets)."""
    try:
        return meter.create_histogram(
            name, unit, description, explicit_bucket_boundaries_advisory=_BUCKETS[name]
        )
    except TypeError:  # pragma: no cover - opentelemetry-api < 1.30
        return meter.create_histogram(name, unit, description)


class Telemetry:
    """Metrics and traces for a :class:`~guardrail.Guard`: ``Guard(telemetry=...)``.

    * ``meter_provider`` / ``tracer_provider``: where to record; the global providers
      (whatever your OpenTelemetry SDK set up, a no-op otherwise) when omitted.
    * ``metrics``, ``traces``: turn either off.
    * ``tenant_attribute``: add ``guardrail.tenant`` to the spend and refusal metrics
      (spans always carry it). Off by default: a series per tenant is a cardinality bomb.
    """

    def __init__(
        self,
        *,
        meter_provider: Any = None,
        tracer_provider: Any = None,
        metrics: bool = True,
        traces: bool = True,
        tenant_attribute: bool = False,
    ) -> None:
        try:
            from opentelemetry import metrics as otel_metrics
            from opentelemetry import trace as otel_trace
        except ImportError as exc:
            raise ConfigurationError(
                "telemetry needs the OpenTelemetry API: pip install 'guardrail-limits[otel]'"
            ) from exc
        self.tenant_attribute = tenant_attribute
        self.prometheus: Any = None
        """The :class:`~guardrail.observe.PrometheusMetrics` behind ``serve_prometheus``."""
        self._instruments: dict[str, Any] = {}
        self._held = 0
        self._held_lock = threading.Lock()
        self._attrs: dict[tuple[str, str, str, str | None], _Attrs] = {}
        if metrics:
            meter = (meter_provider or otel_metrics.get_meter_provider()).get_meter(
                "guardrail", _version()
            )
            for name, (kind, unit, description) in METRIC_NAMES.items():
                if kind == "histogram":
                    self._instruments[name] = _histogram(meter, name, unit, description)
                elif kind == "counter":
                    self._instruments[name] = meter.create_counter(name, unit, description)
                else:  # read when the metrics are collected, not written on every call
                    self._instruments[name] = meter.create_observable_up_down_counter(
                        name, [self._observe_in_flight], unit, description
                    )
        self._tracer = None
        if traces:
            self._tracer = (tracer_provider or otel_trace.get_tracer_provider()).get_tracer(
                "guardrail", _version()
            )
            self._noop_tracer = otel_trace.NoOpTracer
            self._span_kind = otel_trace.SpanKind.CLIENT
            self._status = otel_trace.Status
            self._error = otel_trace.StatusCode.ERROR

    # -- the sink

    def __call__(self, record: UsageRecord) -> None:
        if self._instruments:
            self._measure(record)
        if self._tracer is not None and not self._tracing_is_off():
            self._trace(record)

    def _tracing_is_off(self) -> bool:
        """True while the tracer is the API's no-op (no SDK set up, or not yet: the global
        provider's proxy tracer resolves to the real one once it is set), whose spans would
        record nothing: building one is ~10 µs per call for nothing."""
        tracer = self._tracer
        return isinstance(getattr(tracer, "_tracer", tracer), self._noop_tracer)

    def _attributes(self, record: UsageRecord) -> _Attrs:
        key = (record.operation, record.provider, record.model, record.response_model)
        attrs = self._attrs.get(key)
        if attrs is None:
            if len(self._attrs) > 1000:
                self._attrs = {}
            attrs = self._attrs[key] = _Attrs(*key)
        return attrs

    def _measure(self, record: UsageRecord) -> None:
        m = self._instruments
        attrs_of = self._attributes(record)
        base = attrs_of.base
        refusal = record.refusal
        if record.outcome == "rejected":
            attrs = {"guardrail.limit": "unknown", "guardrail.refusal.kind": "unknown"}
            if refusal is not None:
                attrs = {"guardrail.limit": refusal.limit, "guardrail.refusal.kind": refusal.kind}
            m["guardrail.refusals"].add(1, self._with_tenant(attrs, record))
            return
        if record.attempts == 0:  # nothing was sent (the store failed closed)
            return
        if record.usage_source != "none":
            m["gen_ai.client.token.usage"].record(record.input_tokens, attrs_of.input)
            if record.operation != "embeddings":  # embeddings bill no output
                m["gen_ai.client.token.usage"].record(record.output_tokens, attrs_of.output)
        timed = base
        if record.error is not None and record.outcome in _FAILED:
            timed = {**base, "error.type": record.error.split(":", 1)[0]}
        m["gen_ai.client.operation.duration"].record(record.latency_seconds, timed)
        if record.time_to_first_chunk_seconds is not None:
            m["gen_ai.client.operation.time_to_first_chunk"].record(
                record.time_to_first_chunk_seconds, base
            )
        short = attrs_of.short
        if record.cost_usd > 0:
            m["guardrail.spend.usd"].add(float(record.cost_usd), self._with_tenant(short, record))
        if record.attempts > 1:
            m["guardrail.retries"].add(record.attempts - 1, short)
        if record.trimmed_messages:
            m["guardrail.trims"].add(1, short)

    def _with_tenant(self, attrs: dict[str, str], record: UsageRecord) -> dict[str, str]:
        return {**attrs, "guardrail.tenant": record.tenant} if self.tenant_attribute else attrs

    def _trace(self, record: UsageRecord) -> None:
        assert self._tracer is not None
        end = int(record.timestamp * 1e9)
        start = end - int(record.latency_seconds * 1e9)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": record.operation,
            "gen_ai.provider.name": record.provider or "unknown",
            "gen_ai.request.model": record.model,
            "guardrail.tenant": record.tenant,
            "guardrail.scopes": list(record.scopes),
            "guardrail.outcome": record.outcome,
            "guardrail.attempts": record.attempts,
            "guardrail.cost_usd": str(record.cost_usd),
            "guardrail.reserved_usd": str(record.reserved_usd),
        }
        if record.requested_model != record.model:
            attrs["guardrail.requested_model"] = record.requested_model
        if record.response_model:
            attrs["gen_ai.response.model"] = record.response_model
        if record.request_id:
            attrs["gen_ai.response.id"] = record.request_id
        if record.usage_source != "none":
            attrs["gen_ai.usage.input_tokens"] = record.input_tokens
            attrs["gen_ai.usage.output_tokens"] = record.output_tokens
            if record.cached_input_tokens:
                attrs["gen_ai.usage.cache_read.input_tokens"] = record.cached_input_tokens
            attrs["guardrail.usage_source"] = record.usage_source
        if record.trimmed_messages:
            attrs["guardrail.trimmed_messages"] = record.trimmed_messages
        if record.fallback_reason:
            attrs["guardrail.fallback_reason"] = record.fallback_reason
        if record.time_to_first_chunk_seconds is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = record.time_to_first_chunk_seconds
        failed = record.error is not None and record.outcome in _FAILED
        if failed:
            assert record.error is not None
            attrs["error.type"] = record.error.split(":", 1)[0]
        span = self._tracer.start_span(
            f"{record.operation} {record.model}",
            kind=self._span_kind,
            start_time=start,
            attributes=attrs,
        )
        for event in record.events:
            span.add_event(
                event.name, dict(event.attributes), timestamp=start + int(event.offset * 1e9)
            )
        if record.refusal is not None:
            figures = {k: v for k, v in record.refusal.to_dict().items() if v is not None}
            span.add_event("guardrail.refusal", figures, timestamp=end)
        if failed:
            span.set_status(self._status(self._error, record.error))
        span.end(end_time=end)

    # -- what the store and the alerts report

    def store_operation(self, operation: str, seconds: float, error: BaseException | None) -> None:
        m = self._instruments
        if not m:
            return
        attrs = {"guardrail.store.operation": operation}
        m["guardrail.store.operation.duration"].record(seconds, attrs)
        if error is not None:
            m["guardrail.store.errors"].add(1, {**attrs, "error.type": type(error).__name__})

    def in_flight(self, delta: int) -> None:
        with self._held_lock:
            self._held += delta

    def _observe_in_flight(self, options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(self._held)]

    def alert_fired(self, rule: str) -> None:
        if self._instruments:
            self._instruments["guardrail.alerts.fired"].add(1, {"guardrail.alert.rule": rule})

    def alert_dropped(self, queue: str) -> None:
        if self._instruments:
            self._instruments["guardrail.alerts.dropped"].add(1, {"guardrail.alert.queue": queue})
