"""The sans-I/O core of a guarded call: every decision, no I/O.

``Engine.prepare`` turns a request into a :class:`Plan` (tenant, policy, counted and
fitted prompt, reserved output, worst-case cost). ``Engine.flow`` is a generator that
walks one call through reserve -> send (with retries) -> settle, *yielding* each piece of
I/O as an operation (:class:`Reserve`, :class:`Send`, :class:`Sleep`, :class:`Settle`,
:class:`Release`, :class:`OpenStream`, :class:`CountTokens`) and receiving its result, the
way httpx's
``Auth.auth_flow`` works. The sync and async clients are short drivers that perform those
operations (see ``_drivers``), so no decision is written twice.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal, Protocol, runtime_checkable

from tenacity import DoAttempt, DoSleep, RetryCallState

from guardrail._clock import Clock, system_clock
from guardrail.catalog.models import FALLBACK_ENCODING, ModelInfo, model_info
from guardrail.catalog.pricing import TokenUsage, estimate_cost, usage_cost
from guardrail.counting.messages import CLAUDE_SAFETY_MARGIN, TokenCounter, counter_for
from guardrail.engine.retry import is_retryable, retrying_for
from guardrail.errors import (
    BudgetExceeded,
    ContextWindowExceeded,
    GuardrailError,
    InvalidRequestError,
    LoopDetected,
    StoreUnavailable,
)
from guardrail.observe.sinks import JsonLinesSink, Outcome, Sink, UsageRecord, emit
from guardrail.policy import Policy, PolicySource
from guardrail.prompt.trimming import Summarizer, TrimResult, field_of, fit_messages
from guardrail.stores.base import (
    Reservation,
    ReservationRequest,
    ScopeLimits,
    Settlement,
    Windows,
    usd_to_nanos,
)
from guardrail.tenancy import GLOBAL_SCOPE, TenantBinding, current_binding, tenant_from_hint

__all__ = ["Engine", "Plan"]

_log = logging.getLogger("guardrail")
StoreErrorMode = Literal["fail_closed", "fail_open"]


# -- operations the flow yields to its driver ------------------------------------------


@dataclass(frozen=True)
class Reserve:
    request: ReservationRequest


@dataclass(frozen=True)
class Release:
    reservation: Reservation


@dataclass(frozen=True)
class Settle:
    reservation: Reservation
    settlement: Settlement


@dataclass(frozen=True)
class Send:
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class OpenStream:
    """Hand the caller a guarded stream; the flow resumes with a :class:`StreamEnd`."""

    stream: Any
    tally: StreamTally


@dataclass(frozen=True)
class StreamEnd:
    outcome: Outcome
    error: BaseException | None = None


@dataclass(frozen=True)
class CountTokens:
    """Ask the provider for its own count of the prompt about to be sent (Anthropic's
    ``messages.count_tokens``); the flow resumes with an int, or with the error."""

    kwargs: dict[str, Any]


Op = Reserve | Release | Settle | Send | Sleep | OpenStream | CountTokens


# -- what differs between providers --------------------------------------------------


@dataclass(frozen=True)
class RequestView:
    model: str
    messages: list[Mapping[str, Any]]
    tools: list[Mapping[str, Any]] | None
    requested_output: int | None
    stream: bool
    tenant_hint: str | None
    choices: int = 1
    """``n``: every choice may produce the whole output, so the worst case multiplies."""
    output_required: bool = False
    """The API requires an output bound (Anthropic's ``max_tokens``): when the caller sets
    none, the reserved output is sent as the bound."""
    default_output_cap: int | None = None
    """When the caller sets no output bound, choose at most this many tokens (the
    Anthropic SDK refuses a non-streaming ``max_tokens`` that implies over 10 minutes)."""
    reserved_searches: int = 0
    """Server-side web searches the request allows (billed per search): reserved too."""
    prompt_cache_write: Literal["5m", "1h"] | None = None
    """The request asks the provider to write its prompt cache (Anthropic ``cache_control``):
    those tokens are billed at the cache-write price, so the worst case prices the whole
    prompt at it (``"1h"`` writes cost more than ``"5m"``)."""


class ProviderAdapter(Protocol):
    """Reads and rewrites one provider's requests and responses. Pure functions only.

    Optional: an adapter with ``exact_count = True`` has the flow ask the provider for its
    own count of the prompt (a :class:`CountTokens` operation) before sending; one with a
    ``fit`` method (:class:`FitsMessages`) trims its provider's conversations itself.
    """

    provider: str

    def read(self, kwargs: Mapping[str, Any]) -> RequestView: ...

    def count(self, counter: TokenCounter, view: RequestView, messages: Sequence[Any]) -> int: ...

    def rewrite(
        self,
        kwargs: Mapping[str, Any],
        *,
        model: str,
        messages: list[Mapping[str, Any]],
        max_output: int | None,
    ) -> tuple[dict[str, Any], bool]:
        """New kwargs, and whether the caller will not expect a usage-only stream chunk."""
        ...

    def usage(self, response: Any) -> TokenUsage | None: ...

    def request_id(self, response: Any) -> str | None: ...

    def observe_chunk(self, chunk: Any, tally: StreamTally) -> bool:
        """Record a stream chunk's text and usage; False hides it from the caller."""
        ...


@runtime_checkable
class FitsMessages(Protocol):
    """An adapter whose provider shapes a conversation differently from Chat Completions
    (Anthropic: the system prompt outside ``messages``, tool results inside user messages)
    trims it itself; the others get :func:`guardrail.prompt.trimming.fit_messages`."""

    def fit(
        self,
        view: RequestView,
        messages: Sequence[Any],
        counter: TokenCounter,
        max_tokens: int,
        *,
        max_history_messages: int | None,
        summarizer: Summarizer | None,
        model_name: str,
    ) -> TrimResult: ...


# -- the plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    binding: TenantBinding
    scopes: tuple[ScopeLimits, ...]
    policy: Policy
    model: ModelInfo
    requested_model: str
    kwargs: dict[str, Any]
    prompt_tokens: int
    reserved_output: int
    cost_usd: Decimal
    trim: TrimResult | None
    stream: bool
    hide_usage_chunk: bool
    fingerprint: tuple[Any, ...]
    fallback_reason: str | None = None
    choices: int = 1
    exact_prompt_tokens: int | None = None
    prompt_cache_write: Literal["5m", "1h"] | None = None
    reserved_searches: int = 0
    """The provider's own count of the prompt, when it was asked (``CountTokens``)."""

    @property
    def reserved_output_total(self) -> int:
        """Output reserved across all ``n`` choices."""
        return self.reserved_output * self.choices

    @property
    def tenant(self) -> str:
        return self.binding.tenant

    @property
    def scope_ids(self) -> tuple[str, ...]:
        return tuple(s.scope for s in self.scopes)

    def reservation_request(self) -> ReservationRequest:
        return ReservationRequest(
            # 128 bits from the OS's CSPRNG, like uuid4() without the UUID object.
            id=os.urandom(16).hex(),
            scopes=self.scopes,
            cost_nanos=usd_to_nanos(self.cost_usd),
            tokens=self.prompt_tokens + self.reserved_output_total,
            ttl_seconds=self.policy.reservation_ttl_seconds,
            model=self.model.name,
        )


@dataclass
class StreamTally:
    """What a stream has produced so far; settles the call if the provider's usage never
    arrives (early close, dropped connection)."""

    counter: TokenCounter
    reserved_output: int
    hide_usage_chunk: bool
    margin: float = 1.0
    """For a model without a local tokenizer, ``counter`` is a stand-in encoding and the
    stream's count is multiplied by this once (not per chunk, where rounding up would
    double a one-token delta)."""
    texts: list[str] = field(default_factory=list)
    raw_tokens: int = 0
    output_tokens: int = 0
    usage: TokenUsage | None = None
    """The provider's final usage, once it arrived."""
    input_usage: TokenUsage | None = None
    """The provider's usage from the start of the stream (Anthropic's ``message_start``:
    the prompt, cache reads and writes), for a stream that ends before its final usage."""
    request_id: str | None = None
    overrun: bool = False

    def add_text(self, text: str) -> None:
        if text:
            self.texts.append(text)
            self.raw_tokens += self.counter.text(text)
            if self.margin == 1.0:
                self.output_tokens = self.raw_tokens
            else:
                self.output_tokens = math.ceil(self.raw_tokens * self.margin)
            # An estimate may run past the reservation by its margin without the provider
            # having ignored the bound: only a count past that is an overrun.
            if self.raw_tokens > self.reserved_output * self.margin:
                self.overrun = True


@dataclass(frozen=True)
class TrimEvent:
    """Told to ``Guard(on_trim=...)`` when a guarded call's history was trimmed."""

    tenant: str
    model: str
    result: TrimResult

    @property
    def dropped(self) -> list[Mapping[str, Any]]:
        return self.result.dropped


# -- the engine -----------------------------------------------------------------------


class _LoopDetector:
    """Counts identical request fingerprints per tenant in a sliding time window."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, tuple[Any, ...]], deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, tenant: str, fingerprint: tuple[Any, ...], policy: Policy) -> None:
        if policy.loop_limit is None:
            return
        now = self._clock()
        horizon = now - policy.loop_window_seconds
        with self._lock:
            times = self._seen.setdefault((tenant, fingerprint), deque())
            while times and times[0] <= horizon:
                times.popleft()
            if len(times) >= policy.loop_limit:
                raise LoopDetected(
                    tenant=tenant,
                    repeats=len(times) + 1,
                    window_seconds=policy.loop_window_seconds,
                    limit=policy.loop_limit,
                )
            times.append(now)
            if len(self._seen) > 50_000:  # bounded: forget fingerprints gone quiet
                self._seen = {k: v for k, v in self._seen.items() if v and v[-1] > horizon}


class Engine:
    """Decides everything about a guarded call. Owned by a :class:`guardrail.Guard`."""

    def __init__(
        self,
        *,
        policy: Policy,
        tenant_policies: PolicySource | None,
        global_policy: Policy | None,
        default_tenant: str | None,
        sinks: Sequence[Sink],
        clock: Clock = system_clock,
        on_store_error: StoreErrorMode = "fail_closed",
        summarizer: Summarizer | None = None,
        windows: Windows | None = None,
        on_trim: Callable[[TrimEvent], object] | None = None,
    ) -> None:
        self.policy = policy
        self.tenant_policies = tenant_policies
        self.global_policy = global_policy
        self.default_tenant = default_tenant
        self.sinks = list(sinks)
        self.clock = clock
        self.on_store_error = on_store_error
        self.summarizer = summarizer
        self.windows = windows or Windows()
        self.on_trim = on_trim
        self.loops = _LoopDetector(clock)
        # (scope, id(policy)) -> (policy, limits): a Policy is frozen, and holding it here
        # keeps its id from being reused while the entry lives.
        self._limits_cache: dict[tuple[str, int], tuple[Policy | None, ScopeLimits]] = {}
        self._default_binding: TenantBinding | None = None  # TenantBinding.of(default_tenant)

    # -- who pays, under which rules

    def _override(self, scope: str) -> Policy | None:
        source = self.tenant_policies
        if source is None:
            return None
        if isinstance(source, Mapping):
            return source.get(scope)
        found = source(scope)
        if found is not None and not isinstance(found, Policy):
            raise TypeError(f"tenant_policies({scope!r}) returned {found!r}, not a Policy")
        return found

    def policy_for(self, tenant: str) -> Policy:
        return self._override(tenant) or self.policy

    def binding_for(self, explicit: TenantBinding | None, hint: str | None) -> TenantBinding:
        binding = explicit or current_binding()
        if binding is not None:
            return binding
        if hint is not None:
            return TenantBinding.of(tenant_from_hint(hint))
        if self.default_tenant is None:
            raise InvalidRequestError(
                "no tenant for this call: use client.for_tenant(...), guard.tenant(...), "
                "the request's safety_identifier/user, or Guard(default_tenant=...)"
            )
        cached = self._default_binding
        if cached is None or cached.tenant != self.default_tenant:
            cached = self._default_binding = TenantBinding.of(self.default_tenant)
        return cached

    def scopes_for(self, binding: TenantBinding, policy: Policy) -> tuple[ScopeLimits, ...]:
        scopes = [self._limits_of(binding.tenant, policy)]
        for parent in binding.parents:
            # A parent without its own policy is charged (its usage is recorded) but unlimited.
            scopes.append(self._limits_of(parent, self._override(parent)))
        if self.global_policy is not None:
            scopes.append(self._limits_of(GLOBAL_SCOPE, self.global_policy))
        return tuple(scopes)

    def _limits_of(self, scope: str, policy: Policy | None) -> ScopeLimits:
        """``_limits(scope, policy)``, without redoing its Decimal conversions every call."""
        key = (scope, id(policy))
        hit = self._limits_cache.get(key)
        if hit is not None and hit[0] is policy:
            return hit[1]
        limits = _limits(scope, policy)
        if len(self._limits_cache) >= 4096:
            self._limits_cache = {}
        self._limits_cache[key] = (policy, limits)
        return limits

    # -- planning

    def prepare(
        self,
        adapter: ProviderAdapter,
        kwargs: Mapping[str, Any],
        explicit: TenantBinding | None = None,
    ) -> Plan:
        view = adapter.read(kwargs)
        binding = self.binding_for(explicit, view.tenant_hint)
        try:
            policy = self.policy_for(binding.tenant)
            scopes = self.scopes_for(binding, policy)
            plan = self._plan_for_model(adapter, kwargs, view, view.model, binding, policy, scopes)
            self.loops.check(binding.tenant, plan.fingerprint, policy)
        except (ContextWindowExceeded, LoopDetected) as exc:
            self._record_refusal(binding, view.model, exc)
            raise
        if plan.trim is not None and self.on_trim is not None:
            self.on_trim(TrimEvent(plan.tenant, plan.model.name, plan.trim))
        return plan

    def _record_refusal(self, binding: TenantBinding, model: str, exc: BaseException) -> None:
        emit(
            self.sinks,
            UsageRecord(
                tenant=binding.tenant,
                scopes=(binding.tenant, *binding.parents),
                model=model,
                requested_model=model,
                outcome="rejected",
                error=f"{type(exc).__name__}: {exc}",
                timestamp=self.clock(),
            ),
        )

    def _reserved_output(
        self, view: RequestView, info: ModelInfo, policy: Policy
    ) -> tuple[int, int | None]:
        """(tokens to reserve, max output to send or None to leave the request alone)."""
        cap = info.max_output_tokens
        if policy.max_output_tokens is not None:
            cap = min(cap, policy.max_output_tokens)
        asked = view.requested_output
        if asked is None:
            if view.default_output_cap is not None:
                cap = min(cap, view.default_output_cap)
            if policy.default_output_tokens is None:
                # The model's own cap needs no sending; a tighter one (the policy's) does,
                # or the reservation would not bound what the call can cost.
                bound = view.output_required or cap < info.max_output_tokens
                return cap, (cap if bound else None)
            chosen = min(policy.default_output_tokens, cap)
            return chosen, chosen
        if asked <= cap:
            return asked, None
        if policy.output_over_cap == "reject":
            raise ContextWindowExceeded(
                model=info.name,
                prompt_tokens=0,
                reserved_output_tokens=asked,
                limit=cap,
                limit_name="the output cap",
                detail="asked for more output than the policy or "
                "model allows (output_over_cap='reject'); nothing was sent",
            )
        return cap, cap

    def _plan_for_model(
        self,
        adapter: ProviderAdapter,
        kwargs: Mapping[str, Any],
        view: RequestView,
        model: str,
        binding: TenantBinding,
        policy: Policy,
        scopes: tuple[ScopeLimits, ...],
        *,
        fallback_reason: str | None = None,
        allow_model_fallback: bool = True,
    ) -> Plan:
        info = model_info(model)
        counter = counter_for(info)
        reserved, send_output = self._reserved_output(view, info, policy)
        budget, limit_name = _input_budget(info, policy, reserved)
        messages = view.messages
        prompt = adapter.count(counter, view, messages)
        trim: TrimResult | None = None
        over_history = (
            policy.max_history_messages is not None
            and sum(1 for m in messages if field_of(m, "role") not in ("system", "developer"))
            > policy.max_history_messages
        )
        if prompt > budget or over_history:
            if prompt > budget and allow_model_fallback and policy.fallback_before_trim:
                bigger = self._larger_model_plan(
                    adapter, kwargs, view, binding, policy, scopes, info
                )
                if bigger is not None:
                    return bigger
            if policy.trim or over_history:
                try:
                    trim = _fit(
                        adapter,
                        view,
                        messages,
                        counter,
                        budget if policy.trim else 1 << 62,
                        max_history_messages=policy.max_history_messages,
                        summarizer=self.summarizer if policy.trim else None,
                        model_name=info.name,
                    )
                except ContextWindowExceeded:
                    trim = None
                if trim is not None:
                    messages, prompt = trim.messages, adapter.count(counter, view, trim.messages)
            if prompt > budget:
                if allow_model_fallback:
                    bigger = self._larger_model_plan(
                        adapter, kwargs, view, binding, policy, scopes, info
                    )
                    if bigger is not None:
                        return bigger
                raise ContextWindowExceeded(
                    model=info.name,
                    prompt_tokens=prompt,
                    reserved_output_tokens=reserved,
                    limit=budget + (reserved if limit_name.startswith("the context") else 0),
                    limit_name=limit_name,
                    tenant=binding.tenant,
                    detail=(
                        "trimming could not make it fit"
                        if policy.trim
                        else "set Policy(trim=True) to drop the oldest history"
                    )
                    + "; nothing was sent",
                )
        new_kwargs, hide_usage = adapter.rewrite(
            kwargs,
            model=model,
            messages=list(messages) if trim else view.messages,
            max_output=send_output,
        )
        cost = worst_case_cost(
            info, prompt, reserved * view.choices, view.prompt_cache_write, view.reserved_searches
        )
        last = field_of(messages[-1], "content") if messages else None
        fingerprint = (info.name, len(messages), prompt, reserved, repr(last)[:512])
        return Plan(
            binding=binding,
            scopes=scopes,
            policy=policy,
            model=info,
            requested_model=view.model,
            kwargs=new_kwargs,
            prompt_tokens=prompt,
            reserved_output=reserved,
            cost_usd=cost,
            trim=trim if trim is not None and trim.dropped_count else None,
            stream=view.stream,
            hide_usage_chunk=hide_usage,
            fingerprint=fingerprint,
            fallback_reason=fallback_reason,
            choices=view.choices,
            prompt_cache_write=view.prompt_cache_write,
            reserved_searches=view.reserved_searches,
        )

    def _larger_model_plan(
        self,
        adapter: ProviderAdapter,
        kwargs: Mapping[str, Any],
        view: RequestView,
        binding: TenantBinding,
        policy: Policy,
        scopes: tuple[ScopeLimits, ...],
        current: ModelInfo,
    ) -> Plan | None:
        for name in policy.fallback_models:
            if model_info(name).context_window <= current.context_window:
                continue
            try:
                return self._plan_for_model(
                    adapter,
                    kwargs,
                    view,
                    name,
                    binding,
                    policy,
                    scopes,
                    fallback_reason=f"prompt did not fit {current.name}'s context window",
                    allow_model_fallback=False,
                )
            except ContextWindowExceeded:
                continue
        return None

    def cheaper_plans(
        self, adapter: ProviderAdapter, kwargs: Mapping[str, Any], plan: Plan
    ) -> Generator[Plan, None, None]:
        """Fallback plans on cheaper models, for a reservation the budget refused."""
        view = adapter.read(kwargs)
        for name in plan.policy.fallback_models:
            try:
                candidate = self._plan_for_model(
                    adapter,
                    kwargs,
                    view,
                    name,
                    plan.binding,
                    plan.policy,
                    plan.scopes,
                    fallback_reason=f"{plan.model.name} did not fit the budget",
                    allow_model_fallback=False,
                )
            except ContextWindowExceeded:
                continue
            if candidate.cost_usd < plan.cost_usd:
                yield candidate

    # -- the call

    def flow(
        self, adapter: ProviderAdapter, kwargs: Mapping[str, Any], plan: Plan
    ) -> Generator[Op, Any, Any]:
        """Reserve, send with retries, settle. Yields operations; returns the response."""
        started = time.monotonic()
        reservation: Reservation | None = None
        try:
            plan, reservation = yield from self._reserve_first(adapter, kwargs, plan)
        except BudgetExceeded as exc:
            self._record(plan, "rejected", started, attempts=0, error=exc)
            raise
        if getattr(adapter, "exact_count", False) is True:
            plan, reservation = yield from self._count_exactly(plan, reservation, started)
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
                    self._record(plan, "error", started, attempts, error=exc)
                    raise
                if isinstance(action, DoSleep):
                    last = _last_error(state)
                    state.prepare_for_next_attempt()
                    yield Sleep(float(action))
                    try:  # every retry re-checks the budget
                        reservation = yield from self._reserve(plan.reservation_request())
                    except BudgetExceeded as exc:
                        last.add_note(f"guardrail stopped retrying: {exc}")
                        self._record(plan, "error", started, attempts, error=last)
                        raise last from exc
                    continue
            if not isinstance(action, DoAttempt):  # pragma: no cover - reraise=True raises
                return action
            attempts += 1
            try:
                response = yield Send(plan.kwargs)
            except BaseException as exc:
                billed = _billed_usage(adapter, plan, exc)
                if billed is None:
                    # Failed without usage (an HTTP error, or cancelled by the caller): the
                    # reservation goes back whole.
                    yield from self._release(reservation)
                elif not is_retryable(exc):
                    # The provider answered and billed (a completion cut at its length or
                    # content filter): settle it as the call's outcome, then re-raise.
                    yield from self._settle(
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
                    yield from self._settle(
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
                    self._record(plan, "cancelled", started, attempts, error=exc)
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
            yield from self._settle(
                plan, reservation, usage, started, attempts, "ok", adapter.request_id(response)
            )
            return response
        tally = _stream_tally(plan)
        end: StreamEnd = yield OpenStream(response, tally)
        source: Literal["provider", "local_count"] = "provider"
        if tally.usage is not None:
            usage = tally.usage
        else:  # ended early: the provider's prompt-side usage if it came, our output count
            start = tally.input_usage or TokenUsage(input_tokens=plan.prompt_tokens)
            usage = replace(start, output_tokens=max(start.output_tokens, tally.output_tokens))
            source = "local_count"
        yield from self._settle(
            plan,
            reservation,
            usage,
            started,
            attempts,
            end.outcome,
            tally.request_id,
            source=source,
            error=end.error,
        )
        return None

    def _count_exactly(
        self, plan: Plan, reservation: Reservation | None, started: float
    ) -> Generator[Op, Any, tuple[Plan, Reservation | None]]:
        """Ask the provider to count the prompt, once the estimate's reservation is held.

        The reservation becomes ``max(estimate, exact)``: an estimate that was high stays
        held (and is refunded at settlement); one that was low is corrected before anything
        is sent, and the window is checked again. A failed count keeps the estimate. The
        estimate is reserved first so that a budget refusal sends nothing at all.
        """
        try:
            exact = yield CountTokens(plan.kwargs)
        except Exception as exc:
            _log.warning(
                "guardrail: the provider's token count failed (%r); reserving the local "
                "estimate of %d prompt tokens",
                exc,
                plan.prompt_tokens,
            )
            return plan, reservation
        except BaseException as exc:  # cancelled while counting: nothing was sent
            yield from self._release(reservation)
            self._record(plan, "cancelled", started, 0, error=exc)
            raise
        if isinstance(exact, bool) or not isinstance(exact, int) or exact < 0:
            _log.warning("guardrail: ignoring a token count of %r", exact)
            return plan, reservation
        plan = replace(plan, exact_prompt_tokens=exact)
        if exact <= plan.prompt_tokens:
            return plan, reservation
        budget, limit_name = _input_budget(plan.model, plan.policy, plan.reserved_output)
        if exact > budget:
            yield from self._release(reservation)
            refused = ContextWindowExceeded(
                model=plan.model.name,
                prompt_tokens=exact,
                reserved_output_tokens=plan.reserved_output,
                limit=budget + (plan.reserved_output if limit_name.startswith("the c") else 0),
                limit_name=limit_name,
                tenant=plan.tenant,
                detail=f"by the provider's own count (the local estimate was "
                f"{plan.prompt_tokens}); nothing was sent",
            )
            self._record(plan, "rejected", started, 0, error=refused)
            raise refused
        bigger = replace(
            plan,
            prompt_tokens=exact,
            cost_usd=worst_case_cost(
                plan.model,
                exact,
                plan.reserved_output_total,
                plan.prompt_cache_write,
                plan.reserved_searches,
            ),
        )
        yield from self._release(reservation)
        try:
            return bigger, (yield from self._reserve(bigger.reservation_request()))
        except BudgetExceeded as exc:
            self._record(bigger, "rejected", started, 0, error=exc)
            raise

    def _reserve_first(
        self, adapter: ProviderAdapter, kwargs: Mapping[str, Any], plan: Plan
    ) -> Generator[Op, Any, tuple[Plan, Reservation | None]]:
        try:
            return plan, (yield from self._reserve(plan.reservation_request()))
        except BudgetExceeded as refused:
            for cheaper in self.cheaper_plans(adapter, kwargs, plan):
                try:
                    return cheaper, (yield from self._reserve(cheaper.reservation_request()))
                except BudgetExceeded:
                    continue
            raise refused from None

    def _reserve(self, request: ReservationRequest) -> Generator[Op, Any, Reservation]:
        try:
            reservation: Reservation = yield Reserve(request)
        except GuardrailError:
            raise
        except Exception as exc:
            scope = request.scopes[0].scope if request.scopes else None
            if self.on_store_error == "fail_closed":
                raise StoreUnavailable(
                    f"budget store failed on reserve: {exc!r}", tenant=scope
                ) from exc
            _log.error("guardrail: store failed on reserve (%r); failing OPEN for %s", exc, scope)
            return self._unheld(request)
        return reservation

    def _unheld(self, request: ReservationRequest) -> Reservation:
        """A reservation the store never granted (fail-open): nothing to release, but the
        call's actual usage is still settled (or spooled by the store) afterwards."""
        now = self.clock()
        day, month = self.windows.keys(now)
        return Reservation(
            id=request.id,
            scopes=tuple(s.scope for s in request.scopes),
            cost_nanos=0,
            tokens=0,
            day=day,
            month=month,
            created_at=now,
            expires_at=now,
            model=request.model,
        )

    def _release(self, reservation: Reservation | None) -> Generator[Op, Any, None]:
        if reservation is None:
            return
        try:
            yield Release(reservation)
        except Exception as exc:  # the TTL will return it; never mask the call's own error
            _log.error("guardrail: could not release reservation %s: %r", reservation.id, exc)

    def _settle(
        self,
        plan: Plan,
        reservation: Reservation | None,
        usage: TokenUsage | None,
        started: float,
        attempts: int,
        outcome: Outcome,
        request_id: str | None,
        *,
        source: Literal["provider", "local_count", "none"] = "provider",
        error: BaseException | None = None,
    ) -> Generator[Op, Any, None]:
        if usage is None:  # a provider answer without usage: bill the prompt we counted
            usage, source = TokenUsage(input_tokens=plan.prompt_tokens), "local_count"
        usage = _sane(usage)
        try:
            cost = usage_cost(plan.model, usage)
        except GuardrailError as exc:
            # Usage we cannot price must not lose a paid call: charge the worst case.
            _log.warning(
                "guardrail: cannot price usage %r (%s); charging the reservation", usage, exc
            )
            cost = plan.cost_usd
        if reservation is not None:
            settlement = Settlement(
                cost_nanos=usd_to_nanos(cost),
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                model=plan.model.name,
            )
            try:
                yield Settle(reservation, settlement)
            except Exception as exc:
                _log.error("guardrail: could not settle reservation %s: %r", reservation.id, exc)
        self._record(
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
        )

    def _records_wanted(self) -> bool:
        """Whether any sink would use a usage record (the logging check is a cached lookup,
        so turning the ``guardrail.usage`` logger on later takes effect at once)."""
        return not all(map(_sink_ignores_records, self.sinks))

    def _record(
        self,
        plan: Plan,
        outcome: Outcome,
        started: float,
        attempts: int,
        *,
        usage: TokenUsage | None = None,
        cost: Decimal = Decimal(0),
        request_id: str | None = None,
        source: Literal["provider", "local_count", "none"] = "none",
        error: BaseException | None = None,
        reservation_id: str | None = None,
    ) -> None:
        if not self._records_wanted():
            return
        usage = usage or TokenUsage()
        extra: dict[str, Any] = {}
        if plan.exact_prompt_tokens is not None:
            extra["exact_prompt_tokens"] = plan.exact_prompt_tokens
        if usage.cache_write_tokens:
            extra["cache_write_tokens"] = usage.cache_write_tokens
            extra["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
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
                latency_seconds=time.monotonic() - started,
                attempts=attempts,
                trimmed_messages=plan.trim.dropped_count if plan.trim else 0,
                request_id=request_id,
                reservation_id=reservation_id,
                usage_source=source,
                fallback_reason=plan.fallback_reason,
                error=None if error is None else f"{type(error).__name__}: {error}",
                timestamp=self.clock(),
                extra=extra,
            ),
        )


def _sink_ignores_records(sink: Sink) -> bool:
    """True for the built-in JSON-lines sink while its logger drops INFO, the default: it
    would build the record only to throw it away."""
    return type(sink) is JsonLinesSink and not sink.logger.isEnabledFor(logging.INFO)


def _sane(usage: TokenUsage) -> TokenUsage:
    """Provider usage with no negative counts and no more cached than input tokens."""
    fields = {k: max(0, int(v)) for k, v in vars(usage).items()}
    fields["cached_input_tokens"] = min(fields["cached_input_tokens"], fields["input_tokens"])
    fields["reasoning_tokens"] = min(fields["reasoning_tokens"], fields["output_tokens"])
    return TokenUsage(**fields)


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
        if carried is not None:
            return carried
    if (
        isinstance(exc, Exception)
        and is_retryable(exc)
        and getattr(exc, "status_code", None) is None
    ):
        return TokenUsage(input_tokens=plan.prompt_tokens)
    return None


def worst_case_cost(
    info: ModelInfo,
    prompt: int,
    output: int,
    cache_write: Literal["5m", "1h"] | None = None,
    searches: int = 0,
) -> Decimal:
    """The most a call can cost: every prompt token at the input price (or, when the request
    writes the prompt cache, at the cache-write price, whichever is higher), every reserved
    output token at the output price, and every web search it allows."""
    plain = estimate_cost(info, prompt, output)
    if cache_write is None and not searches:
        return plain
    worst = TokenUsage(
        input_tokens=prompt,
        output_tokens=output,
        cache_write_tokens=prompt if cache_write else 0,
        cache_write_1h_tokens=prompt if cache_write == "1h" else 0,
        web_searches=searches,
    )
    try:
        return max(plain, usage_cost(info, worst))
    except GuardrailError:  # no cache-write or search price known: the plain price is all
        return plain


def _input_budget(info: ModelInfo, policy: Policy, reserved_output: int) -> tuple[int, str]:
    """The most prompt tokens a call may send, and the name of the limit that sets it."""
    budget = info.context_window - reserved_output
    if policy.max_input_tokens is not None and policy.max_input_tokens < budget:
        return policy.max_input_tokens, "the policy's max_input_tokens"
    return budget, f"the context window of {info.name}"


def _fit(
    adapter: ProviderAdapter,
    view: RequestView,
    messages: Sequence[Any],
    counter: TokenCounter,
    max_tokens: int,
    *,
    max_history_messages: int | None,
    summarizer: Summarizer | None,
    model_name: str,
) -> TrimResult:
    if isinstance(adapter, FitsMessages):
        return adapter.fit(
            view,
            messages,
            counter,
            max_tokens,
            max_history_messages=max_history_messages,
            summarizer=summarizer,
            model_name=model_name,
        )
    return fit_messages(
        messages,
        counter,
        max_tokens,
        tools=view.tools,
        max_history_messages=max_history_messages,
        summarizer=summarizer,
        model_name=model_name,
    )


def _stream_tally(plan: Plan) -> StreamTally:
    info = plan.model
    if info.exact_tokenizer:
        return StreamTally(counter_for(info), plan.reserved_output_total, plan.hide_usage_chunk)
    # No local tokenizer (Claude): count with the stand-in encoding, apply the margin once.
    return StreamTally(
        counter_for(replace(info, encoding=FALLBACK_ENCODING)),
        plan.reserved_output_total,
        plan.hide_usage_chunk,
        margin=CLAUDE_SAFETY_MARGIN,
    )


def _limits(scope: str, policy: Policy | None) -> ScopeLimits:
    if policy is None:
        return ScopeLimits(scope)
    return ScopeLimits(
        scope,
        daily_nanos=None
        if policy.daily_spend_usd is None
        else usd_to_nanos(policy.daily_spend_usd),
        monthly_nanos=(
            None if policy.monthly_spend_usd is None else usd_to_nanos(policy.monthly_spend_usd)
        ),
        tokens_per_minute=policy.tokens_per_minute,
        tokens_per_day=policy.tokens_per_day,
        max_in_flight=policy.max_in_flight,
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
