"""Usage records and where they go.

Every guarded call, whatever its outcome, produces one :class:`UsageRecord`. The store
keeps the aggregates; sinks get each record: the JSON-lines logger ``guardrail.usage``
(no prompt content, ever, unless you put it there), and any callables you pass.
A failing sink is logged and skipped: it never breaks the call or the other sinks.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from guardrail.errors import BudgetExceeded, ContextWindowExceeded, LoopDetected
from guardrail.stores.base import ScopeLimits

__all__ = [
    "CallEvent",
    "JsonLinesSink",
    "Outcome",
    "Refusal",
    "Sink",
    "UsageRecord",
    "emit",
    "refusal_of",
]

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
class CallEvent:
    """Something that happened during a call (reserve, retry, trim, settle), ``offset``
    seconds after the call started: what a trace's span events are built from."""

    name: str
    offset: float
    attributes: Mapping[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Refusal:
    """Why a call was refused (or stopped), with the limit and its figures.

    ``kind``: ``"budget"`` (:class:`~guardrail.BudgetExceeded`), ``"context_window"``
    (:class:`~guardrail.ContextWindowExceeded`) or ``"loop"``
    (:class:`~guardrail.LoopDetected`). ``requested``, ``remaining`` and ``cap`` are in
    ``unit`` (USD as ``Decimal``, else ints); ``remaining`` is None where it means nothing.
    """

    kind: Literal["budget", "context_window", "loop"]
    limit: str
    scope: str | None
    requested: Decimal | int
    cap: Decimal | int
    unit: str
    remaining: Decimal | int | None = None
    retry_after: float | None = None
    resets_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "limit": self.limit,
            "scope": self.scope,
            "requested": _json_number(self.requested),
            "cap": _json_number(self.cap),
            "unit": self.unit,
            "remaining": None if self.remaining is None else _json_number(self.remaining),
            "retry_after": self.retry_after,
            "resets_at": None if self.resets_at is None else self.resets_at.isoformat(),
        }


def _json_number(value: Decimal | int) -> str | int:
    return str(value) if isinstance(value, Decimal) else value


def refusal_of(error: BaseException | None) -> Refusal | None:
    """The :class:`Refusal` an error stands for, or None for any other error."""
    if isinstance(error, BudgetExceeded):
        unit = (
            "USD"
            if isinstance(error.cap, Decimal)
            else ("calls" if error.limit == "max_in_flight" else "tokens")
        )
        return Refusal(
            kind="budget",
            limit=error.limit,
            scope=error.tenant,
            requested=error.requested,
            cap=error.cap,
            unit=unit,
            remaining=error.remaining,
            retry_after=error.retry_after,
            resets_at=error.resets_at,
        )
    if isinstance(error, ContextWindowExceeded):
        return Refusal(
            kind="context_window",
            limit=error.limit_name,
            scope=error.tenant,
            requested=error.prompt_tokens + error.reserved_output_tokens,
            cap=error.limit,
            unit="tokens",
        )
    if isinstance(error, LoopDetected):
        return Refusal(
            kind="loop",
            limit="loop_limit",
            scope=error.tenant,
            requested=error.repeats,
            cap=error.limit,
            unit="requests",
            retry_after=error.window_seconds,
        )
    return None


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
    # -- for metrics, alerts and traces (guardrail.observe)
    provider: str = ""
    """The provider the call went to (``"openai"``, ``"anthropic"``)."""
    operation: str = "chat"
    """What kind of call it was, in the GenAI conventions' words (``chat``, ``embeddings``)."""
    context_window: int = 0
    """The model's context window, in tokens (0 when the call never got a plan)."""
    response_model: str | None = None
    """The model the provider says answered, when it says so."""
    time_to_first_chunk_seconds: float | None = None
    """For a stream: from the call's start to its first chunk."""
    refusal: Refusal | None = None
    """For a refused call: the limit and its figures."""
    events: tuple[CallEvent, ...] = field(default=(), repr=False, compare=False)
    """What happened during the call, and when (not written to the JSON-lines log)."""
    limits: tuple[ScopeLimits, ...] = field(default=(), repr=False, compare=False)
    """The limits of every scope charged (not written to the JSON-lines log)."""
    day: str | None = None
    """The store's day the call was charged to (``YYYY-MM-DD`` in the store's time zone;
    its reservation's day, which a call that ends after midnight keeps), None when nothing
    was settled."""
    record_id: str = field(default_factory=lambda: os.urandom(12).hex(), compare=False)
    """Unique per record: what makes writing it to the ledger idempotent."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: Decimal amounts become strings, so no precision is lost. The call's
        events and limits are left out."""
        data = {name: getattr(self, name) for name in _LOGGED}
        for key in ("cost_usd", "reserved_usd", "overrun_usd"):
            data[key] = str(data[key])
        data["scopes"] = list(self.scopes)
        data["extra"] = dict(self.extra)
        data["refusal"] = None if self.refusal is None else self.refusal.to_dict()
        return data


_LOGGED = tuple(f.name for f in fields(UsageRecord) if f.name not in ("events", "limits"))


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
