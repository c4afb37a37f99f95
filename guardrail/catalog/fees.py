"""What a call costs beyond its input and output tokens: cache writes and per-use fees (web
and file searches), for a model the price data prices and for one registered with its own
token prices (:func:`guardrail.register_model`).

A registered model's token prices are its own; its cache-write and fee rates are those of
the model it was registered ``like`` (or, registered under a catalog name, of that model).
Where no rate is known for a fee a usage has, the cost is unknown: :class:`PriceUnavailable`
names the missing price, never a fee of $0 (under a money limit the call is refused).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from genai_prices.types import ModelPrice, TieredPrices

from guardrail.catalog.models import ModelInfo
from guardrail.errors import PriceUnavailable

if TYPE_CHECKING:
    from guardrail.catalog.pricing import TokenUsage

__all__ = ["check_fees", "rate", "registered_cost"]

_MTOK = Decimal(1_000_000)
_K = Decimal(1000)

_FEES = (
    ("web_searches", "web_searches_kcount", "web search"),
    ("file_searches", "storage_searches_kcount", "file search"),
)
"""(TokenUsage field, the price data's rate per 1,000, the name a refusal gives)."""


def rate(price: Decimal | TieredPrices | None, input_tokens: int) -> Decimal | None:
    """The price per unit that applies: a tier applies to every token once the prompt's
    input tokens exceed its start (genai_prices.types.calc_unit_price)."""
    if price is None or isinstance(price, Decimal):
        return price
    for tier in reversed(price.tiers):
        if input_tokens > tier.start:
            return tier.price
    return price.base


def _unknown(info: ModelInfo, what: str) -> PriceUnavailable:
    base = info.price_ref if info.price_ref and info.price_ref != info.name else None
    where = f"the price data has no {what} price for {base!r}" if base else None
    return PriceUnavailable(info.name, reason=where, missing=what)


def check_fees(info: ModelInfo, price: ModelPrice | None, usage: TokenUsage) -> Decimal:
    """The per-use fees of ``usage`` at ``price``'s rates; PriceUnavailable naming the first
    fee the usage has and ``price`` has no rate for."""
    total = Decimal(0)
    for field, key, what in _FEES:
        count = getattr(usage, field)
        if not count:
            continue
        per_k = rate(getattr(price, key, None), usage.input_tokens)
        if per_k is None:
            raise _unknown(info, what)
        total += count * per_k / _K
    return total


def registered_cost(info: ModelInfo, usage: TokenUsage, price: ModelPrice | None) -> Decimal:
    """The cost of ``usage`` on a model with registered token prices: its input, cached
    input and output at those prices, its cache writes and fees at ``price``'s rates (the
    price data's for the model it is like; None when it has none)."""
    assert info.input_usd_per_mtok is not None
    input_price = info.input_usd_per_mtok
    cached_price = info.cached_input_usd_per_mtok
    if cached_price is None:
        cached_price = input_price
    written, written_1h = usage.cache_write_tokens, usage.cache_write_1h_tokens
    uncached = max(0, usage.input_tokens - usage.cached_input_tokens - written)
    total = (
        uncached * input_price
        + usage.cached_input_tokens * cached_price
        + usage.output_tokens * (info.output_usd_per_mtok or 0)
    )
    if written:
        per_5m = rate(getattr(price, "cache_write_mtok", None), usage.input_tokens)
        per_1h = rate(getattr(price, "cache_write_1h_mtok", None), usage.input_tokens)
        if per_5m is None and written > written_1h:
            raise _unknown(info, "cache write")
        if per_1h is None and written_1h:
            if per_5m is None:
                raise _unknown(info, "1-hour cache write")
            per_1h = per_5m
        total += (written - written_1h) * (per_5m or 0) + written_1h * (per_1h or 0)
    cost = total / _MTOK
    if usage.web_searches or usage.file_searches:
        cost += check_fees(info, price, usage)
    return cost
