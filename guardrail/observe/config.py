"""Alerts from plain data: what a configuration file (the gateway's, or an app's) holds.

>>> alerts_from_config({
...     "rules": {"refusal": {}, "spend_anomaly": {"min_usd": "5"}},
...     "destinations": [
...         {"type": "webhook", "url": "https://hooks.slack.com/...", "slack": True},
...         {"type": "log"},
...     ],
... })

``rules`` maps rule names to their options (omitted: every rule with its defaults);
``destinations`` lists ``webhook`` (``url``, ``slack``, ``headers``, ``timeout``) and
``log`` (``logger``, ``level``) entries (omitted: the log). ``queue_size``, ``attempts``,
``backoff_seconds`` and ``refresh_seconds`` are :class:`Alerts`'s own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from guardrail.errors import ConfigurationError
from guardrail.observe.alerts import Alerts
from guardrail.observe.delivery import Destination, LogDestination, Webhook
from guardrail.observe.rules import (
    ContextWindowRule,
    LoopRule,
    OverrunRule,
    RefusalRule,
    Rule,
    SpendAnomalyRule,
    SpendThresholdRule,
    StoreRule,
)

__all__ = ["RULES", "alerts_from_config"]

RULES: dict[str, type[Rule]] = {
    rule.name: rule
    for rule in (
        ContextWindowRule,
        SpendAnomalyRule,
        RefusalRule,
        SpendThresholdRule,
        LoopRule,
        OverrunRule,
        StoreRule,
    )
}
_OPTIONS = ("queue_size", "attempts", "backoff_seconds", "refresh_seconds")


def _rule(name: str, options: Any) -> Rule:
    kind = RULES.get(name)
    if kind is None:
        raise ConfigurationError(f"unknown alert rule {name!r}; known: {sorted(RULES)}")
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"the options of alert rule {name!r} must be a mapping")
    known = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = set(options) - known
    if unknown:
        raise ConfigurationError(f"alert rule {name!r} has no option {sorted(unknown)}")
    values = dict(options)
    for key in ("shares", "kinds"):
        if key in values:
            values[key] = tuple(values[key])
    if "min_usd" in values:
        values["min_usd"] = Decimal(str(values["min_usd"]))
    return kind(**values)


def _destination(entry: Any) -> Destination:
    if not isinstance(entry, Mapping) or "type" not in entry:
        raise ConfigurationError(f"an alert destination needs a type, got {entry!r}")
    options = {k: v for k, v in entry.items() if k != "type"}
    try:
        if entry["type"] == "webhook":
            return Webhook(options.pop("url"), **options)
        if entry["type"] == "log":
            level = options.get("level", logging.WARNING)
            if isinstance(level, str):
                options["level"] = logging.getLevelName(level.upper())
            return LogDestination(**options)
    except (KeyError, TypeError) as exc:
        raise ConfigurationError(f"bad alert destination {dict(entry)!r}: {exc}") from exc
    raise ConfigurationError(f"unknown alert destination type {entry['type']!r}")


def alerts_from_config(config: Mapping[str, Any]) -> Alerts:
    """:class:`Alerts` from a mapping (JSON, TOML or YAML data); see the module doc."""
    unknown = set(config) - {"rules", "destinations", *_OPTIONS}
    if unknown:
        raise ConfigurationError(f"unknown alert settings {sorted(unknown)}")
    rules = config.get("rules")
    destinations = config.get("destinations")
    return Alerts(
        None if rules is None else [_rule(name, opts or {}) for name, opts in rules.items()],
        None if destinations is None else [_destination(d) for d in destinations],
        **{k: config[k] for k in _OPTIONS if k in config},
    )
