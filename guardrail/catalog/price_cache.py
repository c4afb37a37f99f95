"""The price data's prices for a model, and for one of its service tiers, resolved and
cached for :mod:`guardrail.catalog.pricing`.

genai_prices.calc_price costs ~60 µs (model lookup, unit registry, leaf decomposition) and
runs twice per guarded call (reserve, settle). The model's ModelPrice is cached per
(price_ref, provider, service tier) for the current UTC hour and price-data snapshot (prices
that start on a date switch at midnight UTC, so an hour-old entry is never wrong), and the
common case is priced with plain Decimal arithmetic (~3 µs): input, output and cache-read
prices (flat, or tiered on the total input tokens exactly as calc_unit_price does), no cache
writes in the usage, and no other priced unit that a TokenUsage could report. Everything
else goes through calc_price. tests/test_pricing.py checks the two agree on random usages.
(The per-call path in pricing tries integer rates first, and falls back to these.)

Service tiers. OpenAI bills by processing tier (``service_tier``): Priority at about twice
the standard rates, Flex at about half. The price data holds those as price variants of a
model (``when={"service_tier": "priority"}``), which genai-prices applies when asked with
``price_context``; a tier the model has no variant for is priced at the standard rates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, TieredPrices, TimeOfDateConstraint

from guardrail.catalog.fees import rate as _rate

if TYPE_CHECKING:
    from guardrail.catalog.pricing import TokenUsage

__all__ = ["CHEAPER_TIERS", "STANDARD_TIERS"]

_MTOK = Decimal(1_000_000)

STANDARD_TIERS = frozenset(("auto", "default", "scale", "standard"))
"""``service_tier`` values billed at the standard token rates: OpenAI's ``auto`` (the
project's default tier: a response says which it was), ``default``, and ``scale``
(prepaid capacity, billed at most at the standard rates); and Anthropic's ``standard``
(its usage reports one; not read today, and harmless if it ever is)."""

CHEAPER_TIERS = frozenset(("flex",))
"""Tiers billed below the standard rates: priced at their own rates where the price data
has them, else at the standard ones (an upper bound). Any other tier (``priority``,
``fast``, ``ultrafast``) is a premium: priced at the model's own prices for it, or not at
all."""

# Price keys the fast path handles; cache writes are handled by leaving them to calc_price.
_FAST_KEYS = frozenset({"input_mtok", "output_mtok", "cache_read_mtok"})
_CACHE_WRITE_KEYS = frozenset({"cache_write_mtok", "cache_write_5m_mtok", "cache_write_1h_mtok"})
# Units a TokenUsage never reports (so they price to 0 in calc_price too).
_UNREPORTED_KEYS = frozenset(
    {
        "web_searches_kcount",
        "storage_searches_kcount",
        "code_executions_kcount",
        "social_searches_kcount",
        "rerank_searches_kcount",
    }
)
_MAX_CACHED = 4096

Rate = Decimal | TieredPrices
FlatPrices = tuple[Rate | None, Rate | None, Rate | None]


@dataclass(frozen=True)
class _Resolved:
    snapshot: object
    hour: int
    price: ModelPrice | None  # None: the price data does not know the model
    flat: FlatPrices | None  # (input, output, cache read) when the fast path applies
    variant: bool = False
    """For a service tier: the price data has the model's own prices for it (a variant
    that changes the standard ones)."""


_resolved: dict[tuple[str, str | None, str | None], _Resolved] = {}


def tier_context(tier: str | None) -> dict[str, str] | None:
    """genai-prices' ``price_context`` for a service tier (None: the standard prices)."""
    return None if tier is None else {"service_tier": tier}


def _flat_prices(
    calc: genai_prices.types.PriceCalculation, tier: str | None = None
) -> FlatPrices | None:
    prices = calc.model.prices
    if isinstance(prices, list) and any(
        isinstance(p.constraint, TimeOfDateConstraint) for p in prices
    ):
        return None  # off-peak prices change within the hour
    if tier is not None and any(
        isinstance(v.constraint, TimeOfDateConstraint)
        for v in getattr(calc.model, "price_variants", None) or ()
    ):
        return None  # so may a tier's
    found: dict[str, Rate] = {}
    for key, value in vars(calc.model_price).items():
        if key.startswith("_") or value is None:
            continue
        if key in _FAST_KEYS:
            if not isinstance(value, (Decimal, TieredPrices)):
                return None
            found[key] = value
        elif key not in _CACHE_WRITE_KEYS and key not in _UNREPORTED_KEYS:
            return None
    return found.get("input_mtok"), found.get("output_mtok"), found.get("cache_read_mtok")


def resolve_price(ref: str, provider: str | None, tier: str | None = None) -> _Resolved:
    """The model's prices (at ``tier``'s, for a tier other than the standard ones: pass
    None for those), cached for the hour and the price-data snapshot."""
    snapshot = data_snapshot.get_snapshot()
    hour = int(time.time()) // 3600
    key = (ref, provider, tier)
    hit = _resolved.get(key)
    if hit is not None and hit.hour == hour and hit.snapshot is snapshot:
        return hit
    usage = genai_prices.Usage(input_tokens=0, output_tokens=0)
    try:
        calc = genai_prices.calc_price(
            usage, ref, provider_id=provider, price_context=tier_context(tier)
        )
    except LookupError:
        entry = _Resolved(snapshot, hour, None, None)
    else:
        variant = False
        if tier is not None:
            standard = resolve_price(ref, provider).price
            variant = standard is not None and vars(calc.model_price) != vars(standard)
        entry = _Resolved(snapshot, hour, calc.model_price, _flat_prices(calc, tier), variant)
    if len(_resolved) >= _MAX_CACHED:
        _resolved.clear()
    _resolved[key] = entry
    return entry


def fast_cost(flat: FlatPrices, usage: TokenUsage) -> Decimal | None:
    """calc_price's result for these prices, or None when the usage needs calc_price."""
    cached = usage.cached_input_tokens
    if (
        usage.cache_write_tokens
        or usage.web_searches
        or usage.file_searches
        or cached > usage.input_tokens
    ):
        return None
    input_rate, output_rate, cached_rate = flat
    input_price = _rate(input_rate, usage.input_tokens)
    output_price = _rate(output_rate, usage.input_tokens)
    cached_price = _rate(cached_rate, usage.input_tokens)
    total = Decimal(0)
    if input_price is not None:
        # Without a cache-read price, cached tokens are billed as plain input.
        uncached = usage.input_tokens - (cached if cached_price is not None else 0)
        total += input_price * uncached / _MTOK
    if output_price is not None:
        total += output_price * usage.output_tokens / _MTOK
    if cached_price is not None:
        total += cached_price * cached / _MTOK
    return total
