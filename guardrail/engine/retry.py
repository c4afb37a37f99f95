"""The one retry policy, built from tenacity pieces.

Retried: 408, 409, 429, every 5xx (Anthropic's 529 "overloaded" included), timeouts and
connection errors. Never retried: 400 (``context_length_exceeded`` included), 401, 403,
404, 422, and anything guardrail raised itself. A provider's ``x-should-retry`` header
wins. Waits are exponential with full jitter, or exactly what ``retry-after-ms`` /
``retry-after`` ask for; the whole thing is bounded by ``max_attempts`` and
``max_retry_seconds`` (no wait that would end past the deadline is started). With
``reraise=True`` the caller gets the SDK's own exception after the last attempt, so
``except openai.RateLimitError`` keeps working.

The engine drives tenacity's sans-I/O ``iter()`` (attempt / sleep / done) itself, so the
same ``Retrying`` object serves the sync and the async client.
"""

from __future__ import annotations

import email.utils
import functools
import time
from typing import Any

import tenacity
from tenacity import RetryCallState

from guardrail.errors import GuardrailError

__all__ = ["RETRYABLE_STATUS", "is_retryable", "retry_after_seconds", "retrying_for"]

RETRYABLE_STATUS = frozenset({408, 409, 429})
_CONNECTION_ERRORS = ("APIConnectionError", "APITimeoutError")
# A retry-after longer than this is not a backoff hint we can honour inside one call.
_MAX_HONOURED_RETRY_AFTER = 600.0


def _headers(exc: BaseException) -> Any:
    response = getattr(exc, "response", None)
    return getattr(response, "headers", None)


def is_retryable(exc: BaseException) -> bool:
    """Whether a provider error is worth another attempt."""
    if isinstance(exc, GuardrailError) or not isinstance(exc, Exception):
        return False
    headers = _headers(exc)
    if headers is not None:
        hint = headers.get("x-should-retry")
        if hint in ("true", "false"):
            return bool(hint == "true")
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in RETRYABLE_STATUS or status >= 500
    return any(cls.__name__ in _CONNECTION_ERRORS for cls in type(exc).__mro__)


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """The wait a 429/503 asks for, from ``retry-after-ms`` or ``retry-after``."""
    headers = _headers(exc) if exc is not None else None
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) / divisor
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(raw) if name == "retry-after" else None
            if parsed is None:
                continue
            seconds = parsed.timestamp() - time.time()
        if 0 <= seconds <= _MAX_HONOURED_RETRY_AFTER:
            return seconds
    return None


class _wait_retry_after_or_backoff(tenacity.wait.wait_base):
    """The provider's retry-after when it gives one, else exponential backoff with jitter."""

    def __init__(self, backoff: tenacity.wait.wait_base) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        hinted = retry_after_seconds(exc)
        return hinted if hinted is not None else self.backoff(retry_state)


class _stop_when_wait_exceeds_budget(tenacity.stop.stop_base):
    """Stop when the sleeps so far plus the next one would pass ``max_retry_seconds``.

    Counting planned sleeps (not wall time) keeps the bound exact and testable with a
    fake sleep; ``stop_after_delay`` bounds the wall time as well.
    """

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds

    def __call__(self, retry_state: RetryCallState) -> bool:
        return retry_state.idle_for + retry_state.upcoming_sleep > self.max_seconds


@functools.lru_cache(maxsize=256)
def _strategies(
    max_attempts: int, max_retry_seconds: float, backoff_multiplier: float, backoff_max: float
) -> tuple[tenacity.stop.stop_base, tenacity.wait.wait_base, tenacity.retry_base]:
    """The stop, wait and retry strategies: stateless, so built once per configuration."""
    return (
        tenacity.stop_after_attempt(max_attempts)
        | tenacity.stop_after_delay(max_retry_seconds)
        | _stop_when_wait_exceeds_budget(max_retry_seconds),
        _wait_retry_after_or_backoff(
            tenacity.wait_random_exponential(multiplier=backoff_multiplier, max=backoff_max)
        ),
        tenacity.retry_if_exception(is_retryable),
    )


def retrying_for(
    max_attempts: int,
    max_retry_seconds: float,
    *,
    backoff_multiplier: float = 0.5,
    backoff_max: float = 20.0,
) -> tenacity.Retrying:
    """A fresh tenacity ``Retrying`` for one call (tenacity objects keep per-call state;
    the strategies they are built from do not, and are shared)."""
    stop, wait, retry = _strategies(
        max_attempts, max_retry_seconds, backoff_multiplier, backoff_max
    )
    return tenacity.Retrying(stop=stop, wait=wait, retry=retry, reraise=True)
