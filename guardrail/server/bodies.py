"""What the gateway takes from a request before anything else: a body of bounded size,
read in chunks; a JSON object parsed without a 500 for any input; and a path that means
what it says, for the routes that forward it upstream as it came.

A body is refused (413) as soon as it is known to be over the limit: at once when its
``content-length`` says so, or at the chunk that takes the running total over it, so a
caller cannot make the gateway buffer more than the limit. (And the key a caller
presented, from its headers.) A path with a ``.`` or ``..``
segment (plain or percent-encoded), an encoded slash or any backslash is refused (400) on
the forwarded routes: the gateway checks the path it forwards, and the upstream (or any
HTTP library in between) must not resolve it to another endpoint, such as a paid one
that ``passthrough`` was never meant to let through unmetered.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from guardrail.server.shapes import Provider, error

__all__ = ["parse_object", "presented_key", "read_body", "unsafe_path"]


def presented_key(request: Request) -> tuple[str | None, Provider]:
    """The key a caller presented, and the provider shape its SDK expects (the Anthropic
    SDK sends ``x-api-key``, the OpenAI SDK a bearer token)."""
    api_key = request.headers.get("x-api-key")
    if api_key:
        return api_key, "anthropic"
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None, "openai"
    return None, "openai"


async def read_body(
    request: Request, limit: int, provider: Provider
) -> tuple[bytes | None, Response | None]:
    """The whole body, at most ``limit`` bytes; or the 413 to answer."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None, _too_big(provider, limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            return None, _too_big(provider, limit)
        chunks.append(chunk)
    return b"".join(chunks), None


def _too_big(provider: Provider, limit: int) -> Response:
    # The rest of the body is not read: the connection is closed after this answer.
    return error(provider, 413, f"request body over {limit} bytes", headers={"connection": "close"})


def parse_object(raw: bytes, provider: Provider) -> tuple[dict[str, Any] | None, Response | None]:
    """``raw`` as a JSON object; or the 400 to answer (not JSON, not an object, or nested
    deeper than the parser's recursion limit)."""
    try:
        body = json.loads(raw)
    except RecursionError:
        return None, error(provider, 400, "the request body is nested too deeply")
    except ValueError:
        return None, error(provider, 400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        return None, error(provider, 400, "the request body must be a JSON object")
    return body, None


def unsafe_path(raw_path: bytes) -> str | None:
    """Why ``raw_path`` (the path as the caller sent it, still percent-encoded) must not be
    forwarded, or None when it may be."""
    try:
        text = raw_path.decode("ascii")
    except UnicodeDecodeError:
        return "the path is not ASCII"
    lowered = text.lower()
    if "\\" in text or "%5c" in lowered:
        return "the path has a backslash"
    if "%2f" in lowered:
        return "the path has an encoded slash"
    for segment in text.split("/"):
        if unquote(segment) in (".", ".."):
            return "the path has a '.' or '..' segment"
    return None
