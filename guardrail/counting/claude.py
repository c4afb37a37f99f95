"""The local estimate of a Claude prompt: Anthropic publishes no tokenizer for its current
models, so every string is counted with ``o200k_base`` times the family's margin
(``ModelInfo.text_margin``, see :class:`~guardrail.counting.messages.TokenCounter`), plus
the rules below for what is not text (images, PDF pages, the tool-use system prompt,
turn markers). The exact count is the provider's ``messages.count_tokens``
(:mod:`guardrail.providers.anthropic`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from guardrail.counting.images import (
    ANTHROPIC_HIGH_RES_IMAGE_RULE,
    image_size_from_base64,
    tokens_for_size,
    worst_case_tokens,
)
from guardrail.counting.messages import TokenCounter, field_of
from guardrail.counting.text import CLAUDE_SAFETY_MARGIN, estimate_margin
from guardrail.errors import InvalidRequestError

__all__ = [
    "PDF_PAGE_TOKENS",
    "REQUEST_OVERHEAD_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_TOOL_CALL",
    "TOOL_USE_SYSTEM_PROMPT_TOKENS",
    "message_tokens",
    "pdf_page_tokens",
    "plain",
    "request_tokens",
    "uncountable_documents",
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
"""A PDF page before Opus 4.7: Anthropic bills its text (1,500-3,000 tokens a page, it says)
and the page as an image (at most 1,568 tokens on the standard tier), so 3,000 + 1,600
errs high. Models with a larger image tier or text margin pay :func:`pdf_page_tokens`."""
_PDF_PAGE_TEXT_TOKENS = 3_000

_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


def _type(value: object) -> str:
    return type(value).__name__


def plain(value: Any) -> Any:
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
    found = plain(value)
    return repr(value) if found is value else found


def request_tokens(counter: TokenCounter, system: Any, tools: Sequence[Any] | None) -> int:
    """What every version of the conversation costs: system prompt, tools, overhead."""
    total = REQUEST_OVERHEAD_TOKENS
    if system is not None:
        total += TOKENS_PER_MESSAGE + _content(counter, system, "system")
    if tools:
        total += TOOL_USE_SYSTEM_PROMPT_TOKENS
        for j, tool in enumerate(tools):
            tool = plain(tool)
            if not isinstance(tool, Mapping):
                raise InvalidRequestError(f"tools[{j}] must be a dict, got {_type(tool)}")
            # The model reads the definition as JSON: name, description, input_schema.
            shown = {k: v for k, v in tool.items() if k not in ("cache_control", "type")}
            total += counter.text(_json(shown))
    return total


def message_tokens(counter: TokenCounter, message: Any, where: str) -> int:
    role = field_of(message, "role")
    if not isinstance(role, str):
        raise InvalidRequestError(f"{where} has no 'role'")
    content = field_of(message, "content")
    return TOKENS_PER_MESSAGE + counter.text(role) + _content(counter, content, where)


def _content(counter: TokenCounter, content: Any, where: str) -> int:
    if isinstance(content, str):
        return counter.text(content)
    if content is None:
        return 0
    if not isinstance(content, (list, tuple)):
        raise InvalidRequestError(
            f"{where}.content must be a string or a list of blocks, got {_type(content)}"
        )
    return sum(_block(counter, b, f"{where}[{k}]") for k, b in enumerate(content))


def _block(counter: TokenCounter, block: Any, where: str) -> int:
    block = plain(block)
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
        return _document(counter, block, where)
    if kind in ("tool_use", "server_tool_use"):
        name = block.get("name")
        return (
            TOKENS_PER_TOOL_CALL
            + (counter.text(name) if isinstance(name, str) else 0)
            + counter.text(_json(block.get("input", {})))
        )
    if kind == "tool_result":
        return TOKENS_PER_TOOL_CALL + _content(counter, block.get("content"), f"{where}.content")
    if kind == "thinking":
        thinking = block.get("thinking")
        return counter.text(thinking) if isinstance(thinking, str) else 0
    if kind == "redacted_thinking":
        data = block.get("data")
        return counter.text(data) if isinstance(data, str) else 0
    # Search results, server tool results, anything newer: every string it holds.
    return counter.text(_json({k: v for k, v in block.items() if k != "cache_control"}))


def _document(counter: TokenCounter, block: Mapping[str, Any], where: str) -> int:
    total = 0
    for key in ("title", "context"):
        if isinstance(block.get(key), str):
            total += counter.text(block[key])
    source = plain(block.get("source"))
    if not isinstance(source, Mapping):
        raise InvalidRequestError(f"{where}.source must be a dict, got {_type(source)}")
    kind = source.get("type")
    if kind == "text":
        data = source.get("data")
        return total + (counter.text(data) if isinstance(data, str) else 0)
    if kind == "content":
        return total + _content(counter, source.get("content"), f"{where}.source")
    # A URL or file id, or a PDF whose pages cannot be seen: not counted here, but
    # reserved as Policy.file_id_tokens says (uncountable_documents finds them).
    pages = _pdf_pages(source.get("data"), where) if kind == "base64" else 0
    return total + pages * pdf_page_tokens(counter)


def _unread(block: Any) -> str | None:
    """What makes a ``document`` block one guardrail cannot read, or None."""
    source = plain(field_of(block, "source"))
    kind = source.get("type") if isinstance(source, Mapping) else None
    if kind in ("text", "content"):
        return None
    if kind == "base64":
        data = source.get("data")
        if isinstance(data, str) and _pdf_pages(data, "document") > 0:
            return None
        return "a PDF whose pages cannot be seen"
    if kind == "file":
        return "a document by file_id"
    if kind == "url":
        return "a document by URL"
    return "a document guardrail cannot read"


def uncountable_documents(messages: Sequence[Any]) -> list[str]:
    """Where the documents are whose size the local estimate cannot know (a ``file_id``,
    a URL, a PDF whose pages cannot be seen), in a message or a tool result: their places
    (``messages[i].content[k]``), for the error or the reservation. Messages that are
    plain strings are skipped without a look."""
    found: list[str] = []
    for i, message in enumerate(messages):
        content = field_of(message, "content")
        if not isinstance(content, (list, tuple)):
            continue
        for k, block in enumerate(content):
            block = plain(block)
            if not isinstance(block, Mapping):
                continue
            kind = block.get("type")
            if kind == "document":
                why = _unread(block)
                if why is not None:
                    found.append(f"messages[{i}].content[{k}] ({why})")
            elif kind == "tool_result" and isinstance(block.get("content"), (list, tuple)):
                for j, inner in enumerate(block["content"]):
                    inner = plain(inner)
                    if isinstance(inner, Mapping) and inner.get("type") == "document":
                        why = _unread(inner)
                        if why is not None:
                            found.append(f"messages[{i}].content[{k}].content[{j}] ({why})")
    return found


def pdf_page_tokens(counter: TokenCounter) -> int:
    """The most a PDF page costs on this model: its text (3,000 tokens at the 4.6-era
    tokenizer, scaled by the family's margin over the 1.25 default) and its page image
    (the worst case of the model's image rule)."""
    rule = counter.info.image_rule or ANTHROPIC_HIGH_RES_IMAGE_RULE
    margin = estimate_margin(counter.info) or CLAUDE_SAFETY_MARGIN
    text = math.ceil(_PDF_PAGE_TEXT_TOKENS * margin / CLAUDE_SAFETY_MARGIN)
    return max(PDF_PAGE_TOKENS, text + worst_case_tokens(None, rule))


def _image_tokens(counter: TokenCounter, source: Any, where: str) -> int:
    rule = counter.info.image_rule or ANTHROPIC_HIGH_RES_IMAGE_RULE
    source = plain(source)
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
