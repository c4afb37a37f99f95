"""What a call billed at a service tier the price data has no prices for (on its model) is
charged: the model's standard token prices times the tier's largest factor in the data.

OpenAI prices a premium tier per model (Priority is 1.67x to 2.5x the standard prices
across the models the price data prices at it). A response may report a tier the data lacks for
its model (a project whose default tier is Priority, calling gpt-5-nano), or a tier name
the data has never seen. The call was already billed; charging it at the standard prices
would under-count it by up to half, without bound across calls. It is charged instead at
the largest factor that tier has on any of the provider's models in the data, or, for a
tier the data has on none of them, the largest factor of any of the provider's tiers
(:func:`unpriced_tier_factor` says what a provider without tier prices gets). That is a stated rule,
not a proof: a new model priced above every earlier one would still be under-counted,
which is why such calls stay logged (``guardrail.engine.unpriced``).

Factors are read from the data once per snapshot of it, and rounded up to a thousandth
(1.667 for 5/3), so that a factor never understates what it was read from.
"""

from __future__ import annotations

import threading
from decimal import ROUND_CEILING, Decimal

from genai_prices import data_snapshot

from guardrail.catalog.price_cache import CHEAPER_TIERS, STANDARD_TIERS

__all__ = ["FALLBACK_FACTOR", "unpriced_tier_factor"]

FALLBACK_FACTOR = Decimal("2.5")
"""The factor when the price data prices no tier of any model: OpenAI's Priority at its
highest in genai-prices 0.2.3 (gpt-5.5's output)."""

_FIELDS = ("input_mtok", "output_mtok", "cache_read_mtok")
_STEP = Decimal("0.001")

_lock = threading.Lock()
_cached: tuple[object, dict[str, dict[str, Decimal]]] | None = None


def _factors_of(snapshot: object) -> dict[str, dict[str, Decimal]]:
    """provider id -> tier -> the largest ratio of a tier's price to the standard one, over
    every flat price of every model of the provider (the standard and cheaper tiers left
    out: never charged above the standard prices)."""
    found: dict[str, dict[str, Decimal]] = {}
    for provider in getattr(snapshot, "providers", None) or ():
        for model in getattr(provider, "models", None) or ():
            base = getattr(model, "prices", None)
            for variant in getattr(model, "price_variants", None) or ():
                tier = (getattr(variant, "when", None) or {}).get("service_tier")
                if not isinstance(tier, str) or tier in STANDARD_TIERS or tier in CHEAPER_TIERS:
                    continue
                for name in _FIELDS:
                    ratio = _ratio(getattr(variant.prices, name, None), getattr(base, name, None))
                    if ratio is None:
                        continue
                    tiers = found.setdefault(provider.id, {})
                    if ratio > tiers.get(tier, Decimal(1)):
                        tiers[tier] = ratio
    return found


def _steps(price: object) -> list[tuple[int, Decimal]] | None:
    """A price as (from this many prompt tokens, per million) steps: one for a flat price,
    the base and each tier for long-context prices; None when it is neither."""
    if isinstance(price, Decimal):
        return [(0, price)]
    base, tiers = getattr(price, "base", None), getattr(price, "tiers", None)
    if not isinstance(base, Decimal) or not isinstance(tiers, list):
        return None
    steps = [(0, base)]
    for tier in tiers:
        start, value = getattr(tier, "start", None), getattr(tier, "price", None)
        if not isinstance(start, int) or not isinstance(value, Decimal):
            return None
        steps.append((start, value))
    return steps


def _ratio(price: object, standard: object) -> Decimal | None:
    """The largest ratio of ``price`` to ``standard`` (flat or long-context), rounded up;
    None when they say nothing of it (absent, unpriced, another shape). Long-context
    prices are compared step by step where they step at the same sizes, else their dearest
    step against the standard's cheapest."""
    ours, theirs = _steps(price), _steps(standard)
    if ours is None or theirs is None or min(v for _, v in theirs) <= 0:
        return None
    if [start for start, _ in ours] == [start for start, _ in theirs]:
        ratio = max(a / b for (_, a), (_, b) in zip(ours, theirs, strict=True))
    else:
        ratio = max(v for _, v in ours) / min(v for _, v in theirs)
    return ratio.quantize(_STEP, rounding=ROUND_CEILING)


def _factors() -> dict[str, dict[str, Decimal]]:
    global _cached
    snapshot = data_snapshot.get_snapshot()
    cached = _cached
    if cached is not None and cached[0] is snapshot:
        return cached[1]
    with _lock:
        if _cached is None or _cached[0] is not snapshot:
            _cached = (snapshot, _factors_of(snapshot))
        return _cached[1]


def unpriced_tier_factor(provider: str | None, tier: str) -> Decimal:
    """The factor on the standard token prices of a call of ``provider`` (its price data
    id) billed at ``tier``, which the price data does not price for its model: the
    largest factor of that tier on the provider's models, else of any of its tiers; for a
    provider with no tier prices (Azure), the tier's largest factor on any provider's
    models, else any tier's; else :data:`FALLBACK_FACTOR`. Never below 1."""
    factors = _factors()
    own = factors.get(provider or "openai", {})
    if tier in own:
        return own[tier]
    if own:
        return max(own.values())
    anywhere = [t[tier] for t in factors.values() if tier in t]
    anywhere = anywhere or [f for t in factors.values() for f in t.values()]
    return max(anywhere, default=FALLBACK_FACTOR)
