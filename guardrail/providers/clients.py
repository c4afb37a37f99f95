"""What every guarded SDK client shares (OpenAI's and Anthropic's): the state it carries,
its guarded and unmetered methods, and ``copy`` / ``with_options`` / ``for_tenant``.

A provider describes each guarded endpoint with an :class:`Endpoint` (its adapter, how its
kwargs are prepared, how the provider counts a prompt) and each resource with a
:class:`~guardrail.providers.sdk_classes.Node`; this module turns them into methods.
"""

from __future__ import annotations

import inspect
import logging
import threading
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from guardrail.engine.adapter import ProviderAdapter
from guardrail.engine.drivers import parse_async_raw, parses_async
from guardrail.engine.request_check import check_names
from guardrail.errors import UnmeteredCall
from guardrail.providers.common import (
    given,
    lift_extra_body,
    parameters_of,
    run_async,
    run_sync,
)
from guardrail.providers.raw_requests import FreeWrites, request_hook, vetted
from guardrail.providers.sdk_classes import Node, guard_instance, guarded_class, resource_at
from guardrail.tenancy import TenantBinding

if TYPE_CHECKING:
    from guardrail.guard import Guard

__all__ = [
    "ClientState",
    "Endpoint",
    "check_unmetered",
    "guarded",
    "guarded_client_class",
    "is_async",
    "unmetered",
    "unmetered_tree",
    "wrap_client",
]

_log = logging.getLogger("guardrail")

Counter = Callable[[dict[str, Any]], Any]


@dataclass
class ClientState:
    """What a guarded client carries: its guard, the tenant it charges (None: resolved per
    call), the client it was made from, and provider extras (``extra``)."""

    guard: Guard
    binding: TenantBinding | None
    unwrapped: Any
    extra: Any = None
    _unretried: Any = field(default=None, repr=False)
    _seen: tuple[Any, ...] = field(default=(), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _targets: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    def unretried(self, client: Any) -> Any:
        """A plain SDK copy of ``client`` with its retries off: guarded calls are sent on
        it, so that guardrail's retry policy is the only one (free calls keep the client's
        own retries). Made again when the client's URL or credentials were set since (a
        rotated key or token, a moved host)."""
        plain = self._unretried
        if plain is None or self._changed(client):
            with self._lock:
                plain = self._unretried
                if plain is None or self._changed(client):
                    base = type(self.unwrapped)
                    self._seen = _settings(client)
                    plain = sdk_copy(base, client, max_retries=0)
                    plain.__class__ = base
                    self._targets = {}
                    self._unretried = plain
        return plain

    def _changed(self, client: Any) -> bool:
        # Identical objects compare in C (the common case); a setting set since compares
        # by value, so re-setting the same key makes no new copy.
        return _settings(client) != self._seen

    def target(self, client: Any, path: str, name: str) -> Any:
        """The SDK method ``path.name`` of :meth:`unretried`, looked up once per client
        (and again once its settings changed)."""
        if self._unretried is not None and self._changed(client):
            self.unretried(client)
        key = (path, name)
        found = self._targets.get(key)
        if found is None:
            found = self._targets[key] = getattr(resource_at(self.unretried(client), path), name)
        return found

    def fresh(self, **changes: Any) -> ClientState:
        return replace(
            self,
            _unretried=None,
            _seen=(),
            _lock=threading.Lock(),
            _targets={},
            **changes,
        )


_SETTINGS = (
    "_base_url",
    "api_key",
    "auth_token",  # Anthropic's
    "access_token",  # AnthropicVertex's (and its region, project and Google credentials)
    "region",
    "project_id",
    "credentials",
    "aws_access_key",  # AnthropicBedrock's
    "aws_secret_key",
    "aws_session_token",
    "aws_region",
    "aws_profile",
)
"""The attributes a plain copy of a client takes from it, which a caller may set on the
client itself (a rotated key, a refreshed token): set since, the copy is made again."""


def _settings(client: Any) -> tuple[Any, ...]:
    """The client's URL and credentials (:data:`_SETTINGS`), compared on every guarded
    call: unchanged, they are the same objects, which a tuple compares without calling
    their ``__eq__`` (a copy of the client has its own objects, so it is never compared)."""
    return tuple(map(vars(client).get, _SETTINGS))


def sdk_copy(base: type, client: Any, **options: Any) -> Any:
    """``base.copy(client, **options)`` on the client's own HTTP client, unless ``options``
    name one: the SDK's ``copy`` shares it, except ``AnthropicBedrock``'s in anthropic
    1.0.0, which makes a new default one (the copy loses the caller's transport, proxy)."""
    if options.get("http_client") is None:
        options["http_client"] = client._client
    return base.copy(client, **options)  # type: ignore[attr-defined]


def state_of(resource: Any) -> ClientState:
    return client_state(resource._client)


def client_state(client: Any) -> ClientState:
    """The guard's state of a guarded client; a clear error for one built without
    ``guard.wrap`` (``type(guarded)(...)``, ``OpenAI.copy(guarded)``), which has none."""
    state: ClientState | None = getattr(client, "_guardrail", None)
    if state is None:
        raise TypeError(
            f"this {type(client).__name__} was built without guard.wrap(...) (by calling its "
            "class, or the SDK's unbound copy on a guarded client), so it has no guard: use "
            "guard.wrap(client), or client.copy() / client.with_options() on a guarded client"
        )
    return state


def is_async(function: Callable[..., Any]) -> bool:
    """Whether an SDK method is ``async def`` (under the SDK's own decorators)."""
    return inspect.iscoroutinefunction(inspect.unwrap(function))


@dataclass(frozen=True)
class Endpoint:
    """One guarded endpoint: its adapter (``adapter``, or ``adapter_of(state, client)`` when
    the client's state holds it, for the client the call is made on), how its kwargs are
    read once (``prepare``), and how the provider counts its prompt (``count`` /
    ``acount``: ``(state, plain client) -> counter``, for adapters that ask;
    ``billed_model``: see below)."""

    adapter: ProviderAdapter | None = None
    adapter_of: Callable[[ClientState, Any], ProviderAdapter] | None = None
    prepare: Callable[[dict[str, Any]], dict[str, Any]] = dict
    count: Callable[[ClientState, Any], Counter | None] | None = None
    acount: Callable[[ClientState, Any], Callable[[dict[str, Any]], Awaitable[int]]] | None = None
    billed_model: Callable[[Any], str | None] | None = None
    """The model the provider bills whatever the body's ``model`` says, from the client
    (an Azure client made for one deployment), None when the body's is."""

    def adapter_for(self, state: ClientState, client: Any) -> ProviderAdapter:
        if self.adapter_of is not None:
            return self.adapter_of(state, client)
        assert self.adapter is not None
        return self.adapter


def _keywords(path: str, name: str, args: tuple[Any, ...]) -> None:
    if args:  # the SDK's methods take keyword arguments only
        raise TypeError(f"{path}.{name}() takes keyword arguments only")


def sdk_request(
    kwargs: dict[str, Any], parameters: frozenset[str] | None, api: str
) -> dict[str, Any]:
    """The keyword arguments of a call to an SDK method (whose keyword ``parameters`` are
    :func:`parameters_of` it), as the guard reads them: ``extra_body`` keys the method
    takes lifted up (:func:`lift_extra_body`), then every name checked against the
    method's signature (the SDK would raise a TypeError only after the reservation)."""
    kwargs = lift_extra_body(kwargs, parameters)
    check_names(kwargs, parameters, api)
    return kwargs


def _billed(endpoint: Endpoint, client: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the model the provider bills, where the client fixes it
    (``Endpoint.billed_model``: an Azure client made for one deployment)."""
    if endpoint.billed_model is None:
        return kwargs
    model = endpoint.billed_model(client)
    if model is None or kwargs.get("model") == model:
        return kwargs
    return {**kwargs, "model": model}


def guarded(endpoint: Endpoint) -> Any:
    """The factory of a guarded method: the call planned and driven by the engine, and
    sent by the SDK's own method on the client without retries."""

    def factory(path: str, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        # Once per method, not per call: its signature, its name in errors.
        parameters, api = parameters_of(original), f"{path}.{name}"
        if is_async(original):

            async def amethod(self: Any, *args: Any, **kwargs: Any) -> Any:
                _keywords(path, name, args)
                state, client = state_of(self), self._client
                target = state.target(client, path, name)

                async def send(kw: dict[str, Any]) -> Any:
                    response = await target(**kw)
                    # A parsed response (the common case) needs no coroutine of ours.
                    return await parse_async_raw(response) if parses_async(response) else response

                count = None
                if endpoint.acount is not None:
                    count = endpoint.acount(state, state.unretried(client))
                adapter = endpoint.adapter or endpoint.adapter_for(state, client)
                kwargs = sdk_request(
                    endpoint.prepare(_billed(endpoint, client, kwargs)), parameters, api
                )
                return await run_async(state.guard, adapter, state.binding, kwargs, send, count)

            return amethod

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            _keywords(path, name, args)
            state, client = state_of(self), self._client
            target = state.target(client, path, name)
            count = None
            if endpoint.count is not None:
                count = endpoint.count(state, state.unretried(client))
            adapter = endpoint.adapter or endpoint.adapter_for(state, client)
            kwargs = sdk_request(
                endpoint.prepare(_billed(endpoint, client, kwargs)), parameters, api
            )
            return run_sync(
                state.guard, adapter, state.binding, kwargs, lambda kw: target(**kw), count
            )

        return method

    return factory


# -- unmetered methods -----------------------------------------------------------------

_logged: set[str] = set()


def _limited(limits: Any) -> bool:
    return any(
        value is not None
        for value in (
            limits.daily_nanos,
            limits.monthly_nanos,
            limits.tokens_per_minute,
            limits.tokens_per_day,
            limits.max_in_flight,
        )
    )


def check_unmetered(
    state: ClientState, what: str, kwargs: Mapping[str, Any], *, known_paid: bool = True
) -> None:
    """Refuse a paid call guardrail cannot meter (or, ``known_paid=False``, a request it does
    not know to be free) when its tenant (or a parent, or the global policy) has any limit
    (it would pass around it), unless the guard allows such calls; log it once per process
    when it passes."""
    guard = state.guard
    engine = guard.engine
    hint = kwargs.get("user")
    binding = engine.binding_for(
        state.binding, hint if given(hint) and isinstance(hint, str) else None
    )
    scopes = engine.scopes_for(binding, engine.policy_for(binding.tenant))
    limited = tuple(s.scope for s in scopes if _limited(s))
    if limited and guard.unmetered != "allow":
        raise UnmeteredCall(
            endpoint=what, tenant=binding.tenant, scopes=limited, known_paid=known_paid
        )
    if what not in _logged:
        _logged.add(what)
        _log.warning(
            "guardrail: %s is %s; it is sent unmetered (tenant %s; logged once per process)",
            what,
            "a paid call guardrail cannot meter" if known_paid else "not known to be free",
            binding.tenant,
        )


def unmetered(path: str, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """The factory of an unmetered method: checked by :func:`check_unmetered`, then the
    SDK's own."""
    what = f"{path}.{name}"
    if is_async(original):

        async def amethod(self: Any, *args: Any, **kwargs: Any) -> Any:
            check_unmetered(state_of(self), what, kwargs)
            with vetted():  # its request need not be checked again
                return await original(self, *args, **kwargs)

        return amethod

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        check_unmetered(state_of(self), what, kwargs)
        with vetted():
            return original(self, *args, **kwargs)

    return method


def unmetered_tree(
    unmetered_paths: Mapping[str, Sequence[str]], guarded_paths: Mapping[str, Mapping[str, Any]]
) -> Node:
    """One tree of nodes from dotted resource paths: ``unmetered_paths`` (path: methods)
    and ``guarded_paths`` (path: {method: factory}); every ancestor is a node too."""
    methods: dict[str, dict[str, Any]] = {}
    for path, names in unmetered_paths.items():
        methods.setdefault(path, {}).update(dict.fromkeys(names, unmetered))
    for path, factories in guarded_paths.items():
        methods.setdefault(path, {}).update(factories)
    for path in list(methods):
        while "." in path:
            path = path.rpartition(".")[0]
            methods.setdefault(path, {})

    def build(prefix: str) -> Node:
        children = {
            path.rpartition(".")[2]: build(path)
            for path in sorted(methods)
            if path.rpartition(".")[0] == prefix and path != prefix
        }
        return Node(methods=methods.get(prefix, {}), children=children)

    return build("")


# -- the client -----------------------------------------------------------------------


def _copy(base: type) -> Callable[..., Any]:
    def copy(self: Any, **options: Any) -> Any:
        """Like the SDK's ``copy`` / ``with_options``, and still guarded."""
        new = sdk_copy(base, self, **options)  # builds self.__class__(...)
        new._guardrail = client_state(self).fresh()
        return new

    return copy


def _for_tenant(self: Any, tenant: str, parents: Sequence[str] = ()) -> Any:
    """A copy of this client whose calls are charged to ``tenant`` (and ``parents``)."""
    new = self.copy()
    new._guardrail = client_state(new).fresh(binding=TenantBinding.of(tenant, parents))
    return new


def _unwrapped(self: Any) -> Any:
    """The client as it was given (its own retries, no guard)."""
    return client_state(self).unwrapped


def _guard(self: Any) -> Any:
    """The :class:`~guardrail.Guard` of this client (``guardrail.wrap`` made one)."""
    return client_state(self).guard


def _repr(self: Any) -> str:
    state = getattr(self, "_guardrail", None)
    if state is None:
        return f"<guardrail {type(self).__name__} without a guard>"
    who = f" tenant={state.binding.tenant!r}" if state.binding else ""
    return f"<guardrail guarded {type(state.unwrapped).__name__}{who}>"


def _check_request(client: Any, what: str, body: Mapping[str, Any]) -> None:
    check_unmetered(client_state(client), what, body, known_paid=False)


def guarded_client_class(
    base: type, tree: Node, free: FreeWrites, extra: Mapping[str, Any] = {}
) -> type:
    """The guarded subclass of an SDK client class (made once per class and tree): its
    resources' paid methods guarded, and its own ``request`` screened (``free``: the writes
    the provider does not bill; :mod:`guardrail.providers.raw_requests`)."""
    copy = _copy(base)
    base_request = base.request  # type: ignore[attr-defined]
    attrs = {
        "request": request_hook(base_request, is_async(base_request), free, _check_request),
        "copy": copy,
        "with_options": copy,
        "for_tenant": _for_tenant,
        "unwrapped": property(_unwrapped),
        "_guard": property(_guard),
        "__repr__": _repr,
        **extra,
    }
    return guarded_class(base, tree, "", attrs)


def _warn_if_calls_outlive_holds(client: Any, guard: Guard) -> None:
    """A call in flight keeps its hold (the drivers' keeper renews it) when the store can
    renew holds (``extend``). With a store that cannot, a call waiting longer than its hold
    lives loses the hold while it waits (other calls may spend that room): say so when the
    client's read timeout (or its absence) allows it."""
    if getattr(guard.store, "extend", None) is not None:
        return
    ttl = guard.engine.policy.reservation_ttl_seconds
    timeout = getattr(client, "timeout", None)
    read = timeout if isinstance(timeout, (int, float)) else getattr(timeout, "read", 0)
    if read is None or (isinstance(read, (int, float)) and read >= ttl):
        warnings.warn(
            f"this client waits up to {'no limit' if read is None else f'{read:g} s'} for an "
            f"answer, and the guard's reservations live {ttl:g} s "
            f"(Policy.reservation_ttl_seconds), which {type(guard.store).__name__} cannot "
            "renew (it has no extend): a request still waiting when its hold expires lets "
            "other calls spend its room. Give the client a shorter timeout, or the policy a "
            "longer reservation_ttl_seconds.",
            UserWarning,
            stacklevel=5,  # guard.wrap's caller
        )


def wrap_client(
    client: Any, guard: Guard, guarded_class_of: Callable[[type], type], extra_state: Any = None
) -> Any:
    """A guarded copy of ``client``, of the class ``guarded_class_of(type(client))``."""
    _warn_if_calls_outlive_holds(client, guard)
    fresh = sdk_copy(type(client), client)
    state = ClientState(guard, None, client, extra_state)
    return guard_instance(fresh, guarded_class_of(type(client)), "_guardrail", state)
