"""Planning a call: the model, the counted and fitted prompt, the reserved output and the
worst-case cost, before anything is reserved or sent (no I/O)."""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from guardrail._frozen import quick_init
from guardrail.catalog.models import ModelInfo, model_info
from guardrail.catalog.pricing import TokenUsage, checked_usage_cost
from guardrail.counting.messages import TokenCounter, counter_for, field_of
from guardrail.counting.text import PromptTooLong, counting_limit
from guardrail.engine.adapter import FitsMessages, ProviderAdapter, RequestView, ServerState
from guardrail.engine.fingerprint import fingerprint
from guardrail.engine.held import held_prompt, pass_tokens, uncountable
from guardrail.engine.request_check import as_sent
from guardrail.engine.unpriced import (
    refuse_unbounded,
    refuse_unpriced,
    reserved_tier,
    warn_unpriced,
)
from guardrail.errors import (
    ContextWindowExceeded,
    GuardrailError,
    PriceUnavailable,
    UnboundedInput,
    UnpricedOption,
)
from guardrail.policy import Policy
from guardrail.prompt.trimming import Summarizer, TrimResult, fit_messages
from guardrail.stores.base import LoopRule, ReservationRequest, ScopeLimits, usd_to_nanos
from guardrail.tenancy import TenantBinding

__all__ = ["Plan", "Planner", "TrimEvent", "input_budget", "worst_case_cost"]


@quick_init
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
    fingerprint: str
    fallback_reason: str | None = None
    choices: int = 1
    exact_prompt_tokens: int | None = None
    """The provider's own count of the prompt, when it was asked (``CountTokens``)."""
    prompt_cache_write: Literal["5m", "1h"] | None = None
    reserved_searches: int = 0
    reserved_file_searches: int = 0
    reserved_containers: int = 0
    server_state: ServerState | None = None
    count_exactly: bool = False
    history_tokens: int = 0
    """Tokens of the server-side history included in ``prompt_tokens``."""
    max_prompt_tokens: int | None = None
    reserved_prompt: int | None = None
    """Prompt tokens reserved when parts of the prompt could only be bounded (documents by
    ``file_id``): at least ``prompt_tokens``; None when the count is the reservation."""
    hidden_output: bool = False
    """The model bills reasoning it does not stream: a call whose usage never arrives is
    settled at the whole reserved output."""
    uncounted_parts: int = 0
    """Parts of the prompt reserved by ``Policy.file_id_tokens`` instead of counted."""
    service_tier: str | None = None
    """The tier the reservation is priced at (None: the standard rates); a call whose
    response does not say which tier it was billed at is settled at it."""
    server_input: int = 0
    """Input held for the passes the provider may add server-side (``server_passes`` of
    them), included in ``reserved_prompt``; no count of the request replaces it."""
    server_passes: int = 0
    exact_replaces_bound: bool = False
    """The provider's count reads the uncounted parts: it replaces their bound."""

    @property
    def prompt_held(self) -> int:
        """The prompt tokens the reservation holds."""
        return self.prompt_tokens if self.reserved_prompt is None else self.reserved_prompt

    priced: bool = True
    """False for a model nothing prices, let through because no scope has a money limit:
    it reserves tokens only and is recorded with an unknown cost."""

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
            # 128 bits from the OS's CSPRNG, like uuid4() without the UUID object. Not a
            # per-process prefix and a counter: a process forked in C (uWSGI's workers)
            # skips Python's fork hooks and would repeat ids, and the Redis store takes a
            # repeated id for a retry of a call it already holds (nothing more is held).
            id=os.urandom(16).hex(),
            scopes=self.scopes,
            cost_nanos=usd_to_nanos(self.cost_usd),
            tokens=self.prompt_held + self.reserved_output_total,
            ttl_seconds=self.policy.reservation_ttl_seconds,
            model=self.model.name,
            loop=self._loop_rule(),
        )

    def _loop_rule(self) -> LoopRule | None:
        limit = self.policy.loop_limit
        if limit is None or not self.fingerprint:
            return None
        return LoopRule(self.fingerprint, limit, self.policy.loop_window_seconds)


@dataclass(frozen=True)
class TrimEvent:
    """Told to ``Guard(on_trim=...)`` when a guarded call's history was trimmed."""

    tenant: str
    model: str
    result: TrimResult

    @property
    def dropped(self) -> list[Mapping[str, Any]]:
        return self.result.dropped


class Planner:
    """Plans calls: fits a request to its model and the policy, or finds a fallback."""

    def __init__(self, summarizer: Summarizer | None = None) -> None:
        self.summarizer = summarizer

    def _reserved_output(
        self, view: RequestView, info: ModelInfo, policy: Policy
    ) -> tuple[int, int | None]:
        """(tokens to reserve, max output to send or None to leave the request alone)."""
        if view.no_output:
            return 0, None
        if view.output_bound_unsupported:  # nothing bounds it: the model's whole cap
            return info.max_output_tokens, None
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

    def plan(
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
        budget, limit_name = input_budget(info, policy, reserved, view.max_prompt_tokens)
        messages = view.messages
        over_history = (
            policy.max_history_messages is not None
            and sum(1 for m in messages if field_of(m, "role") not in ("system", "developer"))
            > policy.max_history_messages
        )
        # Bounded work: counting stops once the prompt is known to be over the budget (a
        # prompt that may be trimmed is judged message by message instead).
        may_trim = policy.trim or over_history
        trim: TrimResult | None = None
        stopped = False
        try:
            with counting_limit(budget, whole_prompt=not may_trim):
                prompt = adapter.count(counter, view, messages)
        except PromptTooLong as exc:
            prompt, stopped = exc.at_least, True
        if prompt > budget or over_history:
            if prompt > budget and allow_model_fallback and policy.fallback_before_trim:
                bigger = self._larger_model_plan(
                    adapter, kwargs, view, binding, policy, scopes, info
                )
                if bigger is not None:
                    return bigger
            if policy.trim or over_history:
                fit_budget = budget if policy.trim else 1 << 62
                try:
                    with counting_limit(fit_budget, whole_prompt=False):
                        trim = _fit(
                            adapter,
                            view,
                            messages,
                            counter,
                            fit_budget,
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
                        "at least that many: counting stopped once the prompt was known not "
                        "to fit; "
                        if stopped
                        else ""
                    )
                    + (
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
        final = list(messages) if trim else view.messages
        uncounted = uncountable(adapter, view, final)
        server_input = view.server_passes * pass_tokens(info, policy)
        held = held_prompt(prompt, uncounted, info, policy, reserved) + server_input
        priced, money = True, any(s.money_limited for s in scopes)
        if view.unbounded_input is not None:  # before the unpriced check, which may warn
            refuse_unbounded(view.unbounded_input, info, binding, scopes)
        if view.unpriced is not None:
            refuse_unpriced(view.unpriced, info, binding, scopes)
        tier, unpriced_tier = reserved_tier(view.service_tier, policy, info, binding, scopes)
        try:
            cost = worst_case_cost(
                info,
                held,
                reserved * view.choices,
                view.prompt_cache_write,
                view.reserved_searches,
                view.reserved_file_searches,
                view.reserved_containers,
                strict=money,
                tier=tier,
            )
        except PriceUnavailable:
            if money:
                raise  # a money limit cannot be kept without a price
            warn_unpriced(info)
            cost, priced = Decimal(0), False
        if view.unpriced is not None or unpriced_tier:  # no money limit: tokens only
            cost, priced = Decimal(0), False
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
            fingerprint=fingerprint(new_kwargs) if policy.loop_limit is not None else "",
            fallback_reason=fallback_reason,
            choices=view.choices,
            prompt_cache_write=view.prompt_cache_write,
            reserved_searches=view.reserved_searches,
            reserved_prompt=None if held == prompt else held,
            hidden_output=view.hidden_reasoning,
            uncounted_parts=len(uncounted),
            server_input=server_input,
            server_passes=view.server_passes,
            exact_replaces_bound=getattr(adapter, "exact_count_covers_uncountable", False),
            reserved_file_searches=view.reserved_file_searches,
            reserved_containers=view.reserved_containers,
            server_state=view.server_state,
            count_exactly=view.count_exactly,
            max_prompt_tokens=view.max_prompt_tokens,
            priced=priced,
            service_tier=tier,
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
            if model_info(name).input_limit <= current.input_limit:
                continue
            try:
                return self.plan(
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
            except UnboundedInput:  # the request's, not the model's: no model takes it
                raise
            except (ContextWindowExceeded, UnpricedOption):  # or no price for its tier
                continue
        return None

    def cheaper_plans(
        self, adapter: ProviderAdapter, kwargs: Mapping[str, Any], plan: Plan
    ) -> Generator[Plan, None, None]:
        """Fallback plans on cheaper models, for a reservation the budget refused."""
        view = adapter.read(as_sent(kwargs))  # as prepare reads it: extra_body merged in
        for name in plan.policy.fallback_models:
            try:
                candidate = self.plan(
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
            except UnboundedInput:  # the request's, not the model's: no model takes it
                raise
            except (ContextWindowExceeded, UnpricedOption):  # or no price for its tier
                continue
            if candidate.cost_usd < plan.cost_usd:
                yield candidate


def worst_case_cost(
    info: ModelInfo,
    prompt: int,
    output: int,
    cache_write: Literal["5m", "1h"] | None = None,
    searches: int = 0,
    file_searches: int = 0,
    containers: int = 0,
    *,
    strict: bool = False,
    tier: str | None = None,
) -> Decimal:
    """The most a call can cost: every prompt token at the input price (or, when the request
    writes the prompt cache, at the cache-write price, whichever is higher), every reserved
    output token at the output price, and every fee-bearing tool call it allows (web and
    file searches, containers), at the service ``tier``'s prices; one without a known rate
    is PriceUnavailable if ``strict``."""
    plain = checked_usage_cost(
        info, TokenUsage(input_tokens=prompt, output_tokens=output, service_tier=tier)
    )
    if cache_write is None and not (searches or file_searches or containers):
        return plain
    worst = TokenUsage(
        input_tokens=prompt,
        output_tokens=output,
        cache_write_tokens=prompt if cache_write else 0,
        cache_write_1h_tokens=prompt if cache_write == "1h" else 0,
        web_searches=searches,
        file_searches=file_searches,
        containers=containers,
        service_tier=tier,
    )
    try:
        return max(plain, checked_usage_cost(info, worst))
    except GuardrailError as exc:  # no rate for a cache write or fee the call may have
        if strict and isinstance(exc, PriceUnavailable):
            raise
        return plain


def input_budget(
    info: ModelInfo, policy: Policy, reserved_output: int, request_cap: int | None = None
) -> tuple[int, str]:
    """The most prompt tokens a call may send, and the name of the limit that sets it: the
    context window less the reserved output, the model's own input cap (gpt-5: 272,000)
    or the policy's ``max_input_tokens``, whichever is smallest (``request_cap``: the
    endpoint's own input limit, in place of the model's window and cap)."""
    if request_cap is not None:
        budget, name = request_cap, f"the request input limit of {info.name}"
    else:
        budget, name = info.context_window - reserved_output, f"the context window of {info.name}"
        if info.max_input_tokens is not None and info.max_input_tokens < budget:
            budget, name = info.max_input_tokens, f"the input limit of {info.name}"
    if policy.max_input_tokens is not None and policy.max_input_tokens < budget:
        return policy.max_input_tokens, "the policy's max_input_tokens"
    return budget, name


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
