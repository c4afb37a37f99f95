"""What differs between SDK releases, for the tests that look below the SDK.

openai 1.x/2.x and anthropic 0.x are built on ``httpx``; openai 3.x and anthropic 1.x+
on ``httpx2``. openai 3.x wraps an error raised while iterating a stream in its own
``APIConnectionError``; the older releases let the HTTP library's error through.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import anthropic

OVERLOADED: type[anthropic.APIStatusError] = (
    getattr(anthropic, "OverloadedError", None)
    or importlib.import_module("anthropic._exceptions").OverloadedError
)
"""What the anthropic SDK raises for a 529 (releases before 1.0 do not export it)."""


def http_library(sdk: ModuleType) -> ModuleType:
    """The HTTP library the SDK module (``openai`` or ``anthropic``) sends with."""
    base = importlib.import_module(f"{sdk.__name__}._base_client")
    return getattr(base, "httpx2", None) or base.httpx


def cut_stream_errors(sdk: ModuleType) -> tuple[type[BaseException], ...]:
    """What iterating a stream whose connection was cut may raise."""
    return (sdk.APIConnectionError, http_library(sdk).RemoteProtocolError)


def protocol_error(exc: BaseException, sdk: ModuleType) -> Any:
    """The HTTP library's RemoteProtocolError behind ``exc`` (itself, or its cause)."""
    error = http_library(sdk).RemoteProtocolError
    found = exc if isinstance(exc, error) else exc.__cause__
    assert isinstance(found, error), f"{exc!r} is not a protocol error (cause {found!r})"
    return found


def thinking_tokens(usage: Any) -> int:
    """``usage.output_tokens_details.thinking_tokens``; SDK releases that predate the field
    keep it as a plain dict."""
    details = usage.output_tokens_details
    value = details["thinking_tokens"] if isinstance(details, dict) else details.thinking_tokens
    assert isinstance(value, int)
    return value
