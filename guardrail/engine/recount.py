"""After the first reservation, before sending: the input the estimate may not cover.

* :func:`count_exactly`: the provider's own count of the prompt (Anthropic's
  ``messages.count_tokens``, the Responses API's ``input_tokens``); the reservation grows to
  it when it is more. A request with parts guardrail cannot count is refused when the
  count fails.
* :func:`server_history`: the history the provider keeps for a request that continues it
  (``previous_response_id``, ``conversation``), reserved from what guardrail recorded, else
  the provider's count, never as zero; :func:`keep_state` records it after settlement.

The estimate is reserved first so that a budget refusal sends nothing at all.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from guardrail.catalog.pricing import TokenUsage
from guardrail.engine.adapter import ProviderAdapter
from guardrail.engine.holds import release, reserve
from guardrail.engine.operations import CountTokens, Op, Recall, Remember
from guardrail.engine.plan import Plan, input_budget, worst_case_cost
from guardrail.engine.records import CallLog
from guardrail.errors import BudgetExceeded, ContextWindowExceeded, InvalidRequestError
from guardrail.stores.base import Reservation

if TYPE_CHECKING:
    from guardrail.engine.core import Engine

__all__ = ["STATE_TTL_SECONDS", "count_exactly", "keep_state", "server_history"]

_log = logging.getLogger("guardrail")


def count_exactly(
    engine: Engine, plan: Plan, reservation: Reservation | None, started: CallLog
) -> Generator[Op, Any, tuple[Plan, Reservation | None]]:
    """Ask the provider to count the prompt, once the estimate's reservation is held.

    The reservation becomes ``max(estimate, exact)``: an estimate that was high stays
    held (and is refunded at settlement); one that was low is corrected before anything
    is sent, and the window is checked again. A failed count keeps the estimate, unless
    the request holds parts guardrail cannot count (``plan.count_exactly``): then nothing
    bounds them, and the call is refused. The estimate is reserved first so that a budget
    refusal sends nothing at all.
    """
    exact = yield from _provider_count(engine, plan, reservation, started)
    if exact is None:
        if plan.count_exactly:
            yield from release(reservation)
            refused = InvalidRequestError(
                "the request holds input guardrail cannot count locally (opaque items such "
                "as encrypted reasoning or item references, or built-in tools), and the "
                "provider's token count failed, so nothing bounds its cost; nothing was sent"
            )
            engine.recorder.record(plan, "rejected", started, 0, error=refused)
            raise refused
        return plan, reservation
    plan = replace(plan, exact_prompt_tokens=exact)
    how = "by the provider's own count"
    # The count reads the parts the plan could only bound (Anthropic's documents by file_id
    # or URL): it replaces their bound, the passes the provider may add staying held.
    rebound = plan.exact_replaces_bound and plan.reserved_prompt is not None
    return (yield from _grow(engine, plan, reservation, started, exact, how, rebound=rebound))


def server_history(
    engine: Engine, plan: Plan, reservation: Reservation | None, started: CallLog
) -> Generator[Op, Any, tuple[Plan, Reservation | None]]:
    """Reserve the history the provider keeps for the request (``previous_response_id``,
    ``conversation``), never as zero: for a stored response, what guardrail recorded when
    it settled it (its input plus its output is exactly the context that continues it);
    else the provider's own count of the whole input; else, for a conversation, the last
    record of it. With none of these the call is refused."""
    state = plan.server_state
    assert state is not None
    recalled: int | None = None
    if state.kind == "response":
        recalled = yield from _recall(plan, state.key)
        if recalled is not None:
            return (yield from _with_history(engine, plan, reservation, started, recalled))
    exact = yield from _provider_count(engine, plan, reservation, started)
    if exact is not None:
        grown = replace(
            plan, exact_prompt_tokens=exact, history_tokens=max(0, exact - plan.prompt_tokens)
        )
        return (
            yield from _grow(
                engine, grown, reservation, started, exact, "by the provider's own count"
            )
        )
    if state.kind == "conversation":
        recalled = yield from _recall(plan, state.key)
        if recalled is not None:
            return (yield from _with_history(engine, plan, reservation, started, recalled))
    yield from release(reservation)
    refused = InvalidRequestError(
        f"the request continues {state.kind} {state.id!r}, whose history the provider keeps: "
        "guardrail has no record of it and the provider's token count failed, so its cost "
        "cannot be bounded; nothing was sent"
    )
    engine.recorder.record(plan, "rejected", started, 0, error=refused)
    raise refused


def _with_history(
    engine: Engine, plan: Plan, reservation: Reservation | None, started: CallLog, history: int
) -> Generator[Op, Any, tuple[Plan, Reservation | None]]:
    grown = replace(plan, history_tokens=history)
    how = "with the history guardrail recorded for it"
    return (
        yield from _grow(engine, grown, reservation, started, plan.prompt_tokens + history, how)
    )


def _recall(plan: Plan, key: str) -> Generator[Op, Any, int | None]:
    try:
        found = yield Recall(plan.tenant, key)
    except Exception as exc:  # the store failed: the other sources remain
        _log.warning("guardrail: could not read %s from the store (%r)", key, exc)
        return None
    return found if isinstance(found, int) and not isinstance(found, bool) and found >= 0 else None


def _provider_count(
    engine: Engine, plan: Plan, reservation: Reservation | None, started: CallLog
) -> Generator[Op, Any, int | None]:
    """The provider's count of the prompt, or None when it failed."""
    try:
        exact = yield CountTokens(plan.kwargs, reservation, plan.policy.reservation_ttl_seconds)
    except Exception as exc:
        _log.warning(
            "guardrail: the provider's token count failed (%r); local estimate: %d prompt tokens",
            exc,
            plan.prompt_tokens,
        )
        return None
    except BaseException as exc:  # cancelled while counting: nothing was sent
        yield from release(reservation)
        engine.recorder.record(plan, "cancelled", started, 0, error=exc)
        raise
    if isinstance(exact, bool) or not isinstance(exact, int) or exact < 0:
        _log.warning("guardrail: ignoring a token count of %r", exact)
        return None
    return exact


def _grow(
    engine: Engine,
    plan: Plan,
    reservation: Reservation | None,
    started: CallLog,
    prompt: int,
    how: str,
    *,
    rebound: bool = False,
) -> Generator[Op, Any, tuple[Plan, Reservation | None]]:
    """The plan and reservation for ``prompt`` tokens, if that is more than was reserved:
    the window checked again, the old reservation swapped for a bigger one. ``rebound``:
    ``prompt`` covers the parts the plan held a bound for, which it replaces (the
    reservation may shrink); the estimate stays held where it is higher."""
    if prompt <= plan.prompt_tokens and not (rebound and plan.uncounted_parts):
        return plan, reservation
    prompt = max(prompt, plan.prompt_tokens)
    budget, limit_name = input_budget(
        plan.model, plan.policy, plan.reserved_output, plan.max_prompt_tokens
    )
    if rebound:
        plan = replace(plan, uncounted_parts=0, reserved_prompt=None)
    elif plan.reserved_prompt is not None:
        # The parts the plan holds a bound for stay held, the growth on top of them (a
        # prompt is never billed past the window less the output bound, as "window" holds).
        bounded = plan.reserved_prompt - plan.server_input + prompt - plan.prompt_tokens
        held = min(bounded, max(budget, prompt)) + plan.server_input
        plan = replace(plan, reserved_prompt=held)
    if plan.server_input:
        plan = replace(plan, reserved_prompt=max(plan.prompt_held, prompt + plan.server_input))
    if prompt > budget:
        yield from release(reservation)
        refused = ContextWindowExceeded(
            model=plan.model.name,
            prompt_tokens=prompt,
            reserved_output_tokens=plan.reserved_output,
            limit=budget + (plan.reserved_output if limit_name.startswith("the c") else 0),
            limit_name=limit_name,
            tenant=plan.tenant,
            detail=f"{how} (the local estimate was {plan.prompt_tokens}); nothing was sent",
        )
        engine.recorder.record(plan, "rejected", started, 0, error=refused)
        raise refused
    bigger = replace(
        plan,
        prompt_tokens=prompt,
        cost_usd=worst_case_cost(
            plan.model,
            max(plan.prompt_held, prompt + plan.server_input),
            plan.reserved_output_total,
            plan.prompt_cache_write,
            plan.reserved_searches,
            plan.reserved_file_searches,
            plan.reserved_containers,
            tier=plan.service_tier,
        )
        if plan.priced
        else Decimal(0),  # an unpriced model let through: tokens only
    )
    yield from release(reservation)
    try:
        return bigger, (yield from reserve(engine, bigger.reservation_request()))
    except BudgetExceeded as exc:
        engine.recorder.record(bigger, "rejected", started, 0, error=exc)
        raise


STATE_TTL_SECONDS = 30 * 86_400
"""How long the context a stored response left is kept: OpenAI keeps stored responses for
30 days."""


def keep_state(
    adapter: ProviderAdapter, plan: Plan, response: Any, usage: TokenUsage
) -> Generator[Op, Any, None]:
    """Remember what a response left in the provider's context (its input, history
    included, plus its output), under each key of server-side state it can be continued
    by, so the next call is reserved with it."""
    state_keys = getattr(adapter, "state_keys", None)
    if state_keys is None:
        return
    try:
        keys = state_keys(plan.kwargs, response)
    except Exception:  # a response we cannot read an id from: nothing to remember
        return
    context = usage.input_tokens + usage.output_tokens
    for key in keys:
        try:
            yield Remember(plan.tenant, key, context, STATE_TTL_SECONDS)
        except Exception as exc:  # the next call falls back to the provider's count
            _log.warning("guardrail: could not record %s in the store (%r)", key, exc)
