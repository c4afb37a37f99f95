"""One call's flow: reserve -> send (with retries) -> settle, as a generator.

``run`` yields each piece of I/O as an operation (:mod:`guardrail.engine.operations`) and
receives its result, the way httpx's ``Auth.auth_flow`` works; the sync and async drivers
perform them (:mod:`guardrail.engine.drivers`), so no decision is written twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Mapping
from dataclasses import replace
from decimal import Decimal
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal

from tenacity import DoAttempt, DoSleep, RetryCallState

from guardrail.catalog.models import FALLBACK_ENCODING
from guardrail.catalog.pricing import COUNT_FIELDS, STANDARD_TIERS, TokenUsage, checked_usage_cost
from guardrail.counting.messages import counter_for
from guardrail.counting.text import estimate_margin
from guardrail.engine import recount
from guardrail.engine.adapter import PartialUsage, ProviderAdapter
from guardrail.engine.holds import release, reserve
from guardrail.engine.operations import (
    Op,
    OpenStream,
    Send,
    Settle,
    Sleep,
    StreamEnd,
)
from guardrail.engine.plan import Plan
from guardrail.engine.records import CallLog
from guardrail.engine.retry import is_retryable, retrying_for
from guardrail.engine.stream_tally import StreamTally
from guardrail.engine.unpriced import billed_tier_note, check_billed_tier
from guardrail.errors import (
    BudgetExceeded,
    GuardrailError,
    LoopDetected,
    StoreUnavailable,
)
from guardrail.observe.sinks import Outcome
from guardrail.policy import Policy
from guardrail.stores.base import Reservation, Settlement, usd_to_nanos

if TYPE_CHECKING:
    from guardrail.engine.core import Engine

__all__ = ["run"]

_log = logging.getLogger("guardrail")
_ZERO = Decimal(0)


def run(
    engine: Engine, adapter: ProviderAdapter, kwargs: Mapping[str, Any], plan: Plan
) -> Generator[Op, Any, Any]:
    """Reserve, send with retries, settle. Yields operations; returns the response."""
    started = CallLog(
        getattr(adapter, "provider", ""),
        operation=getattr(adapter, "operation", "chat"),
        keep_events=engine.recorder.records_wanted(),
    )
    if plan.trim is not None:
        started.mark("guardrail.trim", dropped_messages=plan.trim.dropped_count)
    reservation: Reservation | None = None
    try:
        plan, reservation = yield from _reserve_first(engine, adapter, kwargs, plan)
    except (BudgetExceeded, LoopDetected) as exc:
        engine.recorder.record(plan, "rejected", started, attempts=0, error=exc)
        raise
    except StoreUnavailable as exc:
        engine.recorder.record(plan, "error", started, attempts=0, error=exc)
        raise
    _mark_reserve(started, plan, 1)
    if plan.server_state is not None:
        plan, reservation = yield from recount.server_history(engine, plan, reservation, started)
    elif plan.count_exactly or getattr(adapter, "exact_count", False) is True:
        plan, reservation = yield from recount.count_exactly(engine, plan, reservation, started)
    # tenacity's first answer is always "attempt" (no ``before`` hook), so its state is
    # built only once an attempt has failed, with its clock started at the first one.
    state: RetryCallState | None = None
    first_attempt_at = time.monotonic()
    attempts = 0
    while True:
        if state is None:
            action: Any = DoAttempt()
        else:
            try:  # tenacity decides: attempt, sleep, or give up (re-raising the SDK's error)
                action = state.retry_object.iter(state)
            except Exception as exc:
                engine.recorder.record(plan, "error", started, attempts, error=exc)
                raise
            if isinstance(action, DoSleep):
                last = _last_error(state)
                state.prepare_for_next_attempt()
                started.mark(
                    "guardrail.retry",
                    attempt=attempts + 1,
                    sleep_seconds=float(action),
                    error_type=type(last).__name__,
                )
                yield Sleep(float(action))
                try:  # every retry re-checks the budget
                    reservation = yield from reserve(engine, plan.reservation_request())
                except (BudgetExceeded, StoreUnavailable, LoopDetected) as exc:
                    last.add_note(f"guardrail stopped retrying: {exc}")
                    engine.recorder.record(plan, "error", started, attempts, error=last)
                    raise last from exc
                _mark_reserve(started, plan, attempts + 1)
                continue
        if not isinstance(action, DoAttempt):  # pragma: no cover - reraise=True raises
            return action
        attempts += 1
        try:
            response = yield Send(plan.kwargs, reservation, plan.policy.reservation_ttl_seconds)
        except BaseException as exc:
            billed = _billed_usage(adapter, plan, exc)
            if billed is None:
                # Failed without usage (an HTTP error, or cancelled by the caller): the
                # reservation goes back whole.
                yield from release(reservation, failed=isinstance(exc, Exception))
            elif not is_retryable(exc):
                # The provider answered and billed (a completion cut at its length or
                # content filter): settle it as the call's outcome, then re-raise.
                yield from _settle(
                    engine,
                    plan,
                    reservation,
                    billed,
                    started,
                    attempts,
                    "error",
                    adapter.request_id(getattr(exc, "completion", None)),
                    error=exc,
                )
                raise
            else:
                # A timeout or a dropped connection after the request left: the provider
                # probably processed (and bills) the prompt. Settle that, never $0.
                yield from _settle(
                    engine,
                    plan,
                    reservation,
                    billed,
                    started,
                    attempts,
                    "error",
                    None,
                    source="local_count",
                    error=exc,
                )
            reservation = None
            if not isinstance(exc, Exception):  # KeyboardInterrupt, CancelledError
                engine.recorder.record(plan, "cancelled", started, attempts, error=exc)
                raise
            if state is None:
                state = _retry_state(plan.policy, first_attempt_at)
            state.set_exception((type(exc), exc, exc.__traceback__))
            continue
        break
    if not plan.stream:
        try:
            usage = adapter.usage(response)
        except Exception as exc:  # a raw response whose parse fails (cut at its length)
            usage = _billed_usage(adapter, plan, exc)
        model = getattr(response, "model", None)
        started.response_model = model if isinstance(model, str) else None
        settled = yield from _settle(
            engine, plan, reservation, usage, started, attempts, "ok", adapter.request_id(response)
        )
        if usage is not None:
            yield from recount.keep_state(adapter, plan, response, settled)
        return response
    tally = _stream_tally(plan)
    # Not held in this frame while the caller has the stream: a finaliser holds the flow,
    # and a raw response held here would keep itself (and its stream) from being dropped.
    handed = [response]
    del response
    # While the caller has the stream its hold is kept (renewed) by the driver's keeper;
    # settled by id, the reservation here settles the renewed hold as well.
    end: StreamEnd = yield OpenStream(handed.pop(), tally)
    started.first_chunk_at, started.response_model = tally.first_chunk_at, tally.response_model
    source: Literal["provider", "local_count"] = "provider"
    if tally.usage is not None:
        usage = tally.usage
    else:  # ended early: the provider's prompt-side usage if it came, our output count
        start = tally.input_usage or TokenUsage(input_tokens=plan.prompt_held)
        output = max(start.output_tokens, tally.output_tokens)
        if plan.hidden_output or tally.unread:
            # Hidden reasoning may have used all of the reserved output; so may output
            # that went past the guard unread.
            output = max(output, plan.reserved_output_total)
        tier = start.service_tier or tally.service_tier
        usage = replace(
            start, output_tokens=output, service_tier=tier, **_shown(plan, tally, start)
        )
        source = "local_count"
    settled = yield from _settle(
        engine,
        plan,
        reservation,
        usage,
        started,
        attempts,
        end.outcome,
        tally.request_id,
        source=source,
        error=end.error,
        counted_output=tally.output_tokens,
    )
    if tally.final is not None and tally.usage is not None:
        yield from recount.keep_state(adapter, plan, tally.final, settled)
    return None


def _reserve_first(
    engine: Engine, adapter: ProviderAdapter, kwargs: Mapping[str, Any], plan: Plan
) -> Generator[Op, Any, tuple[Plan, Reservation | None]]:
    try:
        return plan, (yield from reserve(engine, plan.reservation_request()))
    except BudgetExceeded as refused:
        for cheaper in engine.planner.cheaper_plans(adapter, kwargs, plan):
            try:
                return cheaper, (yield from reserve(engine, cheaper.reservation_request()))
            except BudgetExceeded:
                continue
        raise refused from None


def _settle(
    engine: Engine,
    plan: Plan,
    reservation: Reservation | None,
    usage: TokenUsage | None,
    started: CallLog,
    attempts: int,
    outcome: Outcome,
    request_id: str | None,
    *,
    source: Literal["provider", "local_count", "none"] = "provider",
    error: BaseException | None = None,
    counted_output: int | None = None,
) -> Generator[Op, Any, TokenUsage]:
    """Price ``usage``, swap the reservation for it, record the call; returns the usage
    settled. ``counted_output`` is a stream's local count of its output."""
    if usage is None or isinstance(usage, PartialUsage):  # fill in what was not reported
        usage, source = _filled(plan, usage, counted_output), "local_count"
    usage = _sane(usage)
    tier = usage.service_tier
    if tier is None and plan.service_tier is not None:  # not reported: as reserved
        usage = replace(usage, service_tier=plan.service_tier)
    elif tier is not None and tier not in STANDARD_TIERS and plan.priced:
        check_billed_tier(plan.model, tier, plan.tenant)  # no prices for it: logged
    try:
        cost = checked_usage_cost(plan.model, usage) if plan.priced else _ZERO
    except GuardrailError as exc:
        # Usage we cannot price must not lose a paid call: charge the worst case.
        _log.warning("guardrail: cannot price usage %r (%s); charging the reservation", usage, exc)
        cost = plan.cost_usd
    overrun_tokens = max(0, usage.input_tokens - plan.prompt_held) + max(
        0, usage.output_tokens - plan.reserved_output_total
    )
    overrun_usd = cost - plan.cost_usd if cost > plan.cost_usd else _ZERO
    if overrun_tokens or overrun_usd:
        _log.warning(
            "guardrail: tenant %s was billed past its reservation on %s: %d tokens and "
            "%s USD over (input %d, output %d; reserved %d prompt, %d output tokens, %s USD); "
            "charged in full%s",
            plan.tenant,
            plan.model.name,
            overrun_tokens,
            overrun_usd,
            usage.input_tokens,
            usage.output_tokens,
            plan.prompt_held,
            plan.reserved_output_total,
            plan.cost_usd,
            billed_tier_note(usage.service_tier, plan.service_tier),
        )
    settled_to = "none"
    if reservation is not None:
        settlement = Settlement(
            cost_nanos=usd_to_nanos(cost),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            model=plan.model.name,
            failed=outcome in ("error", "stream_error"),
        )
        try:
            written = yield Settle(reservation, settlement)
        except Exception as exc:
            written = "failed"
            _log.error(
                "guardrail: could not settle reservation %s of tenant %s (%s USD, %d input "
                "and %d output tokens): %r",
                reservation.id,
                plan.tenant,
                cost,
                usage.input_tokens,
                usage.output_tokens,
                exc,
            )
        if written in ("pending", "failed"):
            outcome = "settle_pending"
        settled_to = written if isinstance(written, str) else "settled"
        if started.keep_events:
            started.mark(
                "guardrail.settle",
                cost_usd=str(cost),
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
            )
    engine.recorder.record(
        plan,
        outcome,
        started,
        attempts,
        usage=usage,
        cost=cost,
        request_id=request_id,
        source=source,
        error=error,
        reservation_id=reservation.id if reservation else None,
        overrun_tokens=overrun_tokens,
        overrun_usd=overrun_usd,
        settlement=settled_to,
        day=reservation.day if reservation else None,
    )
    return usage


def _mark_reserve(log: CallLog, plan: Plan, attempt: int) -> None:
    if log.keep_events:
        log.mark("guardrail.reserve", attempt=attempt, reserved_usd=str(plan.cost_usd))


_USAGE_COUNTS = attrgetter(*COUNT_FIELDS)


def _sane(usage: TokenUsage) -> TokenUsage:
    """Provider usage with no negative counts and no more cached than input tokens (the
    usage itself when it is so already: a frozen TokenUsage of plain non-negative ints)."""
    counts = _USAGE_COUNTS(usage)
    if (
        type(usage) is TokenUsage
        and set(map(type, counts)) == {int}
        and min(counts) >= 0
        and usage.cached_input_tokens <= usage.input_tokens
        and usage.reasoning_tokens <= usage.output_tokens
    ):
        return usage
    fields: dict[str, Any] = {k: max(0, int(getattr(usage, k))) for k in COUNT_FIELDS}
    fields["cached_input_tokens"] = min(fields["cached_input_tokens"], fields["input_tokens"])
    fields["reasoning_tokens"] = min(fields["reasoning_tokens"], fields["output_tokens"])
    tier = usage.service_tier
    return TokenUsage(**fields, service_tier=tier if type(tier) is str else None)


def _billed_usage(adapter: ProviderAdapter, plan: Plan, exc: BaseException) -> TokenUsage | None:
    """What a failed attempt costs: the usage an exception carries (the OpenAI SDK's
    ``LengthFinishReasonError`` has the completion), the counted prompt after a timeout or a
    dropped connection (the request left; the provider bills what it processed), or None
    for an HTTP error answer and for a cancellation (released whole)."""
    completion = getattr(exc, "completion", None)
    if completion is not None:
        try:
            carried = adapter.usage(completion)
        except Exception:
            carried = None
        # The provider answered 2xx and billed it: usage it did not report (or that cannot
        # be read) is filled in as for a 200 without usage, never taken for a free call.
        return carried if carried is not None else _UNREPORTED
    if (
        isinstance(exc, Exception)
        and is_retryable(exc)
        and getattr(exc, "status_code", None) is None
    ):
        return _timed_out(plan)
    return None


_UNREPORTED = PartialUsage(input_unread=True, output_unread=True)
"""A billed answer that reported no usage: both sides filled in by ``_settle``."""


def _timed_out(plan: Plan) -> TokenUsage:
    """What an attempt that timed out (or lost its connection) after the request left is
    charged: the prompt held, and for a model with hidden reasoning the whole reserved
    output (the provider may have billed all of it); no output was received."""
    output = plan.reserved_output_total if plan.hidden_output else 0
    return TokenUsage(input_tokens=plan.prompt_held, output_tokens=output)


def _filled(plan: Plan, usage: PartialUsage | None, counted_output: int | None) -> TokenUsage:
    """The usage a call is charged when the provider answered without a readable one: the
    count it lacks is never read as 0. No usage at all (a 200 without it) is the prompt
    held and the whole reserved output, a stated upper bound (the output was returned but
    not counted); a :class:`PartialUsage` keeps its readable fields, with the prompt held
    for an unreadable input (at least its cache reads and writes) and, for an unreadable
    output, a stream's local count of it or else the whole reserved output (always the
    whole reserved output for hidden reasoning, which is billed but never shown)."""
    if usage is None:
        return TokenUsage(input_tokens=plan.prompt_held, output_tokens=plan.reserved_output_total)
    fields = {k: v for k, v in vars(usage).items() if k not in ("input_unread", "output_unread")}
    if usage.input_unread:
        held = usage.cached_input_tokens + usage.cache_write_tokens
        fields["input_tokens"] = max(plan.prompt_held, held)
    if usage.output_unread:
        if counted_output is None or plan.hidden_output:
            fields["output_tokens"] = plan.reserved_output_total
        else:
            fields["output_tokens"] = max(usage.output_tokens, counted_output)
    return TokenUsage(**fields)


def _shown(plan: Plan, tally: StreamTally, start: TokenUsage) -> dict[str, int]:
    """What a stream that ended before its usage showed of the provider's server-side work:
    its fee-bearing tool calls, and the input of the further passes its server tool uses
    began (each at the bound the plan held for one; the stream's start reports only the
    first pass)."""
    input_tokens = start.input_tokens
    if tally.server_passes and plan.server_passes:
        each = plan.server_input // plan.server_passes
        passes = min(tally.server_passes, plan.server_passes)
        input_tokens = min(max(input_tokens, plan.prompt_held), input_tokens + passes * each)
    return {
        "input_tokens": input_tokens,
        "web_searches": max(start.web_searches, tally.web_searches),
        "file_searches": max(start.file_searches, tally.file_searches),
        "containers": max(start.containers, len(tally.containers)),
    }


def _stream_tally(plan: Plan) -> StreamTally:
    info = plan.model
    if info.exact_tokenizer:
        return StreamTally(counter_for(info), plan.reserved_output_total, plan.hide_usage_chunk)
    # No local tokenizer (Claude): count with the stand-in encoding, apply the margin once.
    return StreamTally(
        counter_for(replace(info, encoding=FALLBACK_ENCODING)),
        plan.reserved_output_total,
        plan.hide_usage_chunk,
        margin=estimate_margin(info) or 1.0,
    )


def _retry_state(policy: Policy, first_attempt_at: float) -> RetryCallState:
    """tenacity's state for a call whose first attempt started at ``first_attempt_at``."""
    retrying = retrying_for(policy.max_attempts, policy.max_retry_seconds)
    retrying.begin()
    state = RetryCallState(retrying, fn=None, args=(), kwargs={})
    state.start_time = first_attempt_at  # as if built right before the first attempt
    return state


def _last_error(state: RetryCallState) -> BaseException:
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    return exc if exc is not None else RuntimeError("retry stopped without an error")
