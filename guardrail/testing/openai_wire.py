"""What the fake OpenAI server receives and sends: request records, error bodies in
OpenAI's shape, completions and their token counts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

import tiktoken

__all__ = [
    "EMBEDDING_DIMENSIONS",
    "FINGERPRINT",
    "Completion",
    "ReceivedRequest",
    "ToolCall",
    "default_prompt_tokens",
    "encode",
    "error_body",
    "split_pieces",
]

EMBEDDING_DIMENSIONS: Final = 16
"""Length of embedding vectors when the request does not set ``dimensions``."""

FINGERPRINT: Final = "fp_fake"


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as the server received it."""

    method: str
    path: str
    """The path without the query string, e.g. ``"/v1/chat/completions"``."""
    headers: dict[str, str]
    """Request headers with lower-case names (repeated headers joined with ``", "``)."""
    json: Any
    """The parsed JSON body, or ``None`` when there was no body or it was not valid JSON."""
    body: bytes = b""
    query: str = ""
    request_id: str = ""
    """The ``x-request-id`` the server answered (or would have answered) with."""


def default_prompt_tokens(request_json: dict[str, Any]) -> int:
    """Count prompt tokens with :func:`guardrail.count_messages` (imported lazily)."""
    from guardrail.counting.messages import count_messages

    return int(
        count_messages(
            request_json.get("messages", []),
            request_json.get("model", ""),
            tools=request_json.get("tools"),
        )
    )


_O200K_PREFIXES: Final = (
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-6",
    "gpt-oss",
    "o1",
    "o3",
    "o4",
)
_CL100K_PREFIXES: Final = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada")


def _encoding_name(model: str) -> str:
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


@cache
def _encoding(name: str) -> tiktoken.Encoding:
    return tiktoken.get_encoding(name)


def encode(text: str, model: str) -> tuple[tiktoken.Encoding, list[int]]:
    enc = _encoding(_encoding_name(model))
    return enc, enc.encode(text, disallowed_special=())


def split_pieces(enc: tiktoken.Encoding, tokens: Sequence[int]) -> list[str]:
    """Decode ``tokens`` into one string per token (tokens that split a character are merged)."""
    pieces: list[str] = []
    pending = b""
    for token in tokens:
        pending += enc.decode_single_token_bytes(token)
        try:
            piece = pending.decode("utf-8")
        except UnicodeDecodeError:
            continue
        pieces.append(piece)
        pending = b""
    if pending:
        pieces.append(pending.decode("utf-8", errors="replace"))
    return pieces


_STATUS_DEFAULTS: Final[dict[int, tuple[str, str, str | None]]] = {
    400: ("invalid_request_error", "Invalid request.", None),
    401: ("invalid_request_error", "Incorrect API key provided.", "invalid_api_key"),
    403: ("permission_error", "You are not allowed to perform this request.", None),
    404: ("invalid_request_error", "The requested resource does not exist.", None),
    409: ("invalid_request_error", "The request conflicts with another request.", None),
    422: ("invalid_request_error", "The request could not be processed.", None),
    429: (
        "requests",
        "Rate limit reached for requests. Please try again later.",
        "rate_limit_exceeded",
    ),
    500: (
        "server_error",
        "The server had an error while processing your request. Sorry about that!",
        None,
    ),
    502: ("server_error", "Bad gateway.", None),
    503: ("server_error", "The engine is currently overloaded, please try again later.", None),
    504: ("server_error", "Gateway timeout.", None),
}

_CODE_DEFAULTS: Final[dict[str, tuple[str, str, str | None]]] = {
    "context_length_exceeded": (
        "invalid_request_error",
        "This model's maximum context length was exceeded. "
        "Please reduce the length of the messages.",
        "messages",
    ),
    "insufficient_quota": (
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
        None,
    ),
    "invalid_api_key": ("invalid_request_error", "Incorrect API key provided.", None),
    "model_not_found": ("invalid_request_error", "The model does not exist.", "model"),
}


def error_body(
    status: int,
    *,
    code: str | None,
    message: str | None,
    type: str | None,
    param: str | None,
) -> dict[str, Any]:
    if status in _STATUS_DEFAULTS:
        default_type, default_message, default_code = _STATUS_DEFAULTS[status]
    else:
        default_type = "server_error" if status >= 500 else "invalid_request_error"
        default_message, default_code = f"HTTP error {status}.", None
    if code is None:
        code = default_code
    default_param: str | None = None
    if code is not None and code in _CODE_DEFAULTS:
        default_type, default_message, default_param = _CODE_DEFAULTS[code]
    return {
        "error": {
            "message": default_message if message is None else message,
            "type": default_type if type is None else type,
            "param": default_param if param is None else param,
            "code": code,
        }
    }


@dataclass(frozen=True)
class ToolCall:
    """A reply that calls a function: a ``reply`` function may return a list of these
    (or one) instead of text, to drive an agent's tool loop offline."""

    name: str
    arguments: str | Mapping[str, Any] = "{}"

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Completion:
    """One reply, shared by chat completions and responses: its text (or tool calls), how
    it ended, and the token counts it is billed at."""

    id: str
    created: int
    model: str
    pieces: list[str]
    content: str
    finish_reason: str
    usage: dict[str, Any]
    tool_calls: tuple[ToolCall, ...] = ()
    call_ids: tuple[str, ...] = field(default=())
    prompt_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
