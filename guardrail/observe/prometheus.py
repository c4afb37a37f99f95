"""Prometheus: guardrail's metrics in the Prometheus text format.

For a library user, one line starts an endpoint of its own (``pip install
'guardrail-limits[prometheus]'``)::

    guard = Guard(policy, telemetry=guardrail.observe.serve_prometheus(port=9464))

For the gateway (``GET /metrics``) or an app's own web framework, mount
:meth:`PrometheusMetrics.render`::

    prometheus = PrometheusMetrics()
    guard = Guard(policy, telemetry=prometheus.telemetry())
    body, content_type = prometheus.render(), prometheus.content_type

Each :class:`PrometheusMetrics` has its own ``prometheus_client`` registry, so it neither
needs nor disturbs a global set-up. Its :meth:`~PrometheusMetrics.telemetry` records into
guardrail's own counters and histograms (:mod:`guardrail.observe.aggregate`: about 1 µs
per measurement where the OpenTelemetry SDK takes about 10), rendered exactly as the
OpenTelemetry Prometheus exporter renders the SDK's; ``meter_provider`` is an
OpenTelemetry SDK ``MeterProvider`` read into the same registry, for instruments of your
own. OTel names become Prometheus names the exporter's way: dots become underscores, the unit is a
suffix, counters end in ``_total``, so ``gen_ai.client.token.usage`` is
``gen_ai_client_token_usage``, ``gen_ai.client.operation.duration`` is
``gen_ai_client_operation_duration_seconds`` and ``guardrail.refusals`` is
``guardrail_refusals_total``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from guardrail.errors import ConfigurationError
from guardrail.observe.aggregate import LocalCollector, LocalMeterProvider
from guardrail.observe.telemetry import Telemetry

__all__ = ["PrometheusMetrics", "serve_prometheus"]


class PrometheusMetrics:
    """guardrail's metrics (and a MeterProvider's) in a Prometheus registry: :meth:`render`
    for ``GET /metrics``, :meth:`serve` for an HTTP endpoint of its own."""

    def __init__(self) -> None:
        try:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.resources import Resource
            from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
        except ImportError as exc:
            raise ConfigurationError(
                "Prometheus metrics need the OpenTelemetry SDK and its Prometheus exporter: "
                "pip install 'guardrail-limits[prometheus]'"
            ) from exc
        self.resource = Resource.create({})
        self.registry = CollectorRegistry(auto_describe=True)
        self.local = LocalMeterProvider()
        """Where :meth:`telemetry` records (guardrail's own aggregation)."""
        # The SDK's reader fills a registry of its own, rendered by the collector after
        # guardrail's metrics, with one target_info for both.
        sdk_registry = CollectorRegistry(auto_describe=True)
        self.reader = PrometheusMetricReader(registry=sdk_registry, disable_target_info=True)
        self.meter_provider = MeterProvider(metric_readers=[self.reader], resource=self.resource)
        self._collector = LocalCollector(self.local, self.resource, also=sdk_registry)
        self.registry.register(self._collector)
        """An OpenTelemetry SDK MeterProvider rendered with the rest, for your own metrics."""
        self.content_type: str = CONTENT_TYPE_LATEST
        self._server: Any = None

    def telemetry(self, **options: Any) -> Telemetry:
        """A :class:`Telemetry` whose metrics this object exposes (``options`` as for
        Telemetry: ``traces``, ``tracer_provider``, ``tenant_attribute``)."""
        return Telemetry(meter_provider=self.local, **options)

    def render(self) -> bytes:
        """The current metrics in the Prometheus text format (``content_type``)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def serve(self, port: int = 9464, addr: str = "127.0.0.1") -> Any:
        """Start ``prometheus_client``'s HTTP endpoint for these metrics (a daemon
        thread); returns its server (``server.server_port`` is the port, if 0 was asked)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr, registry=self.registry)
        self._server = server
        return server

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.meter_provider.shutdown()
        with contextlib.suppress(KeyError):
            self.registry.unregister(self._collector)


def serve_prometheus(port: int = 9464, addr: str = "127.0.0.1", **options: Any) -> Telemetry:
    """The one-liner: ``Guard(telemetry=serve_prometheus(9464))`` serves the guard's
    metrics at ``http://{addr}:{port}/metrics``. ``options`` go to :class:`Telemetry`;
    the :class:`PrometheusMetrics` is ``telemetry.prometheus``."""
    metrics = PrometheusMetrics()
    metrics.serve(port, addr)
    telemetry = metrics.telemetry(**options)
    telemetry.prometheus = metrics
    return telemetry
