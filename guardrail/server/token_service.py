"""The token service: counting, truncation, prompt building and cost estimates over HTTP,
for callers in any language (authenticated by a tenant key; free: nothing is sent
upstream). The same functions as the library's: ``count_text`` / ``count_messages``,
``truncate_text``, ``PromptBuilder``, ``estimate_cost``.

The gateway runs them in its thread pool, off the event loop (counting a long text takes
tiktoken about 0.1 s a megabyte), and takes bodies of at most :data:`MAX_SERVICE_BYTES`
(or ``max_body_bytes`` if lower): a 413 past it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from guardrail.catalog.models import model_info
from guardrail.catalog.pricing import estimate_cost
from guardrail.counting.messages import count_messages, count_text
from guardrail.errors import InvalidRequestError
from guardrail.prompt.builder import PromptBuilder
from guardrail.prompt.truncation import truncate_text

__all__ = ["MAX_SERVICE_BYTES", "SERVICES"]

MAX_SERVICE_BYTES = 24 * 1024 * 1024
"""The largest body the token service takes (24 MiB: some millions of tokens, more than any
model's context window holds)."""


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model must be a non-empty string")
    return model


def _int(body: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _count(body: Mapping[str, Any]) -> int:
    model = _model(body)
    if "text" in body:
        text = body["text"]
        if not isinstance(text, str):
            raise InvalidRequestError("text must be a string")
        return count_text(text, model)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequestError('give "text" (a string) or "messages" (a list of messages)')
    return count_messages(messages, model, tools=body.get("tools"))


def count_tokens(body: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model", "text"}`` or ``{"model", "messages", "tools"?}`` -> the token count
    (``exact`` is false for models without a public tokenizer: Claude's are estimates)."""
    count = _count(body)
    info = model_info(_model(body))
    return {"token_count": count, "model": info.name, "exact": info.exact_tokenizer}


def truncate(body: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model", "text", "max_tokens", "strategy"?, "marker"?}`` -> the text cut to fit."""
    model = _model(body)
    text = body.get("text")
    if not isinstance(text, str):
        raise InvalidRequestError("text must be a string")
    options = {k: body[k] for k in ("strategy", "marker") if k in body}
    out = truncate_text(text, _int(body, "max_tokens"), model, **options)
    return {"text": out, "token_count": count_text(out, model), "truncated": out != text}


_BUILDER_OPTIONS = (
    "context_window",
    "headroom",
    "shares",
    "priorities",
    "system_role",
    "context_role",
    "context_template",
    "separator",
    "context_order",
    "user_truncation",
    "truncate_user",
)
_BUILD_PARTS = ("system", "examples", "context", "history", "user", "tools")


def build_prompt(body: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model", "reserve_output", builder options..., "system"?, "examples"?,
    "context"?, "history"?, "user"?, "tools"?}`` -> messages that fit, and what each part
    got."""
    options = {k: body[k] for k in _BUILDER_OPTIONS if k in body}
    builder = PromptBuilder(_model(body), reserve_output=_int(body, "reserve_output"), **options)
    prompt = builder.build(**{k: body[k] for k in _BUILD_PARTS if k in body})
    return {
        "messages": prompt.messages,
        "prompt_tokens": prompt.prompt_tokens,
        "limit": prompt.limit,
        "parts": {
            name: {
                "requested": p.requested,
                "granted": p.granted,
                "used": p.used,
                "truncated": p.truncated,
                "dropped": len(p.dropped),
            }
            for name, p in prompt.parts.items()
        },
    }


def cost(body: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model", "input_tokens", "output_tokens"?}``, or ``{"model", "messages" or "text",
    "output_tokens"?}`` -> the cost in USD (a decimal string)."""
    model = _model(body)
    prompt = _int(body, "input_tokens") if "input_tokens" in body else _count(body)
    output = _int(body, "output_tokens", 0)
    return {
        "model": model_info(model).name,
        "input_tokens": prompt,
        "output_tokens": output,
        "cost_usd": str(estimate_cost(model, prompt, output)),
    }


SERVICES = {
    "/tokens/count": count_tokens,
    "/tokens/truncate": truncate,
    "/prompt/build": build_prompt,
    "/cost/estimate": cost,
}
