"""Policies: the limits and request rules that apply to a tenant.

A :class:`Policy` is immutable and validated when built, so a typo fails at start-up,
not on the first request. Money is held as ``Decimal`` (ints, strings and Decimals are
taken as they are; a float is taken by its shortest repr, so ``0.1`` means 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

from guardrail.errors import ConfigurationError, describe

__all__ = ["Policy", "PolicySource", "to_decimal_usd"]


def to_decimal_usd(label: str, value: object) -> Decimal:
    """Read a USD amount without ever going through binary floating point arithmetic."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ConfigurationError(f"{label} must be a number of USD, got {describe(value)}")
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation as exc:
        raise ConfigurationError(f"{label} is not a number: {describe(value)}") from exc
    if not amount.is_finite() or amount < 0:
        raise ConfigurationError(
            f"{label} must be a finite, non-negative amount, got {describe(value)}"
        )
    return amount


def _positive_int(label: str, value: object, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{label} must be an int, got {describe(value)}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"{label} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(frozen=True)
class Policy:
    """Limits and request rules for a tenant (or an organisation, or the whole app).

    Request shaping (trimming, output caps, retries, fallbacks, loop detection) comes from
    the policy of the tenant that makes the call; spend and token limits apply to every
    scope the call is charged to.
    """

    # -- fitting the prompt
    max_input_tokens: int | None = None
    """Largest prompt (in tokens, after trimming) the tenant may send."""
    max_output_tokens: int | None = None
    """Cap on the output a call may ask for (``max_tokens``/``max_completion_tokens``)."""
    output_over_cap: Literal["clamp", "reject"] = "clamp"
    """What to do with a request that asks for more output than the cap."""
    default_output_tokens: int | None = None
    """Output reserved (and sent as ``max_completion_tokens``) when the caller sets none.
    None reserves the model's whole ``max_output_tokens``: the true worst case."""
    trim: bool = False
    """Trim the oldest history to fit, instead of raising ContextWindowExceeded."""
    max_history_messages: int | None = None
    """Keep at most this many non-system messages (oldest go first), before token fitting."""

    # -- budgets (charged to every scope of a call)
    daily_spend_usd: Decimal | None = None
    monthly_spend_usd: Decimal | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_in_flight: int | None = None
    """Most calls charged to the scope that may hold a reservation at once (started and not
    yet settled); one more is refused with BudgetExceeded(limit="max_in_flight")."""

    # -- retries
    max_attempts: int = 3
    max_retry_seconds: float = 60.0

    # -- fallbacks, loops, streams
    fallback_models: tuple[str, ...] = ()
    """Tried in order when the requested model does not fit the budget (a cheaper model)
    or the prompt does not fit its window (a larger model)."""
    fallback_before_trim: bool = False
    """On a window overflow, try a larger fallback model before trimming history."""
    loop_limit: int | None = 20
    """Refuse a request (the whole request: model, messages, tools, every parameter) that
    was sent and **failed** this many times for the tenant (an HTTP error, a timeout, a
    cut stream) with no success since, within ``loop_window_seconds``: a retry loop
    around the guard, burning money on an answer that never comes. Successful repeats
    never count (sampling one prompt many times, eval runs): the budget guards those.
    Budget refusals and other calls never sent do not count. The count lives in the
    store (one per Redis for every process). ``None`` turns loop detection off."""
    loop_window_seconds: float = 60.0
    """...within this many seconds of the first of those failures."""
    stream_overrun: Literal["raise", "end"] = "raise"
    """A stream producing more output than was reserved: raise BudgetExceeded or end it."""
    reservation_ttl_seconds: float = 900.0
    """A reservation nobody settles (a crashed worker) returns to the budget after this."""

    # -- what cannot be counted
    file_id_tokens: int | Literal["window", "refuse"] = "window"
    """How to reserve a document guardrail cannot read (a Chat Completions ``file`` part
    given by ``file_id``, a Claude ``document`` by ``file_id`` or URL, or a PDF whose pages
    cannot be seen; for Claude, until the exact count answers): ``"window"`` reserves the
    prompt as the whole context window less the reserved output (the provider bills no
    prompt beyond that: a true upper bound), an int reserves that many tokens per such
    part (a figure of your own: usage beyond it is charged and flagged as an overrun),
    ``"refuse"`` refuses the call with InvalidRequestError before anything is reserved."""
    server_pass_tokens: int | Literal["window"] = "window"
    """The input each further pass of a provider's server-side tool loop is held at (Claude's
    web search, web fetch and tool search: every pass reads the context again, with what
    the tools added, and bills it as input): ``"window"`` holds the model's whole context
    window per pass (a true upper bound, large on 1M-token models), an int holds that many
    tokens per pass (a figure of your own, at most the window: the prompt plus what the
    tools may add; usage beyond it is charged and flagged as an overrun)."""

    # -- what the request does not say
    assume_service_tier: Literal["default", "priority"] | None = None
    """The OpenAI processing tier a Chat Completions or Responses request that names none
    (or ``service_tier="auto"``) is billed at: the project's default tier, set in the
    OpenAI dashboard, which the request does not show. ``"priority"`` reserves such calls
    at the model's Priority prices (where the price data has them; else at the standard
    ones times Priority's bound, as such a call is settled: never refused). Whatever this
    says, a call is settled at the tier its response reports, so without it a
    Priority-default project is still charged Priority prices, but reserved at the standard
    ones: one call may then go past the limit."""
    assume_inference_geo: Literal["global", "us"] | None = None
    """Where a Claude API request that names no ``inference_geo`` runs: the workspace's
    default geo (``default_inference_geo``, set in the Claude Console), which the request
    does not show. ``"us"`` reserves such calls at US-only inference's 1.1x prices. Whatever
    this says, a call is settled at the geo its response's ``usage.inference_geo`` reports,
    so without it a US-default workspace is still charged 1.1x, but reserved at 1.0x: one
    call may then go past the limit (logged as an overrun). Not for Bedrock or Vertex,
    whose endpoint sets where inference runs."""

    def __post_init__(self) -> None:
        for name in (
            "max_input_tokens",
            "max_output_tokens",
            "default_output_tokens",
            "max_history_messages",
            "tokens_per_minute",
            "tokens_per_day",
            "max_in_flight",
            "loop_limit",
        ):
            _positive_int(name, getattr(self, name))
        _positive_int("max_attempts", self.max_attempts)
        for name in ("daily_spend_usd", "monthly_spend_usd"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, to_decimal_usd(name, value))
        for name in ("max_retry_seconds", "loop_window_seconds", "reservation_ttl_seconds"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if self.file_id_tokens not in ("window", "refuse"):
            _positive_int("file_id_tokens", self.file_id_tokens)
        if self.server_pass_tokens != "window":
            _positive_int("server_pass_tokens", self.server_pass_tokens)
        if self.output_over_cap not in ("clamp", "reject"):
            raise ConfigurationError("output_over_cap must be 'clamp' or 'reject'")
        if self.stream_overrun not in ("raise", "end"):
            raise ConfigurationError("stream_overrun must be 'raise' or 'end'")
        if self.assume_service_tier not in (None, "default", "priority"):
            raise ConfigurationError(
                "assume_service_tier must be None, 'default' or 'priority', got "
                f"{describe(self.assume_service_tier)}"
            )
        if self.assume_inference_geo not in (None, "global", "us"):
            raise ConfigurationError(
                "assume_inference_geo must be None, 'global' or 'us', got "
                f"{describe(self.assume_inference_geo)}"
            )
        if isinstance(self.fallback_models, str):
            raise ConfigurationError("fallback_models must be a list of model names, not a str")
        object.__setattr__(self, "fallback_models", tuple(self.fallback_models))
        if not all(isinstance(m, str) and m for m in self.fallback_models):
            raise ConfigurationError("fallback_models must hold non-empty model names")
        if (
            self.default_output_tokens is not None
            and self.max_output_tokens is not None
            and self.default_output_tokens > self.max_output_tokens
        ):
            raise ConfigurationError(
                f"default_output_tokens ({self.default_output_tokens}) exceeds "
                f"max_output_tokens ({self.max_output_tokens})"
            )

    @property
    def has_limits(self) -> bool:
        return any(
            v is not None
            for v in (
                self.daily_spend_usd,
                self.monthly_spend_usd,
                self.tokens_per_minute,
                self.tokens_per_day,
                self.max_in_flight,
            )
        )


PolicySource = Mapping[str, Policy] | Callable[[str], Policy | None]
"""Per-tenant overrides: a mapping from scope id to Policy, or a callable returning one
(or None for "use the default")."""
