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
  assumed at 16 kbit/s for other formats). ``file`` parts cost their ``filename`` plus,
  for a PDF given as ``file_data``, an upper bound per page (its text allowance and its
  page image, :mod:`guardrail.counting.documents`). A ``file_id`` (or a PDF whose pages
  cannot be seen) is not countable here: the guarded client reserves it as
  ``Policy.file_id_tokens`` says. An assistant's ``audio`` reference (``{"id": ...}``) is
  not counted.
* any other key: a string value is counted like the cookbook counts every value; a nested
  value (and any unknown part type) costs the tokens of every string and key in it.

Anthropic models (encoding ``"claude"``) have no local tokenizer: their counts are an
**estimate**, the ``o200k_base`` count of each string times the family's margin
(``ModelInfo.text_margin``; :data:`~guardrail.counting.text.CLAUDE_SAFETY_MARGIN` by
default), rounded up. The exact count is Anthropic's ``messages.count_tokens``
(:mod:`guardrail.providers.anthropic`), on by default for guarded calls.

Speed: a conversation re-sends its whole history every turn, so every string's token count
is cached per encoding (a bounded dict shared by all counters of that encoding). Counting a
message seen before costs a couple of dictionary lookups, not a re-encode.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from operator import itemgetter
from typing import Any

from guardrail.catalog.models import ModelInfo, model_info
from guardrail.counting.documents import file_part_tokens
from guardrail.counting.images import ANTHROPIC_HIGH_RES_IMAGE_RULE
from guardrail.counting.media import (
    anthropic_image_tokens,
    audio_tokens,
    image_url_tokens,
)
from guardrail.counting.text import (
    clear_text_caches,
    estimate_margin,
    new_cache,
    shared_cache,
)
from guardrail.counting.tools import MAX_DEPTH, tool_tokens
from guardrail.errors import InvalidRequestError, InvalidRequestTypeError, describe

__all__ = [
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


_ROLE = itemgetter("role")
_CONTENT = itemgetter("content")
# What the fast path's C-level map/sum can raise when a message is not a plain
# {"role": str, "content": str} dict; the checked path then says what is wrong.
_NOT_SIMPLE = (KeyError, TypeError, AttributeError, IndexError)


def clear_caches() -> None:
    """Empty the token-count caches and the counter cache (for tests and benchmarks)."""
    clear_text_caches()
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
        "encoding",
        "exact",
        "info",
        "model",
        "reply_priming",
        "tokens_per_message",
        "tokens_per_name",
        "tool_constants",
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
        margin = estimate_margin(info)
        self._cache = (
            shared_cache(info.encoding, margin) if cache else new_cache(info.encoding, margin)
        )
        # The bound C method: the hot path calls it directly, no Python frame in between.
        self._text: Callable[[str], int] = self._cache.__getitem__
        constants = info.tool_constants or {}
        self.tool_constants = {
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
            rule = ANTHROPIC_HIGH_RES_IMAGE_RULE  # no tier known: the larger errs high
        self._image_rule = rule

    def __repr__(self) -> str:
        return f"TokenCounter(model={self.model!r}, encoding={self.encoding!r})"

    # ------------------------------------------------------------------ public API

    def text(self, text: str) -> int:
        """Tokens of ``text`` alone (special-token strings count as ordinary text)."""
        if not isinstance(text, str):
            raise InvalidRequestTypeError(f"text must be a str, got {_type(text)}")
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
            total += tool_tokens(self, tools)
        return total + REPLY_PRIMING

    def tools(self, tools: Sequence[Any] | None) -> int:
        """Tokens of the ``tools`` (or legacy ``functions``) definitions of a request."""
        return tool_tokens(self, tools)

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
                raise InvalidRequestError(f"{where} has a non-string key {describe(key)}")
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
                total += self.nested(value, f"{where}.{key}", 0)
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
            return image_url_tokens(part.get("image_url"), f"{where}.image_url", self._image_rule)
        if kind == "input_audio":
            return audio_tokens(part.get("input_audio"), f"{where}.input_audio")
        if kind == "file":
            file = part.get("file")
            if not isinstance(file, Mapping):
                raise InvalidRequestError(f"{where}.file must be a dict, got {_type(file)}")
            name = file.get("filename")
            # The document is read server-side (text and page images): a PDF is bounded per
            # page; a file_id is reserved by the engine as the policy says (documents.py).
            named = self._text(name) if isinstance(name, str) else 0
            try:
                return named + file_part_tokens(file, self._image_rule)
            except InvalidRequestError as exc:
                raise InvalidRequestError(f"{where}.file: {exc}") from None
        if kind == "image" and isinstance(part.get("source"), Mapping):
            return anthropic_image_tokens(part["source"], f"{where}.source", self._image_rule)
        return self.nested(part, where, 0, skip_type=True)

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

    def nested(self, value: object, where: str, depth: int = 0, skip_type: bool = False) -> int:
        """Tokens of every string (and dict key) in an unknown structure: errs high."""
        if depth > MAX_DEPTH:
            raise InvalidRequestError(f"{where} is nested more than {MAX_DEPTH} levels deep")
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
                total += self.nested(item, where, depth + 1)
            return total
        if isinstance(value, (list, tuple)):
            for item in value:
                total += self.nested(item, where, depth + 1)
            return total
        raise InvalidRequestError(f"{where} has a value of unsupported type {_type(value)}")

    # ------------------------------------------------------------------ tools


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
        # By identity first (the catalog hands out one ModelInfo per model): hashing a
        # ModelInfo hashes every field. The entry holds the info, so its id stays unique.
        entry = _counters.get(id(info))
        if entry is not None and entry[0] is info:
            return entry[1]
        key: object = model
    else:
        info = model_info(model, strict=strict)
        key = (model, strict)
    entry = _counters.get(key)
    if entry is not None and (entry[0] is info or entry[0] == info):
        if key is not info:
            return entry[1]
        counter = entry[1]  # an equal ModelInfo seen before: found by this one's id too
    else:
        counter = TokenCounter(info)
    with _counters_lock:
        if len(_counters) >= _MAX_COUNTERS:
            _counters.clear()
        _counters[key] = (info, counter)
        if key is info:
            _counters[id(info)] = (info, counter)
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
    ``o200k_base`` counts times the family's margin, rounded up.

    Unknown models count with ``o200k_base`` and warn once; ``strict=True`` raises
    :class:`~guardrail.errors.UnknownModelError` instead. Malformed input raises
    :class:`~guardrail.errors.InvalidRequestError` naming the message and field.
    """
    return counter_for(model, strict=strict).messages(messages, tools)
