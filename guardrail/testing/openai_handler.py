"""The fake OpenAI server's request handler: routing, chat completions (JSON and SSE),
embeddings, models."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from guardrail.testing.http import ErrorScript, FakeHandler, HoldScript, Script, dumps
from guardrail.testing.openai_responses import (
    answer_compact,
    answer_input_tokens,
    answer_responses,
)
from guardrail.testing.openai_wire import (
    EMBEDDING_DIMENSIONS,
    FINGERPRINT,
    Completion,
    ReceivedRequest,
    encode,
    error_body,
)

if TYPE_CHECKING:
    from guardrail.testing.openai import _HTTPServer

__all__ = ["OpenAIHandler"]


class OpenAIHandler(FakeHandler):
    server_version = "FakeOpenAI/1.0"
    server: _HTTPServer

    # ----------------------------------------------------------------- plumbing

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return super()._read_body()

    def _dispatch(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        parsed = self._parse_json(body)
        path, _, query = self.path.partition("?")
        path = unquote(path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self._request_id = fake._next_request_id()
        record = ReceivedRequest(
            method=self.command,
            path=path,
            headers=headers,
            json=parsed,
            body=body,
            query=query,
            request_id=self._request_id,
        )
        fake._record(record)

        route = path.rstrip("/")
        try:
            if self.command == "POST" and route == "/v1/chat/completions":
                self._chat(parsed, fake._pop_script("chat"))
            elif self.command == "POST" and route == "/v1/responses":
                answer_responses(self, parsed, fake._pop_script("chat"))
            elif self.command == "POST" and route == "/v1/responses/input_tokens":
                answer_input_tokens(self, parsed)
            elif self.command == "POST" and route == "/v1/responses/compact":
                answer_compact(self, parsed, fake._pop_script("chat"))
            elif self.command == "POST" and route == "/v1/embeddings":
                self._embeddings(parsed)
            elif self.command == "GET" and route == "/v1/models":
                self._models()
            elif self.command == "GET" and route.startswith("/v1/models/"):
                self._model(route[len("/v1/models/") :])
            else:
                self._send_error(
                    404,
                    message=f"Invalid URL ({self.command} {path})",
                    type="invalid_request_error",
                    code="unknown_url",
                )
        except OSError:
            self.close_connection = True
        except Exception as exc:
            fake._record_error(exc)
            self._send_error(
                500,
                message=f"FakeOpenAIServer failed: {exc!r}",
                type="fake_server_error",
                code="fake_server_error",
            )

    # ----------------------------------------------------------------- responses

    def _send_bytes(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        extra = {name.lower(): value for name, value in (headers or {}).items()}
        self.send_response(status)
        if "content-type" not in extra:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if "x-request-id" not in extra:
            self.send_header("x-request-id", self._request_id)
        for name, value in extra.items():
            if name != "content-length":
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        self._send_bytes(status, dumps(payload), "application/json", headers)

    def _send_error(
        self,
        status: int,
        *,
        message: str | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        body = error_body(status, code=code, message=message, type=type, param=param)
        self._send_json(status, body, headers)

    def _bad_request(self, message: str, param: str | None = None) -> None:
        self._send_error(400, message=message, type="invalid_request_error", code=None, param=param)

    # ----------------------------------------------------------------- endpoints

    def _scripted_error(self, script: ErrorScript) -> None:
        self._send_error(
            script.status,
            message=script.message,
            type=script.type,
            code=script.code,
            param=script.param,
            headers=script.headers,
        )

    def _chat(self, request: Any, script: Script | None) -> None:
        streamed = isinstance(request, dict) and request.get("stream") is True
        hold = script if isinstance(script, HoldScript) and script.after_chunks else None
        if hold is not None and streamed:  # held mid-stream, by _stream
            script = None
        answered, cut_after = self._apply(script)
        if answered:
            return
        if not isinstance(request, dict):
            self._bad_request("The request body must be a JSON object.")
            return
        model = request.get("model")
        if not isinstance(model, str) or not model:
            self._bad_request("you must provide a model parameter", "model")
            return
        if not isinstance(request.get("messages"), list):
            self._bad_request("Missing required parameter: 'messages'.", "messages")
            return
        limit: int | None = None
        for name in ("max_completion_tokens", "max_tokens"):
            value = request.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self._bad_request(
                    f"Invalid '{name}': expected an integer of at least 1, got {value!r}.", name
                )
                return
            limit = value
            break
        n = request.get("n")
        if n is None:
            n = 1
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            self._bad_request(f"Invalid 'n': expected a positive integer, got {n!r}.", "n")
            return

        completion = self.server.fake._complete(request, model, limit, n)
        if streamed:
            self._stream(request, completion, n, cut_after, hold)
            return
        payload = {
            "id": completion.id,
            "object": "chat.completion",
            "created": completion.created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "message": _message(completion),
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
                for index in range(n)
            ],
            "usage": completion.usage,
            "service_tier": self.server.fake._billed_tier(request),
            "system_fingerprint": FINGERPRINT,
        }
        if cut_after is None:
            self._send_json(200, payload)
            return
        self._send_cut_json(payload)

    def _stream(
        self,
        request: dict[str, Any],
        completion: Completion,
        n: int,
        cut_after: int | None,
        hold: HoldScript | None = None,
    ) -> None:
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        include_usage = include_usage and self.server.fake.stream_usage
        base: dict[str, Any] = {
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "service_tier": self.server.fake._billed_tier(request),
            "system_fingerprint": FINGERPRINT,
        }
        if include_usage:
            base["usage"] = None

        def chunk(index: int, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            choice = {
                "index": index,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            return {**base, "choices": [choice]}

        events: list[dict[str, Any]] = []
        for index in range(n):
            events.append(chunk(index, {"role": "assistant", "content": "", "refusal": None}, None))
            events.extend(chunk(index, {"content": piece}, None) for piece in completion.pieces)
            for k, (call, call_id) in enumerate(
                zip(completion.tool_calls, completion.call_ids, strict=True)
            ):
                first = {"index": k, "id": call_id, "type": "function"}
                named = {**first, "function": {"name": call.name, "arguments": ""}}
                args = {"index": k, "function": {"arguments": call.arguments_json}}
                events.append(chunk(index, {"tool_calls": [named]}, None))
                events.append(chunk(index, {"tool_calls": [args]}, None))
            events.append(chunk(index, {}, completion.finish_reason))
        if include_usage:
            events.append({**base, "choices": [], "usage": completion.usage})

        self._start_event_stream()
        for sent, event in enumerate(events):
            if cut_after is not None and sent >= cut_after:
                break
            if hold is not None and sent == hold.after_chunks and self._hold(hold):
                return  # the server stopped while the stream was held
            self._write_chunk(b"data: " + dumps(event) + b"\n\n")
        if cut_after is not None:
            self.close_connection = True  # no [DONE], no terminating chunk: an abrupt EOF
            return
        self._write_chunk(b"data: [DONE]\n\n")
        self._end_chunks()

    def _embeddings(self, request: Any) -> None:
        if not isinstance(request, dict):
            self._bad_request("The request body must be a JSON object.")
            return
        model = request.get("model")
        if not isinstance(model, str) or not model:
            self._bad_request("you must provide a model parameter", "model")
            return
        raw = request.get("input")
        items: list[str | list[int]]
        if isinstance(raw, str):
            items = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            items = [list(raw)]
        elif (
            isinstance(raw, list)
            and raw
            and all(
                isinstance(x, str) or (isinstance(x, list) and all(isinstance(t, int) for t in x))
                for x in raw
            )
        ):
            items = list(raw)
        else:
            self._bad_request("'input' must be a string, a list of strings, or tokens.", "input")
            return
        dimensions = request.get("dimensions")
        if dimensions is None:
            dimensions = EMBEDDING_DIMENSIONS
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            self._bad_request("Invalid 'dimensions': expected a positive integer.", "dimensions")
            return
        as_base64 = request.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = []
        tokens = 0
        for index, item in enumerate(items):
            vector = _embedding_vector(model, item, dimensions)
            encoded: object = vector
            if as_base64:
                packed = struct.pack(f"<{len(vector)}f", *vector)
                encoded = base64.b64encode(packed).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": encoded})
            tokens += len(item) if isinstance(item, list) else len(encode(item, model)[1])
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _models(self) -> None:
        data = [_model_object(name) for name in self.server.fake.models]
        self._send_json(200, {"object": "list", "data": data})

    def _model(self, name: str) -> None:
        if name in self.server.fake.models:
            self._send_json(200, _model_object(name))
            return
        self._send_error(
            404,
            message=f"The model '{name}' does not exist or you do not have access to it.",
            code="model_not_found",
        )


def _message(completion: Completion) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if completion.tool_calls else completion.content,
        "refusal": None,
        "annotations": [],
    }
    if completion.tool_calls:
        message["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for call, call_id in zip(completion.tool_calls, completion.call_ids, strict=True)
        ]
    return message


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "fake-openai"}


def _embedding_vector(model: str, item: str | list[int], dimensions: int) -> list[float]:
    """A deterministic unit vector derived from a hash of the model and the input."""
    seed = hashlib.sha256(dumps([model, item])).digest()
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        values.extend((byte - 127.5) / 127.5 for byte in block)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Round-trip through float32 so the JSON and base64 encodings give identical vectors.
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in values]
