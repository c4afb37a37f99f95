"""Guarded ``Anthropic`` / ``AsyncAnthropic`` clients.

``guard.wrap(Anthropic())`` returns a proxy: ``messages.create`` (``stream=True`` too),
``messages.stream(...)``, ``messages.parse`` and the ``with_raw_response`` and
``with_streaming_response`` forms of ``create`` (on ``messages`` or on the client) go
through the guard: counted, fitted, reserved against the same tenants and limits as the
OpenAI calls of the same :class:`~guardrail.Guard`, sent with the one bounded retry policy
(the SDK's own retries are off), and settled with the provider's usage. The beta Messages
calls (``beta.messages.create``, ``stream``, ``parse``, ``tool_runner``, ``thread``) are
not guarded and raise :class:`~guardrail.ConfigurationError` (``client.unwrapped`` reaches
them). Everything else (``messages.count_tokens``, ``messages.batches``, ``models``, the
rest of ``beta``, ...) passes straight to the client.

Counting. Anthropic publishes no tokenizer for its current models, so guardrail has two
counts of a prompt:

* the **local estimate** (no I/O): every string counted with ``o200k_base`` times
  :data:`~guardrail.counting.messages.CLAUDE_SAFETY_MARGIN`, plus the rules below for what is not
  text (images, PDF pages, the tool-use system prompt);
* the **exact count**: Anthropic's ``POST /v1/messages/count_tokens`` on the same client,
  made once per call after the estimate's reservation is held (so a refused call sends
  nothing), cached per content (model, system, messages, tools, tool_choice, thinking).

The reservation is ``max(estimate, exact)``; the window is checked against both. A failed
count (network, rate limit, a gateway without the endpoint) keeps the estimate. Exact
counting is on by default; ``guard.wrap(client, exact_count=False)`` turns it off.
See ``docs/anthropic.md`` for why.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from guardrail.errors import ConfigurationError
from guardrail.providers.anthropic.adapter import AnthropicAdapter, materialized
from guardrail.providers.anthropic.exact_count import (
    TokenCountCache,
    count_key,
    count_params,
    no_count_endpoint,
)
from guardrail.providers.common import public, run_async, run_sync
from guardrail.tenancy import TenantBinding

if TYPE_CHECKING:
    from guardrail.guard import Guard

__all__ = ["GuardedAnthropic"]

_log = logging.getLogger("guardrail")

# ---------------------------------------------------------------------- the proxy


class _GuardedCall:
    """One guarded SDK method (``create`` or ``parse``), plain or ``with_raw_response``."""

    def __init__(self, owner: GuardedAnthropic, method: str, raw: bool) -> None:
        self._owner, self._method, self._raw = owner, method, raw

    def _target(self) -> Any:
        messages = self._owner._unretried.messages
        if self._raw:
            messages = messages.with_raw_response
        return getattr(messages, self._method)

    def __call__(self, **kwargs: Any) -> Any:
        target = self._target()
        if self._owner._is_async:
            return self._acall(kwargs, target)
        return self._owner._run_sync(kwargs, lambda kw: target(**kw))

    async def _acall(self, kwargs: dict[str, Any], target: Callable[..., Any]) -> Any:
        raw: list[Any] = []

        async def send(kw: dict[str, Any]) -> Any:
            response = await target(**kw)
            if _is_raw(response):
                # with_raw_response / with_streaming_response: the async SDK parses with an
                # await, which the engine's (sync) adapter cannot do; parse here instead.
                raw[:] = [response]
                return await response.parse()
            return response

        result = await self._owner._run_async(kwargs, send)
        return _AsyncRawResponse(raw[0], result) if raw else result


def _is_raw(response: Any) -> bool:
    return (
        hasattr(response, "parse")
        and not hasattr(response, "usage")
        and not hasattr(response, "__aiter__")
    )


class _AsyncRawResponse:
    """An ``AsyncAPIResponse`` the guard already parsed (to settle the call, or to guard its
    stream): ``await parse()`` returns that message or guarded stream; everything else
    (``headers``, ``status_code``, ``close()``...) is the SDK's response."""

    def __init__(self, response: Any, parsed: Any) -> None:
        self._response, self._parsed = response, parsed

    async def parse(self, **_: Any) -> Any:
        return self._parsed

    def __getattr__(self, name: str) -> Any:
        public(name)  # copy / pickle probe before __init__ ran
        return getattr(self._response, name)


class _RawResponseView:
    def __init__(self, owner: GuardedAnthropic) -> None:
        self._owner = owner
        self.create = _GuardedCall(owner, "create", raw=True)

    def __getattr__(self, name: str) -> Any:  # count_tokens, batches
        public(name)  # copy / pickle probe before __init__ ran
        return getattr(self._owner._client.messages.with_raw_response, name)


def _output_format(kwargs: Mapping[str, Any]) -> Any:
    from anthropic import NOT_GIVEN

    return kwargs.get("output_format", NOT_GIVEN)


class MessageStreamManager:
    """``messages.stream(...)``: nothing happens until the ``with`` block is entered; then
    the call is reserved and sent, and the SDK's ``MessageStream`` is returned over the
    guarded event stream, so ``text_stream``, ``get_final_message()`` and ``until_done()``
    are all counted. Leaving the block (or reading to the end) settles the call."""

    def __init__(self, owner: GuardedAnthropic, kwargs: dict[str, Any]) -> None:
        self._owner, self._kwargs = owner, kwargs
        self._stream: Any = None

    def __enter__(self) -> Any:
        from anthropic.lib.streaming import MessageStream

        unretried = self._owner._unretried

        def send(kw: dict[str, Any]) -> Any:
            kw = {k: v for k, v in kw.items() if k != "stream"}
            # The SDK's own helper builds the request (output_format, helper headers);
            # entering it sends it. We keep its raw event stream, and guard that.
            return unretried.messages.stream(**kw).__enter__()._raw_stream

        guarded = self._owner._run_sync({**self._kwargs, "stream": True}, send)
        self._stream = MessageStream(guarded, output_format=_output_format(self._kwargs))
        return self._stream

    def __exit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            self._stream.close()


class AsyncMessageStreamManager:
    """The ``AsyncAnthropic`` form of :class:`MessageStreamManager` (``async with``)."""

    def __init__(self, owner: GuardedAnthropic, kwargs: dict[str, Any]) -> None:
        self._owner, self._kwargs = owner, kwargs
        self._stream: Any = None

    async def __aenter__(self) -> Any:
        from anthropic.lib.streaming import AsyncMessageStream

        unretried = self._owner._unretried

        async def send(kw: dict[str, Any]) -> Any:
            kw = {k: v for k, v in kw.items() if k != "stream"}
            return (await unretried.messages.stream(**kw).__aenter__())._raw_stream

        guarded = await self._owner._run_async({**self._kwargs, "stream": True}, send)
        self._stream = AsyncMessageStream(guarded, output_format=_output_format(self._kwargs))
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            await self._stream.close()


class _StreamingResponseView:
    """``with_streaming_response``: the SDK's own wrapper around the guarded methods, so
    the response context manager works as usual and the call is still guarded."""

    def __init__(self, messages: GuardedMessages) -> None:
        from anthropic import _response

        wrap: Any = (
            _response.async_to_streamed_response_wrapper
            if messages._owner._is_async
            else _response.to_streamed_response_wrapper
        )
        self._owner = messages._owner
        self.create = wrap(messages.create)

    def __getattr__(self, name: str) -> Any:  # count_tokens, batches
        public(name)  # copy / pickle probe before __init__ ran
        return getattr(self._owner._client.messages.with_streaming_response, name)


class GuardedMessages:
    def __init__(self, owner: GuardedAnthropic) -> None:
        self._owner = owner
        self.create = _GuardedCall(owner, "create", raw=False)
        self.parse = _GuardedCall(owner, "parse", raw=False)
        self.with_raw_response = _RawResponseView(owner)

    @property
    def with_streaming_response(self) -> _StreamingResponseView:
        return _StreamingResponseView(self)

    def stream(self, **kwargs: Any) -> MessageStreamManager | AsyncMessageStreamManager:
        if self._owner._is_async:
            return AsyncMessageStreamManager(self._owner, kwargs)
        return MessageStreamManager(self._owner, kwargs)

    def __getattr__(self, name: str) -> Any:  # count_tokens, batches, ...
        public(name)  # copy / pickle probe before __init__ ran
        return getattr(self._owner._client.messages, name)


class _ClientRawResponseView:
    """``client.with_raw_response``: its ``messages`` is the guarded
    ``messages.with_raw_response`` (and its ``beta`` refuses the beta Messages calls);
    every other resource is the SDK's own raw-response view."""

    def __init__(self, owner: GuardedAnthropic) -> None:
        self._owner = owner
        self.messages = owner.messages.with_raw_response

    @property
    def beta(self) -> _BetaView:
        return _BetaView(self._owner._client.with_raw_response.beta, "with_raw_response.beta")

    def __getattr__(self, name: str) -> Any:  # models, files, ...
        public(name)  # copy / pickle probe before __init__ ran
        return getattr(self._owner._client.with_raw_response, name)


class _ClientStreamingResponseView:
    """``client.with_streaming_response``: as :class:`_ClientRawResponseView`."""

    def __init__(self, owner: GuardedAnthropic) -> None:
        self._owner = owner
        self.messages = owner.messages.with_streaming_response

    @property
    def beta(self) -> _BetaView:
        return _BetaView(
            self._owner._client.with_streaming_response.beta, "with_streaming_response.beta"
        )

    def __getattr__(self, name: str) -> Any:  # models, files, ...
        public(name)  # copy / pickle probe before __init__ ran
        return getattr(self._owner._client.with_streaming_response, name)


_GENERATING = frozenset({"create", "parse", "stream", "tool_runner", "thread"})
"""The beta Messages methods that make (or, for ``thread``, later make) billed requests."""


class _BetaView:
    """``client.beta`` (and its raw / streaming-response forms): everything is the SDK's,
    except that ``messages`` refuses the calls that generate (see :class:`_BetaMessages`)."""

    def __init__(self, beta: Any, where: str) -> None:
        self._beta, self._where = beta, where

    def __getattr__(self, name: str) -> Any:
        public(name)  # copy / pickle probe before __init__ ran
        value = getattr(self._beta, name)
        if name == "messages":
            return _BetaMessages(value, f"{self._where}.messages")
        if name in ("with_raw_response", "with_streaming_response"):
            return _BetaView(value, f"{self._where}.{name}")
        return value


class _BetaMessages:
    """``client.beta.messages``: not guarded, so its generating calls (``create``,
    ``parse``, ``stream``, ``tool_runner``, ``thread``, and their raw / streaming-response
    forms) raise :class:`~guardrail.ConfigurationError` instead of silently spending past
    the budget. ``count_tokens`` and ``batches`` are the SDK's."""

    def __init__(self, messages: Any, where: str) -> None:
        self._messages, self._where = messages, where

    def __getattr__(self, name: str) -> Any:
        public(name)  # copy / pickle probe before __init__ ran
        if name in _GENERATING:
            return _refusal(f"{self._where}.{name}")
        value = getattr(self._messages, name)
        if name in ("with_raw_response", "with_streaming_response"):
            return _BetaMessages(value, f"{self._where}.{name}")
        return value


def _refusal(where: str) -> Callable[..., Any]:
    def refuse(*_: Any, **__: Any) -> Any:
        raise ConfigurationError(
            f"client.{where}(...) is not guarded: it would spend outside the budget, so "
            "guardrail refuses it and sent nothing. Use client.messages (pass a beta with "
            f"extra_headers={{'anthropic-beta': '...'}}), or client.unwrapped.{where}(...) "
            "for an unguarded, unmetered call."
        )

    return refuse


class GuardedAnthropic:
    """A guarded ``Anthropic`` or ``AsyncAnthropic`` client; use it exactly like the client.

    ``exact_count`` (default True): ask ``messages.count_tokens`` for each new prompt
    (cached per content) and reserve ``max(estimate, exact)``; False uses the local
    estimate alone and makes no extra request. A client that turns out to have no count
    endpoint (``AnthropicBedrock``, a gateway answering 404) switches to False by itself,
    with one warning.
    """

    def __init__(
        self,
        client: Any,
        guard: Guard,
        binding: TenantBinding | None = None,
        *,
        exact_count: bool = True,
        count_cache: TokenCountCache | None = None,
        adapter: AnthropicAdapter | None = None,
    ) -> None:
        self._client = client
        self._guard = guard
        self._binding = binding
        self._unretried = client.with_options(max_retries=0)
        self._is_async = type(client).__name__.startswith("Async")
        # Shared with this client's for_tenant / with_options views (``adapter``), so that
        # a client found to have no count endpoint stops asking, in every view.
        self._adapter = adapter or AnthropicAdapter(exact_count=exact_count)
        self.count_cache = count_cache if count_cache is not None else TokenCountCache()
        self.messages = GuardedMessages(self)

    @property
    def exact_count(self) -> bool:
        return self._adapter.exact_count

    @property
    def unwrapped(self) -> Any:
        """The client as it was given (its own retries, no guard)."""
        return self._client

    @property
    def with_raw_response(self) -> _ClientRawResponseView:
        """The SDK's ``client.with_raw_response``, with ``messages.create`` guarded."""
        return _ClientRawResponseView(self)

    @property
    def with_streaming_response(self) -> _ClientStreamingResponseView:
        """The SDK's ``client.with_streaming_response``, with ``messages.create`` guarded."""
        return _ClientStreamingResponseView(self)

    @property
    def beta(self) -> _BetaView:
        """The SDK's ``client.beta``; its Messages calls are refused (not guarded)."""
        return _BetaView(self._client.beta, "beta")

    def _view(self, client: Any, binding: TenantBinding | None) -> GuardedAnthropic:
        return GuardedAnthropic(
            client, self._guard, binding, count_cache=self.count_cache, adapter=self._adapter
        )

    def for_tenant(self, tenant: str, parents: Sequence[str] = ()) -> GuardedAnthropic:
        """A view of this client whose calls are charged to ``tenant`` (and ``parents``)."""
        return self._view(self._client, TenantBinding.of(tenant, parents))

    def with_options(self, **options: Any) -> GuardedAnthropic:
        """Like the SDK's ``with_options``/``copy``, and still guarded."""
        return self._view(self._client.with_options(**options), self._binding)

    copy = with_options

    # -- running a call

    def _count_sync(self, kwargs: dict[str, Any]) -> int:
        params = count_params(kwargs)
        key = count_key(params)
        found = self.count_cache.get(key)
        if found is None:
            try:
                found = int(self._unretried.messages.count_tokens(**params).input_tokens)
            except Exception as exc:
                self._count_failed(exc)
                raise
            self.count_cache.put(key, found)
        return found

    async def _count_async(self, kwargs: dict[str, Any]) -> int:
        params = count_params(kwargs)
        key = count_key(params)
        found = self.count_cache.get(key)
        if found is None:
            try:
                counted = await self._unretried.messages.count_tokens(**params)
            except Exception as exc:
                self._count_failed(exc)
                raise
            found = int(counted.input_tokens)
            self.count_cache.put(key, found)
        return found

    def _count_failed(self, exc: Exception) -> None:
        """A client without the endpoint (Bedrock, a gateway answering 404) stops asking;
        a passing failure (a timeout, a 429, a 5xx) only costs this call its exact count."""
        if self._adapter.exact_count and no_count_endpoint(exc):
            self._adapter.exact_count = False
            _log.warning(
                "guardrail: %s cannot count tokens (%r); its prompts are counted locally "
                "from now on (guard.wrap(client, exact_count=False) says so up front)",
                type(self._client).__name__,
                exc,
            )

    def _run_sync(self, kwargs: dict[str, Any], send: Callable[[dict[str, Any]], Any]) -> Any:
        kwargs = materialized(kwargs)
        return run_sync(self._guard, self._adapter, self._binding, kwargs, send, self._count_sync)

    async def _run_async(
        self, kwargs: dict[str, Any], send: Callable[[dict[str, Any]], Awaitable[Any]]
    ) -> Any:
        kwargs = materialized(kwargs)
        return await run_async(
            self._guard, self._adapter, self._binding, kwargs, send, self._count_async
        )

    def __getattr__(self, name: str) -> Any:
        public(name)  # copy / pickle probe before __init__ ran
        return getattr(self._client, name)

    def __repr__(self) -> str:
        who = f" tenant={self._binding.tenant!r}" if self._binding else ""
        return f"<guardrail guarded {type(self._client).__name__}{who}>"
