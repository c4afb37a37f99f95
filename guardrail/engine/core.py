"""The engine: who pays for a call, under which rules, and its plan and flow.

``Engine.prepare`` turns a request into a :class:`~guardrail.engine.plan.Plan` (tenant,
policy, counted and fitted prompt, reserved output, worst-case cost); ``Engine.flow``
walks it through reserve -> send -> settle as a generator of operations that a driver
performs. Every decision lives in this package; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Literal

from guardrail._clock import Clock, system_clock
from guardrail.engine import flow
from guardrail.engine.adapter import ProviderAdapter
from guardrail.engine.operations import Op
from guardrail.engine.plan import Plan, Planner, TrimEvent
from guardrail.engine.records import Recorder
from guardrail.engine.request_check import as_sent
from guardrail.errors import (
    ContextWindowExceeded,
    InvalidRequestError,
    PriceUnavailable,
    describe,
)
from guardrail.observe.sinks import Sink
from guardrail.policy import Policy, PolicySource
from guardrail.prompt.trimming import Summarizer
from guardrail.stores.base import ScopeLimits, Windows, usd_to_nanos
from guardrail.tenancy import GLOBAL_SCOPE, TenantBinding, TenantFromRequest, current_binding

__all__ = ["Engine", "StoreErrorMode"]

StoreErrorMode = Literal["fail_closed", "fail_open"]


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
        tenant_from_request: TenantFromRequest | None = None,
        error_messages: bool = False,
    ) -> None:
        self.policy = policy
        self.tenant_policies = tenant_policies
        self.global_policy = global_policy
        self.default_tenant = default_tenant
        self.clock = clock
        self.on_store_error = on_store_error
        self.planner = Planner(summarizer)
        self.recorder = Recorder(sinks, clock, error_messages=error_messages)
        self.tenant_from_request = tenant_from_request
        self.windows = windows or Windows()
        self.on_trim = on_trim
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
            raise TypeError(
                f"tenant_policies({describe(scope)}) returned {describe(found)}, not a Policy"
            )
        return found

    def policy_for(self, tenant: str) -> Policy:
        return self._override(tenant) or self.policy

    def binding_for(self, explicit: TenantBinding | None, hint: str | None) -> TenantBinding:
        binding = explicit or current_binding()
        if binding is not None:
            return binding
        if hint is not None and self.tenant_from_request is not None:
            return self.tenant_from_request.binding_for(hint)
        if self.default_tenant is None:
            raise InvalidRequestError(
                "no tenant for this call: use client.for_tenant(...), guard.tenant(...), "
                "Guard(default_tenant=...), or Guard(tenant_from_request=...) to derive "
                "one from the request's safety_identifier/user"
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
        view = adapter.read(as_sent(kwargs))
        binding = self.binding_for(explicit, view.tenant_hint)
        try:
            policy = self.policy_for(binding.tenant)
            scopes = self.scopes_for(binding, policy)
            plan = self.planner.plan(adapter, kwargs, view, view.model, binding, policy, scopes)
        except (ContextWindowExceeded, PriceUnavailable) as exc:
            # Refused before anything was reserved (too long, or a price the budget needs is
            # unknown: UnpricedOption too): the ledger still shows the refusal.
            self.recorder.record_refusal(
                binding,
                view.model,
                exc,
                provider=getattr(adapter, "provider", ""),
                operation=getattr(adapter, "operation", "chat"),
            )
            raise
        if plan.trim is not None and self.on_trim is not None:
            self.on_trim(TrimEvent(plan.tenant, plan.model.name, plan.trim))
        return plan

    def flow(
        self, adapter: ProviderAdapter, kwargs: Mapping[str, Any], plan: Plan
    ) -> Generator[Op, Any, Any]:
        """Reserve, send with retries, settle (:func:`guardrail.engine.flow.run`)."""
        return flow.run(self, adapter, kwargs, plan)


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
