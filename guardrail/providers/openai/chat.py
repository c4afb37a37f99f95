"""The Chat Completions adapter: reads and rewrites ``chat.completions`` requests for the
engine, and reads usage back from responses and stream chunks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from guardrail.catalog.models import model_info
from guardrail.catalog.pricing import TokenUsage
from guardrail.counting.documents import uncountable_parts
from guardrail.counting.messages import TokenCounter
from guardrail.engine.adapter import RequestView
from guardrail.engine.drivers import parsed_raw
from guardrail.engine.request_check import (
    check_body,
    check_number,
    check_roles,
    check_stream,
    plain_messages,
)
from guardrail.engine.stream_tally import StreamTally
from guardrail.errors import InvalidRequestError, describe
from guardrail.providers.common import (
    given,
    model_and_messages,
    request_id_of,
    usage_field,
    usage_of,
)

__all__ = ["OpenAIAdapter", "materialise"]


def _int_param(kwargs: Mapping[str, Any], name: str) -> int | None:
    value = kwargs.get(name)
    if not given(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequestError(f"{name} must be a positive int, got {describe(value)}")
    return value


_ITERABLE_PARAMS = ("messages", "tools", "functions")

ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
"""The roles Chat Completions takes; any other is a 400."""
_API = "chat.completions.create"
_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}
"""Sampling parameters and the ranges the API documents (it rejects values outside)."""


_REASONING_FAMILIES = ("o1", "o3", "o4", "codex-mini", "gpt-5", "gpt-6")
"""Families whose models reason in hidden (billed, not streamed) output tokens; the
``-chat`` variants of gpt-5 do not."""


def hidden_reasoning(model: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether the call may bill reasoning tokens it never shows: a reasoning model
    (unless ``reasoning_effort="none"``), or any model asked for ``reasoning_effort``."""
    effort = kwargs.get("reasoning_effort")
    if given(effort):
        return effort != "none"
    family = model_info(model).family or ""
    return family.startswith(_REASONING_FAMILIES) and "-chat" not in family


def check_request(kwargs: Mapping[str, Any], messages: Sequence[Any]) -> tuple[bool, bool]:
    """What the API is sure to reject, and what the SDK could not serialise, refused before
    anything is reserved; returns ``stream``, and whether the messages are plain text."""
    if not messages:
        raise InvalidRequestError("messages is empty: the API needs at least one message")
    fast = plain_messages(messages, ROLES)
    if not fast:
        check_roles(messages, ROLES, _API)
    check_body(kwargs, skip="messages" if fast else "")
    stream = check_stream(kwargs)
    for name, (low, high) in _RANGES.items():
        if name in kwargs:  # an absent one is not sent
            check_number(kwargs, name, low, high)
    options: Any = kwargs.get("stream_options")
    if given(options):
        if not isinstance(options, Mapping):
            raise InvalidRequestError(
                f"stream_options must be a dict such as {{'include_usage': True}}, got "
                f"{describe(options)}"
            )
        if given(options.get("include_usage")) and type(options["include_usage"]) is not bool:
            raise InvalidRequestError("stream_options.include_usage must be True or False")
    for name in ("tools", "functions"):
        tools: Any = kwargs.get(name)
        if given(tools) and (
            not isinstance(tools, (list, tuple))
            or not all(isinstance(t, Mapping) or hasattr(t, "model_dump") for t in tools)
        ):
            raise InvalidRequestError(f"{name} must be a list of tool dicts, got {describe(tools)}")
    return stream, fast


def requested_tier(kwargs: Mapping[str, Any]) -> str:
    """The ``service_tier`` a Chat Completions or Responses request asks for: ``"auto"``
    (the project's default) when it names none. The planner reserves it at its prices, and
    refuses a premium one the price data does not price under a money limit."""
    tier = kwargs.get("service_tier")
    if not given(tier):
        return "auto"
    if type(tier) is not str:
        raise InvalidRequestError(
            f"service_tier must be a string such as 'auto', 'default', 'flex' or "
            f"'priority', got {describe(tier)}"
        )
    return tier


def service_tier_of(response: Any) -> str | None:
    """The tier a response (or a stream chunk) says the call was processed, and billed, at;
    None when it says none."""
    tier = getattr(response, "service_tier", None)
    return tier if type(tier) is str else None


def _audio_input(messages: Sequence[Any]) -> bool:
    """Whether a message holds audio the model reads (billed at the audio input rate): an
    ``input_audio`` part, or an assistant's earlier ``audio`` answer referred to by id."""
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        if given(message.get("audio")):
            return True
        content = message.get("content")
        if isinstance(content, (list, tuple)) and any(
            isinstance(part, Mapping) and part.get("type") == "input_audio" for part in content
        ):
            return True
    return False


def _unpriced_option(
    model: str, kwargs: Mapping[str, Any], messages: Sequence[Any], plain: bool
) -> str | None:
    """What a chat request asks for that the price data cannot price (refused under a
    money limit): audio out (``modalities`` with ``"audio"``, or ``audio=``) or in (billed
    at audio token rates, which guardrail does not settle); a web search
    (``web_search_options``, or a ``-search-`` model, which always searches: a per-call fee
    on top of the tokens). A premium ``service_tier`` is the planner's to judge, per model."""
    modalities = kwargs.get("modalities")
    if given(kwargs.get("audio")) or (
        isinstance(modalities, (list, tuple)) and "audio" in modalities
    ):
        return "audio output (modalities=['audio'] or audio=...)"
    if not plain and _audio_input(messages):
        return "audio input (an input_audio part, or an assistant's audio answer)"
    if given(kwargs.get("web_search_options")) or "-search-" in model or model.endswith("-search"):
        return "web search (web_search_options, or a search model)"
    return None


def _schema(response_format: Any) -> Any:
    """The JSON schema a ``response_format`` gives the model to read (``parse``'s pydantic
    model, or ``{"type": "json_schema", "json_schema": {...}}``); None without one."""
    if not given(response_format):
        return None
    if hasattr(response_format, "model_json_schema"):
        return response_format.model_json_schema()
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        return response_format.get("json_schema")
    return None


def materialise(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The SDK takes any iterable for messages and tools: read a generator once, here, so
    that what is counted is what is sent (not an exhausted iterator)."""
    for name in _ITERABLE_PARAMS:
        value = kwargs.get(name)
        if value is None or type(value) is list:  # absent, or a list: the common cases
            continue
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
        stream, plain = check_request(kwargs, messages)
        tools: Any = kwargs.get("tools")
        functions: Any = kwargs.get("functions")  # legacy, still taken and billed as tools
        if given(functions):
            tools = [*tools, *functions] if given(tools) else functions
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
            stream=stream,
            tenant_hint=hint,
            choices=choices,
            hidden_reasoning=hidden_reasoning(model, kwargs),
            unpriced=_unpriced_option(model, kwargs, messages, plain),
            output_schema=_schema(kwargs.get("response_format")),
            service_tier=requested_tier(kwargs),
        )

    def uncountable(self, view: RequestView, messages: Sequence[Any]) -> list[str]:
        """The ``file`` parts whose size cannot be bounded here (``file_id``s)."""
        return uncountable_parts(messages)

    def count(self, counter: TokenCounter, view: RequestView, messages: Sequence[Any]) -> int:
        tokens = counter.messages(messages, view.tools)
        if view.output_schema is not None:  # its exact rendering is unpublished: errs high
            tokens += counter.nested(view.output_schema, "response_format")
        return tokens

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
    def _token_usage(usage: Any, tier: str | None) -> TokenUsage | None:
        if usage is None:
            return None
        prompt_details = getattr(usage, "prompt_tokens_details", None)
        output_details = getattr(usage, "completion_tokens_details", None)
        # An unreadable prompt or completion count is flagged (PartialUsage), not read
        # as 0: the engine bills its own count of the prompt, the reserved output.
        return usage_of(
            usage_field(usage, "prompt_tokens"),
            usage_field(usage, "completion_tokens"),
            cached_input_tokens=usage_field(prompt_details, "cached_tokens") or 0,
            reasoning_tokens=usage_field(output_details, "reasoning_tokens") or 0,
            service_tier=tier,
        )

    def usage(self, response: Any) -> TokenUsage | None:
        # ``choices`` first: on a ChatCompletion it is a plain field, while a missing
        # attribute (``parse``) costs pydantic a raised and caught AttributeError.
        if not hasattr(response, "choices") and hasattr(response, "parse"):
            response = parsed_raw(response)  # with_raw_response: the SDK caches the parse
        return self._token_usage(getattr(response, "usage", None), service_tier_of(response))

    def request_id(self, response: Any) -> str | None:
        return request_id_of(response, "x-request-id") or getattr(response, "id", None)

    def observe_chunk(self, chunk: Any, tally: StreamTally) -> bool:
        if tally.request_id is None:
            tally.request_id = getattr(chunk, "_request_id", None) or getattr(chunk, "id", None)
            tally.service_tier = service_tier_of(chunk)  # every chunk says it: the first
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            tally.usage = self._token_usage(usage, service_tier_of(chunk) or tally.service_tier)
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
                    tally.add_text(getattr(function, "name", None))
                    tally.add_text(getattr(function, "arguments", None))
        return True
