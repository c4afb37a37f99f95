"""The Chat Completions adapter: reads and rewrites ``chat.completions`` requests for the
engine, and reads usage back from responses and stream chunks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from guardrail.catalog.pricing import TokenUsage
from guardrail.counting.messages import TokenCounter
from guardrail.engine.adapter import RequestView
from guardrail.engine.drivers import parsed_raw
from guardrail.engine.stream_tally import StreamTally
from guardrail.errors import InvalidRequestError
from guardrail.providers.common import given, model_and_messages

__all__ = ["OpenAIAdapter", "materialise"]


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
