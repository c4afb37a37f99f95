"""Amazon Bedrock's and Google Vertex AI's Anthropic clients (``anthropic.AnthropicBedrock``,
``anthropic.AnthropicVertex`` and their async twins) against :class:`FakeAnthropicServer`.

The real SDK clients send their real requests (Bedrock's ``/model/{id}/invoke`` and
``/model/{id}/invoke-with-response-stream``, SigV4-signed or with a bearer key; Vertex's
``/projects/{p}/locations/{r}/publishers/anthropic/models/{id}:rawPredict`` /
``:streamRawPredict`` and ``count-tokens:rawPredict``) over a real loopback socket. A
transport maps each back to the fake's Anthropic route (the model from the URL into the
body) and records what the SDK sent; Bedrock's stream answer is re-encoded as the AWS
event stream (binary frames, base64 chunks) the SDK's Bedrock decoder (botocore) reads.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import urllib.parse
import zlib
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2

from guardrail.testing import FakeAnthropicServer

__all__ = ["KINDS", "Sent", "make_client"]

_VERTEX = re.compile(r"/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/(.+):(\w+)$")
_BEDROCK = re.compile(r"/model/(.+)/(invoke|invoke-with-response-stream)$")


@dataclass
class Sent:
    """What the SDK sent: the path and headers of each request, as it sent them."""

    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (
        bytes([len(raw_name)]) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value
    )


def _frame(event: bytes) -> bytes:
    """One AWS event-stream message carrying a Bedrock ``chunk`` (the event's JSON)."""
    headers = (
        _header(":event-type", "chunk")
        + _header(":content-type", "application/json")
        + _header(":message-type", "event")
    )
    payload = json.dumps({"bytes": base64.b64encode(event).decode()}).encode()
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _event_stream(sse: bytes) -> bytes:
    frames = b""
    for line in sse.decode().splitlines():
        if line.startswith("data:"):
            frames += _frame(line[5:].strip().encode())
    return frames


def _forward(kind: str, request: httpx2.Request, sent: Sent) -> tuple[httpx2.Request, bool]:
    """The fake's form of a platform request, and whether its answer is a Bedrock stream."""
    sent.paths.append(request.url.path)
    sent.headers.append(dict(request.headers))
    body = json.loads(request.content or b"{}")
    path, bedrock_stream = request.url.path, False
    if kind == "vertex":
        found = _VERTEX.search(path)
        if found and found.group(1) == "count-tokens":
            path = "/v1/messages/count_tokens"
        elif found:
            path, body["model"] = "/v1/messages", urllib.parse.unquote(found.group(1))
    else:
        found = _BEDROCK.search(path)
        if found:
            path, body["model"] = "/v1/messages", urllib.parse.unquote(found.group(1))
            bedrock_stream = found.group(2) == "invoke-with-response-stream"
            if bedrock_stream:
                body["stream"] = True
    if found:
        assert body.pop("anthropic_version", None) is not None, "the SDK sets the version"
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    content = json.dumps(body).encode()
    return httpx2.Request(
        request.method, request.url.copy_with(path=path), headers=headers, content=content
    ), bedrock_stream


def _answer(response: httpx2.Response, body: bytes, bedrock_stream: bool) -> httpx2.Response:
    if not bedrock_stream or response.status_code != 200:
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return httpx2.Response(response.status_code, headers=headers, content=body)
    return httpx2.Response(
        200,
        headers={"content-type": "application/vnd.amazon.eventstream"},
        content=_event_stream(body),
    )


class _Transport(httpx2.HTTPTransport):
    def __init__(self, kind: str, sent: Sent) -> None:
        super().__init__()
        self.kind, self.sent = kind, sent

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        forwarded, bedrock_stream = _forward(self.kind, request, self.sent)
        response = super().handle_request(forwarded)
        body = response.read()
        response.close()
        return _answer(response, body, bedrock_stream)


class _AsyncTransport(httpx2.AsyncHTTPTransport):
    def __init__(self, kind: str, sent: Sent) -> None:
        super().__init__()
        self.kind, self.sent = kind, sent

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        forwarded, bedrock_stream = _forward(self.kind, request, self.sent)
        response = await super().handle_async_request(forwarded)
        body = await response.aread()
        await response.aclose()
        return _answer(response, body, bedrock_stream)


KINDS = ("bedrock", "bedrock-sigv4", "vertex")
"""Bedrock with a bearer key (``api_key``), Bedrock signed with SigV4 (AWS keys), Vertex."""


def make_client(
    kind: str,
    server: FakeAnthropicServer,
    *,
    async_: bool = False,
    region: str = "global",
    **options: Any,
) -> tuple[Any, Sent]:
    """A real platform client of ``kind`` (:data:`KINDS`) whose requests reach ``server``
    (``region``: Vertex's)."""
    sent = Sent()
    platform = "vertex" if kind == "vertex" else "bedrock"
    http: Any = (
        httpx2.AsyncClient(transport=_AsyncTransport(platform, sent))
        if async_
        else httpx2.Client(transport=_Transport(platform, sent))
    )
    options = {"base_url": server.base_url, "max_retries": 0, "timeout": 30, **options}
    options["http_client"] = http
    if kind == "vertex":
        cls: Any = anthropic.AsyncAnthropicVertex if async_ else anthropic.AnthropicVertex
        return cls(region=region, project_id="proj", access_token="token", **options), sent
    cls = anthropic.AsyncAnthropicBedrock if async_ else anthropic.AnthropicBedrock
    if kind == "bedrock-sigv4":
        keys = {"aws_access_key": "AKIDEXAMPLE", "aws_secret_key": "secret"}
        return cls(aws_region="us-east-1", **keys, **options), sent
    return cls(aws_region="us-east-1", api_key="bedrock-key", **options), sent
