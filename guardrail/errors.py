"""Errors raised by guardrail.

Every error is a :class:`GuardrailError`; the ones raised before a request
leaves the process say so, so callers can tell "nothing was sent" apart from a
provider failure (provider errors are re-raised as the SDK's own exceptions)::

    GuardrailError
    ├── ConfigurationError          (also ValueError)  bad Policy, model entry, store settings
    ├── InvalidRequestError         (also ValueError)  malformed messages, tools, tenant ids
    │   └── InvalidTenantError
    ├── UnknownModelError           (also KeyError)    strict lookup of a model we do not know
    ├── PriceUnavailable            (also LookupError) no price data for a model that must be priced
    │   └── UnpricedOption          an option nothing prices (a tier, audio...) under a money limit
    │       └── UnboundedInput      input nothing counts (a server-held thread) under a token limit
    ├── ContextWindowExceeded       prompt + reserved output cannot fit; nothing was sent
    ├── BudgetExceeded              a tenant limit would be exceeded; nothing was sent
    ├── LoopDetected                the same request kept failing; nothing was sent
    ├── UnmeteredCall               a paid endpoint guardrail cannot meter, under a limit
    └── StoreUnavailable            the budget store failed and the policy fails closed

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import reprlib
from datetime import datetime
from decimal import Decimal

__all__ = [
    "BudgetExceeded",
    "ConfigurationError",
    "ContextWindowExceeded",
    "GuardrailError",
    "InvalidRequestError",
    "InvalidTenantError",
    "LoopDetected",
    "PriceUnavailable",
    "StoreUnavailable",
    "UnboundedInput",
    "UnknownModelError",
    "UnmeteredCall",
    "UnpricedOption",
]


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def describe(value: object, limit: int = 80) -> str:
    """A short repr of ``value`` for an error message: bounded in depth and length, so a
    hostile value (nested thousands deep, megabytes long) cannot blow the stack or the
    log line, and it never raises."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a __repr__ that fails (or recurses without end)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GuardrailError(Exception):
    """Base class of every error guardrail raises itself."""


class ConfigurationError(GuardrailError, ValueError):
    """A policy, model entry or store setting is invalid."""


class InvalidRequestError(GuardrailError, ValueError):
    """The request (messages, tools, parameters) is malformed; the message names the field."""


class InvalidRequestTypeError(InvalidRequestError, TypeError):
    """An argument of the wrong type (also a ``TypeError``, as Python convention expects)."""


class InvalidTenantError(InvalidRequestError):
    """A tenant or scope id is empty, too long, or has characters outside the allowed set."""


class UnknownModelError(GuardrailError, KeyError):
    """Strict lookup of a model name that neither the catalog nor its patterns know."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model

    def __str__(self) -> str:
        return (
            f"unknown model {self.model!r}: register it with guardrail.register_model(...) "
            "or look it up without strict=True to fall back to o200k_base"
        )


class PriceUnavailable(GuardrailError, LookupError):
    """The price data has no price for a model, so a USD cost cannot be computed; or, with
    ``missing`` (``"web search"``, ``"cache write"``), no rate for a fee the call has."""

    def __init__(
        self, model: str, *, reason: str | None = None, missing: str | None = None
    ) -> None:
        super().__init__(model)
        self.model = model
        self.reason = reason
        self.missing = missing

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        if self.missing:
            return (
                f"no {self.missing} price known for model {self.model!r}{why}, so the call's "
                "cost cannot be bounded under a money limit: register the model "
                "like=<a model whose price data has it> (guardrail.register_model(name, "
                "like=..., input_usd_per_mtok=..., output_usd_per_mtok=...)), drop the "
                "tool, or send the call through client.unwrapped"
            )
        return (
            f"no price known for model {self.model!r}{why}: pass prices to "
            "guardrail.register_model(..., input_usd_per_mtok=..., output_usd_per_mtok=...) "
            "or register it like=<a priced model>"
        )


class UnpricedOption(PriceUnavailable):
    """The request asks for something billed at a price guardrail does not know (an OpenAI
    ``service_tier`` the price data has no prices for on that model, such as ``"priority"``
    on gpt-5-nano; audio, a chat web search, an image-generation tool;
    Anthropic's ``speed="fast"``, an ``inference_geo`` but ``"global"`` and ``"us"``), and
    a money limit applies to its tenant: the reservation could not bound what the provider
    bills, so nothing was sent. Without a money limit the call goes through, recorded with
    an unknown cost."""

    def __init__(
        self, option: str, *, model: str, tenant: str, scopes: tuple[str, ...] = ()
    ) -> None:
        super().__init__(model, reason=option)
        self.option = option
        self.tenant = tenant
        self.scopes = scopes

    _why = "is billed at a price guardrail does not know"
    _limit = "a money limit"

    def __str__(self) -> str:
        limited = ", ".join(repr(s) for s in self.scopes) or repr(self.tenant)
        return (
            f"{self.option} {self._why} (model {self.model!r}), and {limited} has "
            f"{self._limit} the reservation could not bound, so it was refused (nothing was "
            "sent): send the call without it, or through client.unwrapped (unmetered)"
        )


class UnboundedInput(UnpricedOption):
    """The request makes the provider read input that guardrail can neither count nor bound
    (a server-held ``thread``, ``mcp_servers``, a server tool it cannot bound...), and a
    token limit applies to its tenant: the reservation could not hold the tokens the
    provider bills, so nothing was sent. Under a money limit the same request is refused
    as an :class:`UnpricedOption`; without any limit it goes through, recorded."""

    _why = "makes the provider bill input guardrail cannot count"
    _limit = "a token limit"


class ContextWindowExceeded(GuardrailError):
    """The prompt plus the reserved output does not fit the model or the policy.

    Raised before any request is sent.
    """

    def __init__(
        self,
        *,
        model: str,
        prompt_tokens: int,
        reserved_output_tokens: int,
        limit: int,
        limit_name: str,
        tenant: str | None = None,
        detail: str = "",
    ) -> None:
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.reserved_output_tokens = reserved_output_tokens
        self.limit = limit
        self.limit_name = limit_name
        self.tenant = tenant
        who = f" for tenant {tenant!r}" if tenant else ""
        msg = (
            f"prompt of {prompt_tokens} tokens + {reserved_output_tokens} reserved output tokens"
            f" exceeds {limit_name} ({limit} tokens) of {model!r}{who}"
        )
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class BudgetExceeded(GuardrailError):
    """Reserving the call's worst-case cost would exceed one of a tenant's limits.

    ``requested`` and ``remaining`` are in the limit's unit: USD (``Decimal``) for
    spend limits, tokens (``int``) for token limits, calls (``int``) for
    ``max_in_flight``. ``retry_after`` is the number
    of seconds until the limit has room again (the window resets or the bucket
    refills), when that is known.
    """

    def __init__(
        self,
        *,
        tenant: str,
        limit: str,
        requested: Decimal | int,
        remaining: Decimal | int,
        cap: Decimal | int,
        resets_at: datetime | None = None,
        retry_after: float | None = None,
        detail: str = "",
        unit: str | None = None,
    ) -> None:
        self.tenant = tenant
        self.limit = limit
        self.requested = requested
        self.remaining = remaining
        self.cap = cap
        self.resets_at = resets_at
        self.retry_after = retry_after
        unit = unit or ("USD" if isinstance(cap, Decimal) else "tokens")
        msg = (
            f"tenant {tenant!r} would exceed {limit} ({cap} {unit}): "
            f"this call needs up to {requested} {unit}, {remaining} {unit} remain"
        )
        if resets_at is not None:
            msg += f"; resets at {resets_at.isoformat()}"
        elif retry_after is not None:
            msg += f"; retry after {retry_after:.1f}s"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class LoopDetected(GuardrailError):
    """The same request kept failing for one tenant: it was sent and failed more than the
    policy's ``loop_limit`` times within ``loop_window_seconds``, with no success in
    between. ``retry_after`` is the number of seconds until the oldest of those failures
    leaves the window."""

    def __init__(
        self,
        *,
        tenant: str,
        repeats: int,
        window_seconds: float,
        limit: int,
        retry_after: float | None = None,
    ) -> None:
        self.tenant = tenant
        self.repeats = repeats
        self.window_seconds = window_seconds
        self.limit = limit
        self.retry_after = retry_after
        msg = (
            f"tenant {tenant!r} sent the same request, and it failed, {repeats} times within "
            f"{window_seconds:g}s (limit {limit}): refusing to send it again"
        )
        if retry_after is not None:
            msg += f"; retry after {retry_after:.1f}s"
        super().__init__(msg)


class StoreUnavailable(GuardrailError):
    """The budget store could not be reached and the policy fails closed; nothing was sent."""

    def __init__(self, message: str, *, tenant: str | None = None) -> None:
        self.tenant = tenant
        super().__init__(message if tenant is None else f"{message} (tenant {tenant!r})")


class UnmeteredCall(GuardrailError):
    """A paid endpoint guardrail cannot meter (images, audio, batches, ...) was called for a
    tenant with a limit (it would pass around it); nothing was sent.
    ``Guard(unmetered="allow")`` lets such calls through (unmetered, logged once per
    process)."""

    def __init__(
        self,
        *,
        endpoint: str,
        tenant: str,
        scopes: tuple[str, ...] = (),
        known_paid: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.tenant = tenant
        self.scopes = scopes
        limited = ", ".join(repr(s) for s in scopes) or repr(tenant)
        what = (
            "is a paid call guardrail cannot meter"
            if known_paid
            else "is a request guardrail does not know to be free (sent past the guarded "
            "methods: the SDK's client.post/request, or an endpoint guardrail does not know; "
            "a guarded endpoint's SDK method meters it)"
        )
        super().__init__(
            f"{endpoint} {what}, and {limited} has a limit "
            "it would pass around, so it was refused (nothing was sent): pass "
            "Guard(unmetered='allow') to let such calls through unmetered, or call it on "
            "client.unwrapped"
        )
