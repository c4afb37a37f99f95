"""The model catalog: encoding, context window, input and output caps, provider, prices.

Where each figure comes from (docs/catalog.md has the detail and how to update it):

* ``context_window``, ``max_input_tokens``, ``max_output_tokens``: the provider's model
  page, kept with its source in ``guardrail/catalog/data/models.json``;
  ``tests/test_models.py`` checks every catalog model's window against genai-prices'
  within a stated tolerance, so drift in either source is seen.
* prices (``input_usd_per_mtok`` ...): genai-prices' base-tier prices, shown here as the
  cost functions use them (they also apply genai-prices' long-context tiers and
  cache-write prices); fine-tunes genai-prices does not price: ``models.json``'s
  ``fine_tunes``, from OpenAI's pricing page; :func:`register_model` overrides.
* ``encoding``: tiktoken's own model table where it knows the model; otherwise the
  family's entry in ``models.json``, flagged ``encoding_assumed`` (the gpt-6 family:
  tiktoken 0.14 has no entry for it; every OpenAI chat model since gpt-4o uses
  ``o200k_base``, so that is assumed until tiktoken says otherwise).
* Claude models use ``encoding="claude"``: Anthropic publishes no local tokenizer, so
  local counts for them are estimates, ``o200k_base`` times the family's ``text_margin``.
* ``image_rule``: the provider's published image rule for the family
  (:mod:`guardrail.counting.vision`).

Names resolve to a family by their longest known prefix, after
:func:`~guardrail.catalog.names.parse_name` dropped what does not change the model (a
router prefix, a fine-tune wrapper, Bedrock's region and version, Vertex's ``@date``);
dated snapshots (``gpt-4o-2024-08-06``) resolve to their family. A new model of a known
family needs no code; a new family needs one line of data.
"""

from __future__ import annotations

import functools
import json
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from importlib import resources
from typing import Any, Literal

import tiktoken

from guardrail.catalog.names import parse_name
from guardrail.catalog.price_data import pricing_for
from guardrail.errors import ConfigurationError, UnknownModelError, describe

__all__ = [
    "ModelInfo",
    "catalog_data",
    "image_rule",
    "list_models",
    "model_info",
    "normalise_name",
    "register_model",
]

Provider = Literal["openai", "anthropic", "unknown"]
Kind = Literal["chat", "embedding"]
FALLBACK_ENCODING = "o200k_base"
# Figures for a model nobody knows: the most common window of current chat models.
_FALLBACK_CONTEXT_WINDOW = 128_000
_FALLBACK_MAX_OUTPUT = 16_384
# A Claude model without a family (registered from scratch): the larger image tier and
# text margin, which err high.
_UNKNOWN_CLAUDE_IMAGE = "claude-high-res"
_UNKNOWN_CLAUDE_TEXT = "claude-opus-4.7"


@dataclass(frozen=True)
class ModelInfo:
    """What guardrail knows about one model."""

    name: str
    provider: Provider
    encoding: str
    context_window: int
    max_output_tokens: int
    family: str | None = None
    encoding_assumed: bool = False
    known: bool = True
    price_ref: str | None = None
    """The name prices are looked up under (a registered deployment points at its base)."""
    input_usd_per_mtok: Decimal | None = None
    """USD per million input tokens: the price the cost functions use (the base tier of a
    tiered price); None when nothing prices the model. See :attr:`price_override`."""
    output_usd_per_mtok: Decimal | None = None
    cached_input_usd_per_mtok: Decimal | None = None
    tool_constants: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    image_rule: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    max_input_tokens: int | None = None
    """The most prompt tokens the API accepts, when it is below ``context_window`` minus
    the output (gpt-5: 272,000 of a 400,000 window). None: the window is the only limit."""
    kind: Kind = "chat"
    """``"embedding"`` for embedding models (no output; ``max_input_tokens`` per input)."""
    text_margin: float | None = None
    """Claude estimates: each string counts ``ceil(o200k_base tokens * text_margin)``."""
    price_override: bool | None = None
    """True: the three price fields are the price (:func:`register_model`, the catalog's
    fine-tune prices). False: they show the price data's base-tier prices, and costs are
    computed by the price data (tiers, cache writes). None (a ``ModelInfo`` built by hand):
    the fields are the price when both are set."""
    price_provider: str | None = None
    """The price data's provider id, when it is not ``provider`` (``"aws"`` for Bedrock)."""
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Where the figures come from (``models.json``)."""

    @property
    def exact_tokenizer(self) -> bool:
        """True when local counts are exact (a tiktoken encoding), False for estimates."""
        return self.encoding != "claude"

    @property
    def input_limit(self) -> int:
        """The most prompt tokens a call can send, before any output is reserved."""
        if self.max_input_tokens is None:
            return self.context_window
        return min(self.context_window, self.max_input_tokens)

    @property
    def prices_set(self) -> bool:
        """Whether the price fields are the price the cost functions charge."""
        if self.price_override is None:
            return self.input_usd_per_mtok is not None and self.output_usd_per_mtok is not None
        return self.price_override


@functools.cache
def _data() -> dict[str, Any]:
    text = resources.files("guardrail.catalog").joinpath("data/models.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


MAX_NAME_LENGTH = 256
"""The longest model name looked up: real names are far shorter, and an unbounded one
would be kept by the resolver's cache and printed whole in the unknown-model warning."""
_MAX_WARNED = 1024  # unknown names warned about once each; past this, no more warnings


def catalog_data() -> Mapping[str, Any]:
    """The catalog's data (``data/models.json``, parsed once): families, rules, sources."""
    return _data()


_lock = threading.Lock()
_registered: dict[str, ModelInfo] = {}
_warned: set[str] = set()


@functools.lru_cache(maxsize=4096)
def normalise_name(model: str) -> str:
    """Strip what does not change the model: router prefix, fine-tune wrapper, platform
    prefixes and suffixes (Bedrock, Vertex), ``@version``; apply the catalog's aliases."""
    return parse_name(model, _data()["aliases"]).name


def _family_of(name: str) -> str | None:
    best: str | None = None
    for prefix in _data()["families"]:
        if (name == prefix or name.startswith((prefix + "-", prefix + "."))) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return best


def _tiktoken_encoding(name: str) -> str | None:
    try:
        return tiktoken.encoding_name_for_model(name)
    except KeyError:
        return None


def image_rule(name: str) -> dict[str, Any]:
    """The catalog's image rule called ``name``, with ``max`` rules expanded."""
    rules: Mapping[str, Any] = _data()["images"]
    rule = {k: v for k, v in rules[name].items() if k not in ("source", "note")}
    if rule.get("kind") == "max":
        rule["rules"] = [image_rule(r) for r in rule["rules"]]
    return rule


def _text_margin(name: str) -> float:
    return float(_data()["text"][name]["margin"])


@functools.lru_cache(maxsize=4096)
def _resolve(model: str) -> ModelInfo | None:
    data = _data()
    parsed = parse_name(model, data["aliases"])
    family = _family_of(parsed.name)
    if family is None:
        return None
    fam: dict[str, Any] = data["families"][family]
    provider = fam["provider"]
    encoding = fam["encoding"]
    assumed = bool(fam.get("encoding_assumed", False))
    if provider == "openai":
        known_encoding = _tiktoken_encoding(parsed.name)
        if known_encoding is not None:
            encoding, assumed = known_encoding, False
    pricing = pricing_for(model.strip(), parsed, family, provider, data["fine_tunes"])
    sources = {"figures": fam["source"], "prices": pricing.source}
    if "image" in fam:
        sources["image"] = data["images"][fam["image"]]["source"]
    if "text" in fam:
        sources["text"] = data["text"][fam["text"]]["source"]
    return ModelInfo(
        name=model.strip(),
        provider=provider,
        encoding=encoding,
        context_window=fam["context_window"],
        max_output_tokens=fam["max_output_tokens"],
        family=family,
        encoding_assumed=assumed,
        price_ref=pricing.ref,
        input_usd_per_mtok=pricing.prices[0],
        output_usd_per_mtok=pricing.prices[1],
        cached_input_usd_per_mtok=pricing.prices[2],
        tool_constants=dict(data["tools"].get(fam.get("tools", ""), data["tools"]["o200k"])),
        image_rule=image_rule(fam["image"]) if "image" in fam else {},
        max_input_tokens=fam.get("max_input_tokens"),
        kind=fam.get("kind", "chat"),
        text_margin=_text_margin(fam["text"]) if "text" in fam else None,
        price_override=pricing.override,
        price_provider=pricing.provider,
        sources=sources,
    )


def model_info(model: str, *, strict: bool = False) -> ModelInfo:
    """Look a model up by any name the provider accepts.

    Unknown names fall back to ``o200k_base`` with a 128K window and a 16K output cap,
    warning once per name; with ``strict=True`` they raise :class:`UnknownModelError`.
    """
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError(f"model must be a non-empty string, got {describe(model)}")
    if len(model) > MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"model name of {len(model)} characters ({describe(model, 40)}): model names "
            f"are at most {MAX_NAME_LENGTH}"
        )
    if _registered:  # else no name to normalise (every guarded call asks, twice)
        registered = _registered.get(model) or _registered.get(normalise_name(model))
        if registered is not None:
            return registered
    info = _resolve(model)
    if info is not None:
        return info
    if strict:
        raise UnknownModelError(model)
    with _lock:
        first = model not in _warned and len(_warned) < _MAX_WARNED
        if first:
            _warned.add(model)
    if first:
        warnings.warn(
            f"guardrail does not know model {describe(model)}; counting with "
            f"{FALLBACK_ENCODING} and assuming a {_FALLBACK_CONTEXT_WINDOW}-token window, with "
            "no price. Register it with guardrail.register_model() to silence this.",
            UserWarning,
            stacklevel=2,
        )
    return ModelInfo(
        name=model,
        provider="unknown",
        encoding=FALLBACK_ENCODING,
        context_window=_FALLBACK_CONTEXT_WINDOW,
        max_output_tokens=_FALLBACK_MAX_OUTPUT,
        encoding_assumed=True,
        known=False,
        price_ref=model,
        tool_constants=dict(_data()["tools"]["o200k"]),
        image_rule=image_rule("tile-85-170"),
    )


def register_model(
    name: str,
    *,
    like: str | None = None,
    provider: Provider | None = None,
    encoding: str | None = None,
    context_window: int | None = None,
    max_output_tokens: int | None = None,
    input_usd_per_mtok: Decimal | int | str | None = None,
    output_usd_per_mtok: Decimal | int | str | None = None,
    cached_input_usd_per_mtok: Decimal | int | str | None = None,
    max_input_tokens: int | None = None,
) -> ModelInfo:
    """Add a model (an Azure deployment, a new release) or override a known one.

    ``like`` copies every figure (and the price) from an existing model first, so
    ``register_model("azure/my-deployment", like="gpt-4o")`` is enough for a deployment.
    Prices are USD per million tokens; money is never a float, so pass ``Decimal``,
    ``int`` or ``str``. Give ``input_usd_per_mtok`` and ``output_usd_per_mtok`` together
    (``cached_input_usd_per_mtok`` defaults to the input price).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"model name must be a non-empty string, got {describe(name)}")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(f"model names are at most {MAX_NAME_LENGTH} characters")
    if like is not None:
        base = model_info(like, strict=True)
    elif (known := _resolve(name)) is not None:
        base = known
    else:
        missing = [
            n
            for n, v in (
                ("provider", provider),
                ("context_window", context_window),
                ("max_output_tokens", max_output_tokens),
            )
            if v is None
        ]
        if missing:
            raise ConfigurationError(
                f"registering unknown model {describe(name)} needs like=... or {', '.join(missing)}"
            )
        base = _from_scratch(name, provider)
    if encoding is not None and encoding != "claude":
        try:
            tiktoken.get_encoding(encoding)
        except ValueError as exc:
            raise ConfigurationError(f"unknown tiktoken encoding {describe(encoding)}") from exc
    for label, value in (
        ("context_window", context_window),
        ("max_output_tokens", max_output_tokens),
        ("max_input_tokens", max_input_tokens),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value <= 0
        ):
            raise ConfigurationError(f"{label} must be a positive int, got {describe(value)}")
    info = replace(
        base,
        name=name,
        provider=provider or base.provider,
        encoding=encoding or base.encoding,
        context_window=context_window or base.context_window,
        max_output_tokens=max_output_tokens or base.max_output_tokens,
        max_input_tokens=max_input_tokens or base.max_input_tokens,
        encoding_assumed=False if encoding else base.encoding_assumed,
        known=True,
    )
    prices = (
        None if input_usd_per_mtok is None else _price("input_usd_per_mtok", input_usd_per_mtok),
        None if output_usd_per_mtok is None else _price("output_usd_per_mtok", output_usd_per_mtok),
        None
        if cached_input_usd_per_mtok is None
        else _price("cached_input_usd_per_mtok", cached_input_usd_per_mtok),
    )
    if any(p is not None for p in prices):
        if prices[0] is None or prices[1] is None:
            # A half-given price would be silently completed by the price data's.
            raise ConfigurationError(
                f"model {describe(name)}: give input_usd_per_mtok and output_usd_per_mtok together "
                "(and cached_input_usd_per_mtok only with them)"
            )
        info = replace(
            info,
            input_usd_per_mtok=prices[0],
            output_usd_per_mtok=prices[1],
            cached_input_usd_per_mtok=prices[2],
            price_override=True,
        )
    with _lock:
        _registered[name] = info
    return info


def _from_scratch(name: str, provider: Provider | None) -> ModelInfo:
    """The base of a model registered without ``like``: only gpt-4o's counting constants
    are kept; the price is this model's own (none until given), the encoding assumed
    (Claude's estimate, at its larger margin and image tier, for an Anthropic model)."""
    claude = provider == "anthropic"
    return replace(
        model_info("gpt-4o"),
        price_ref=name,
        family=None,
        encoding="claude" if claude else FALLBACK_ENCODING,
        encoding_assumed=not claude,
        input_usd_per_mtok=None,
        output_usd_per_mtok=None,
        cached_input_usd_per_mtok=None,
        price_override=None,
        price_provider=None,
        max_input_tokens=None,
        text_margin=_text_margin(_UNKNOWN_CLAUDE_TEXT) if claude else None,
        image_rule=image_rule(_UNKNOWN_CLAUDE_IMAGE if claude else "tile-85-170"),
        sources={},
    )


def _price(label: str, value: object) -> Decimal:
    if isinstance(value, (float, bool)):
        raise ConfigurationError(f"{label} must be a Decimal, int or str (money is never a float)")
    try:
        price = Decimal(str(value))
    except ArithmeticError as exc:
        raise ConfigurationError(f"{label} is not a number: {describe(value)}") from exc
    if not price.is_finite() or price < 0:
        raise ConfigurationError(
            f"{label} must be a finite, non-negative price, got {describe(value)}"
        )
    return price


def unregister_model(name: str) -> None:
    """Remove a model added with :func:`register_model` (mainly for tests)."""
    with _lock:
        _registered.pop(name, None)


def list_models() -> list[ModelInfo]:
    """The catalog: every chat model the installed SDKs list and the price data knows."""
    names: list[str] = list(_data()["catalog"])
    infos = [model_info(n, strict=True) for n in names]
    infos.extend(i for n, i in sorted(_registered.items()) if n not in names)
    return infos
