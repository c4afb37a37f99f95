"""Reads and rewrites Messages API requests and responses for the engine (what a request
may bill beyond what it carries: :mod:`.bounds`; reading usage: :mod:`.usage`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from guardrail.catalog.premiums import US_INFERENCE, WORKSPACE_GEO
from guardrail.catalog.pricing import TokenUsage
from guardrail.counting.claude import message_tokens, plain, request_tokens, uncountable_documents
from guardrail.counting.messages import TokenCounter, field_of
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
from guardrail.prompt.trimming import Summarizer, TrimResult
from guardrail.prompt.turns import fit_turns
from guardrail.providers.anthropic.bounds import (
    allowed_searches,
    refused_tool,
    server_passes,
    unmetered_field,
)
from guardrail.providers.anthropic.usage import field, final_usage, input_count, read_usage
from guardrail.providers.common import given, model_and_messages, request_id_of

__all__ = [
    "NONSTREAMING_MAX_TOKENS",
    "AnthropicAdapter",
    "AnthropicView",
    "materialized",
]

NONSTREAMING_MAX_TOKENS = 21_333
"""The largest ``max_tokens`` the Anthropic SDK sends without streaming at its default
timeout (it refuses a request it expects to take over 10 minutes: 60 min * n / 128,000).
Used as the bound guardrail chooses when the caller set none on a non-streaming call."""


def _thinks(thinking: Any) -> bool:
    """Extended thinking is on: Claude 4 models stream a summary of it but bill it whole."""
    kind = field(thinking, "type") if given(thinking) else None
    return isinstance(kind, str) and kind != "disabled"


def _nonstreaming_cap(model: str) -> int:
    """The bound the SDK accepts without streaming: its general 10-minute rule, and its
    per-model table (Opus 4 and 4.1 refuse more than 8,192 without streaming)."""
    try:
        from anthropic._constants import MODEL_NONSTREAMING_TOKENS
    except ImportError:  # an SDK without the table
        return NONSTREAMING_MAX_TOKENS
    limit = MODEL_NONSTREAMING_TOKENS.get(model)
    return NONSTREAMING_MAX_TOKENS if limit is None else min(NONSTREAMING_MAX_TOKENS, limit)


def _type(value: object) -> str:
    return type(value).__name__


ROLES = frozenset(("user", "assistant"))
"""The roles the Messages API takes in ``messages`` (the system prompt is ``system``)."""
_API = "messages.create"


def check_request(kwargs: Mapping[str, Any], messages: Sequence[Any]) -> bool:
    """What the API is sure to reject, and what the SDK could not serialise, refused before
    anything is reserved; returns ``stream``."""
    if not messages:
        raise InvalidRequestError("messages is empty: the API needs at least one message")
    fast = plain_messages(messages, ROLES)
    if not fast:
        check_roles(messages, ROLES, _API)
    check_body(kwargs, skip="messages" if fast else "")
    stream = check_stream(kwargs)
    check_number(kwargs, "temperature", 0.0, 1.0)
    check_number(kwargs, "top_p", 0.0, 1.0)
    system: Any = kwargs.get("system")
    if given(system) and not isinstance(system, (str, list, tuple)):
        raise InvalidRequestError(
            f"system must be a str or a list of text blocks, got {describe(system)}"
        )
    return stream


@dataclass(frozen=True)
class AnthropicView(RequestView):
    """A :class:`RequestView` that also carries the top-level ``system`` prompt."""

    system: Any = None


def _fixed_tokens(counter: TokenCounter, view: RequestView) -> int:
    """What every version of the conversation costs: system prompt, tools, overhead."""
    system = view.system if isinstance(view, AnthropicView) else None
    return request_tokens(counter, system, view.tools)


def _unpriced_option(kwargs: Mapping[str, Any]) -> str | None:
    """An option billed above the rates guardrail knows (refused under a money limit):
    ``speed="fast"`` (fast mode), an ``inference_geo`` other than ``"global"`` and ``"us"``
    (US-only inference is priced: :mod:`guardrail.catalog.premiums`)."""
    if kwargs.get("speed") == "fast":
        return "speed='fast'"
    geo = kwargs.get("inference_geo")
    if given(geo) and geo not in ("global", "us"):
        return f"inference_geo={describe(geo)}"
    return None


class AnthropicAdapter:
    """Reads and rewrites Messages API requests, counts them locally, trims them, reads
    usage from responses and stream events. ``exact_count`` makes the engine also ask
    the provider's ``count_tokens`` (a :class:`~guardrail.engine.operations.CountTokens` step)."""

    provider = "anthropic"
    exact_count_covers_uncountable = True
    """``count_tokens`` reads what the local estimate cannot (documents by ``file_id`` or
    URL, PDFs): its count replaces their ``Policy.file_id_tokens`` bound."""

    def __init__(
        self,
        *,
        exact_count: bool = True,
        first_party: bool = True,
        endpoint_premium: str | None = None,
    ) -> None:
        self.exact_count = exact_count
        self.first_party = first_party
        """Anthropic's own API: a request naming no ``inference_geo`` runs in its
        workspace's default geo (``Policy.assume_inference_geo``). Not Bedrock or Vertex."""
        self.endpoint_premium = endpoint_premium
        """The premium the client's endpoint bills every call at (a regional Vertex
        endpoint: :data:`~guardrail.catalog.premiums.VERTEX_REGIONAL`), None for none."""

    def _tier(self, kwargs: Mapping[str, Any]) -> str | None:
        """The premium the request is reserved at (``RequestView.service_tier``): US-only
        inference when it asks for it; else the endpoint's; else, on Anthropic's API, the
        workspace default's when it names no geo."""
        geo = kwargs.get("inference_geo")
        if geo == "us":
            return US_INFERENCE
        if self.endpoint_premium is not None or given(geo):
            return self.endpoint_premium  # "global", or a geo refused as unpriced
        return WORKSPACE_GEO if self.first_party else None

    def read(self, kwargs: Mapping[str, Any]) -> AnthropicView:
        model, messages = model_and_messages(kwargs)
        stream = check_request(kwargs, messages)
        tools: Any = kwargs.get("tools")
        if given(tools) and (not isinstance(tools, Sequence) or isinstance(tools, str)):
            raise InvalidRequestError(f"tools must be a list of tool dicts, got {_type(tools)}")
        system: Any = kwargs.get("system")
        requested: int | None = None
        max_tokens = kwargs.get("max_tokens")
        if given(max_tokens):
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise InvalidRequestError(
                    f"max_tokens must be a positive int, got {describe(max_tokens)}"
                )
            requested = max_tokens
        metadata = kwargs.get("metadata")
        hint = metadata.get("user_id") if isinstance(metadata, Mapping) else None
        # Fields and server tools guardrail cannot bound: refused under a money limit, and
        # under a token limit too where they may bill tokens nothing counts.
        unmetered = unmetered_field(kwargs)
        tool = refused_tool(tools if given(tools) else None)
        unbounded = (unmetered and unmetered_field(kwargs, tokens=True)) or tool
        return AnthropicView(
            model=model,
            messages=list(messages),
            tools=list(tools) if given(tools) else None,
            requested_output=requested,
            stream=stream,
            tenant_hint=hint if isinstance(hint, str) and hint else None,
            output_required=True,
            default_output_cap=(
                None if stream or given(kwargs.get("timeout")) else _nonstreaming_cap(model)
            ),
            system=system if given(system) else None,
            prompt_cache_write=_cache_write(
                kwargs.get("cache_control"), system, messages, tools if given(tools) else None
            ),
            reserved_searches=allowed_searches(tools if given(tools) else None),
            server_passes=server_passes(tools if given(tools) else None),
            hidden_reasoning=_thinks(kwargs.get("thinking")),
            service_tier=self._tier(kwargs),
            unpriced=_unpriced_option(kwargs) or unmetered or tool,
            unbounded_input=unbounded,
        )

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
            new["max_tokens"] = max_output
        return new, False

    def count(self, counter: TokenCounter, view: RequestView, messages: Sequence[Any]) -> int:
        total = _fixed_tokens(counter, view)
        for i, message in enumerate(messages):
            total += message_tokens(counter, message, f"messages[{i}]")
        return total

    def uncountable(self, view: RequestView, messages: Sequence[Any]) -> list[str]:
        """The documents guardrail cannot read (by ``file_id`` or URL, a PDF whose pages
        cannot be seen), reserved as ``Policy.file_id_tokens`` says until the provider's
        own count (when it is on and answers) replaces that bound."""
        return uncountable_documents(messages)

    def fit(
        self,
        view: RequestView,
        messages: Sequence[Any],
        counter: TokenCounter,
        max_tokens: int,
        *,
        max_history_messages: int | None,
        summarizer: Summarizer | None,
        model_name: str,
    ) -> TrimResult:
        """The most recent whole turns that fit ``max_tokens`` with the system prompt and
        tools (:func:`guardrail.prompt.turns.fit_turns`): a turn starts at a user message
        that is not only tool results, so a ``tool_use`` stays with its ``tool_result``."""

        def summary(text: str | Mapping[str, Any]) -> tuple[Mapping[str, Any], int]:
            message = _summary_message(text)
            return message, message_tokens(counter, message, "summary")

        return fit_turns(
            messages,
            [message_tokens(counter, m, f"messages[{i}]") for i, m in enumerate(messages)],
            opens_turn=_opens_turn,
            fixed=_fixed_tokens(counter, view),
            max_tokens=max_tokens,
            max_history_messages=max_history_messages,
            summarizer=summarizer,
            summary_message=summary,
            model_name=model_name,
        )

    def usage(self, response: Any) -> TokenUsage | None:
        if hasattr(response, "parse") and not hasattr(response, "usage"):
            response = parsed_raw(response)  # with_raw_response: the SDK caches the parse
        return read_usage(getattr(response, "usage", None))

    def request_id(self, response: Any) -> str | None:
        rid = request_id_of(response, "request-id")
        if rid is None and hasattr(response, "parse") and not hasattr(response, "usage"):
            rid = getattr(parsed_raw(response), "id", None)
        return str(rid) if rid else getattr(response, "id", None)

    def observe_chunk(self, chunk: Any, tally: StreamTally) -> bool:
        """Count a stream event: ``message_start`` gives the prompt-side usage, text,
        thinking and tool-input deltas are counted as they arrive, and ``message_delta``
        gives the final (cumulative) usage. Every event is shown to the caller."""
        kind = getattr(chunk, "type", None)
        if kind == "content_block_delta":
            delta = getattr(chunk, "delta", None)
            dtype = getattr(delta, "type", None)
            if dtype == "text_delta":
                tally.add_text(getattr(delta, "text", None))
            elif dtype == "input_json_delta":
                tally.add_text(getattr(delta, "partial_json", None))
            elif dtype == "thinking_delta":
                tally.add_text(getattr(delta, "thinking", None))
        elif kind == "content_block_start":
            block = getattr(chunk, "content_block", None)
            for name in ("name", "text", "thinking"):
                tally.add_text(getattr(block, name, None))
            if getattr(block, "type", None) == "server_tool_use":  # a further pass follows
                tally.server_passes += 1
                if getattr(block, "name", None) == "web_search":
                    tally.web_searches += 1
        elif kind == "message_start":
            message = chunk.message
            tally.request_id = tally.request_id or getattr(message, "id", None)
            # The prompt side: the passes usage.iterations adds come with message_delta.
            tally.input_usage = read_usage(getattr(message, "usage", None), iterations=False)
        elif kind == "message_delta":
            usage = getattr(chunk, "usage", None)
            # Without the prompt side (no readable message_start, no input in the delta)
            # this would bill the prompt as 0: leave it to the engine's local settlement.
            if usage is not None and (
                tally.input_usage is not None or input_count(usage) is not None
            ):
                tally.usage = final_usage(tally.input_usage, usage)
        return True


def _cache_write(*parts: Any) -> Literal["5m", "1h"] | None:
    """Whether a request writes the prompt cache, and for how long: any ``cache_control``
    (top level, on a system block, a message's content block or a tool) is a write, at
    the 1-hour price if any asks ``"ttl": "1h"``. Tool inputs (the caller's JSON) are not
    looked into."""
    found: Literal["5m", "1h"] | None = None
    stack: list[Any] = [{"cache_control": parts[0]}, *parts[1:]]
    while stack:
        item = plain(stack.pop())
        if isinstance(item, Mapping):
            control = plain(item.get("cache_control"))
            if isinstance(control, Mapping):
                if control.get("ttl") == "1h":
                    return "1h"
                found = "5m"
            stack.extend(v for k, v in item.items() if k not in ("cache_control", "input"))
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def _one_shot(value: Any) -> bool:
    """An iterable the SDK accepts but that may be read only once (a generator, a map)."""
    return (
        isinstance(value, Iterable)
        and not isinstance(value, (str, bytes, bytearray, Sequence, Mapping))
        and not hasattr(value, "model_dump")
    )


def materialized(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``messages``, ``tools``, ``system`` and message ``content`` given as
    one-shot iterables turned into lists: the guard reads them (to count) and the SDK reads
    them again (to send), so both must see the same, whole list."""
    new = dict(kwargs)
    for key in ("messages", "tools", "system"):
        if _one_shot(new.get(key)):
            new[key] = list(new[key])
    messages = new.get("messages")
    if isinstance(messages, (list, tuple)) and any(
        isinstance(m, Mapping) and _one_shot(m.get("content")) for m in messages
    ):
        new["messages"] = [
            {**m, "content": list(m["content"])}
            if isinstance(m, Mapping) and _one_shot(m.get("content"))
            else m
            for m in messages
        ]
    return new


def _opens_turn(message: Any) -> bool:
    """A user message that is not only tool results starts a new turn."""
    if field_of(message, "role") != "user":
        return False
    content = field_of(message, "content")
    if not isinstance(content, (list, tuple)) or not content:
        return True
    return any(plain(b).get("type") != "tool_result" for b in content if _is_block(b))


def _is_block(block: Any) -> bool:
    return isinstance(plain(block), Mapping)


def _summary_message(summary: str | Mapping[str, Any]) -> Mapping[str, Any]:
    # Anthropic has no system role inside messages: a summary is a user message (the API
    # merges it with the user turn that follows).
    if isinstance(summary, str):
        return {"role": "user", "content": f"Summary of the earlier conversation: {summary}"}
    if isinstance(summary, Mapping) and "content" in summary:
        if summary.get("role") in ("user", "assistant"):
            return summary
        return {"role": "user", "content": summary["content"]}
    raise InvalidRequestError("summarizer must return a str or a message dict with content")
