"""Exact prompt-token counting: text, chat messages, tool definitions, images.

The rules follow OpenAI's cookbook "How to count tokens with tiktoken", which is checked
against the API's ``usage.prompt_tokens``:

* every message costs :data:`TOKENS_PER_MESSAGE` (3) plus the tokens of each of its string
  values (``role`` included), plus :data:`TOKENS_PER_NAME` (1) when it has a ``name``;
* the reply is primed with :data:`REPLY_PRIMING` (3) tokens, once per request;
* tool definitions cost the cookbook's per-family constants (``func_init``, ``prop_init``,
  ``prop_key``, ``enum_init``, ``enum_item``, ``func_end`` from the model catalog) plus the
  tokens of ``"name:description"`` and of ``"property:type:description"`` per property.

Where OpenAI publishes nothing, guardrail picks these rules (they err high unless noted):

* **tool definitions beyond the cookbook**: properties of nested objects (``properties``,
  ``items.properties``, ``anyOf``/``oneOf``/``allOf`` variants, ``$defs``) are counted like
  top-level properties; other schema keywords (``format``, ``default``, ``minimum``...) add
  the tokens of ``"keyword:<json value>"``. Tools that are not functions (``custom``) cost
  ``func_init`` plus the tokens of every string in them.
* **assistant tool calls** (``tool_calls``, legacy ``function_call``): each call costs
  :data:`TOKENS_PER_TOOL_CALL` plus the tokens of its function name and of its ``arguments``
  string. Call ids are not counted.
* **tool results** (``role="tool"``): like any message, except that ``tool_call_id`` is not
  counted. The one published measurement (an assistant call to ``get_current_weather`` and
  its tool result, gpt-4: 35 prompt tokens) leaves no room for the ~18 tokens of the id;
  this formula gives 37 for it (2 high, from the per-call overhead).
* **content parts**: ``text`` and ``refusal`` parts cost their text. ``image_url`` parts
  cost OpenAI's vision formula (:mod:`guardrail.counting.images`; remote URLs and ``detail="auto"``
  count the worst case). ``input_audio`` parts cost :data:`AUDIO_TOKENS_PER_SECOND` per
  second of audio (duration read from a WAV header, from the first MP3 frame's bitrate, or
  assumed at 16 kbit/s for other formats). ``file`` parts cost their ``filename`` only:
  OpenAI extracts PDF text and page images server-side, which cannot be counted locally,
  so **documents are under-counted**. An assistant's ``audio`` reference (``{"id": ...}``)
  is not counted either.
* any other key: a string value is counted like the cookbook counts every value; a nested
  value (and any unknown part type) costs the tokens of every string and key in it.

Anthropic models (encoding ``"claude"``) have no local tokenizer: their counts are an
**estimate**, the ``o200k_base`` count of each string times :data:`CLAUDE_SAFETY_MARGIN`,
rounded up, with the same per-message overheads. Exact Anthropic counting is future work.

Speed: a conversation re-sends its whole history every turn, so every string's token count
is cached per encoding (a bounded dict shared by all counters of that encoding). Counting a
message seen before costs a couple of dictionary lookups, not a re-encode.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from itertools import islice
from operator import itemgetter
from typing import Any

import tiktoken

from guardrail.catalog.models import FALLBACK_ENCODING, ModelInfo, model_info
from guardrail.counting.images import (
    ANTHROPIC_IMAGE_RULE,
    Base64Reader,
    image_size_from_base64,
    image_tokens,
    tokens_for_size,
    worst_case_tokens,
)
from guardrail.errors import InvalidRequestError

__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "CLAUDE_SAFETY_MARGIN",
    "REPLY_PRIMING",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOKENS_PER_TOOL_CALL",
    "TokenCounter",
    "clear_caches",
    "count_messages",
    "count_text",
    "counter_for",
    "field_of",
]

TOKENS_PER_MESSAGE = 3
"""``<|start|>{role}<|message|>{content}<|end|>``: three tokens around each message."""
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
"""Every reply is primed with ``<|start|>assistant<|message|>``."""
TOKENS_PER_TOOL_CALL = 3
"""Per call in ``tool_calls`` / ``function_call``, on top of its name and arguments.

OpenAI does not publish how calls are rendered. 3 mirrors the per-message overhead; it is
2 above what the one published single-call measurement implies, a margin kept on purpose
for parallel calls, which OpenAI renders through a wrapper whose size nobody publishes.
"""
CLAUDE_SAFETY_MARGIN = 1.25
"""Claude estimates: ``ceil(o200k_base tokens * 1.25)`` per string (Claude's tokenizer
produces more tokens than o200k_base for most text)."""
AUDIO_TOKENS_PER_SECOND = 10
"""Input audio: one token per 100 ms (OpenAI's Realtime figure for user audio; the Chat
Completions docs give none)."""
_ASSUMED_AUDIO_BYTES_PER_SECOND = 2000  # 16 kbit/s: low for speech codecs, so it errs high

CACHE_MAX_ENTRIES = 50_000
"""Strings whose counts each per-encoding cache keeps."""
CACHE_MAX_CHARS = 32 * 1024 * 1024
"""Total characters of the strings a cache keeps alive (it holds references to them)."""
CACHE_MAX_STRING = 1024 * 1024
"""Strings longer than this are encoded every time: encoding dominates, and keeping one
alive would cost more memory than the cache is worth."""

_MAX_DEPTH = 64
_ROLE = itemgetter("role")
_CONTENT = itemgetter("content")
# What the fast path's C-level map/sum can raise when a message is not a plain
# {"role": str, "content": str} dict; the checked path then says what is wrong.
_NOT_SIMPLE = (KeyError, TypeError, AttributeError, IndexError)
_SCHEMA_SKIP = frozenset(
    (
        *("type", "description", "enum", "properties", "items", "required", "title"),
        *("additionalProperties", "anyOf", "oneOf", "allOf", "$defs", "definitions", "strict"),
    )
)


class _TextCache(dict[str, int]):
    """``cache[text]`` is the token count of ``text``: a hit is one C-level dict lookup.

    A miss encodes in ``__missing__`` and stores the count. Bounded by entries and by total
    characters; when full, the oldest eighth is dropped (insertion order). Not an LRU: moving
    an entry on every hit would cost more than the lookup itself. Inserts and evictions take
    a lock; lookups need none (a dict read is atomic), so concurrent counting is safe.
    """

    __slots__ = ("_chars", "_encode", "_lock", "_margin", "max_chars", "max_entries")

    def __init__(
        self,
        encode: Callable[[str], Sequence[int]],
        margin: float | None = None,
        max_entries: int = CACHE_MAX_ENTRIES,
        max_chars: int = CACHE_MAX_CHARS,
    ) -> None:
        super().__init__()
        self._encode = encode
        self._margin = margin
        self._lock = threading.Lock()
        self._chars = 0
        self.max_entries = max_entries
        self.max_chars = max_chars

    def __missing__(self, text: str) -> int:
        if not isinstance(text, str):
            # Reached only from the fast path with a non-str value: makes it fall back.
            raise TypeError(f"expected a string, got {type(text).__name__}")
        n = len(self._encode(text))
        if self._margin is not None:
            n = math.ceil(n * self._margin)
        size = len(text)
        if size <= CACHE_MAX_STRING:
            with self._lock:
                if text not in self:
                    if len(self) >= self.max_entries or self._chars + size > self.max_chars:
                        self._evict(size)
                    self[text] = n
                    self._chars += size
        return n

    def _evict(self, incoming: int) -> None:
        # Called with the lock held. Drop the oldest eighth, more if the characters demand.
        drop = max(1, len(self) // 8)
        for key in list(islice(iter(self), drop)):
            self._chars -= len(key)
            del self[key]
        while self and self._chars + incoming > self.max_chars:
            key = next(iter(self))
            self._chars -= len(key)
            del self[key]

    def clear(self) -> None:
        with self._lock:
            super().clear()
            self._chars = 0


_caches_lock = threading.Lock()
_caches: dict[str, _TextCache] = {}


def _new_cache(encoding: str) -> _TextCache:
    if encoding == "claude":
        enc = tiktoken.get_encoding(FALLBACK_ENCODING)
        return _TextCache(enc.encode_ordinary, CLAUDE_SAFETY_MARGIN)
    # encode_ordinary: special-token text such as "<|endoftext|>" is ordinary user text.
    return _TextCache(tiktoken.get_encoding(encoding).encode_ordinary)


def _shared_cache(encoding: str) -> _TextCache:
    cache = _caches.get(encoding)
    if cache is None:
        with _caches_lock:
            cache = _caches.get(encoding)
            if cache is None:
                cache = _caches[encoding] = _new_cache(encoding)
    return cache


def clear_caches() -> None:
    """Empty the token-count caches and the counter cache (for tests and benchmarks)."""
    with _caches_lock:
        for cache in _caches.values():
            cache.clear()
        _caches.clear()
    with _counters_lock:
        _counters.clear()


def field_of(message: Any, name: str) -> Any:
    """A message field, whether the message is a dict or an SDK object (a
    ``ChatCompletionMessage`` appended to the history straight from a response)."""
    if type(message) is dict or isinstance(message, Mapping):
        return message.get(name)
    return getattr(message, name, None)


def _where(index: int | None) -> str:
    return "message" if index is None else f"messages[{index}]"


def _type(value: object) -> str:
    return type(value).__name__


class TokenCounter:
    """Counts prompt tokens for one model; cheap to keep, safe to share between threads.

    ``message(msg)`` is one message with its overhead (no reply priming);
    ``messages(msgs, tools)`` is what the API reports as ``prompt_tokens`` for a request;
    ``tools(tools)`` is the tool definitions alone; ``text(s)`` one string.
    """

    __slots__ = (
        "_cache",
        "_image_rule",
        "_text",
        "_tool",
        "encoding",
        "exact",
        "info",
        "model",
        "reply_priming",
        "tokens_per_message",
        "tokens_per_name",
    )

    def __init__(self, model: str | ModelInfo, *, strict: bool = False, cache: bool = True):
        """``model`` is a name (resolved with :func:`~guardrail.catalog.models.model_info`) or a
        :class:`~guardrail.catalog.models.ModelInfo`. ``strict=True`` raises
        :class:`~guardrail.errors.UnknownModelError` for unknown names. ``cache=False`` gives
        this counter a private cache instead of the one shared per encoding.
        """
        info = model if isinstance(model, ModelInfo) else model_info(model, strict=strict)
        self.info = info
        self.model = info.name
        self.encoding = info.encoding
        self.exact = info.exact_tokenizer
        """False for Claude models, whose counts are estimates."""
        self.reply_priming = REPLY_PRIMING
        self.tokens_per_message = TOKENS_PER_MESSAGE
        self.tokens_per_name = TOKENS_PER_NAME
        self._cache = _shared_cache(info.encoding) if cache else _new_cache(info.encoding)
        # The bound C method: the hot path calls it directly, no Python frame in between.
        self._text: Callable[[str], int] = self._cache.__getitem__
        constants = info.tool_constants or {}
        self._tool = {
            k: int(constants.get(k, v))
            for k, v in (
                ("func_init", 7),
                ("prop_init", 3),
                ("prop_key", 3),
                ("enum_init", -3),
                ("enum_item", 3),
                ("func_end", 12),
            )
        }
        rule: Mapping[str, Any] = info.image_rule
        if not rule and info.encoding == "claude":
            rule = ANTHROPIC_IMAGE_RULE
        self._image_rule = rule

    def __repr__(self) -> str:
        return f"TokenCounter(model={self.model!r}, encoding={self.encoding!r})"

    # ------------------------------------------------------------------ public API

    def text(self, text: str) -> int:
        """Tokens of ``text`` alone (special-token strings count as ordinary text)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {_type(text)}")
        return self._text(text)

    def message(self, message: Mapping[str, Any] | Any) -> int:
        """Tokens of one message including its overhead, excluding the reply priming."""
        if type(message) is dict and len(message) == 2:
            try:
                return (
                    TOKENS_PER_MESSAGE
                    + self._text(message["role"])
                    + self._text(message["content"])
                )
            except _NOT_SIMPLE:
                pass
        return self._message(message, None)

    def messages(
        self, messages: Sequence[Mapping[str, Any] | Any], tools: Sequence[Any] | None = None
    ) -> int:
        """``prompt_tokens`` of a request: messages, tool definitions and reply priming."""
        if type(messages) is not list and (
            not isinstance(messages, Sequence) or isinstance(messages, (str, bytes))
        ):
            raise InvalidRequestError(f"messages must be a list of dicts, got {_type(messages)}")
        n = len(messages)
        text = self._text
        total = -1
        try:
            # Fast path, all in C: every message is exactly {"role": str, "content": str}.
            # Any other message makes it raise (KeyError/TypeError): the loop then redoes
            # the list, checking each message and saying what is wrong.
            if sum(map(len, messages)) == n + n:
                total = (
                    TOKENS_PER_MESSAGE * n
                    + sum(map(text, map(_ROLE, messages)))
                    + sum(map(text, map(_CONTENT, messages)))
                )
        except _NOT_SIMPLE:
            pass
        if total < 0:
            total = self._messages_loop(messages)
        if tools:
            total += self.tools(tools)
        return total + REPLY_PRIMING

    def tools(self, tools: Sequence[Any] | None) -> int:
        """Tokens of the ``tools`` (or legacy ``functions``) definitions of a request."""
        if not tools:
            return 0
        if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
            raise InvalidRequestError(
                f"tools must be a list of tool definitions, not {_type(tools)}"
            )
        c = self._tool
        total = 0
        for j, tool in enumerate(tools):
            where = f"tools[{j}]"
            if not isinstance(tool, Mapping):
                raise InvalidRequestError(f"{where} must be a dict, got {_type(tool)}")
            kind = tool.get("type", "function")
            if kind == "function" and "function" in tool:
                fn = tool["function"]
                where += ".function"
            elif "name" in tool and "type" not in tool:
                fn = tool  # a legacy `functions` entry
            else:
                total += c["func_init"] + self._strings(tool, where, 0, skip_type=True)
                continue
            total += c["func_init"] + self._function(fn, where)
        return total + c["func_end"]

    # ------------------------------------------------------------------ messages

    def _messages_loop(self, messages: Sequence[Any]) -> int:
        text = self._text
        total = 0
        for i, m in enumerate(messages):
            if type(m) is dict and len(m) == 2:
                try:
                    total += TOKENS_PER_MESSAGE + text(m["role"]) + text(m["content"])
                    continue
                except _NOT_SIMPLE:
                    pass
            total += self._message(m, i)
        return total

    def _message(self, msg: object, index: int | None) -> int:
        where = _where(index)
        if not isinstance(msg, Mapping):
            dump = getattr(msg, "model_dump", None)
            if dump is None or isinstance(msg, type):
                raise InvalidRequestError(f"{where} must be a dict, got {_type(msg)}")
            # An SDK object appended as is (``response.choices[0].message``): the SDK sends
            # its non-None fields, so count those.
            msg = dump(exclude_none=True)
            if not isinstance(msg, Mapping):
                raise InvalidRequestError(f"{where} must be a dict, got {_type(msg)}")
        if "role" not in msg:
            raise InvalidRequestError(f"{where} has no 'role'")
        text = self._text
        total = TOKENS_PER_MESSAGE
        for key, value in msg.items():
            if not isinstance(key, str):
                raise InvalidRequestError(f"{where} has a non-string key {key!r}")
            if key == "content":
                total += self._content(value, f"{where}.content")
            elif key == "role":
                if not isinstance(value, str):
                    raise InvalidRequestError(f"{where}.role must be a string, got {_type(value)}")
                total += text(value)
            elif key == "name":
                if not isinstance(value, str):
                    raise InvalidRequestError(f"{where}.name must be a string, got {_type(value)}")
                total += text(value) + TOKENS_PER_NAME
            elif key == "tool_calls":
                total += self._tool_calls(value, f"{where}.tool_calls")
            elif key == "function_call":
                if value is not None:
                    total += self._call(value, f"{where}.function_call")
            elif key in ("tool_call_id", "refusal"):
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise InvalidRequestError(f"{where}.{key} must be a string, got {_type(value)}")
                if key == "refusal":
                    total += text(value)
                # tool_call_id is not billed as text (see the module docstring).
            elif key == "audio":
                # A reference to an earlier audio reply ({"id": ...}): not countable locally.
                if value is not None and not isinstance(value, Mapping):
                    raise InvalidRequestError(f"{where}.audio must be a dict, got {_type(value)}")
            elif isinstance(value, str):
                total += text(value)  # the cookbook counts every string value
            else:
                total += self._strings(value, f"{where}.{key}", 0)
        return total

    def _content(self, content: object, where: str) -> int:
        if isinstance(content, str):
            return self._text(content)
        if content is None:
            return 0
        if not isinstance(content, (list, tuple)):
            raise InvalidRequestError(
                f"{where} must be a string, a list of content parts or None, got {_type(content)}"
            )
        total = 0
        for k, part in enumerate(content):
            total += self._part(part, f"{where}[{k}]")
        return total

    def _part(self, part: object, where: str) -> int:
        if not isinstance(part, Mapping):
            raise InvalidRequestError(f"{where} must be a content part dict, got {_type(part)}")
        kind = part.get("type")
        if not isinstance(kind, str):
            raise InvalidRequestError(f"{where} has no 'type'")
        if kind in ("text", "refusal"):
            value = part.get(kind)
            if not isinstance(value, str):
                raise InvalidRequestError(f"{where}.{kind} must be a string, got {_type(value)}")
            return self._text(value)
        if kind == "image_url":
            return self._image_url(part.get("image_url"), f"{where}.image_url")
        if kind == "input_audio":
            return self._audio(part.get("input_audio"), f"{where}.input_audio")
        if kind == "file":
            file = part.get("file")
            if not isinstance(file, Mapping):
                raise InvalidRequestError(f"{where}.file must be a dict, got {_type(file)}")
            name = file.get("filename")
            # The document itself is read server-side (text and page images): not countable.
            return self._text(name) if isinstance(name, str) else 0
        if kind == "image" and isinstance(part.get("source"), Mapping):
            return self._anthropic_image(part["source"], f"{where}.source")
        return self._strings(part, where, 0, skip_type=True)

    def _image_url(self, value: object, where: str) -> int:
        detail: object = None
        if isinstance(value, Mapping):
            url = value.get("url")
            detail = value.get("detail")
        else:
            url = value  # some clients send the URL string directly
        if not isinstance(url, str):
            raise InvalidRequestError(f"{where}.url must be a string, got {_type(url)}")
        if detail is not None and not isinstance(detail, str):
            raise InvalidRequestError(f"{where}.detail must be a string, got {_type(detail)}")
        try:
            return image_tokens(url, detail, self._image_rule)
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{where}: {exc}") from None

    def _anthropic_image(self, source: Mapping[str, Any], where: str) -> int:
        rule = self._image_rule
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            try:
                size = image_size_from_base64(source["data"])
            except InvalidRequestError as exc:
                raise InvalidRequestError(f"{where}: {exc}") from None
            if size is not None:
                return tokens_for_size(size[0], size[1], None, rule)
        elif source.get("type") == "url" and isinstance(source.get("url"), str):
            return image_tokens(source["url"], None, rule)
        return worst_case_tokens(None, rule)

    def _audio(self, value: object, where: str) -> int:
        if not isinstance(value, Mapping):
            raise InvalidRequestError(f"{where} must be a dict, got {_type(value)}")
        data, fmt = value.get("data"), value.get("format")
        if not isinstance(data, str):
            raise InvalidRequestError(f"{where}.data must be a base64 string, got {_type(data)}")
        if fmt is not None and not isinstance(fmt, str):
            raise InvalidRequestError(f"{where}.format must be a string, got {_type(fmt)}")
        try:
            seconds = _audio_seconds(Base64Reader(data))
        except ValueError as exc:  # binascii.Error is a ValueError
            raise InvalidRequestError(f"{where}.data is not valid base64: {exc}") from None
        return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)

    def _tool_calls(self, calls: object, where: str) -> int:
        if calls is None:
            return 0
        if not isinstance(calls, (list, tuple)):
            raise InvalidRequestError(f"{where} must be a list, got {_type(calls)}")
        total = 0
        for k, call in enumerate(calls):
            w = f"{where}[{k}]"
            if not isinstance(call, Mapping):
                raise InvalidRequestError(f"{w} must be a dict, got {_type(call)}")
            if "function" in call:
                total += self._call(call["function"], f"{w}.function")
            elif "custom" in call:  # custom tools: {"name": ..., "input": ...}
                total += self._call(call["custom"], f"{w}.custom", arguments="input")
            else:
                raise InvalidRequestError(f"{w} has no 'function'")
        return total

    def _call(self, fn: object, where: str, arguments: str = "arguments") -> int:
        # OpenAI does not publish how calls are rendered: name + arguments + a small overhead.
        if not isinstance(fn, Mapping):
            raise InvalidRequestError(f"{where} must be a dict, got {_type(fn)}")
        name, args = fn.get("name"), fn.get(arguments)
        if not isinstance(name, str):
            raise InvalidRequestError(f"{where}.name must be a string, got {_type(name)}")
        if args is None:
            args = ""
        elif not isinstance(args, str):
            raise InvalidRequestError(
                f"{where}.{arguments} must be a JSON string, got {_type(args)}"
            )
        return TOKENS_PER_TOOL_CALL + self._text(name) + self._text(args)

    def _strings(self, value: object, where: str, depth: int, skip_type: bool = False) -> int:
        """Tokens of every string (and dict key) in an unknown structure: errs high."""
        if depth > _MAX_DEPTH:
            raise InvalidRequestError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
        if isinstance(value, str):
            return self._text(value)
        if value is None or isinstance(value, (bool, int, float, Decimal)):
            return 0
        total = 0
        if isinstance(value, Mapping):
            for key, item in value.items():
                if skip_type and key == "type":
                    continue
                if isinstance(key, str):
                    total += self._text(key)
                total += self._strings(item, where, depth + 1)
            return total
        if isinstance(value, (list, tuple)):
            for item in value:
                total += self._strings(item, where, depth + 1)
            return total
        raise InvalidRequestError(f"{where} has a value of unsupported type {_type(value)}")

    # ------------------------------------------------------------------ tools

    def _function(self, fn: object, where: str) -> int:
        if not isinstance(fn, Mapping):
            raise InvalidRequestError(f"{where} must be a dict, got {_type(fn)}")
        name = fn.get("name")
        if not isinstance(name, str):
            raise InvalidRequestError(f"{where}.name must be a string, got {_type(name)}")
        desc = _description(fn.get("description"), f"{where}.description")
        total = self._text(f"{name}:{desc}")
        params = fn.get("parameters")
        if params is None:
            return total
        if not isinstance(params, Mapping):
            raise InvalidRequestError(f"{where}.parameters must be a dict, got {_type(params)}")
        total += self._properties(params.get("properties"), f"{where}.parameters", 0)
        for defs_key in ("$defs", "definitions"):
            defs = params.get(defs_key)
            if isinstance(defs, Mapping):
                for def_name, schema in defs.items():
                    total += self._schema_extra(schema, f"{where}.parameters.{defs_key}", 1)
                    if isinstance(def_name, str):
                        total += self._text(def_name)
        return total

    def _properties(self, props: object, where: str, depth: int) -> int:
        if props is None:
            return 0
        if not isinstance(props, Mapping):
            raise InvalidRequestError(f"{where}.properties must be a dict, got {_type(props)}")
        if not props:
            return 0
        if depth > _MAX_DEPTH:
            raise InvalidRequestError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
        c = self._tool
        total = c["prop_init"]
        for key, schema in props.items():
            w = f"{where}.properties.{key}"
            if not isinstance(schema, Mapping):
                raise InvalidRequestError(f"{w} must be a dict, got {_type(schema)}")
            total += c["prop_key"]
            kind = schema.get("type", "")
            if isinstance(kind, (list, tuple)):
                kind = " | ".join(str(k) for k in kind)
            elif not isinstance(kind, str):
                raise InvalidRequestError(f"{w}.type must be a string, got {_type(kind)}")
            desc = _description(schema.get("description"), f"{w}.description")
            total += self._text(f"{key}:{kind}:{desc}")
            total += self._schema_extra(schema, w, depth + 1)
        return total

    def _schema_extra(self, schema: object, where: str, depth: int) -> int:
        """What a property schema holds beyond the cookbook's name/type/description."""
        if not isinstance(schema, Mapping):
            return 0
        total = 0
        if "enum" in schema:
            total += self._enum(schema["enum"], f"{where}.enum")
        total += self._properties(schema.get("properties"), where, depth)
        items = schema.get("items")
        if isinstance(items, Mapping):
            total += self._schema_extra(items, f"{where}.items", depth + 1)
        for variants_key in ("anyOf", "oneOf", "allOf"):
            variants = schema.get(variants_key)
            if isinstance(variants, (list, tuple)):
                for variant in variants:
                    if isinstance(variant, Mapping):
                        kind = variant.get("type")
                        if isinstance(kind, str):
                            total += self._text(kind)
                        total += self._schema_extra(variant, where, depth + 1)
        for key, value in schema.items():
            if key not in _SCHEMA_SKIP and isinstance(key, str):
                total += self._text(f"{key}:{_json(value)}")
        return total

    def _enum(self, values: object, where: str) -> int:
        if not isinstance(values, (list, tuple)):
            raise InvalidRequestError(f"{where} must be a list, got {_type(values)}")
        c = self._tool
        total = c["enum_init"]
        for item in values:
            total += c["enum_item"] + self._text(item if isinstance(item, str) else _json(item))
        return total


def _description(desc: object, where: str) -> str:
    if desc is None:
        return ""
    if not isinstance(desc, str):
        raise InvalidRequestError(f"{where} must be a string, got {_type(desc)}")
    # The cookbook drops one trailing period.
    return desc[:-1] if desc.endswith(".") else desc


def _json(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


# ---------------------------------------------------------------------- audio

# MPEG audio layer III bitrates (kbit/s) by bitrate index: MPEG-1, then MPEG-2/2.5.
_MP3_KBPS = (
    (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0),
    (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0),
)


def _audio_seconds(reader: Base64Reader) -> float:
    """Duration of base64 audio: from a WAV header, the first MP3 frame, or a low bitrate."""
    head = reader.read(0, 64)
    size = reader.size
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        pos = 12
        byte_rate = 0
        while pos + 8 <= min(size, 1 << 20):
            chunk = reader.read(pos, 16)
            if len(chunk) < 8:
                break
            cid, length = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if cid == b"fmt " and len(chunk) >= 16:
                byte_rate = int.from_bytes(reader.read(pos + 16, 4), "little")
            elif cid == b"data" and byte_rate > 0:
                length = min(length, size - pos - 8)
                return length / byte_rate
            pos += 8 + length + (length & 1)
    elif head[:3] == b"ID3" or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xfa"):
        pos = 0
        if head[:3] == b"ID3" and len(head) >= 10:
            pos = 10 + ((head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9])
        frame = reader.read(pos, 4)
        if len(frame) == 4 and frame[0] == 0xFF and frame[1] & 0xE0 == 0xE0:
            mpeg1 = (frame[1] >> 3) & 0x3 == 0x3
            kbps = _MP3_KBPS[0 if mpeg1 else 1][frame[2] >> 4]
            if kbps:
                return (size - pos) * 8 / (kbps * 1000)
    return size / _ASSUMED_AUDIO_BYTES_PER_SECOND


# ---------------------------------------------------------------------- module functions

_counters_lock = threading.Lock()
_counters: dict[object, tuple[ModelInfo, TokenCounter]] = {}
_MAX_COUNTERS = 1024


def counter_for(model: str | ModelInfo, *, strict: bool = False) -> TokenCounter:
    """The :class:`TokenCounter` of ``model`` (a name or a ``ModelInfo``), cached.

    A name is looked up again on each call (about a microsecond), so a model registered
    or re-registered later gets a fresh counter.
    """
    if isinstance(model, ModelInfo):
        info: ModelInfo = model
        key: object = model
    else:
        info = model_info(model, strict=strict)
        key = (model, strict)
    entry = _counters.get(key)
    if entry is not None and (entry[0] is info or entry[0] == info):
        return entry[1]
    counter = TokenCounter(info)
    with _counters_lock:
        if len(_counters) >= _MAX_COUNTERS:
            _counters.clear()
        _counters[key] = (info, counter)
    return counter


def count_text(text: str, model: str) -> int:
    """Tokens of ``text`` for ``model`` (an estimate for Claude models, see module doc)."""
    return counter_for(model).text(text)


def count_messages(
    messages: Sequence[Mapping[str, Any] | Any],
    model: str,
    *,
    tools: Sequence[Any] | None = None,
    strict: bool = False,
) -> int:
    """The ``prompt_tokens`` OpenAI reports for a chat completion with these messages/tools.

    Follows the OpenAI cookbook (3 tokens per message, +1 per ``name``, +3 reply priming,
    its tool-definition constants), with the documented additions of this module for tool
    calls, content parts, images and audio. For Claude models the result is an estimate:
    ``o200k_base`` counts times :data:`CLAUDE_SAFETY_MARGIN`, rounded up.

    Unknown models count with ``o200k_base`` and warn once; ``strict=True`` raises
    :class:`~guardrail.errors.UnknownModelError` instead. Malformed input raises
    :class:`~guardrail.errors.InvalidRequestError` naming the message and field.
    """
    return counter_for(model, strict=strict).messages(messages, tools)
