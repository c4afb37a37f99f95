"""Guarded ``OpenAI`` / ``AsyncOpenAI`` clients.

``guard.wrap(client)`` returns a proxy: ``chat.completions.create`` (and ``parse``, and
their ``with_raw_response`` forms) go through the guard; everything else (other
resources, attributes, ``with_options``) passes straight to the client. The SDK's own
retries are turned off for guarded calls, so exactly one layer retries; passthrough
resources keep the client's settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from guardrail.catalog.pricing import TokenUsage
from guardrail.counting.messages import TokenCounter
from guardrail.engine.adapter import RequestView
from guardrail.engine.drivers import parse_async_raw, parsed_raw
from guardrail.engine.stream_tally import StreamTally
from guardrail.errors import InvalidRequestError
from guardrail.providers.common import given, model_and_messages, public, run_async, run_sync
from guardrail.tenancy import TenantBinding

if TYPE_CHECKING:
    from guardrail.guard import Guard

__all__ = ["GuardedOpenAI", "OpenAIAdapter"]


def _int_param(kwargs: Mapping[str, Any], name: str) -> int | None:
    value = kwargs.get(name)
    if not given(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequestError(f"{name} must be a positive int, got {value!r}")
    return value


def _count(obj: Any, name: str) -> int:
    """A usage field as a non-negative int, whatever the provider put there."""
    try:
        return max(0, int(getattr(obj, name, 0) or 0))
    except (TypeError, ValueError):
        return 0


_ITERABLE_PARAMS = ("messages", "tools", "functions")


def materialise(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The SDK takes any iterable for messages and tools: read a generator once, here, so
    that what is counted is what is sent (not an exhausted iterator)."""
    for name in _ITERABLE_PARAMS:
        value = kwargs.get(name)
        if (
            given(value)
            and not isinstance(value, (list, tuple, str, bytes, Mapping))
            and isinstance(value, Iterable)
        ):
            kwargs = {**kwargs, name: list(value)}
    return kwargs


class OpenAIAdapter:
    """Reads and rewrites Chat Completions requests and responses."""

    provider = "openai"

    def read(self, kwargs: Mapping[str, Any]) -> RequestView:
        model, messages = model_and_messages(kwargs)
        tools: Any = kwargs.get("tools")
        requested = _int_param(kwargs, "max_completion_tokens")
        if requested is None:
            requested = _int_param(kwargs, "max_tokens")
        choices = _int_param(kwargs, "n") or 1
        hint = None
        for name in ("safety_identifier", "user"):
            if given(kwargs.get(name)):
                hint = kwargs[name]
                break
        return RequestView(
            model=model,
            messages=list(messages),
            tools=list(tools) if given(tools) else None,
            requested_output=requested,
            stream=kwargs.get("stream") is True,
            tenant_hint=hint,
            choices=choices,
        )

    def count(self, counter: TokenCounter, view: RequestView, messages: Sequence[Any]) -> int:
        return counter.messages(messages, view.tools)

    def rewrite(
        self,
        kwargs: Mapping[str, Any],
        *,
        model: str,
        messages: list[Mapping[str, Any]],
        max_output: int | None,
    ) -> tuple[dict[str, Any], bool]:
        new = dict(kwargs)
        new["model"] = model
        new["messages"] = messages
        if max_output is not None:
            chosen = [k for k in ("max_completion_tokens", "max_tokens") if given(kwargs.get(k))]
            for key in chosen or ["max_completion_tokens"]:
                new[key] = max_output
        hide_usage_chunk = False
        if new.get("stream") is True:
            asked: Any = kwargs.get("stream_options")
            options = dict(asked) if given(asked) else {}
            if not options.get("include_usage"):
                # We need the usage chunk to settle; the caller did not ask for it, so it
                # will not see it (its empty ``choices`` breaks ``chunk.choices[0]``).
                options["include_usage"] = True
                new["stream_options"] = options
                hide_usage_chunk = True
        return new, hide_usage_chunk

    @staticmethod
    def _token_usage(usage: Any) -> TokenUsage | None:
        if usage is None:
            return None
        prompt_details = getattr(usage, "prompt_tokens_details", None)
        output_details = getattr(usage, "completion_tokens_details", None)
        return TokenUsage(
            input_tokens=_count(usage, "prompt_tokens"),
            output_tokens=_count(usage, "completion_tokens"),
            cached_input_tokens=_count(prompt_details, "cached_tokens"),
            reasoning_tokens=_count(output_details, "reasoning_tokens"),
        )

    def usage(self, response: Any) -> TokenUsage | None:
        # ``choices`` first: on a ChatCompletion it is a plain field, while a missing
        # attribute (``parse``) costs pydantic a raised and caught AttributeError.
        if not hasattr(response, "choices") and hasattr(response, "parse"):
            response = parsed_raw(response)  # with_raw_response: the SDK caches the parse
        return self._token_usage(getattr(response, "usage", None))

    def request_id(self, response: Any) -> str | None:
        rid = getattr(response, "_request_id", None) or getattr(response, "request_id", None)
        if rid is None and hasattr(response, "headers"):
            rid = response.headers.get("x-request-id")
        return str(rid) if rid else getattr(response, "id", None)

    def observe_chunk(self, chunk: Any, tally: StreamTally) -> bool:
        if tally.request_id is None:
            tally.request_id = getattr(chunk, "_request_id", None) or getattr(chunk, "id", None)
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            tally.usage = self._token_usage(usage)
        choices = getattr(chunk, "choices", None)
        if not choices:
            return not (usage is not None and tally.hide_usage_chunk)
        for choice in choices:
            delta = getattr(choice, "delta", None)
            if delta is None:
                continue
            for text in (getattr(delta, "content", None), getattr(delta, "refusal", None)):
                if text:
                    tally.add_text(text)
            for call in getattr(delta, "tool_calls", None) or ():
                function = getattr(call, "function", None)
                if function is not None:
                    tally.add_text((function.name or "") + (function.arguments or ""))
        return True


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
