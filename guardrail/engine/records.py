"""Usage records: what the engine tells the sinks about every call, refusals included."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Literal

from guardrail._clock import Clock
from guardrail.catalog.premiums import is_premium
from guardrail.catalog.pricing import STANDARD_TIERS, TokenUsage, tier_unpriced
from guardrail.engine.plan import Plan
from guardrail.errors import GuardrailError
from guardrail.observe.sinks import (
    CallEvent,
    JsonLinesSink,
    Outcome,
    Sink,
    UsageRecord,
    emit,
    refusal_of,
)
from guardrail.tenancy import TenantBinding

__all__ = ["CallLog", "Recorder"]


class CallLog:
    """What one call did and when: its start (monotonic), its provider, and timestamped
    events (reserve, retry, trim, settle) that a trace's span is built from."""

    __slots__ = (
        "events",
        "first_chunk_at",
        "keep_events",
        "operation",
        "provider",
        "response_model",
        "started",
    )

    def __init__(
        self,
        provider: str = "",
        started: float | None = None,
        operation: str = "chat",
        *,
        keep_events: bool = True,
    ) -> None:
        self.started = time.monotonic() if started is None else started
        self.provider = provider
        self.operation = operation
        # False when no sink wants the call's record (the events are only read into it).
        self.keep_events = keep_events
        self.events: list[CallEvent] = []
        self.first_chunk_at: float | None = None
        self.response_model: str | None = None

    def mark(self, name: str, **attributes: str | int | float | bool) -> None:
        if self.keep_events:
            self.events.append(CallEvent(name, time.monotonic() - self.started, attributes))


class Recorder:
    """Builds a :class:`UsageRecord` for each call and hands it to the sinks."""

    def __init__(
        self, sinks: Sequence[Sink], clock: Clock, *, error_messages: bool = False
    ) -> None:
        self.sinks = list(sinks)
        self.clock = clock
        self.error_messages = error_messages

    def error_text(self, exc: BaseException) -> str:
        """What a record says of an error: guardrail's own message (it holds no prompt
        text); for the provider's errors only their class, status, type and code, since
        their message may quote the prompt (unless ``Guard(error_messages=True)``)."""
        name = type(exc).__name__
        if isinstance(exc, GuardrailError) or self.error_messages:
            return f"{name}: {exc}"
        body = getattr(exc, "body", None)
        inner = body.get("error", body) if isinstance(body, dict) else None
        facts = [
            f"{label} {value}"
            for label, value in (
                ("status", getattr(exc, "status_code", None)),
                ("type", getattr(exc, "type", None) or _get(inner, "type")),
                ("code", getattr(exc, "code", None) or _get(inner, "code")),
            )
            if isinstance(value, (str, int)) and not isinstance(value, bool)
        ]
        return f"{name} ({', '.join(facts)})" if facts else name

    def record_refusal(
        self,
        binding: TenantBinding,
        model: str,
        exc: BaseException,
        provider: str = "",
        operation: str = "chat",
    ) -> None:
        emit(
            self.sinks,
            UsageRecord(
                tenant=binding.tenant,
                scopes=(binding.tenant, *binding.parents),
                model=model,
                requested_model=model,
                outcome="rejected",
                error=self.error_text(exc),
                timestamp=self.clock(),
                provider=provider,
                operation=operation,
                refusal=refusal_of(exc),
            ),
        )

    def records_wanted(self) -> bool:
        """Whether any sink would use a usage record (the logging check is a cached lookup,
        so turning the ``guardrail.usage`` logger on later takes effect at once)."""
        return not all(map(_sink_ignores_records, self.sinks))

    def record(
        self,
        plan: Plan,
        outcome: Outcome,
        started: CallLog | float,
        attempts: int,
        *,
        usage: TokenUsage | None = None,
        cost: Decimal = Decimal(0),
        request_id: str | None = None,
        source: Literal["provider", "local_count", "none"] = "none",
        error: BaseException | None = None,
        reservation_id: str | None = None,
        overrun_tokens: int = 0,
        overrun_usd: Decimal = Decimal(0),
        settlement: str = "none",
        day: str | None = None,
    ) -> None:
        # Decided once per call, when it started (its events were kept, or not, by it).
        wanted = started.keep_events if isinstance(started, CallLog) else self.records_wanted()
        if not wanted:
            return
        usage = usage or TokenUsage()
        extra: dict[str, Any] = {}
        if not plan.priced:
            extra["cost_unknown"] = True  # no price: cost_usd is 0 because it is unknown
        if plan.exact_prompt_tokens is not None:
            extra["exact_prompt_tokens"] = plan.exact_prompt_tokens
        if plan.reserved_prompt is not None:
            extra["reserved_prompt_tokens"] = plan.reserved_prompt
            extra["uncounted_parts"] = plan.uncounted_parts
        if plan.history_tokens:
            extra["history_tokens"] = plan.history_tokens
        if usage.cache_write_tokens:
            extra["cache_write_tokens"] = usage.cache_write_tokens
            extra["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
        tier = usage.service_tier
        if tier is not None:  # the tier it was billed at (as reported, else as reserved)
            if tier in STANDARD_TIERS:
                if tier != "default" or plan.service_tier is not None:  # not on every call
                    extra["service_tier"] = tier
            elif is_premium(tier):  # "inference_geo=us", "vertex=regional"
                extra["premium"] = tier
            else:
                extra["service_tier"] = tier
                if plan.priced and tier_unpriced(plan.model, tier):
                    extra["service_tier_unpriced"] = True  # charged at the tier's bound
        log = started if isinstance(started, CallLog) else CallLog(plan.model.provider, started)
        first = log.first_chunk_at
        emit(
            self.sinks,
            UsageRecord(
                tenant=plan.tenant,
                scopes=plan.scope_ids,
                model=plan.model.name,
                requested_model=plan.requested_model,
                outcome=outcome,
                input_tokens=usage.input_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                output_tokens=usage.output_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                cost_usd=cost,
                reserved_usd=plan.cost_usd,
                latency_seconds=time.monotonic() - log.started,
                attempts=attempts,
                trimmed_messages=plan.trim.dropped_count if plan.trim else 0,
                request_id=request_id,
                reservation_id=reservation_id,
                usage_source=source,
                fallback_reason=plan.fallback_reason,
                error=None if error is None else self.error_text(error),
                timestamp=self.clock(),
                overrun_tokens=overrun_tokens,
                overrun_usd=overrun_usd,
                settlement=settlement,
                extra=extra,
                provider=log.provider,
                operation=log.operation,
                context_window=plan.model.context_window,
                response_model=log.response_model,
                time_to_first_chunk_seconds=None if first is None else first - log.started,
                refusal=refusal_of(error),
                events=tuple(log.events),
                limits=plan.scopes,
                day=day,
            ),
        )


def _get(mapping: object, key: str) -> object:
    return mapping.get(key) if isinstance(mapping, dict) else None


def _sink_ignores_records(sink: Sink) -> bool:
    """True for the built-in JSON-lines sink while its logger drops INFO, the default: it
    would build the record only to throw it away."""
    return type(sink) is JsonLinesSink and not sink.logger.isEnabledFor(logging.INFO)
