"""The fake Anthropic server's request handler: routing, messages (JSON and SSE events),
count_tokens, models."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

import tiktoken

from guardrail.testing.http import ErrorScript, FakeHandler, Script, dumps

if TYPE_CHECKING:
    from guardrail.testing.anthropic import _HTTPServer

__all__ = [
    "AnthropicHandler",
    "RecordedRequest",
    "model_object",
    "o200k_tokens",
    "strings",
    "token_pieces",
]


_ERROR_TYPES: Final[dict[int, tuple[str, str]]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error."),
    529: ("overloaded_error", "Overloaded"),
}


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Lower-case names."""
    json: Any
    """The parsed JSON body, or None."""
    body: bytes = b""
    request_id: str = ""


@cache
def _o200k() -> tiktoken.Encoding:
    return tiktoken.get_encoding("o200k_base")


def o200k_tokens(text: str) -> list[int]:
    return _o200k().encode(text, disallowed_special=())


def strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key not in ("type", "cache_control", "data", "media_type"):
                yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


class AnthropicHandler(FakeHandler):
    server_version = "FakeAnthropic/1.0"
    request_id_header = "request-id"
    server: _HTTPServer

    def _dispatch(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        parsed = self._parse_json(body)
        path = unquote(self.path.partition("?")[0]).rstrip("/")
        self._request_id = fake._next_id("req_fake_")
        headers = {name.lower(): value for name, value in self.headers.items()}
        fake._record(RecordedRequest(self.command, path, headers, parsed, body, self._request_id))
        try:
            if self.command == "POST" and path == "/v1/messages":
                self._messages(parsed, fake._pop_script("messages"))
            elif self.command == "POST" and path == "/v1/messages/count_tokens":
                self._count_tokens(parsed, fake._pop_script("count_tokens"))
            elif self.command == "GET" and path == "/v1/models":
                self._send_json(200, fake._models_page())
            elif self.command == "GET" and path.startswith("/v1/models/"):
                name = path[len("/v1/models/") :]
                if name in fake.models:
                    self._send_json(200, model_object(name))
                else:
                    self._send_error(404, "not_found_error", f"model: {name}")
            else:
                self._send_error(404, "not_found_error", f"Not found: {self.command} {path}")
        except OSError:
            self.close_connection = True

    # -- responses

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        data = dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", self._request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(
        self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        body = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": self._request_id,
        }
        self._send_json(status, body, headers)

    def _delay_event(self) -> threading.Event:
        return self.server.fake._wake_event()

    def _scripted_error(self, script: ErrorScript) -> None:
        default_type, default_message = _error_defaults(script.status)
        self._send_error(
            script.status,
            script.type or default_type,
            script.message or default_message,
            script.headers,
        )

    def _invalid(self, request: Any, *, needs_max_tokens: bool) -> str | None:
        if not isinstance(request, dict):
            return "The request body must be a JSON object."
        if not isinstance(request.get("model"), str) or not request["model"]:
            return "model: Field required"
        if not isinstance(request.get("messages"), list):
            return "messages: Field required"
        if needs_max_tokens:
            value = request.get("max_tokens")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                return "max_tokens: Field required (a positive integer)"
        return None

    def _count_tokens(self, request: Any, script: Script | None) -> None:
        answered, _ = self._apply(script)
        if answered:
            return
        problem = self._invalid(request, needs_max_tokens=False)
        if problem is not None:
            self._send_error(400, "invalid_request_error", problem)
            return
        self._send_json(200, {"input_tokens": self.server.fake._prompt_tokens(request)})

    def _messages(self, request: Any, script: Script | None) -> None:
        answered, cut_after = self._apply(script)
        if answered:
            return
        problem = self._invalid(request, needs_max_tokens=True)
        if problem is not None:
            self._send_error(400, "invalid_request_error", problem)
            return
        fake = self.server.fake
        prompt = fake._prompt_tokens(request)
        window = fake.context_window
        if window is not None and prompt + request["max_tokens"] > window:
            self._send_error(
                400,
                "invalid_request_error",
                f"prompt is too long: {prompt} tokens > {window - request['max_tokens']} maximum",
            )
            return
        message = fake._message(request, prompt)
        if request.get("stream") is True:
            self._stream(message, cut_after)
            return
        payload = {k: v for k, v in message.items() if not k.startswith("_")}
        if cut_after is None:
            self._send_json(200, payload)
            return
        self._send_cut_json(payload)

    def _stream(self, message: dict[str, Any], cut_after: int | None) -> None:
        events = _events(message)
        self._start_event_stream()
        for sent, event in enumerate(events):
            if cut_after is not None and sent >= cut_after:
                self.close_connection = True  # no terminating chunk: an abrupt EOF
                return
            self._write_chunk(f"event: {event['type']}\ndata: ".encode() + dumps(event) + b"\n\n")
        self._end_chunks()


def _events(message: dict[str, Any]) -> list[dict[str, Any]]:
    usage = message["usage"]
    start_usage = dict(usage)
    if isinstance(usage.get("output_tokens"), int):
        start_usage["output_tokens"] = min(1, usage["output_tokens"])
    start = {**{k: v for k, v in message.items() if not k.startswith("_")}}
    start.update(content=[], stop_reason=None, stop_sequence=None, usage=start_usage)
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, (kind, pieces) in enumerate(message["_pieces"]):
        if kind == "thinking":
            block: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            block = {"type": "text", "text": ""}
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        if index == 0:
            events.append({"type": "ping"})
        for piece in pieces:
            delta = (
                {"type": "thinking_delta", "thinking": piece}
                if kind == "thinking"
                else {"type": "text_delta", "text": piece}
            )
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        if kind == "thinking":
            signature = {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}
            events.append({"type": "content_block_delta", "index": index, "delta": signature})
        events.append({"type": "content_block_stop", "index": index})
    final = {
        name: usage[name]
        for name in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
            "output_tokens_details",
            "server_tool_use",
            "iterations",
        )
        if name in usage
    }
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": final,
        }
    )
    events.append({"type": "message_stop"})
    return events


def model_object(name: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": name,
        "display_name": name.replace("-", " ").title(),
        "created_at": "2025-01-01T00:00:00Z",
    }


def token_pieces(tokens: list[int], per_piece: int) -> list[str]:
    """Decode ``tokens`` a few at a time (never splitting a character)."""
    enc = _o200k()
    pieces: list[str] = []
    pending = b""
    for i, token in enumerate(tokens):
        pending += enc.decode_single_token_bytes(token)
        if (i + 1) % per_piece and i + 1 < len(tokens):
            continue
        try:
            pieces.append(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            continue
    if pending:
        pieces.append(pending.decode("utf-8", errors="replace"))
    return pieces


def _error_defaults(status: int) -> tuple[str, str]:
    """The API's error type and message for ``status`` (529 is ``overloaded_error``)."""
    return _ERROR_TYPES.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", f"HTTP {status}")
    )
