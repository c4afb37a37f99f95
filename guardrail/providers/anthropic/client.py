"""Guarded ``Anthropic`` / ``AsyncAnthropic`` clients, and the platforms' (``AnthropicBedrock``,
``AnthropicVertex`` and their async twins: the same resources, built in ``__init__``).

``guard.wrap(Anthropic())`` returns a copy of the client whose class is a subclass of its
own (``isinstance(guarded, anthropic.Anthropic)`` holds), in which ``messages.create``
(``stream=True`` too), ``messages.stream(...)``, ``messages.parse`` and their
``with_raw_response`` / ``with_streaming_response`` forms (on ``messages`` or on the
client) go through the guard: counted, fitted, reserved against the same tenants and
limits as the OpenAI calls of the same :class:`~guardrail.Guard`, sent with the one bounded
retry policy (the SDK's own retries are off for them), and settled with the provider's
usage. The paid calls guardrail does not meter (the beta Messages calls ``create``,
``stream``, ``parse``, ``tool_runner``, ``thread``; message batches) are refused for a
tenant with a money limit (:class:`~guardrail.UnmeteredCall`; ``Guard(unmetered="allow")``
lets them through, logged), and ``client.unwrapped`` reaches them. Everything else
(``messages.count_tokens``, ``models``, files, ...) is the SDK's own.

Counting. Anthropic publishes no tokenizer for its current models, so guardrail has two
counts of a prompt:

* the **local estimate** (no I/O): every string counted with ``o200k_base`` times
  :data:`~guardrail.counting.CLAUDE_SAFETY_MARGIN`, plus the rules below for what is not
  text (images, PDF pages, the tool-use system prompt);
* the **exact count**: Anthropic's ``POST /v1/messages/count_tokens`` on the same client,
  made once per call after the estimate's reservation is held (so a refused call sends
  nothing), cached per content (model, system, messages, tools, tool_choice, thinking).

The reservation is ``max(estimate, exact)``; the window is checked against both. A failed
count (network, rate limit, a gateway without the endpoint) keeps the estimate. Exact
counting is on by default (``AnthropicBedrock``'s SDK cannot count: off there);
``guard.wrap(client, exact_count=False)`` turns it off. See ``docs/anthropic.md`` for why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guardrail.catalog.premiums import VERTEX_REGIONAL
from guardrail.providers.anthropic.adapter import AnthropicAdapter, materialized
from guardrail.providers.anthropic.exact_count import (
    TokenCountCache,
    count_key,
    count_params,
    no_count_endpoint,
)
from guardrail.providers.clients import (
    ClientState,
    Endpoint,
    guarded,
    guarded_client_class,
    is_async,
    state_of,
    unmetered_tree,
    wrap_client,
)
from guardrail.providers.common import run_async, run_sync
from guardrail.providers.raw_requests import FreeWrites
from guardrail.providers.sdk_classes import Node

if TYPE_CHECKING:
    from guardrail.guard import Guard

__all__ = ["ANTHROPIC_TREE", "UNMETERED", "guarded_anthropic_class", "wrap_anthropic"]

_log = logging.getLogger("guardrail")


@dataclass
class _Counting:
    """Shared by a guarded client and every copy of it: the adapter (a client found to
    have no count endpoint stops asking, in every copy) and the exact counts. A Vertex
    client has a second adapter, for its calls on a regional endpoint (a copy may have
    another region than the client it was made from)."""

    adapter: AnthropicAdapter
    cache: TokenCountCache
    regional: AnthropicAdapter | None = None


def _counting(state: ClientState) -> _Counting:
    found: _Counting = state.extra
    return found


def _regional(client: Any) -> bool:
    """Whether a Vertex client's ``region`` is not the global endpoint (a region, or the
    ``"us"`` / ``"eu"`` multi-regions): Vertex bills those 10% more from Claude Sonnet 4.5
    on (:mod:`guardrail.catalog.premiums`)."""
    return bool(vars(client).get("region") != "global")


def _adapter(state: ClientState, client: Any) -> AnthropicAdapter:
    """The adapter of a call made on ``client`` (its region, read per call)."""
    counting = _counting(state)
    if counting.regional is not None and _regional(client):
        return counting.regional
    return counting.adapter


def _count_failed(state: ClientState, exc: Exception) -> None:
    """A client without the endpoint (a gateway answering 404) stops asking;
    a passing failure (a timeout, a 429, a 5xx) only costs this call its exact count."""
    counting = _counting(state)
    adapter = counting.adapter
    if adapter.exact_count and no_count_endpoint(exc):
        adapter.exact_count = False
        if counting.regional is not None:
            counting.regional.exact_count = False
        _log.warning(
            "guardrail: %s cannot count tokens (%r); its prompts are counted locally "
            "from now on (guard.wrap(client, exact_count=False) says so up front)",
            type(state.unwrapped).__name__,
            exc,
        )


def _counter(state: ClientState, client: Any) -> Callable[[dict[str, Any]], int]:
    cache = _counting(state).cache

    def count(kwargs: dict[str, Any]) -> int:
        params = count_params(kwargs)
        key = count_key(params)
        found = cache.get(key)
        if found is None:
            try:
                found = int(client.messages.count_tokens(**params).input_tokens)
            except Exception as exc:
                _count_failed(state, exc)
                raise
            cache.put(key, found)
        return found

    return count


def _acounter(state: ClientState, client: Any) -> Callable[[dict[str, Any]], Any]:
    cache = _counting(state).cache

    async def count(kwargs: dict[str, Any]) -> int:
        params = count_params(kwargs)
        key = count_key(params)
        found = cache.get(key)
        if found is None:
            try:
                counted = await client.messages.count_tokens(**params)
            except Exception as exc:
                _count_failed(state, exc)
                raise
            found = int(counted.input_tokens)
            cache.put(key, found)
        return found

    return count


MESSAGES = Endpoint(
    adapter_of=_adapter,
    prepare=materialized,
    count=_counter,
    acount=_acounter,
)


def _output_format(kwargs: dict[str, Any]) -> Any:
    from anthropic import NOT_GIVEN

    return kwargs.get("output_format", NOT_GIVEN)


class MessageStreamManager:
    """``messages.stream(...)``: nothing happens until the ``with`` block is entered; then
    the call is reserved and sent, and the SDK's ``MessageStream`` is returned over the
    guarded event stream, so ``text_stream``, ``get_final_message()`` and ``until_done()``
    are all counted. Leaving the block (or reading to the end) settles the call."""

    def __init__(self, resource: Any, kwargs: dict[str, Any]) -> None:
        self._resource, self._kwargs = resource, kwargs
        self._stream: Any = None

    def _run(self) -> Any:
        state = state_of(self._resource)
        plain = state.unretried(self._resource._client)

        def send(kw: dict[str, Any]) -> Any:
            kw = {k: v for k, v in kw.items() if k != "stream"}
            # The SDK's own helper builds the request (output_format, helper headers);
            # entering it sends it. We keep its raw event stream, and guard that.
            return plain.messages.stream(**kw).__enter__()._raw_stream

        kwargs = materialized({**self._kwargs, "stream": True})
        adapter = MESSAGES.adapter_for(state, self._resource._client)
        return run_sync(state.guard, adapter, state.binding, kwargs, send, _counter(state, plain))

    def __enter__(self) -> Any:
        from anthropic.lib.streaming import MessageStream

        self._stream = MessageStream(self._run(), output_format=_output_format(self._kwargs))
        return self._stream

    def __exit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            self._stream.close()


class AsyncMessageStreamManager:
    """The ``AsyncAnthropic`` form of :class:`MessageStreamManager` (``async with``)."""

    def __init__(self, resource: Any, kwargs: dict[str, Any]) -> None:
        self._resource, self._kwargs = resource, kwargs
        self._stream: Any = None

    async def __aenter__(self) -> Any:
        from anthropic.lib.streaming import AsyncMessageStream

        state = state_of(self._resource)
        plain = state.unretried(self._resource._client)

        async def send(kw: dict[str, Any]) -> Any:
            kw = {k: v for k, v in kw.items() if k != "stream"}
            return (await plain.messages.stream(**kw).__aenter__())._raw_stream

        kwargs = materialized({**self._kwargs, "stream": True})
        adapter = MESSAGES.adapter_for(state, self._resource._client)
        count = _acounter(state, plain)
        guarded_stream = await run_async(state.guard, adapter, state.binding, kwargs, send, count)
        self._stream = AsyncMessageStream(
            guarded_stream, output_format=_output_format(self._kwargs)
        )
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            await self._stream.close()


def _stream(path: str, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """``messages.stream``: the SDK's helper posts by itself (not through ``create``), so
    it is replaced by a manager that runs the guarded call."""

    def stream(self: Any, **kwargs: Any) -> Any:  # a plain def in both SDK faces
        if is_async(type(self).create):
            return AsyncMessageStreamManager(self, kwargs)
        return MessageStreamManager(self, kwargs)

    return stream


UNMETERED: dict[str, tuple[str, ...]] = {
    "beta.messages": ("create", "parse", "stream", "tool_runner", "thread"),
    "beta.messages.batches": ("create",),
    "messages.batches": ("create",),
    "completions": ("create",),
}
"""Paid calls guardrail does not meter (resource path: methods); see the README table."""

FREE_WRITES = FreeWrites(
    (
        "/v1/files",
        "/v1/messages/count_tokens",
        "/v1/messages/batches/*/cancel",
        "/v1/agents/**",
        "/v1/environments",
        "/v1/environments/*",
        "/v1/environments/*/archive",
        "/v1/deployments",
        "/v1/deployments/*",
        "/v1/deployments/*/archive",
        "/v1/deployments/*/pause",
        "/v1/deployments/*/unpause",
        "/v1/sessions/*",  # a session's metadata
        "/v1/sessions/*/archive",
        "/v1/sessions/*/threads/*/archive",
        "/v1/dreams/*/archive",
        "/v1/dreams/*/cancel",
        "/v1/compliance/**",
        "/v1/memory_stores/**",
        "/v1/organizations/**",
        "/v1/skills/**",
        "/v1/tunnels/**",
        "/v1/user_profiles/**",
        "/v1/vaults/**",
    )
)
"""The writes Anthropic does not bill (:mod:`guardrail.providers.raw_requests`): any other
write reaching the guarded client itself is refused while a limit applies."""

ANTHROPIC_TREE: Node = unmetered_tree(
    UNMETERED,
    {"messages": {"create": guarded(MESSAGES), "parse": guarded(MESSAGES), "stream": _stream}},
)


def _count_cache(self: Any) -> TokenCountCache:
    """The exact counts of this client and its copies (shared)."""
    return _counting(self._guardrail).cache


def _exact_count(self: Any) -> bool:
    """Whether prompts are counted with ``messages.count_tokens`` too."""
    return _counting(self._guardrail).adapter.exact_count


def guarded_anthropic_class(base: type) -> type:
    """The guarded subclass of an Anthropic SDK client class."""
    extra = {"count_cache": property(_count_cache), "exact_count": property(_exact_count)}
    return guarded_client_class(base, ANTHROPIC_TREE, FREE_WRITES, extra)


def _counts_tokens(client: Any) -> bool:
    """Whether the client's SDK can send ``messages.count_tokens``: ``AnthropicBedrock``'s
    refuses it without a request ("Token counting is not supported in Bedrock yet")."""
    from anthropic import AnthropicBedrock, AsyncAnthropicBedrock

    return not isinstance(client, (AnthropicBedrock, AsyncAnthropicBedrock))


def wrap_anthropic(
    client: Any,
    guard: Guard,
    *,
    exact_count: bool = True,
    count_cache: TokenCountCache | None = None,
) -> Any:
    """``client`` (an ``Anthropic``, ``AnthropicBedrock``, ``AnthropicVertex``, or the async
    twin of one) as a guarded copy.

    ``exact_count`` (default True): ask ``messages.count_tokens`` for each new prompt
    (cached per content) and reserve ``max(estimate, exact)``; False uses the local
    estimate alone and makes no extra request. ``AnthropicBedrock`` cannot count (its SDK
    refuses the call): False there. A client that turns out to have no count endpoint (a
    gateway answering 404) switches to False by itself, with one warning.
    """
    from anthropic import AnthropicVertex, AsyncAnthropicVertex

    counts = exact_count and _counts_tokens(client)
    vertex = isinstance(client, (AnthropicVertex, AsyncAnthropicVertex))
    first_party = not vertex and _counts_tokens(client)  # neither Vertex nor Bedrock
    counting = _Counting(
        AnthropicAdapter(exact_count=counts, first_party=first_party),
        count_cache or TokenCountCache(),
        AnthropicAdapter(exact_count=counts, first_party=False, endpoint_premium=VERTEX_REGIONAL)
        if vertex
        else None,
    )
    return wrap_client(client, guard, guarded_anthropic_class, counting)
