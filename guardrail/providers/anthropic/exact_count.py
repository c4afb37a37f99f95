"""Anthropic's exact count: ``messages.count_tokens``, asked once per new prompt and cached
per content; a client without the endpoint stops asking."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from guardrail.counting.claude import plain
from guardrail.providers.common import given, parameters_of

__all__ = [
    "COUNT_TIMEOUT_SECONDS",
    "TokenCountCache",
    "count_key",
    "count_params",
    "no_count_endpoint",
]

COUNT_TIMEOUT_SECONDS = 10.0
"""The exact count's own deadline when the call sets none: a slow count falls back to the
local estimate instead of holding the call for the client's whole default timeout."""

_COUNT_KEYS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
_SCHEMA_KEYS = ("output_config", "output_format")
"""Structured outputs: the schema is billed as input, so it is counted too, by an SDK whose
``count_tokens`` takes it (``output_format``, ``parse``'s type, as ``create`` turns it)."""


@functools.cache
def _count_keys() -> tuple[str, ...]:
    """The fields of a ``messages.create`` call the installed SDK's ``count_tokens`` takes."""
    try:
        from anthropic.resources.messages import Messages
    except ImportError:  # pragma: no cover - every supported release has it
        return _COUNT_KEYS
    method = getattr(Messages, "count_tokens", None)
    taken = (parameters_of(method) if method is not None else None) or frozenset()
    return _COUNT_KEYS + tuple(k for k in _SCHEMA_KEYS if k in taken)


def _jsonable(value: Any) -> Any:
    found = plain(value)
    return repr(value) if found is value else found


def count_params(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``messages.count_tokens`` arguments for a ``messages.create`` call."""
    params = {k: kwargs[k] for k in _count_keys() if k in kwargs and given(kwargs[k])}
    # The caller's deadline binds the count too (a failed count keeps the estimate).
    timeout = kwargs.get("timeout")
    params["timeout"] = timeout if given(timeout) else COUNT_TIMEOUT_SECONDS
    headers = kwargs.get("extra_headers")
    if isinstance(headers, Mapping):  # betas change what is counted
        # Not the SDK's own: a raw-response marker would make the count a raw response.
        kept = {k: v for k, v in headers.items() if "stainless" not in str(k).lower()}
        if kept:
            params["extra_headers"] = kept
    return params


def count_key(params: Mapping[str, Any]) -> str:
    """A digest of the canonical JSON of what is counted (the cache key)."""
    counted = {k: v for k, v in params.items() if k != "timeout"}
    canonical = json.dumps(
        counted, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_jsonable
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def no_count_endpoint(exc: Exception) -> bool:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        if status == 404:
            # Anthropic answers 404 not_found_error for a model the account cannot use:
            # that says nothing about the endpoint (and the call itself will 404 too).
            return "model" not in str(getattr(exc, "message", exc)).lower()
        return status in (405, 501)
    # The SDK's refusal without a request (AnthropicBedrock: "Token counting is not
    # supported"), or an SDK without the method.
    return type(exc).__name__ == "AnthropicError" or isinstance(exc, AttributeError)


class TokenCountCache:
    """A bounded LRU of exact prompt counts, keyed on :func:`count_key`.

    Shared by a guarded client and its ``for_tenant`` / ``with_options`` views, and safe
    to share between threads. An agent loop re-sending an identical prompt, or a retry of
    the caller's own, costs no second count request.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._items: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> int | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: int) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
