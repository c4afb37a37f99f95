"""``Guard``: the policies, the store and the sinks; wraps clients.

>>> guard = Guard(policy=Policy(daily_spend_usd=5, trim=True))
>>> client = guard.wrap(OpenAI())                      # or AsyncOpenAI()
>>> client.for_tenant("user-42").chat.completions.create(model="gpt-4o", messages=[...])
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

from guardrail._clock import Clock, system_clock
from guardrail.engine.core import Engine, StoreErrorMode
from guardrail.engine.plan import TrimEvent
from guardrail.errors import ConfigurationError, describe
from guardrail.observe.sinks import JsonLinesSink, Sink
from guardrail.observe.watch import observing
from guardrail.policy import Policy, PolicySource
from guardrail.prompt.trimming import Summarizer
from guardrail.stores.base import Store, UsageRow, UsageSummary
from guardrail.stores.memory import MemoryStore
from guardrail.tenancy import (
    GLOBAL_SCOPE,
    TenantBinding,
    TenantFromRequest,
    bound_tenant,
    is_derived,
    validate_scope_id,
)

if TYPE_CHECKING:
    from guardrail.observe.alerts import Alerts
    from guardrail.observe.telemetry import Telemetry

__all__ = ["Guard", "wrap"]


class Guard:
    """Hard limits for every chat completion made through the clients it wraps.

    * ``policy``: the default policy of every tenant.
    * ``tenant_policies``: per-tenant (or per-organisation) overrides, a mapping or a
      callable ``scope_id -> Policy | None``. A parent scope is limited only by its own
      entry here (or it is just accounted).
    * ``global_policy``: limits charged to every call, across all tenants.
    * ``store``: where budgets live; :class:`MemoryStore` by default (one process).
    * ``default_tenant``: charged when nothing else names a tenant; None makes a tenant
      mandatory.
    * ``sinks``: callables receiving each :class:`~guardrail.UsageRecord`; the JSON-lines
      logger ``guardrail.usage`` is always among them.
    * ``on_store_error``: ``"fail_closed"`` (raise StoreUnavailable, send nothing) or
      ``"fail_open"`` (send the call unmetered and log an error).
    * ``summarizer``: turns trimmed history into one summary message.
    * ``on_trim``: called with a :class:`TrimEvent` (what was dropped) when a call's
      history is trimmed; usage records also carry ``trimmed_messages``.
    * ``tenant_from_request``: a :class:`~guardrail.TenantFromRequest` to charge a call
      with no tenant bound to one derived (a keyed hash) from the request's
      ``safety_identifier``/``user`` (Anthropic: ``metadata.user_id``). Off by default:
      the request's fields then never choose who pays.
    * ``error_messages``: put the provider's error messages in usage records (they may
      quote the prompt); by default a record keeps their class, status, type and code.
    * ``alerts``: :class:`~guardrail.observe.Alerts`, rules and their destinations
      (docs/observability.md); evaluated and delivered off the call path.
    * ``telemetry``: True (or :class:`~guardrail.observe.Telemetry`) records
      OpenTelemetry metrics and spans of every call (the ``[otel]`` extra).
    * ``unmetered``: paid endpoints guardrail cannot meter (images, audio, batches,
      fine-tuning, legacy completions, Assistants runs, realtime sessions: the README's
      table) are refused for a tenant with a money limit (``"refuse"``, the default), or
      sent unmetered and logged once per process (``"allow"``).
    * ``clock``, ``sleep``, ``async_sleep``: injectable for tests.
    """

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        store: Store | None = None,
        tenant_policies: PolicySource | None = None,
        global_policy: Policy | None = None,
        default_tenant: str | None = "default",
        sinks: Iterable[Sink] = (),
        on_store_error: StoreErrorMode = "fail_closed",
        summarizer: Summarizer | None = None,
        on_trim: Callable[[TrimEvent], object] | None = None,
        tenant_from_request: TenantFromRequest | None = None,
        error_messages: bool = False,
        unmetered: Literal["refuse", "allow"] = "refuse",
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        alerts: Alerts | None = None,
        telemetry: Telemetry | bool = False,
    ) -> None:
        if policy is not None and not isinstance(policy, Policy):
            raise ConfigurationError(f"policy must be a guardrail.Policy, got {describe(policy)}")
        if on_store_error not in ("fail_closed", "fail_open"):
            raise ConfigurationError("on_store_error must be 'fail_closed' or 'fail_open'")
        if default_tenant is not None:
            validate_scope_id(default_tenant, what="default_tenant")
        if tenant_from_request is not None and not isinstance(
            tenant_from_request, TenantFromRequest
        ):
            raise ConfigurationError(
                "tenant_from_request must be a guardrail.TenantFromRequest(key=...)"
            )
        if unmetered not in ("refuse", "allow"):
            raise ConfigurationError("unmetered must be 'refuse' or 'allow'")
        self.unmetered = unmetered
        self.store: Store = store if store is not None else MemoryStore(clock=clock or system_clock)
        self.alerts = alerts
        self.store, observers = observing(self.store, telemetry=telemetry, alerts=alerts)
        self.sleep = sleep
        self.async_sleep = async_sleep
        self.engine = Engine(
            policy=policy or Policy(),
            tenant_policies=tenant_policies,
            global_policy=global_policy,
            default_tenant=default_tenant,
            sinks=[JsonLinesSink(), *sinks, *observers],
            clock=clock or self.store.now,
            on_store_error=on_store_error,
            summarizer=summarizer,
            windows=self.store.windows,
            on_trim=on_trim,
            tenant_from_request=tenant_from_request,
            error_messages=error_messages,
        )

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    def policy_for(self, tenant: str) -> Policy:
        return self.engine.policy_for(validate_scope_id(tenant))

    def wrap(self, client: Any, **options: Any) -> Any:
        """Guard an ``OpenAI``/``AsyncOpenAI`` or ``Anthropic``/``AsyncAnthropic`` client
        (``AnthropicBedrock``, ``AnthropicVertex`` and their async twins too; the one line
        to add): the result is a copy of the client, of a subclass of its class, whose paid
        calls go through the guard. Anthropic clients take
        ``exact_count=False`` to count prompts locally only (see
        :mod:`guardrail.providers.anthropic`)."""
        from guardrail.providers.sdk_classes import GuardedClientMarker

        if isinstance(client, GuardedClientMarker):  # guarded already: guard its original
            client = vars(client)["_guardrail"].unwrapped
        module = type(client).__module__.split(".")[0]
        if module == "anthropic":
            from guardrail.providers.anthropic.client import wrap_anthropic

            return wrap_anthropic(client, self, **options)
        if options:
            raise ConfigurationError(f"unexpected options for {type(client).__name__}: {options}")
        if module == "openai":
            from guardrail.providers.openai.client import wrap_openai

            return wrap_openai(client, self)
        raise ConfigurationError(
            f"cannot guard a {type(client).__name__}: expected an openai.OpenAI or "
            "AsyncOpenAI, or an anthropic.Anthropic or AsyncAnthropic"
        )

    @contextmanager
    def tenant(self, tenant: str, parents: Sequence[str] = ()) -> Iterator[TenantBinding]:
        """Charge guarded calls in this block (this thread or asyncio task) to ``tenant``."""
        with bound_tenant(tenant, parents) as binding:
            yield binding

    def request_tenant(self, value: str) -> str:
        """The tenant a request with ``safety_identifier``/``user`` = ``value`` is charged
        to (``Guard(tenant_from_request=...)``)."""
        if self.engine.tenant_from_request is None:
            raise ConfigurationError("this guard has no tenant_from_request")
        return self.engine.tenant_from_request.tenant_for(value)

    def usage(self, tenant: str, day: date | None = None) -> UsageSummary:
        """A tenant's usage today (or on ``day``): spent_usd, tokens, requests."""
        return self.store.usage(_scope_id(tenant, "tenant id"), day)

    async def ausage(self, tenant: str, day: date | None = None) -> UsageSummary:
        return await self.store.ausage(_scope_id(tenant, "tenant id"), day)

    def usage_report(
        self,
        scopes: Sequence[str] | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[UsageRow]:
        """Usage per tenant (or parent scope), per model, per day from ``start`` to ``end``
        inclusive (``end`` defaults to today, ``start`` to ``end``); ``scopes=None`` reports
        every scope with usage in the range."""
        return self.store.usage_report(_scope_ids(scopes), start, end)

    async def ausage_report(
        self,
        scopes: Sequence[str] | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[UsageRow]:
        return await self.store.ausage_report(_scope_ids(scopes), start, end)


def _scope_ids(scopes: Sequence[str] | None) -> list[str] | None:
    if scopes is None:
        return None
    if isinstance(scopes, str):
        scopes = [scopes]
    return [_scope_id(s) for s in scopes]


def _scope_id(scope: str, what: str = "scope id") -> str:
    """An explicit scope id, the global scope, or a derived tenant (``_r-...``)."""
    if isinstance(scope, str) and (scope == GLOBAL_SCOPE or is_derived(scope)):
        return scope
    return validate_scope_id(scope, what=what)


def wrap(client: Any, policy: Policy | None = None, **guard_options: Any) -> Any:
    """``guardrail.wrap(OpenAI(), Policy(...))``: a Guard and a guarded client in one go.
    The guard is reachable as ``client._guard``."""
    return Guard(policy, **guard_options).wrap(client)
