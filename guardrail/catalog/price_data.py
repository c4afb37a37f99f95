"""What the price data (genai-prices) knows about a model, for the catalog.

The cost functions (:mod:`guardrail.catalog.pricing`) compute costs; this module decides,
for a catalog model, which name and provider the price data prices it under, and the
base-tier prices :class:`~guardrail.catalog.models.ModelInfo` shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import genai_prices
from genai_prices import data_snapshot

from guardrail.catalog.names import ParsedName

__all__ = ["Pricing", "data_prices", "price_data_model", "pricing_for"]


def price_data_model(name: str, provider: str) -> Any | None:
    try:
        _, found = data_snapshot.get_snapshot().find_provider_model(name, None, provider, None)
    except LookupError:
        return None
    return found


def _base_price(value: object) -> Decimal | None:
    if value is None or isinstance(value, Decimal):
        return value
    base = getattr(value, "base", None)  # TieredPrices
    return base if isinstance(base, Decimal) else None


def data_prices(ref: str, provider: str) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
    """The price data's base-tier (input, output, cache read) prices, for display."""
    try:
        calc = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=0, output_tokens=0), ref, provider_id=provider
        )
    except LookupError:
        return None, None, None
    price = calc.model_price
    return (
        _base_price(price.input_mtok),
        _base_price(price.output_mtok),
        _base_price(price.cache_read_mtok),
    )


@dataclass(frozen=True)
class Pricing:
    ref: str
    provider: str | None = None  # the price data's provider, when not the model's
    prices: tuple[Decimal | None, Decimal | None, Decimal | None] = (None, None, None)
    override: bool = False
    source: str = "genai-prices"


def pricing_for(
    model: str,
    parsed: ParsedName,
    family: str,
    provider: str,
    fine_tunes: Mapping[str, Mapping[str, str]],
) -> Pricing:
    """Where a known model's prices come from.

    The name as given when the price data knows it, else the normalised name (``azure/
    gpt-4o`` is priced as ``gpt-4o``). Bedrock ids are priced under the price data's
    ``aws`` provider (its regional prices). A fine-tune is priced by the price data's own
    fine-tune entries or the catalog's ``fine_tunes``; one neither knows keeps its own
    name (and so no price): its base model's price would understate it.
    """
    if parsed.platform == "bedrock" and price_data_model(model, "aws") is not None:
        return Pricing(model, "aws", data_prices(model, "aws"))
    if parsed.fine_tune:
        if price_data_model(model, provider) is not None:
            return Pricing(model, None, data_prices(model, provider))
        entry = fine_tunes.get(family)
        if entry is None:
            return Pricing(model)
        if "price_ref" in entry:
            ref = entry["price_ref"]
            return Pricing(ref, None, data_prices(ref, provider))
        prices = (Decimal(entry["input"]), Decimal(entry["output"]), Decimal(entry["cached_input"]))
        return Pricing(model, None, prices, override=True, source=entry["source"])
    ref = model if price_data_model(model, provider) is not None else parsed.name
    return Pricing(ref, None, data_prices(ref, provider))
