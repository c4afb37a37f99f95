"""USD cost of tokens, as ``Decimal``, from maintained price data (genai-prices).

genai-prices ships its data with the package (no network at import or at call time)
and knows cached-input, cache-write and tiered (long-context) prices. We hand it a
``genai_prices.Usage``; SDK usage objects are mapped with genai-prices' own per-provider
extractors, so the meaning of every usage field stays the library's, not ours.
Prices given to :func:`guardrail.register_model` take precedence.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from operator import attrgetter
from typing import Any, Literal

import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, TieredPrices, TimeOfDateConstraint

from guardrail._frozen import quick_init
from guardrail.catalog.fees import check_fees, registered_cost
from guardrail.catalog.fees import rate as _rate
from guardrail.catalog.models import ModelInfo, model_info
from guardrail.errors import InvalidRequestError, PriceUnavailable, describe

__all__ = ["TokenUsage", "estimate_cost", "prices_per_million", "usage_cost", "usage_from_sdk"]

_MTOK = Decimal(1_000_000)

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


_COUNTS = attrgetter(*TokenUsage.__dataclass_fields__)


def _check_count(label: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{label} must be a non-negative int, got {describe(value)}")
    return value


def _provider_id(info: ModelInfo) -> str | None:
    """The provider the price data prices the model under (Bedrock ids: ``aws``)."""
    if info.price_provider is not None:
        return info.price_provider
    return info.provider if info.provider in ("openai", "anthropic") else None


# --- resolved prices, cached -------------------------------------------------------------
#
# genai_prices.calc_price costs ~60 µs (model lookup, unit registry, leaf decomposition) and
# runs twice per guarded call (reserve, settle). The model's ModelPrice is cached per
# (price_ref, provider) for the current UTC hour and price-data snapshot (prices that start
# on a date switch at midnight UTC, so an hour-old entry is never wrong), and the common
# case is priced with plain Decimal arithmetic (~3 µs): input, output and cache-read prices
# (flat, or tiered on the total input tokens exactly as calc_unit_price does), no cache
# writes in the usage, and no other priced unit that a TokenUsage could report. Everything
# else goes through calc_price. tests/test_pricing.py checks the two agree on random usages.
# (The per-call path below tries integer rates first, and falls back to these.)

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


_resolved: dict[tuple[str, str | None], _Resolved] = {}


def _flat_prices(calc: genai_prices.types.PriceCalculation) -> FlatPrices | None:
    prices = calc.model.prices
    if isinstance(prices, list) and any(
        isinstance(p.constraint, TimeOfDateConstraint) for p in prices
    ):
        return None  # off-peak prices change within the hour
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


def _resolve_price(ref: str, provider: str | None) -> _Resolved:
    snapshot = data_snapshot.get_snapshot()
    hour = int(time.time()) // 3600
    key = (ref, provider)
    hit = _resolved.get(key)
    if hit is not None and hit.hour == hour and hit.snapshot is snapshot:
        return hit
    try:
        calc = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=0, output_tokens=0), ref, provider_id=provider
        )
    except LookupError:
        entry = _Resolved(snapshot, hour, None, None)
    else:
        entry = _Resolved(snapshot, hour, calc.model_price, _flat_prices(calc))
    if len(_resolved) >= _MAX_CACHED:
        _resolved.clear()
    _resolved[key] = entry
    return entry


def _fast_cost(flat: FlatPrices, usage: TokenUsage) -> Decimal | None:
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


# --- the per-call path: integer rates ----------------------------------------------------
#
# Every guarded call prices its worst case and then its usage. For a model whose prices are
# flat (no tiers, no time of day) and have at most six decimals per million tokens (every
# price in the data today), a token costs a whole number of pico-dollars (1e-12 USD), so the
# cost is exact integer arithmetic on rates resolved once per model, hour and price-data
# snapshot. Anything else goes the Decimal way below.

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


def _resolve_rates(info: ModelInfo) -> _Rates | None:
    if info.prices_set and info.input_usd_per_mtok is not None:
        cached_price = info.cached_input_usd_per_mtok
        prices: tuple[object, object, object] = (
            info.input_usd_per_mtok,
            info.output_usd_per_mtok,
            info.input_usd_per_mtok if cached_price is None else cached_price,
        )
    else:
        resolved = _resolve_price(info.price_ref or info.name, _provider_id(info))
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
    rates = _rates_of(info)
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


def _token_cost(info: ModelInfo, usage: TokenUsage) -> Decimal:
    ref = info.price_ref or info.name
    provider = _provider_id(info)
    extras = usage.cache_write_tokens or usage.web_searches or usage.file_searches
    if info.prices_set and info.input_usd_per_mtok is not None:
        # Its own token prices; cache writes and fees at the rates of the model it is like.
        return registered_cost(info, usage, _resolve_price(ref, provider).price if extras else None)
    resolved = _resolve_price(ref, provider)
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
        calc = genai_prices.calc_price(usage.to_genai(), ref, provider_id=provider)
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
) -> Decimal:
    """USD cost of a call with these token counts.

    ``input_tokens`` counts every prompt token; ``cached_input_tokens`` of them are billed
    at the cached-input price. ``estimate_cost("gpt-4o", 1000, 500) == Decimal("0.0075")``.
    """
    info = model if isinstance(model, ModelInfo) else model_info(model)
    usage = TokenUsage(
        input_tokens=_check_count("input_tokens", input_tokens),
        output_tokens=_check_count("output_tokens", output_tokens),
        cached_input_tokens=_check_count("cached_input_tokens", cached_input_tokens),
    )
    if cached_input_tokens > input_tokens:
        raise InvalidRequestError(
            f"cached_input_tokens ({cached_input_tokens}) exceeds input_tokens ({input_tokens})"
        )
    return _cost(info, usage)


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
            for name in TokenUsage.__dataclass_fields__:
                _check_count(name, getattr(usage, name))
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
