"""Tool definitions: the cookbook's per-family constants, plus guardrail's rules for what
it leaves out (nested properties, ``$defs``, other schema keywords, non-function tools)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from guardrail.errors import InvalidRequestError

if TYPE_CHECKING:
    from guardrail.counting.messages import TokenCounter

__all__ = ["json_text", "tool_tokens"]

MAX_DEPTH = 64
_SCHEMA_SKIP = frozenset(
    (
        *("type", "description", "enum", "properties", "items", "required", "title"),
        *("additionalProperties", "anyOf", "oneOf", "allOf", "$defs", "definitions", "strict"),
    )
)


def _type(value: object) -> str:
    return type(value).__name__


def tool_tokens(counter: TokenCounter, tools: Sequence[Any] | None) -> int:
    """Tokens of the ``tools`` (or legacy ``functions``) definitions of a request."""
    if not tools:
        return 0
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
        raise InvalidRequestError(f"tools must be a list of tool definitions, not {_type(tools)}")
    c = counter.tool_constants
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
            total += c["func_init"] + counter.nested(tool, where, 0, skip_type=True)
            continue
        total += c["func_init"] + _function(counter, fn, where)
    return total + c["func_end"]


def _function(counter: TokenCounter, fn: object, where: str) -> int:
    if not isinstance(fn, Mapping):
        raise InvalidRequestError(f"{where} must be a dict, got {_type(fn)}")
    name = fn.get("name")
    if not isinstance(name, str):
        raise InvalidRequestError(f"{where}.name must be a string, got {_type(name)}")
    desc = _description(fn.get("description"), f"{where}.description")
    total = counter.text(f"{name}:{desc}")
    params = fn.get("parameters")
    if params is None:
        return total
    if not isinstance(params, Mapping):
        raise InvalidRequestError(f"{where}.parameters must be a dict, got {_type(params)}")
    total += _properties(counter, params.get("properties"), f"{where}.parameters", 0)
    for defs_key in ("$defs", "definitions"):
        defs = params.get(defs_key)
        if isinstance(defs, Mapping):
            for def_name, schema in defs.items():
                total += _schema_extra(counter, schema, f"{where}.parameters.{defs_key}", 1)
                if isinstance(def_name, str):
                    total += counter.text(def_name)
    return total


def _properties(counter: TokenCounter, props: object, where: str, depth: int) -> int:
    if props is None:
        return 0
    if not isinstance(props, Mapping):
        raise InvalidRequestError(f"{where}.properties must be a dict, got {_type(props)}")
    if not props:
        return 0
    if depth > MAX_DEPTH:
        raise InvalidRequestError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    c = counter.tool_constants
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
        total += counter.text(f"{key}:{kind}:{desc}")
        total += _schema_extra(counter, schema, w, depth + 1)
    return total


def _schema_extra(counter: TokenCounter, schema: object, where: str, depth: int) -> int:
    """What a property schema holds beyond the cookbook's name/type/description."""
    if not isinstance(schema, Mapping):
        return 0
    if depth > MAX_DEPTH:
        raise InvalidRequestError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    total = 0
    if "enum" in schema:
        total += _enum(counter, schema["enum"], f"{where}.enum")
    total += _properties(counter, schema.get("properties"), where, depth)
    items = schema.get("items")
    if isinstance(items, Mapping):
        total += _schema_extra(counter, items, f"{where}.items", depth + 1)
    for variants_key in ("anyOf", "oneOf", "allOf"):
        variants = schema.get(variants_key)
        if isinstance(variants, (list, tuple)):
            for variant in variants:
                if isinstance(variant, Mapping):
                    kind = variant.get("type")
                    if isinstance(kind, str):
                        total += counter.text(kind)
                    total += _schema_extra(counter, variant, where, depth + 1)
    for key, value in schema.items():
        if key not in _SCHEMA_SKIP and isinstance(key, str):
            total += counter.text(f"{key}:{json_text(value)}")
    return total


def _enum(counter: TokenCounter, values: object, where: str) -> int:
    if not isinstance(values, (list, tuple)):
        raise InvalidRequestError(f"{where} must be a list, got {_type(values)}")
    c = counter.tool_constants
    total = c["enum_init"]
    for item in values:
        total += c["enum_item"] + counter.text(item if isinstance(item, str) else json_text(item))
    return total


def _description(desc: object, where: str) -> str:
    if desc is None:
        return ""
    if not isinstance(desc, str):
        raise InvalidRequestError(f"{where} must be a string, got {_type(desc)}")
    # The cookbook drops one trailing period.
    return desc[:-1] if desc.endswith(".") else desc


def json_text(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except RecursionError:
        raise InvalidRequestError("a tool schema value is nested too deeply") from None
    except (TypeError, ValueError):
        return str(value)
