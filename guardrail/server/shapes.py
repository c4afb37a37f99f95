"""What the gateway answers in each provider's own shape, so the SDKs understand it.

A refusal carries the provider's error body for the route (OpenAI's ``{"error": {...}}``,
Anthropic's ``{"type": "error", "error": {...}}``); a budget refusal is a 429 of type
``budget_exceeded`` with the limit as ``code``, a ``retry-after`` and
``x-should-retry: false`` (the SDKs do not retry it). Successful answers carry what
remains (:func:`remaining_headers`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Literal

from starlette.responses import Response

from guardrail.errors import (
    BudgetExceeded,
    ConfigurationError,
    ContextWindowExceeded,
    GuardrailError,
    InvalidRequestError,
    LoopDetected,
    StoreUnavailable,
    UnmeteredCall,
    UnpricedOption,
)
from guardrail.stores.base import ScopeLimits, UsageSummary, nanos_to_usd

__all__ = ["Provider", "error", "refusal", "remaining_headers"]

Provider = Literal["openai", "anthropic"]
_ANTHROPIC_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "invalid_api_key": "authentication_error",
    "permission_error": "permission_error",
    "not_found": "not_found_error",
    "server_error": "api_error",
}


def error(
    provider: Provider,
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error answer in the provider's shape."""
    if provider == "anthropic":
        kind = _ANTHROPIC_TYPES.get(type, type)
        body: dict[str, object] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return Response(
        json.dumps(body).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _seconds_until(exc: BudgetExceeded) -> int | None:
    if exc.retry_after is not None:
        return max(1, math.ceil(exc.retry_after))
    if exc.resets_at is not None:
        return max(1, math.ceil(exc.resets_at.timestamp() - time.time()))
    return None


def refusal(provider: Provider, exc: GuardrailError) -> Response:
    """The answer to a call guardrail refused (nothing was sent upstream)."""
    if isinstance(exc, BudgetExceeded):
        headers = {"x-should-retry": "false"}
        wait = _seconds_until(exc)
        if wait is not None:
            headers["retry-after"] = str(wait)
        return error(
            provider, 429, str(exc), type="budget_exceeded", code=exc.limit, headers=headers
        )
    if isinstance(exc, LoopDetected):
        headers = {"x-should-retry": "false", "retry-after": str(math.ceil(exc.window_seconds))}
        return error(
            provider, 429, str(exc), type="loop_detected", code="loop_detected", headers=headers
        )
    if isinstance(exc, ContextWindowExceeded):
        if provider == "anthropic":  # what the Anthropic SDK and its users look for
            message = (
                f"prompt is too long: {exc.prompt_tokens} tokens > {exc.limit} maximum ({exc})"
            )
            return error(provider, 400, message)
        return error(provider, 400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, StoreUnavailable):
        headers = {"retry-after": "1"}
        return error(
            provider,
            503,
            str(exc),
            type="store_unavailable",
            code="store_unavailable",
            headers=headers,
        )
    if isinstance(exc, UnmeteredCall):
        return error(provider, 403, str(exc), type="permission_error", code="unmetered")
    if isinstance(exc, UnpricedOption):  # allowed without a money limit: not the request's fault
        return error(provider, 403, str(exc), type="permission_error", code="unpriced_option")
    if isinstance(exc, InvalidRequestError | ConfigurationError):
        return error(provider, 400, str(exc))
    return error(provider, 400, str(exc), type="guardrail_error")


def remaining_headers(
    scopes: Sequence[tuple[ScopeLimits, UsageSummary]], resets: Mapping[str, float]
) -> dict[str, str]:
    """What the call's scopes have left: ``x-guardrail-remaining-usd-day`` / ``-month``, the
    least left under any of the scopes' daily (monthly) caps, as a reservation checks every
    one of them (the tenant's, its parents', the global policy's), and when each window
    resets (POSIX seconds); a header only for a window some scope caps."""
    day: Decimal | None = None
    month: Decimal | None = None
    for limits, usage in scopes:
        if limits.daily_nanos is not None:
            left = nanos_to_usd(limits.daily_nanos) - usage.spent_usd - usage.reserved_usd
            day = left if day is None else min(day, left)
        if limits.monthly_nanos is not None:
            left = nanos_to_usd(limits.monthly_nanos) - usage.month_spent_usd - usage.reserved_usd
            month = left if month is None else min(month, left)
    headers: dict[str, str] = {}
    if day is not None:
        headers["x-guardrail-remaining-usd-day"] = f"{max(Decimal(0), day):f}"
        headers["x-guardrail-reset-day"] = str(int(resets["day"]))
    if month is not None:
        headers["x-guardrail-remaining-usd-month"] = f"{max(Decimal(0), month):f}"
        headers["x-guardrail-reset-month"] = str(int(resets["month"]))
    return headers
