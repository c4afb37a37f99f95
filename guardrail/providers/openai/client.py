"""Guarded ``OpenAI`` / ``AsyncOpenAI`` clients.

``guard.wrap(client)`` returns a proxy: ``chat.completions.create`` (and ``parse``, and
their ``with_raw_response`` forms) go through the guard; everything else (other
resources, attributes, ``with_options``) passes straight to the client. The SDK's own
retries are turned off for guarded calls, so exactly one layer retries; passthrough
resources keep the client's settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from guardrail.engine.drivers import parse_async_raw
from guardrail.providers.common import public, run_async, run_sync
from guardrail.providers.openai.chat import OpenAIAdapter, materialise
from guardrail.tenancy import TenantBinding

if TYPE_CHECKING:
    from guardrail.guard import Guard

__all__ = ["GuardedOpenAI", "OpenAIAdapter"]


_ADAPTER = OpenAIAdapter()


class _GuardedCall:
    """One guarded SDK method (``create`` or ``parse``), plain or ``with_raw_response``."""

    def __init__(self, owner: GuardedOpenAI, method: str, raw: bool) -> None:
        self._owner, self._method, self._raw = owner, method, raw

    def _target(self) -> Any:
        completions = self._owner._unretried.chat.completions
        if self._raw:
            completions = completions.with_raw_response
        return getattr(completions, self._method)

    def __call__(self, **kwargs: Any) -> Any:
        kwargs = materialise(kwargs)
        if self._owner._is_async:
            return self._acall(kwargs)
        owner, target = self._owner, self._target()
        return run_sync(owner._guard, _ADAPTER, owner._binding, kwargs, lambda kw: target(**kw))

    async def _acall(self, kwargs: dict[str, Any]) -> Any:
        owner, target = self._owner, self._target()

        async def send(kw: dict[str, Any]) -> Any:
            return await parse_async_raw(await target(**kw))

        return await run_async(owner._guard, _ADAPTER, owner._binding, kwargs, send)


class _RawResponseView:
    def __init__(self, owner: GuardedOpenAI) -> None:
        self.create = _GuardedCall(owner, "create", raw=True)
        self.parse = _GuardedCall(owner, "parse", raw=True)


class _StreamingResponseView:
    """``with_streaming_response``: the SDK's own wrapper around our guarded methods, so
    the response context manager works as usual and the call is still guarded."""

    def __init__(self, completions: GuardedCompletions) -> None:
        from openai import _response

        wrap = (
            _response.async_to_streamed_response_wrapper
            if completions._owner._is_async
            else _response.to_streamed_response_wrapper
        )
        self.create = wrap(completions.create)
        self.parse = wrap(completions.parse)


class GuardedCompletions:
    def __init__(self, owner: GuardedOpenAI) -> None:
        self._owner = owner
        self.create = _GuardedCall(owner, "create", raw=False)
        self.parse = _GuardedCall(owner, "parse", raw=False)
        self.with_raw_response = _RawResponseView(owner)

    @property
    def with_streaming_response(self) -> _StreamingResponseView:
        return _StreamingResponseView(self)

    def stream(self, **kwargs: Any) -> Any:
        """The SDK's ``chat.completions.stream(...)`` helper, on top of the guarded ``create``:
        the SDK's method only calls ``self.create(stream=True, ...)``, so we lend it ours."""
        sdk_completions = self._owner._client.chat.completions
        return type(sdk_completions).stream(self, **kwargs)

    def __getattr__(self, name: str) -> Any:  # list, retrieve, messages, ...
        public(name)
        return getattr(self._owner._client.chat.completions, name)


class GuardedChat:
    def __init__(self, owner: GuardedOpenAI) -> None:
        self._owner = owner
        self.completions = GuardedCompletions(owner)

    def __getattr__(self, name: str) -> Any:
        public(name)
        return getattr(self._owner._client.chat, name)


class _ClientView:
    """The client-level ``with_raw_response`` / ``with_streaming_response``: their chat
    completions are guarded; every other resource is the SDK's own view."""

    def __init__(self, owner: GuardedOpenAI, sdk_view: Any, *, raw: bool) -> None:
        self._owner, self._sdk_view, self._raw = owner, sdk_view, raw

    @property
    def chat(self) -> Any:
        completions = self._owner.chat.completions
        view = completions.with_raw_response if self._raw else completions.with_streaming_response
        return SimpleNamespace(completions=view)

    def __getattr__(self, name: str) -> Any:
        public(name)
        return getattr(self._sdk_view, name)


class GuardedOpenAI:
    """A guarded ``OpenAI`` or ``AsyncOpenAI`` client; use it exactly like the client."""

    def __init__(self, client: Any, guard: Guard, binding: TenantBinding | None = None) -> None:
        self._client = client
        self._guard = guard
        self._binding = binding
        self._unretried = client.with_options(max_retries=0)
        self._is_async = type(client).__name__.startswith("Async")
        self.chat = GuardedChat(self)

    @property
    def unwrapped(self) -> Any:
        """The client as it was given (its own retries, no guard)."""
        return self._client

    def for_tenant(self, tenant: str, parents: Sequence[str] = ()) -> GuardedOpenAI:
        """A view of this client whose calls are charged to ``tenant`` (and ``parents``)."""
        return GuardedOpenAI(self._client, self._guard, TenantBinding.of(tenant, parents))

    def with_options(self, **options: Any) -> GuardedOpenAI:
        """Like the SDK's ``with_options``/``copy``, and still guarded."""
        return GuardedOpenAI(self._client.with_options(**options), self._guard, self._binding)

    copy = with_options

    @property
    def with_raw_response(self) -> _ClientView:
        """``client.with_raw_response.chat.completions.create(...)``: still guarded."""
        return _ClientView(self, self._client.with_raw_response, raw=True)

    @property
    def with_streaming_response(self) -> _ClientView:
        """``client.with_streaming_response.chat.completions.create(...)``: still guarded."""
        return _ClientView(self, self._client.with_streaming_response, raw=False)

    def __getattr__(self, name: str) -> Any:
        public(name)
        return getattr(self._client, name)

    def __repr__(self) -> str:
        who = f" tenant={self._binding.tenant!r}" if self._binding else ""
        return f"<guardrail guarded {type(self._client).__name__}{who}>"
