"""Calls guardrail cannot price: a model nothing prices, or a premium request option the
price data does not know (:attr:`RequestView.unpriced <guardrail.engine.adapter.RequestView>`,
or a premium ``service_tier`` the model has no prices for). Under a money limit they are
refused; else they go through, counted, with an unknown cost, and a warning is given once
per model or option. A call the provider reports billed at such a tier is charged at the
standard rates times the tier's bound (:mod:`guardrail.catalog.tier_bounds`), and logged
once per model and tier."""

from __future__ import annotations

import logging
import threading
import warnings

from guardrail.catalog.models import ModelInfo
from guardrail.catalog.premiums import (
    WORKSPACE_GEO,
    assumed_geo,
    describe_premium,
    is_premium,
    known_premium,
)
from guardrail.catalog.pricing import STANDARD_TIERS, tier_unpriced, unpriced_tier_bound
from guardrail.errors import UnboundedInput, UnpricedOption, describe
from guardrail.policy import Policy
from guardrail.stores.base import ScopeLimits
from guardrail.tenancy import TenantBinding

__all__ = [
    "billed_tier_note",
    "check_billed_tier",
    "refuse_unbounded",
    "refuse_unpriced",
    "reserved_tier",
    "warn_unpriced",
]

_log = logging.getLogger("guardrail")

_unpriced_lock = threading.Lock()
_unpriced_warned: set[str] = set()


def refuse_unpriced(
    option: str, info: ModelInfo, binding: TenantBinding, scopes: tuple[ScopeLimits, ...]
) -> None:
    """A premium option the price data cannot price: refused under a money limit (it
    would be reserved below what it bills); else warned about once per option."""
    limited = tuple(
        s.scope for s in scopes if s.daily_nanos is not None or s.monthly_nanos is not None
    )
    if limited:
        raise UnpricedOption(option, model=info.name, tenant=binding.tenant, scopes=limited)
    with _unpriced_lock:
        if option in _unpriced_warned:
            return
        _unpriced_warned.add(option)
    warnings.warn(
        f"guardrail cannot price {option}: such calls are counted and recorded with an "
        "unknown cost, and are refused under a money limit",
        UserWarning,
        stacklevel=2,
    )


def refuse_unbounded(
    option: str, info: ModelInfo, binding: TenantBinding, scopes: tuple[ScopeLimits, ...]
) -> None:
    """Input the provider reads that guardrail cannot count: refused under a token limit
    (a money limit refused it already, as unpriced), since no reservation holds it."""
    limited = tuple(
        s.scope for s in scopes if s.tokens_per_minute is not None or s.tokens_per_day is not None
    )
    if limited:
        raise UnboundedInput(option, model=info.name, tenant=binding.tenant, scopes=limited)


def warn_unpriced(info: ModelInfo) -> None:
    """One warning per model: its calls go through, counted, with an unknown cost. An
    unknown model already had the catalog's warning, which says it has no price."""
    with _unpriced_lock:
        if info.name in _unpriced_warned or not info.known:
            _unpriced_warned.add(info.name)
            return
        _unpriced_warned.add(info.name)
    warnings.warn(
        f"guardrail has no price for model {info.name!r}: its calls are counted and recorded "
        "with an unknown cost, and would be refused under a money limit. Pass its prices to "
        "guardrail.register_model() to price them.",
        UserWarning,
        stacklevel=2,
    )


def reserved_tier(
    tier: str | None,
    policy: Policy,
    info: ModelInfo,
    binding: TenantBinding,
    scopes: tuple[ScopeLimits, ...],
) -> tuple[str | None, bool]:
    """The service tier a call is reserved at (None: the standard rates), and whether it
    is a premium the price data has no prices for on this model (then refused under a
    money limit, else sent with an unknown cost). ``tier`` is the request's (``"auto"``:
    none named, so ``policy.assume_service_tier``, which is never refused: a model without
    Priority prices is reserved at the standard ones times the tier's bound, as a call
    reported at it is settled (:func:`~guardrail.catalog.pricing.unpriced_tier_bound`);
    :data:`~guardrail.catalog.premiums.WORKSPACE_GEO`: a Claude request naming no geo, so
    ``policy.assume_inference_geo``). A premium (guardrail.catalog.premiums) is priced."""
    if tier == "auto":
        tier = policy.assume_service_tier
        if tier is None or tier in STANDARD_TIERS:
            return None, False
        return tier, False  # priced, at its bound where the data lacks it
    if tier is None or tier in STANDARD_TIERS:
        return None, False
    if tier == WORKSPACE_GEO:
        return assumed_geo(policy.assume_inference_geo), False
    if tier_unpriced(info, tier):
        refuse_unpriced(f"service_tier={describe(tier)}", info, binding, scopes)
        return tier, True
    return tier, False


_tiers_warned: set[tuple[str, str]] = set()


def billed_tier_note(billed: str | None, reserved: str | None) -> str:
    """What an overrun's warning says of the tier: why the call cost more than its
    reservation, when the provider reports a tier other than the one it was reserved at
    (a project whose default tier is Priority); empty otherwise."""
    if billed in STANDARD_TIERS:
        billed = None
    if billed == reserved:
        return ""
    at = "the standard rates" if reserved is None else _tier_name(reserved)
    said = "the standard tier" if billed is None else _tier_name(billed)
    return (
        f"; the provider reports {said}, charged at its prices (or its bound, where the price "
        f"data has none for the model; reserved at {at})"
    )


def _tier_name(tier: str) -> str:
    return describe_premium(tier) if is_premium(tier) else f"service_tier {tier!r}"


def check_billed_tier(info: ModelInfo, tier: str, tenant: str) -> None:
    """A call the provider reports billed at the non-standard ``tier``: if the price data
    has no prices for it on this model, it is charged at the standard rates times the
    tier's bound (:func:`~guardrail.catalog.pricing.unpriced_tier_bound`), and that is
    logged (once per model and tier), since the bill is not known. Likewise a premium
    whose factor is not published (an ``inference_geo`` guardrail does not know), charged
    at 1.1x."""
    if is_premium(tier):
        if not known_premium(tier):
            _warn_billed_once(
                info,
                tier,
                "guardrail: %s was billed with %s (tenant %s), a geo guardrail has no price "
                "for: charged at 1.1x the standard rates (US-only inference's), which may be "
                "below the bill (logged once per model and geo)",
                describe_premium(tier),
                tenant,
            )
        return
    if not tier_unpriced(info, tier):
        return
    _warn_billed_once(
        info,
        tier,
        "guardrail: %s was billed at service_tier %r (tenant %s), which the price data has "
        "no prices for: charged at %sx the standard rates (the largest factor of that tier "
        "in the price data), a bound that may still be below the bill (logged once per "
        "model and tier; each record's extra says service_tier_unpriced)",
        tier,
        tenant,
        format(unpriced_tier_bound(info, tier).normalize(), "f"),
    )


def _warn_billed_once(info: ModelInfo, tier: str, message: str, *args: object) -> None:
    with _unpriced_lock:
        if (info.name, tier) in _tiers_warned:
            return
        _tiers_warned.add((info.name, tier))
    _log.warning(message, info.name, *args)
