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

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from guardrail.catalog.pricing import TokenUsage
from guardrail.counting.images import (
    ANTHROPIC_IMAGE_RULE,
    image_size_from_base64,
    tokens_for_size,
    worst_case_tokens,
)
from guardrail.counting.messages import TokenCounter
from guardrail.engine.adapter import RequestView
from guardrail.engine.stream_tally import StreamTally
from guardrail.errors import ConfigurationError, ContextWindowExceeded, InvalidRequestError
from guardrail.prompt.trimming import Summarizer, TrimResult, field_of
from guardrail.providers.common import given, model_and_messages, public, run_async, run_sync
from guardrail.tenancy import TenantBinding

if TYPE_CHECKING:
    from guardrail.guard import Guard

__all__ = [
    "DOCUMENT_ASSUMED_PAGES",
    "NONSTREAMING_MAX_TOKENS",
    "PDF_PAGE_TOKENS",
    "REQUEST_OVERHEAD_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOOL_USE_SYSTEM_PROMPT_TOKENS",
    "AnthropicAdapter",
    "GuardedAnthropic",
    "TokenCountCache",
]

TOKENS_PER_MESSAGE = 4
"""Around each message (and the system prompt): Claude's turn markers."""
REQUEST_OVERHEAD_TOKENS = 8
"""Once per request: the opening and the primed assistant turn."""
TOKENS_PER_TOOL_CALL = 3
"""Per ``tool_use`` / ``tool_result`` block, on top of its name, input or content."""
TOOL_USE_SYSTEM_PROMPT_TOKENS = 346
"""Anthropic adds a tool-use system prompt when ``tools`` are given: 346 tokens on current
models with ``tool_choice`` auto or none (313 with any or tool), the largest it publishes."""
PDF_PAGE_TOKENS = 4_600
"""A PDF page: Anthropic bills its text (1,500-3,000 tokens a page, it says) and the page as
an image (at most ~1,600 tokens), so 3,000 + 1,600 errs high."""
DOCUMENT_ASSUMED_PAGES = 20
"""Pages assumed for a PDF guardrail cannot read (a URL or file id, or no page objects
found): an assumption, not a bound. The exact count replaces it when it is on."""
NONSTREAMING_MAX_TOKENS = 21_333
"""The largest ``max_tokens`` the Anthropic SDK sends without streaming at its default
timeout (it refuses a request it expects to take over 10 minutes: 60 min * n / 128,000).
Used as the bound guardrail chooses when the caller set none on a non-streaming call."""

WEB_SEARCH_ASSUMED_USES = 10
"""Searches reserved for a web-search server tool without ``max_uses`` (an assumption:
set ``max_uses`` to make the bound exact). Actual searches are settled at their price."""


def _allowed_searches(tools: Any) -> int:
    """Web searches a request's server tools allow: their ``max_uses``, or the assumption."""
    total = 0
    for tool in tools or ():
        kind = _field(tool, "type")
        if isinstance(kind, str) and kind.startswith("web_search"):
            uses = _field(tool, "max_uses")
            ok = isinstance(uses, int) and not isinstance(uses, bool) and uses >= 0
            total += uses if ok else WEB_SEARCH_ASSUMED_USES
    return total


COUNT_TIMEOUT_SECONDS = 10.0
"""The exact count's own deadline when the call sets none: a slow count falls back to the
local estimate instead of holding the call for the client's whole default timeout."""


def _nonstreaming_cap(model: str) -> int:
    """The bound the SDK accepts without streaming: its general 10-minute rule, and its
    per-model table (Opus 4 and 4.1 refuse more than 8,192 without streaming)."""
    try:
        from anthropic._constants import MODEL_NONSTREAMING_TOKENS
    except ImportError:  # an SDK without the table
        return NONSTREAMING_MAX_TOKENS
    limit = MODEL_NONSTREAMING_TOKENS.get(model)
    return NONSTREAMING_MAX_TOKENS if limit is None else min(NONSTREAMING_MAX_TOKENS, limit)


_log = logging.getLogger("guardrail")
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_COUNT_KEYS = ("model", "messages", "system", "tools", "tool_choice", "thinking")


def _type(value: object) -> str:
    return type(value).__name__


def _plain(value: Any) -> Any:
    """An SDK object (a ``TextBlock`` appended from a response) as the dict it is sent as."""
    if isinstance(value, (Mapping, str, bytes, int, float, list, tuple)):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json", exclude_none=True)
    return value


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=_jsonable)


def _jsonable(value: Any) -> Any:
    plain = _plain(value)
    if plain is value:
        return repr(value)
    return plain


# ---------------------------------------------------------------------- the request view


@dataclass(frozen=True)
class AnthropicView(RequestView):
    """A :class:`RequestView` that also carries the top-level ``system`` prompt."""

    system: Any = None


# ---------------------------------------------------------------------- the adapter


class AnthropicAdapter:
    """Reads and rewrites Messages API requests, counts them locally, trims them, reads
    usage from responses and stream events. ``exact_count`` makes the engine also ask
    the provider's ``count_tokens`` (a :class:`~guardrail.engine.operations.CountTokens` step)."""

    provider = "anthropic"

    def __init__(self, *, exact_count: bool = True) -> None:
        self.exact_count = exact_count

    # -- requests

    def read(self, kwargs: Mapping[str, Any]) -> AnthropicView:
        model, messages = model_and_messages(kwargs)
        tools: Any = kwargs.get("tools")
        if given(tools) and (not isinstance(tools, Sequence) or isinstance(tools, str)):
            raise InvalidRequestError(f"tools must be a list of tool dicts, got {_type(tools)}")
        system: Any = kwargs.get("system")
        requested: int | None = None
        max_tokens = kwargs.get("max_tokens")
        if given(max_tokens):
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise InvalidRequestError(f"max_tokens must be a positive int, got {max_tokens!r}")
            requested = max_tokens
        stream = kwargs.get("stream") is True
        metadata = kwargs.get("metadata")
        hint = metadata.get("user_id") if isinstance(metadata, Mapping) else None
        if kwargs.get("speed") == "fast":
            raise ConfigurationError(
                "speed='fast' is billed at a premium the price data does not know, so "
                "guardrail cannot bound its cost; send it through client.unwrapped, or "
                "register a model whose prices include the premium"
            )
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
            reserved_searches=_allowed_searches(tools if given(tools) else None),
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

    # -- the local estimate

    def count(self, counter: TokenCounter, view: RequestView, messages: Sequence[Any]) -> int:
        total = self.fixed_tokens(counter, view)
        for i, message in enumerate(messages):
            total += self.message_tokens(counter, message, f"messages[{i}]")
        return total

    def fixed_tokens(self, counter: TokenCounter, view: RequestView) -> int:
        """What every version of the conversation costs: system prompt, tools, overhead."""
        total = REQUEST_OVERHEAD_TOKENS
        system = view.system if isinstance(view, AnthropicView) else None
        if system is not None:
            total += TOKENS_PER_MESSAGE + self._content(counter, system, "system")
        if view.tools:
            total += TOOL_USE_SYSTEM_PROMPT_TOKENS
            for j, tool in enumerate(view.tools):
                tool = _plain(tool)
                if not isinstance(tool, Mapping):
                    raise InvalidRequestError(f"tools[{j}] must be a dict, got {_type(tool)}")
                # The model reads the definition as JSON: name, description, input_schema.
                shown = {k: v for k, v in tool.items() if k not in ("cache_control", "type")}
                total += counter.text(_json(shown))
        return total

    def message_tokens(self, counter: TokenCounter, message: Any, where: str) -> int:
        role = field_of(message, "role")
        if not isinstance(role, str):
            raise InvalidRequestError(f"{where} has no 'role'")
        content = field_of(message, "content")
        return TOKENS_PER_MESSAGE + counter.text(role) + self._content(counter, content, where)

    def _content(self, counter: TokenCounter, content: Any, where: str) -> int:
        if isinstance(content, str):
            return counter.text(content)
        if content is None:
            return 0
        if not isinstance(content, (list, tuple)):
            raise InvalidRequestError(
                f"{where}.content must be a string or a list of blocks, got {_type(content)}"
            )
        return sum(self._block(counter, b, f"{where}[{k}]") for k, b in enumerate(content))

    def _block(self, counter: TokenCounter, block: Any, where: str) -> int:
        block = _plain(block)
        if not isinstance(block, Mapping):
            raise InvalidRequestError(f"{where} must be a content block dict, got {_type(block)}")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise InvalidRequestError(f"{where}.text must be a string, got {_type(text)}")
            return counter.text(text)
        if kind == "image":
            return _image_tokens(counter, block.get("source"), where)
        if kind == "document":
            return self._document(counter, block, where)
        if kind in ("tool_use", "server_tool_use"):
            name = block.get("name")
            return (
                TOKENS_PER_TOOL_CALL
                + (counter.text(name) if isinstance(name, str) else 0)
                + counter.text(_json(block.get("input", {})))
            )
        if kind == "tool_result":
            return TOKENS_PER_TOOL_CALL + self._content(
                counter, block.get("content"), f"{where}.content"
            )
        if kind == "thinking":
            thinking = block.get("thinking")
            return counter.text(thinking) if isinstance(thinking, str) else 0
        if kind == "redacted_thinking":
            data = block.get("data")
            return counter.text(data) if isinstance(data, str) else 0
        # Search results, server tool results, anything newer: every string it holds.
        return counter.text(_json({k: v for k, v in block.items() if k != "cache_control"}))

    def _document(self, counter: TokenCounter, block: Mapping[str, Any], where: str) -> int:
        total = 0
        for key in ("title", "context"):
            if isinstance(block.get(key), str):
                total += counter.text(block[key])
        source = _plain(block.get("source"))
        if not isinstance(source, Mapping):
            raise InvalidRequestError(f"{where}.source must be a dict, got {_type(source)}")
        kind = source.get("type")
        if kind == "text":
            data = source.get("data")
            return total + (counter.text(data) if isinstance(data, str) else 0)
        if kind == "content":
            return total + self._content(counter, source.get("content"), f"{where}.source")
        pages = DOCUMENT_ASSUMED_PAGES
        if kind == "base64":
            pages = _pdf_pages(source.get("data"), where) or DOCUMENT_ASSUMED_PAGES
        return total + pages * PDF_PAGE_TOKENS

    # -- trimming

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
        tools. A turn starts at a user message that is not only tool results, so a
        ``tool_use`` is never separated from its ``tool_result`` and the kept window starts
        with the user. The latest turn always stays (else ContextWindowExceeded)."""
        sizes = [self.message_tokens(counter, m, f"messages[{i}]") for i, m in enumerate(messages)]
        starts = [i for i, m in enumerate(messages) if _opens_turn(m)] or [0]
        if starts[0] != 0:
            starts.insert(0, 0)
        turns = [(b, e) for b, e in zip(starts, [*starts[1:], len(messages)], strict=True)]
        latest = turns[-1][0]
        required = self.fixed_tokens(counter, view) + sum(sizes[latest:])
        if required > max_tokens:
            raise ContextWindowExceeded(
                model=model_name or "?",
                prompt_tokens=required,
                reserved_output_tokens=0,
                limit=max_tokens,
                limit_name="the prompt budget",
                detail="the system prompt, tools and the latest turn alone do not fit; "
                "nothing was sent",
            )
        budget, kept_count, keep_from = max_tokens - required, len(messages) - latest, latest
        for begin, end in reversed(turns[:-1]):
            cost = sum(sizes[begin:end])
            if cost > budget or (
                max_history_messages is not None and kept_count + end - begin > max_history_messages
            ):
                break
            budget, kept_count, keep_from = budget - cost, kept_count + end - begin, begin
        kept, dropped = list(messages[keep_from:]), list(messages[:keep_from])
        total = max_tokens - budget
        if not dropped or summarizer is None:
            return TrimResult(kept, total, dropped)
        summary = _summary_message(summarizer(dropped))
        summary_tokens = self.message_tokens(counter, summary, "summary")
        kept_turns = [t for t in turns if t[0] >= keep_from]
        while total + summary_tokens > max_tokens and len(kept_turns) > 1:
            begin, end = kept_turns.pop(0)  # make room: drop the oldest kept turn
            total -= sum(sizes[begin:end])
            keep_from = end
        kept, dropped = list(messages[keep_from:]), list(messages[:keep_from])
        if total + summary_tokens > max_tokens:
            return TrimResult(kept, total, dropped)
        return TrimResult([summary, *kept], total + summary_tokens, dropped, summary)

    # -- responses and streams

    def usage(self, response: Any) -> TokenUsage | None:
        if hasattr(response, "parse") and not hasattr(response, "usage"):
            response = response.parse()  # with_raw_response: the SDK caches the parse
        return _read_usage(getattr(response, "usage", None))

    def request_id(self, response: Any) -> str | None:
        rid = getattr(response, "_request_id", None) or getattr(response, "request_id", None)
        if rid is None and hasattr(response, "headers"):
            rid = response.headers.get("request-id")
        if rid is None and hasattr(response, "parse") and not hasattr(response, "usage"):
            rid = getattr(response.parse(), "id", None)
        return str(rid) if rid else getattr(response, "id", None)

    def observe_chunk(self, chunk: Any, tally: StreamTally) -> bool:
        """Count a stream event: ``message_start`` gives the prompt-side usage, text,
        thinking and tool-input deltas are counted as they arrive, and ``message_delta``
        gives the final (cumulative) usage. Every event is shown to the caller."""
        kind = getattr(chunk, "type", None)
        if kind == "content_block_delta":
            delta = chunk.delta
            dtype = getattr(delta, "type", None)
            if dtype == "text_delta":
                tally.add_text(delta.text)
            elif dtype == "input_json_delta":
                tally.add_text(delta.partial_json)
            elif dtype == "thinking_delta":
                tally.add_text(delta.thinking)
        elif kind == "content_block_start":
            block = chunk.content_block
            for name in ("name", "text", "thinking"):
                value = getattr(block, name, None)
                if isinstance(value, str):
                    tally.add_text(value)
        elif kind == "message_start":
            message = chunk.message
            tally.request_id = tally.request_id or getattr(message, "id", None)
            tally.input_usage = _read_usage(getattr(message, "usage", None))
        elif kind == "message_delta":
            usage = getattr(chunk, "usage", None)
            # Without the prompt side (no readable message_start, no input in the delta)
            # this would bill the prompt as 0: leave it to the engine's local settlement.
            if usage is not None and (
                tally.input_usage is not None or _input_count(usage) is not None
            ):
                tally.usage = _final_usage(tally.input_usage, usage)
        return True

    # -- the exact count

    @staticmethod
    def count_params(kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The ``messages.count_tokens`` arguments for a ``messages.create`` call."""
        params = {k: kwargs[k] for k in _COUNT_KEYS if k in kwargs and given(kwargs[k])}
        # The caller's deadline binds the count too (a failed count keeps the estimate).
        timeout = kwargs.get("timeout")
        params["timeout"] = timeout if given(timeout) else COUNT_TIMEOUT_SECONDS
        headers = kwargs.get("extra_headers")
        if isinstance(headers, Mapping):  # betas change what is counted
            # Not the SDK's own: a raw-response marker would make the count a raw response.
            kept = {k: v for k, v in headers.items() if "stainless" not in str(k).lower()}
            if kept:
                params["extra_headers"] = kept
        return params

    @staticmethod
    def count_key(params: Mapping[str, Any]) -> str:
        """A digest of the canonical JSON of what is counted (the cache key)."""
        counted = {k: v for k, v in params.items() if k != "timeout"}
        canonical = json.dumps(
            counted, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_jsonable
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    try:
        return getattr(obj, name, None)
    except Exception:  # an SDK object missing a required field
        return None


def _count(value: Any) -> int | None:
    """A token count from the provider, clamped to >= 0; None when it is not a number.
    The call was made and billed: a malformed usage must never fail its settlement."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return max(0, int(value))


def _input_count(usage: Any) -> int | None:
    """``usage.input_tokens``; None when missing, unreadable or negative (a prompt of 0
    would be billed as free: the engine bills its own count of the prompt instead)."""
    value = _field(usage, "input_tokens")
    count = _count(value)
    return None if count is None or value < 0 else count


def _read_usage(usage: Any) -> TokenUsage | None:
    """An Anthropic ``usage`` (a response's, or ``message_start``'s) as a :class:`TokenUsage`:
    ``input_tokens`` excludes cache reads and writes, which are added; the 1-hour writes come
    from ``cache_creation``. Every other field is clamped to >= 0 (a missing one is 0).
    None when ``input_tokens`` itself is missing, unreadable or negative: the engine then
    bills its own count of the prompt rather than a prompt of 0."""
    if usage is None:
        return None
    creation = _field(usage, "cache_creation")
    details = _field(usage, "output_tokens_details")
    uncached = _input_count(usage)
    read = _count(_field(usage, "cache_read_input_tokens"))
    written = _count(_field(usage, "cache_creation_input_tokens"))
    output = _count(_field(usage, "output_tokens"))
    if uncached is None:
        return None
    w5 = _count(_field(creation, "ephemeral_5m_input_tokens")) or 0
    w1 = _count(_field(creation, "ephemeral_1h_input_tokens")) or 0
    # The total and its split disagreeing (or the total missing): bill the larger.
    written = max(written or 0, w5 + w1)
    output = output or 0
    thinking = _count(_field(details, "thinking_tokens")) or 0
    read = read or 0
    searches = _count(_field(_field(usage, "server_tool_use"), "web_search_requests")) or 0
    return TokenUsage(
        input_tokens=uncached + read + written,
        output_tokens=output,
        cached_input_tokens=read,
        cache_write_tokens=written,
        cache_write_1h_tokens=min(w1, written),
        reasoning_tokens=min(thinking, output),
        web_searches=searches,
    )


def _final_usage(start: TokenUsage | None, usage: Any) -> TokenUsage:
    """``message_delta`` usage (cumulative) over ``message_start``'s: the delta's fields
    win where it has them; the 1-hour cache-write split only comes with the start. Every
    field is clamped to >= 0."""
    start = start or TokenUsage()

    def get(name: str) -> int | None:
        return _count(_field(usage, name))

    cached = get("cache_read_input_tokens")
    cached = start.cached_input_tokens if cached is None else cached
    written = get("cache_creation_input_tokens")
    written = start.cache_write_tokens if written is None else written
    uncached = _input_count(usage)
    if uncached is None:
        uncached = max(0, start.input_tokens - start.cached_input_tokens - start.cache_write_tokens)
    output = get("output_tokens") or 0
    thinking = _count(_field(_field(usage, "output_tokens_details"), "thinking_tokens"))
    return TokenUsage(
        input_tokens=uncached + cached + written,
        output_tokens=output,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        cache_write_1h_tokens=min(start.cache_write_1h_tokens, written),
        reasoning_tokens=min(start.reasoning_tokens if thinking is None else thinking, output),
        web_searches=max(
            start.web_searches,
            _count(_field(_field(usage, "server_tool_use"), "web_search_requests")) or 0,
        ),
    )


def _cache_write(*parts: Any) -> Literal["5m", "1h"] | None:
    """Whether a request writes the prompt cache, and for how long: any ``cache_control``
    (top level, on a system block, a message's content block or a tool) is a write, at
    the 1-hour price if any asks ``"ttl": "1h"``. Tool inputs (the caller's JSON) are not
    looked into."""
    found: Literal["5m", "1h"] | None = None
    stack: list[Any] = [{"cache_control": parts[0]}, *parts[1:]]
    while stack:
        item = _plain(stack.pop())
        if isinstance(item, Mapping):
            control = _plain(item.get("cache_control"))
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


def _materialized(kwargs: dict[str, Any]) -> dict[str, Any]:
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


def _image_tokens(counter: TokenCounter, source: Any, where: str) -> int:
    rule = counter.info.image_rule or ANTHROPIC_IMAGE_RULE
    source = _plain(source)
    if not isinstance(source, Mapping):
        raise InvalidRequestError(f"{where}.source must be a dict, got {_type(source)}")
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        try:
            size = image_size_from_base64(source["data"])
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{where}.source: {exc}") from None
        if size is not None:
            return tokens_for_size(size[0], size[1], None, rule)
    return worst_case_tokens(None, rule)  # a URL or file id: never fetched


def _pdf_pages(data: Any, where: str) -> int:
    """Page objects in a base64 PDF (0 when none can be seen, e.g. compressed streams)."""
    if not isinstance(data, str):
        raise InvalidRequestError(f"{where}.source.data must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"{where}.source.data is not valid base64: {exc}") from None
    return len(_PAGE_OBJECT.findall(raw))


def _opens_turn(message: Any) -> bool:
    """A user message that is not only tool results starts a new turn."""
    if field_of(message, "role") != "user":
        return False
    content = field_of(message, "content")
    if not isinstance(content, (list, tuple)) or not content:
        return True
    return any(_plain(b).get("type") != "tool_result" for b in content if _is_block(b))


def _is_block(block: Any) -> bool:
    return isinstance(_plain(block), Mapping)


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


# ---------------------------------------------------------------------- exact-count cache


class TokenCountCache:
    """A bounded LRU of exact prompt counts, keyed on :meth:`AnthropicAdapter.count_key`.

    Shared by a guarded client and its ``for_tenant`` / ``with_options`` views, and safe
    to share between threads. An agent loop re-sending an identical prompt, or a retry of
    the caller's own, costs no second count request.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._items: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> int | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: int) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


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


def _no_count_endpoint(exc: Exception) -> bool:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        if status == 404:
            # Anthropic answers 404 not_found_error for a model the account cannot use:
            # that says nothing about the endpoint (and the call itself will 404 too).
            return "model" not in str(getattr(exc, "message", exc)).lower()
        return status in (405, 501)
    # The SDK's refusal without a request (AnthropicBedrock: "Token counting is not
    # supported"), or an SDK without the method.
    return type(exc).__name__ == "AnthropicError" or isinstance(exc, AttributeError)


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
        params = self._adapter.count_params(kwargs)
        key = self._adapter.count_key(params)
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
        params = self._adapter.count_params(kwargs)
        key = self._adapter.count_key(params)
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
        if self._adapter.exact_count and _no_count_endpoint(exc):
            self._adapter.exact_count = False
            _log.warning(
                "guardrail: %s cannot count tokens (%r); its prompts are counted locally "
                "from now on (guard.wrap(client, exact_count=False) says so up front)",
                type(self._client).__name__,
                exc,
            )

    def _run_sync(self, kwargs: dict[str, Any], send: Callable[[dict[str, Any]], Any]) -> Any:
        kwargs = _materialized(kwargs)
        return run_sync(self._guard, self._adapter, self._binding, kwargs, send, self._count_sync)

    async def _run_async(
        self, kwargs: dict[str, Any], send: Callable[[dict[str, Any]], Awaitable[Any]]
    ) -> Any:
        kwargs = _materialized(kwargs)
        return await run_async(
            self._guard, self._adapter, self._binding, kwargs, send, self._count_async
        )

    def __getattr__(self, name: str) -> Any:
        public(name)  # copy / pickle probe before __init__ ran
        return getattr(self._client, name)

    def __repr__(self) -> str:
        who = f" tenant={self._binding.tenant!r}" if self._binding else ""
        return f"<guardrail guarded {type(self._client).__name__}{who}>"
