"""The Responses API's input, counted: each input item by the cookbook's rules for its Chat
Completions twin (see :mod:`guardrail.providers.openai.responses` for the rules), and
what cannot be counted locally flagged as opaque."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from guardrail.errors import InvalidRequestError

__all__ = ["as_message", "as_tool", "output_schema", "plain"]

_CALL_ITEMS = {"function_call": "arguments", "custom_tool_call": "input"}
_OUTPUT_ITEMS = frozenset({"function_call_output", "custom_tool_call_output"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
_FUNCTION_TOOLS = frozenset({"function", "custom"})


def _type(value: object) -> str:
    return type(value).__name__


_PLAIN = frozenset({dict, str, bytes, int, float, list, tuple, type(None)})


def plain(value: Any) -> Any:
    """An SDK object (an output item appended to the next request) as the dict it is sent
    as."""
    # The exact types first: an isinstance against the Mapping ABC costs a Python-level call.
    if type(value) in _PLAIN or isinstance(
        value, Mapping | str | bytes | int | float | list | tuple
    ):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json", exclude_none=True)
    return value


def _part(part: Any, where: str) -> tuple[Any, bool]:
    """A content part in its Chat Completions shape, and whether it is opaque."""
    part = plain(part)
    if not isinstance(part, Mapping):
        raise InvalidRequestError(f"{where} must be a content part dict, got {_type(part)}")
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": part.get("text")}, False
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal")}, False
    if kind == "input_image":
        url = part.get("image_url") or f"file:{part.get('file_id') or ''}"
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}, False
    if kind == "input_file":
        file = {k: part[k] for k in ("file_data", "file_id", "filename", "file_url") if k in part}
        return {"type": "file", "file": file}, False
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio", part)}, False
    return {k: v for k, v in part.items() if k != "type"} | {"type": "other"}, True


def _content(content: Any, where: str) -> tuple[Any, bool]:
    if content is None or isinstance(content, str):
        return content, False
    if not isinstance(content, list | tuple):
        raise InvalidRequestError(
            f"{where} must be a string or a list of content parts, got {_type(content)}"
        )
    parts, opaque = [], False
    for k, part in enumerate(content):
        shaped, hidden = _part(part, f"{where}[{k}]")
        parts.append(shaped)
        opaque = opaque or hidden
    return parts, opaque


def as_message(item: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], bool]:
    """An input item as the Chat Completions message it is counted as, and whether it
    holds what guardrail cannot count (then the provider is asked)."""
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if not isinstance(role, str):
            raise InvalidRequestError(f"{where} has no 'role'")
        content, opaque = _content(item.get("content"), f"{where}.content")
        return {"role": role, "content": content}, opaque
    if kind in _CALL_ITEMS:
        name, args = item.get("name"), item.get(_CALL_ITEMS[kind], "")
        if not isinstance(name, str):
            raise InvalidRequestError(f"{where}.name must be a string, got {_type(name)}")
        if not isinstance(args, str):
            raise InvalidRequestError(f"{where}.{_CALL_ITEMS[kind]} must be a string")
        call = {"id": "", "type": "function", "function": {"name": name, "arguments": args}}
        return {"role": "assistant", "tool_calls": [call]}, False
    if kind in _OUTPUT_ITEMS:
        content, opaque = _content(item.get("output"), f"{where}.output")
        return {"role": "tool", "content": content}, opaque
    if kind == "reasoning":
        summaries = [plain(s) for s in item.get("summary") or ()]
        texts = [t.get("text") for t in summaries if isinstance(t, Mapping)]
        return {
            "role": "assistant",
            "content": "".join(t for t in texts if isinstance(t, str)),
        }, True
    if not isinstance(kind, str):
        raise InvalidRequestError(f"{where} has no 'type' or 'role'")
    # item_reference, built-in tool calls and their outputs: every string they show, and
    # the provider's count for what they do not.
    shown = {k: v for k, v in item.items() if k not in ("type", "id", "status")}
    return {"role": "assistant", "content": "", "item": shown}, True


def as_tool(tool: Any, where: str) -> tuple[Mapping[str, Any], bool]:
    tool = plain(tool)
    if not isinstance(tool, Mapping):
        raise InvalidRequestError(f"{where} must be a tool dict, got {_type(tool)}")
    kind = tool.get("type", "function")
    if kind == "function":
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        return {"type": "function", "function": function}, False
    return dict(tool), kind not in _FUNCTION_TOOLS


def output_schema(kwargs: Mapping[str, Any]) -> Any:
    """The structured-output schema the model reads: ``text.format`` (or ``parse``'s
    ``text_format`` model), None without one."""
    text_format: Any = kwargs.get("text_format")
    if text_format is not None and hasattr(text_format, "model_json_schema"):
        return text_format.model_json_schema()
    text = plain(kwargs.get("text"))
    if isinstance(text, Mapping):
        fmt = plain(text.get("format"))
        if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
            return {k: v for k, v in fmt.items() if k != "type"}
    return None
