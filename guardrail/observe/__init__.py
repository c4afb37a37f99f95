"""What guardrail tells the outside world: usage records and their sinks, alerts, and
OpenTelemetry metrics and traces (docs/observability.md).

Owns: :class:`UsageRecord` and where records go (the ``guardrail.usage`` JSON-lines
logger, callables); alert rules and their delivery (``alerts``, ``rules``, ``delivery``);
metrics and spans built from records (``telemetry``, ``prometheus``); the watched store
(``watch``).
May import: errors, stores (the Store protocol), tenancy. Never engine or providers.
OpenTelemetry is imported only when telemetry is asked for (the ``[otel]`` extra).
"""

from guardrail.observe.alerts import Alerts, AlertStats
from guardrail.observe.config import alerts_from_config
from guardrail.observe.delivery import Destination, LogDestination, Webhook
from guardrail.observe.prometheus import PrometheusMetrics, serve_prometheus
from guardrail.observe.rules import (
    AlertEvent,
    ContextWindowRule,
    LoopRule,
    OverrunRule,
    RefusalRule,
    Rule,
    SpendAnomalyRule,
    SpendThresholdRule,
    StoreProblem,
    StoreRule,
    default_rules,
)
from guardrail.observe.sinks import CallEvent, JsonLinesSink, Refusal, UsageRecord
from guardrail.observe.telemetry import METRIC_NAMES, Telemetry

__all__ = [
    "METRIC_NAMES",
    "AlertEvent",
    "AlertStats",
    "Alerts",
    "CallEvent",
    "ContextWindowRule",
    "Destination",
    "JsonLinesSink",
    "LogDestination",
    "LoopRule",
    "OverrunRule",
    "PrometheusMetrics",
    "Refusal",
    "RefusalRule",
    "Rule",
    "SpendAnomalyRule",
    "SpendThresholdRule",
    "StoreProblem",
    "StoreRule",
    "Telemetry",
    "UsageRecord",
    "Webhook",
    "alerts_from_config",
    "default_rules",
    "serve_prometheus",
]
