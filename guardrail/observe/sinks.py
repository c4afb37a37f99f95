"""Usage records and where they go.

Every guarded call, whatever its outcome, produces one :class:`UsageRecord`. The store
keeps the aggregates; sinks get each record: the JSON-lines logger ``guardrail.usage``
(no prompt content, ever, unless you put it there), and any callables you pass.
A failing sink is logged and skipped: it never breaks the call or the other sinks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal

__all__ = ["JsonLinesSink", "Outcome", "Sink", "UsageRecord", "emit"]

Outcome = Literal[
    "ok",
    "error",
    "rejected",
    "stream_completed",
    "stream_closed",
    "stream_error",
    "cancelled",
    "settle_pending",
]

_log = logging.getLogger("guardrail")


@dataclass(frozen=True)
class UsageRecord:
    tenant: str
    scopes: tuple[str, ...]
    model: str
    requested_model: str
    outcome: Outcome
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    reserved_usd: Decimal = Decimal(0)
    latency_seconds: float = 0.0
    attempts: int = 0
    trimmed_messages: int = 0
    request_id: str | None = None
    reservation_id: str | None = None
    usage_source: Literal["provider", "local_count", "none"] = "none"
    fallback_reason: str | None = None
    error: str | None = None
    timestamp: float = 0.0
    overrun_tokens: int = 0
    """Tokens billed past what was reserved (prompt and output): charged in full, and
    logged, but a sign that something was under-counted (a document, an estimate)."""
    overrun_usd: Decimal = Decimal(0)
    """Cost billed past the reservation's worst case."""
    settlement: str = "none"
    """Where the call's settlement went: ``"settled"`` (the store took it), ``"spooled"``
    (Redis was down: the spool replays it), ``"pending"`` (neither could take it: kept in
    memory and retried; the outcome is then ``"settle_pending"``), ``"failed"`` (a store
    without a spool failed: logged with its cost), ``"none"`` (nothing was reserved)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: Decimal amounts become strings, so no precision is lost."""
        data = asdict(self)
        for key in ("cost_usd", "reserved_usd", "overrun_usd"):
            data[key] = str(data[key])
        data["scopes"] = list(self.scopes)
        return data


Sink = Callable[[UsageRecord], object]


class JsonLinesSink:
    """Writes each record as one JSON line to a logger (``guardrail.usage`` by default)."""

    def __init__(self, logger: logging.Logger | str = "guardrail.usage") -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def __call__(self, record: UsageRecord) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(json.dumps(record.to_dict(), separators=(",", ":"), sort_keys=True))


def emit(sinks: Iterable[Sink], record: UsageRecord) -> None:
    for sink in sinks:
        try:
            sink(record)
        except Exception:  # a sink must never break the call it reports on
            _log.exception("guardrail usage sink %r failed", sink)
