"""USD cost of tokens, as ``Decimal``, from maintained price data (genai-prices).

genai-prices ships its data with the package (no network at import or at call time)
and knows cached-input, cache-write and tiered (long-context) prices. We hand it a
``genai_prices.Usage``; SDK usage objects are mapped with genai-prices' own per-provider
extractors, so the meaning of every usage field stays the library's, not ours.
Prices given to :func:`guardrail.register_model` take precedence. A usage billed at an
OpenAI service tier (:attr:`TokenUsage.service_tier`) is priced at the price data's
prices for that tier (its price variants), where it has them; one billed at a premium
(:mod:`guardrail.catalog.premiums`: US-only inference, a regional Vertex endpoint), at the
standard token prices times its factor.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from operator import attrgetter
from typing import Any, Literal

import genai_prices
from genai_prices import data_snapshot

from guardrail._frozen import quick_init
from guardrail.catalog.fees import check_fees, registered_cost
from guardrail.catalog.models import ModelInfo, model_info
from guardrail.catalog.premiums import PREMIUM, PREMIUM_RATIO, is_premium, premium_of
from guardrail.catalog.price_cache import (
    _MAX_CACHED,
    CHEAPER_TIERS,
    STANDARD_TIERS,
    tier_context,
)
from guardrail.catalog.price_cache import fast_cost as _fast_cost
from guardrail.catalog.price_cache import resolve_price as _resolve_price
from guardrail.catalog.tier_bounds import unpriced_tier_factor
from guardrail.errors import InvalidRequestError, PriceUnavailable, describe

__all__ = [
    "STANDARD_TIERS",
    "TokenUsage",
    "estimate_cost",
    "prices_per_million",
    "tier_unpriced",
    "unpriced_tier_bound",
    "usage_cost",
    "usage_from_sdk",
]

CONTAINER_USD = Decimal("0.03")
"""One code-interpreter container (1 GB, the default), from OpenAI's pricing page ("Built-in
tools: Code Interpreter, $0.03 per container"); the price data has no figure for it."""


@quick_init
@dataclass(frozen=True)
class TokenUsage:
    """Provider-neutral token usage of one call.

    ``input_tokens`` is every prompt token, cached or not (OpenAI's ``prompt_tokens``;
    for Anthropic, ``input_tokens + cache_creation_input_tokens + cache_read_input_tokens``).
    ``output_tokens`` includes ``reasoning_tokens``.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    web_searches: int = 0
    """Server-side web searches (Anthropic ``server_tool_use.web_search_requests``, OpenAI
    ``web_search_call`` items), billed per search on top of the tokens."""
    file_searches: int = 0
    """OpenAI ``file_search_call`` items, billed per call (genai-prices' storage searches)."""
    containers: int = 0
    """Code-interpreter containers created, billed at :data:`CONTAINER_USD` each."""
    service_tier: str | None = None
    """The OpenAI processing tier the call was billed at (``"priority"``, ``"flex"``...: a
    response's ``service_tier``); priced at the model's prices for it where the price data
    has them (:func:`tier_unpriced`), else at the standard ones times the tier's bound
    (:func:`unpriced_tier_bound`; the standard ones for a cheaper tier such as ``"flex"``).
    None: the standard tier.
    Or a premium of :mod:`guardrail.catalog.premiums` (``"inference_geo=us"``,
    ``"vertex=regional"``): the token prices times its factor, where it applies."""

    def to_genai(self) -> genai_prices.Usage:
        values: dict[str, int] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.cached_input_tokens:
            values["cache_read_tokens"] = self.cached_input_tokens
        if self.cache_write_tokens:
            values["cache_write_tokens"] = self.cache_write_tokens
        if self.cache_write_1h_tokens:
            values["cache_write_1h_tokens"] = self.cache_write_1h_tokens
            values["cache_write_5m_tokens"] = self.cache_write_tokens - self.cache_write_1h_tokens
        if self.web_searches:
            values["web_searches"] = self.web_searches
        if self.file_searches:
            values["storage_searches"] = self.file_searches
        return genai_prices.Usage(**values)


COUNT_FIELDS = tuple(name for name in TokenUsage.__dataclass_fields__ if name != "service_tier")
"""The fields of a :class:`TokenUsage` that are counts (non-negative ints)."""
_COUNTS = attrgetter(*COUNT_FIELDS)


def _check_count(label: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{label} must be a non-negative int, got {describe(value)}")
    return value


def _provider_id(info: ModelInfo) -> str | None:
    """The provider the price data prices the model under (Bedrock ids: ``aws``)."""
    if info.price_provider is not None:
        return info.price_provider
    return info.provider if info.provider in ("openai", "anthropic") else None


# --- the per-call path: integer rates ----------------------------------------------------
#
# Every guarded call prices its worst case and then its usage. For a model whose prices are
# flat (no tiers, no time of day) and have at most six decimals per million tokens (every
# price in the data today), a token costs a whole number of pico-dollars (1e-12 USD), so the
# cost is exact integer arithmetic on rates resolved once per model, hour and price-data
# snapshot (and service tier: a premium or cheaper tier's rates are cached apart). Anything
# else goes the Decimal way below, on the prices guardrail.catalog.price_cache resolves.

_PICO = Decimal(10**12)
_PICO_PER_MTOK = Decimal(10**6)


@dataclass(frozen=True)
class _Rates:
    input: int  # pico-USD per token; 0 when the model has no input price
    output: int
    cached: int | None  # None: cached tokens are billed as plain input


_ZERO = Decimal(0)
# id(info) -> (info, snapshot, hour, rates or None when the Decimal way prices it). The
# entry holds the ModelInfo, so its id is not reused while the entry lives.
_rates: dict[int, tuple[ModelInfo, object, int, _Rates | None]] = {}


def _pico_rate(price: object) -> int | None:
    if price is None:
        return 0
    if not isinstance(price, Decimal):  # tiered
        return None
    pico = price * _PICO_PER_MTOK
    return int(pico) if pico == pico.to_integral_value() else None


def _rates_of(info: ModelInfo) -> _Rates | None:
    snapshot, hour = data_snapshot.get_snapshot(), int(time.time()) // 3600
    hit = _rates.get(id(info))
    if hit is not None and hit[0] is info and hit[2] == hour and hit[1] is snapshot:
        return hit[3]
    rates = _resolve_rates(info)
    if len(_rates) >= _MAX_CACHED:
        _rates.clear()
    _rates[id(info)] = (info, snapshot, hour, rates)
    return rates


# (id(info), service tier) -> as _rates: a tier's rates, kept apart so that a call at the
# standard tier stays one lookup in _rates.
_tier_rates: dict[tuple[int, str], tuple[ModelInfo, object, int, _Rates | None]] = {}


def _tier_rates_of(info: ModelInfo, tier: str) -> _Rates | None:
    snapshot, hour = data_snapshot.get_snapshot(), int(time.time()) // 3600
    hit = _tier_rates.get((id(info), tier))
    if hit is not None and hit[0] is info and hit[2] == hour and hit[1] is snapshot:
        return hit[3]
    rates = _resolve_rates(info, tier)
    if len(_tier_rates) >= _MAX_CACHED:
        _tier_rates.clear()
    _tier_rates[(id(info), tier)] = (info, snapshot, hour, rates)
    return rates


def _scaled_rates(rates: _Rates | None, num: int, den: int) -> _Rates | None:
    """``rates`` times ``num / den``, where every product is a whole number of
    pico-dollars (else None: the Decimal way prices it, exactly)."""
    if rates is None:
        return None
    scaled = [r * num for r in (rates.input, rates.output, rates.cached or 0)]
    if any(r % den for r in scaled):
        return None
    input_rate, output_rate, cached_rate = (r // den for r in scaled)
    return _Rates(input_rate, output_rate, None if rates.cached is None else cached_rate)


def _bounded_tier_rates(info: ModelInfo, tier: str) -> _Rates | None:
    """The rates of a tier the price data has no prices for on ``info``: the standard ones
    times the tier's bound (:mod:`guardrail.catalog.tier_bounds`)."""
    num, den = unpriced_tier_bound(info, tier).as_integer_ratio()
    return _scaled_rates(_rates_of(info), num, den)


def _resolve_rates(info: ModelInfo, tier: str | None = None) -> _Rates | None:
    if tier is not None and is_premium(tier):  # the standard rates times its factor
        standard = _rates_of(info)
        return _scaled_rates(standard, *PREMIUM_RATIO) if premium_of(info, tier) else standard
    if tier is not None and tier_unpriced(info, tier):
        return _bounded_tier_rates(info, tier)
    if info.prices_set and info.input_usd_per_mtok is not None:
        cached_price = info.cached_input_usd_per_mtok
        prices: tuple[object, object, object] = (
            info.input_usd_per_mtok,
            info.output_usd_per_mtok,
            info.input_usd_per_mtok if cached_price is None else cached_price,
        )
    else:
        resolved = _resolve_price(info.price_ref or info.name, _provider_id(info), tier)
        if resolved.price is None or resolved.flat is None:
            return None
        if resolved.flat[0] is None and resolved.flat[1] is None:
            return None  # unpriced: the Decimal way raises PriceUnavailable
        prices = resolved.flat
    rates = [_pico_rate(p) for p in prices]
    if None in rates:
        return None
    input_rate, output_rate, cached_rate = rates
    cached = None if prices[2] is None else cached_rate
    assert input_rate is not None and output_rate is not None
    return _Rates(input_rate, output_rate, cached)


def _pico_cost(info: ModelInfo, usage: TokenUsage) -> int | None:
    """The cost in pico-USD by integer rates, or None when the Decimal way must price it."""
    if usage.cache_write_tokens or usage.web_searches or usage.file_searches:
        return None
    cached = usage.cached_input_tokens
    tier = usage.service_tier
    if tier is None or tier in STANDARD_TIERS:
        rates = _rates_of(info)
    else:
        rates = _tier_rates_of(info, tier)
    if rates is None or cached > usage.input_tokens:
        return None
    if rates.cached is None:
        tokens = usage.input_tokens * rates.input
    else:
        tokens = (usage.input_tokens - cached) * rates.input + cached * rates.cached
    return tokens + usage.output_tokens * rates.output


def _cost(info: ModelInfo, usage: TokenUsage) -> Decimal:
    pico = _pico_cost(info, usage)
    if pico is not None:
        cost = Decimal(pico) / _PICO if pico else _ZERO
    else:
        cost = _token_cost(info, usage)
    return cost + usage.containers * CONTAINER_USD if usage.containers else cost


def checked_usage_cost(info: ModelInfo, usage: TokenUsage) -> Decimal:
    """:func:`usage_cost` of a usage of plain non-negative ints (the engine's own, checked
    where it was made)."""
    return _cost(info, usage)


def _scaled_cost(info: ModelInfo, usage: TokenUsage, factor: Decimal) -> Decimal:
    """``usage`` at the standard prices, its tokens (not its fees) times ``factor``."""
    standard = replace(usage, service_tier=None)
    cost = _token_cost(info, standard)
    if factor == 1:
        return cost
    tokens = cost
    if usage.web_searches or usage.file_searches:
        tokens = _token_cost(info, replace(standard, web_searches=0, file_searches=0))
    return cost + tokens * (factor - 1)


def _token_cost(info: ModelInfo, usage: TokenUsage) -> Decimal:
    tier = usage.service_tier
    if tier is not None and is_premium(tier):  # its tokens (not its fees) times its factor
        return _scaled_cost(info, usage, PREMIUM if premium_of(info, tier) else Decimal(1))
    if tier is not None and tier_unpriced(info, tier):  # bounded: guardrail.catalog.tier_bounds
        return _scaled_cost(info, usage, unpriced_tier_bound(info, tier))
    ref = info.price_ref or info.name
    provider = _provider_id(info)
    extras = usage.cache_write_tokens or usage.web_searches or usage.file_searches
    if info.prices_set and info.input_usd_per_mtok is not None:
        # Its own token prices; cache writes and fees at the rates of the model it is like.
        return registered_cost(info, usage, _resolve_price(ref, provider).price if extras else None)
    tier = None if usage.service_tier in STANDARD_TIERS else usage.service_tier
    resolved = _resolve_price(ref, provider, tier)
    if resolved.price is None or (
        resolved.price.input_mtok is None and resolved.price.output_mtok is None
    ):
        raise PriceUnavailable(info.name, reason=_unpriced_reason(info))
    if resolved.flat is not None:
        fast = _fast_cost(resolved.flat, usage)
        if fast is not None:
            return fast
    if usage.web_searches or usage.file_searches:
        check_fees(info, resolved.price, usage)  # calc_price prices a fee it lacks at $0
    try:
        calc = genai_prices.calc_price(
            usage.to_genai(), ref, provider_id=provider, price_context=tier_context(tier)
        )
    except LookupError as exc:
        raise PriceUnavailable(info.name, reason=_unpriced_reason(info)) from exc
    except ValueError as exc:  # inconsistent usage, e.g. more cached than input tokens
        raise InvalidRequestError(f"invalid token usage {usage}: {exc}") from exc
    return calc.total_price


def _unpriced_reason(info: ModelInfo) -> str | None:
    if info.name.strip().lower().startswith("ft:") and info.family is not None:
        return (
            f"neither the price data nor the catalog's fine_tunes price fine-tunes of "
            f"{info.family} (a base model's price would understate a fine-tune)"
        )
    return None


def estimate_cost(
    model: str | ModelInfo,
    input_tokens: int,
    output_tokens: int,
    *,
    cached_input_tokens: int = 0,
    service_tier: str | None = None,
) -> Decimal:
    """USD cost of a call with these token counts.

    ``input_tokens`` counts every prompt token; ``cached_input_tokens`` of them are billed
    at the cached-input price. ``estimate_cost("gpt-4o", 1000, 500) == Decimal("0.0075")``.
    ``service_tier`` (OpenAI's ``"priority"``, ``"flex"``) prices them at that tier's rates
    where the price data has them (:func:`tier_unpriced`), else at the standard rates times
    the tier's bound (:func:`unpriced_tier_bound`; a cheaper tier at the standard rates).
    """
    info = model if isinstance(model, ModelInfo) else model_info(model)
    usage = TokenUsage(
        input_tokens=_check_count("input_tokens", input_tokens),
        output_tokens=_check_count("output_tokens", output_tokens),
        cached_input_tokens=_check_count("cached_input_tokens", cached_input_tokens),
        service_tier=_check_tier(service_tier),
    )
    if cached_input_tokens > input_tokens:
        raise InvalidRequestError(
            f"cached_input_tokens ({cached_input_tokens}) exceeds input_tokens ({input_tokens})"
        )
    return _cost(info, usage)


def _check_tier(tier: object) -> str | None:
    if tier is not None and type(tier) is not str:
        raise InvalidRequestError(f"service_tier must be a str or None, got {describe(tier)}")
    return tier


def tier_unpriced(model: str | ModelInfo, tier: str | None) -> bool:
    """Whether a call billed at the OpenAI ``service_tier`` ``tier`` costs more than the
    price data can say: a premium tier (``"priority"``, ``"fast"``, ``"ultrafast"``...) for
    which it has no prices of the model's (a model registered with its own prices has
    standard ones only). The standard tiers and ``"flex"`` are always priced (flex without
    its own prices at the standard ones, an upper bound)."""
    if tier is None or tier in STANDARD_TIERS or tier in CHEAPER_TIERS or is_premium(tier):
        return False  # a premium is priced by its factor (guardrail.catalog.premiums)
    info = model if isinstance(model, ModelInfo) else model_info(model)
    if info.prices_set and info.input_usd_per_mtok is not None:
        return True
    return not _resolve_price(info.price_ref or info.name, _provider_id(info), tier).variant


def unpriced_tier_bound(model: str | ModelInfo, tier: str) -> Decimal:
    """The factor on the standard token prices that a call billed at ``tier``, which
    :func:`tier_unpriced` says the price data does not price on ``model``, is charged at
    (:mod:`guardrail.catalog.tier_bounds`)."""
    info = model if isinstance(model, ModelInfo) else model_info(model)
    return unpriced_tier_factor(_provider_id(info), tier)


def _as_mapping(usage: Any) -> Mapping[str, Any]:
    if isinstance(usage, Mapping):
        return usage
    dump = getattr(usage, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    raise InvalidRequestError(f"cannot read token usage from {type(usage).__name__}")


UsageShape = Literal["chat", "responses", "embeddings", "anthropic"]


def _shape(data: Mapping[str, Any], provider: str) -> UsageShape:
    if provider == "anthropic":
        return "anthropic"
    if "prompt_tokens" in data:
        return "chat" if "completion_tokens" in data else "embeddings"
    if "input_tokens" in data:
        return "responses"
    return "chat"  # the extractor then names what is missing


_FLAVOR: dict[UsageShape, str] = {
    "chat": "chat",
    "responses": "responses",
    "embeddings": "embeddings",
    "anthropic": "default",
}


def usage_from_sdk(usage: Any, *, provider: str) -> TokenUsage:
    """Normalise an SDK usage object (or its dict) into :class:`TokenUsage`.

    OpenAI Chat Completions: ``prompt_tokens`` (cached ones in
    ``prompt_tokens_details.cached_tokens``), ``completion_tokens`` (reasoning included).
    OpenAI Responses: ``input_tokens`` (cached in ``input_tokens_details.cached_tokens``),
    ``output_tokens`` (reasoning in ``output_tokens_details.reasoning_tokens``, included).
    OpenAI embeddings: ``prompt_tokens`` alone. Anthropic messages: ``input_tokens``
    excludes cache reads and writes, which are added. The shape is told by its fields.
    """
    data = _as_mapping(usage)
    shape = _shape(data, provider)
    # Details an SDK leaves unset are dumped as None: the extractors want them absent.
    cleaned = {k: v for k, v in data.items() if v is not None}
    try:
        extractor = data_snapshot.get_snapshot().find_provider(None, provider, None)
        _, u = extractor.extract_usage({"usage": cleaned}, api_flavor=_FLAVOR[shape])
    except (LookupError, ValueError, TypeError) as exc:
        raise InvalidRequestError(
            f"malformed {provider} usage {describe(dict(data))}: {exc}"
        ) from exc

    def get(name: str) -> int:
        value = getattr(u, name, None) or 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidRequestError(f"usage field {name} must be a non-negative int: {value!r}")
        return value

    return TokenUsage(
        input_tokens=get("input_tokens"),
        output_tokens=get("output_tokens"),
        cached_input_tokens=get("cache_read_tokens"),
        cache_write_tokens=get("cache_write_tokens"),
        cache_write_1h_tokens=get("cache_write_1h_tokens"),
        reasoning_tokens=get("output_reasoning_tokens"),
    )


def usage_cost(model: str | ModelInfo, usage: TokenUsage | Any) -> Decimal:
    """USD cost of an SDK response's ``usage`` (or a :class:`TokenUsage`): a Chat
    Completions, Responses or embeddings usage (object or dict), or an Anthropic one."""
    info = model if isinstance(model, ModelInfo) else model_info(model)
    if isinstance(usage, TokenUsage):
        # Plain non-negative ints (the flow's usage always) pass in one C-level pass.
        counts = _COUNTS(usage)
        if set(map(type, counts)) != {int} or min(counts) < 0:
            for name in COUNT_FIELDS:
                _check_count(name, getattr(usage, name))
        _check_tier(usage.service_tier)
    else:
        # The usage's shape is the API's (Bedrock speaks Anthropic's), not the price data's.
        shape = info.provider if info.provider in ("openai", "anthropic") else "openai"
        usage = usage_from_sdk(usage, provider=shape)
    return _cost(info, usage)


def prices_per_million(model: str | ModelInfo) -> tuple[Decimal | None, Decimal | None]:
    """(input, output) USD per million tokens at the base tier, or None where unknown."""
    info = model if isinstance(model, ModelInfo) else model_info(model)
    if info.prices_set:
        return info.input_usd_per_mtok, info.output_usd_per_mtok
    price = _resolve_price(info.price_ref or info.name, _provider_id(info)).price
    if price is None:
        return None, None

    def base(price: object) -> Decimal | None:
        if price is None:
            return None
        if isinstance(price, Decimal):
            return price
        return getattr(price, "base", None)

    return base(price.input_mtok), base(price.output_mtok)
