"""The model catalog: encoding, context window, output cap and provider of each model.

Where each figure comes from:

* ``context_window``: the smaller of genai-prices' figure for the model (maintained price
  data, shipped offline) and the family figure in ``guardrail/data/models.json``, so that
  a stale figure errs towards trimming rather than towards a provider 400.
* ``max_output_tokens``: ``models.json``, from the providers' model pages.
* ``encoding``: tiktoken's own model table where it knows the model; otherwise the
  family's entry in ``models.json``, flagged ``encoding_assumed`` (the gpt-6 family:
  tiktoken 0.14 has no entry for it; every OpenAI chat model since gpt-4o uses
  ``o200k_base``, so that is assumed until tiktoken says otherwise).
* Claude models use ``encoding="claude"``: Anthropic publishes no local tokenizer, so
  local counts for them are estimates (see :mod:`guardrail.counting.messages`).

Names resolve to a family by their longest known prefix, after dropping a provider
prefix (``azure/``, ``openai/``), a fine-tune wrapper (``ft:gpt-4o-mini:org::id``) and
a ``@version`` suffix; dated snapshots (``gpt-4o-2024-08-06``) resolve to their family.
A new model of a known family needs no code; a new family needs one line of data.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import warnings
from dataclasses import dataclass, field, replace
from decimal import Decimal
from importlib import resources
from typing import Any, Literal

import tiktoken

from guardrail.errors import ConfigurationError, UnknownModelError, describe

__all__ = ["ModelInfo", "list_models", "model_info", "register_model"]

Provider = Literal["openai", "anthropic", "unknown"]
FALLBACK_ENCODING = "o200k_base"
# Figures for a model nobody knows: the most common window of current chat models.
_FALLBACK_CONTEXT_WINDOW = 128_000
_FALLBACK_MAX_OUTPUT = 16_384


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
    """Price overrides from :func:`register_model`; None means "ask genai-prices"."""
    output_usd_per_mtok: Decimal | None = None
    cached_input_usd_per_mtok: Decimal | None = None
    tool_constants: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    image_rule: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def exact_tokenizer(self) -> bool:
        """True when local counts are exact (a tiktoken encoding), False for estimates."""
        return self.encoding != "claude"


@functools.cache
def _data() -> dict[str, Any]:
    text = resources.files("guardrail.catalog").joinpath("data/models.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


MAX_NAME_LENGTH = 256
"""The longest model name looked up: real names are far shorter, and an unbounded one
would be kept by the resolver's cache and printed whole in the unknown-model warning."""
_MAX_WARNED = 1024  # unknown names warned about once each; past this, no more warnings

_lock = threading.Lock()
_registered: dict[str, ModelInfo] = {}
_warned: set[str] = set()
_DATE_OR_VERSION = re.compile(r"@.*$")


def normalise_name(model: str) -> str:
    """Strip what does not change the model: provider prefix, fine-tune wrapper, ``@v``."""
    name = model.strip().lower()
    if name.startswith("ft:"):
        parts = name.split(":")
        name = parts[1] if len(parts) > 1 and parts[1] else name
    if "/" in name:
        name = name.rsplit("/", 1)[1]
    return _DATE_OR_VERSION.sub("", name)


def _family_of(name: str) -> str | None:
    best: str | None = None
    for prefix in _data()["families"]:
        if (name == prefix or name.startswith((prefix + "-", prefix + "."))) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return best


def _price_data_model(name: str, provider: str) -> Any | None:
    from genai_prices import data_snapshot

    try:
        _, found = data_snapshot.get_snapshot().find_provider_model(name, None, provider, None)
    except LookupError:
        return None
    return found


def _price_data_window(name: str, provider: str) -> int | None:
    found = _price_data_model(name, provider)
    return None if found is None else found.context_window


def _price_ref(model: str, name: str, provider: str) -> str:
    """The name prices are looked up under: the name as given when the price data knows it,
    else the normalised name (``azure/gpt-4o`` is priced as ``gpt-4o``). A fine-tune the
    price data does not know keeps its own name (and so no price): its base model's price
    would understate it."""
    if model.lower().startswith("ft:") or _price_data_model(model, provider) is not None:
        return model
    return name


def _tiktoken_encoding(name: str) -> str | None:
    try:
        return tiktoken.encoding_name_for_model(name)
    except KeyError:
        return None


@functools.lru_cache(maxsize=4096)
def _resolve(model: str) -> ModelInfo | None:
    name = normalise_name(model)
    family = _family_of(name)
    if family is None:
        return None
    data = _data()
    fam: dict[str, Any] = data["families"][family]
    window: int = fam["context_window"]
    priced_window = _price_data_window(name, fam["provider"])
    if priced_window:
        window = min(window, priced_window)
    encoding = fam["encoding"]
    assumed = bool(fam.get("encoding_assumed", False))
    if fam["provider"] == "openai":
        known_encoding = _tiktoken_encoding(name)
        if known_encoding is not None:
            encoding, assumed = known_encoding, False
    return ModelInfo(
        name=model.strip(),
        provider=fam["provider"],
        encoding=encoding,
        context_window=window,
        max_output_tokens=fam["max_output_tokens"],
        family=family,
        encoding_assumed=assumed,
        price_ref=_price_ref(model.strip(), name, fam["provider"]),
        tool_constants=dict(data["tools"].get(fam.get("tools", ""), data["tools"]["o200k"])),
        image_rule=dict(data["images"].get(fam.get("image", ""), {})),
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
            f"{FALLBACK_ENCODING} and assuming a {_FALLBACK_CONTEXT_WINDOW}-token window. "
            "Register it with guardrail.register_model() to silence this.",
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
        image_rule=dict(_data()["images"]["tile-85-170"]),
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
) -> ModelInfo:
    """Add a model (an Azure deployment, a new release) or override a known one.

    ``like`` copies every figure (and the price) from an existing model first, so
    ``register_model("azure/my-deployment", like="gpt-4o")`` is enough for a deployment.
    Prices are USD per million tokens; money is never a float, so pass ``Decimal``,
    ``int`` or ``str``.
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
        # Only gpt-4o's counting constants are kept; the price is this model's own, and the
        # encoding is assumed (Claude's estimate for an Anthropic model) unless given.
        base = replace(
            model_info("gpt-4o"),
            price_ref=name,
            family=None,
            encoding="claude" if provider == "anthropic" else FALLBACK_ENCODING,
            encoding_assumed=provider != "anthropic",
        )
    if encoding is not None and encoding != "claude":
        try:
            tiktoken.get_encoding(encoding)
        except ValueError as exc:
            raise ConfigurationError(f"unknown tiktoken encoding {describe(encoding)}") from exc
    for label, value in (
        ("context_window", context_window),
        ("max_output_tokens", max_output_tokens),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value <= 0
        ):
            raise ConfigurationError(f"{label} must be a positive int, got {describe(value)}")

    def price_or(label: str, value: object, current: Decimal | None) -> Decimal | None:
        return current if value is None else _price(label, value)

    info = replace(
        base,
        input_usd_per_mtok=price_or(
            "input_usd_per_mtok", input_usd_per_mtok, base.input_usd_per_mtok
        ),
        output_usd_per_mtok=price_or(
            "output_usd_per_mtok", output_usd_per_mtok, base.output_usd_per_mtok
        ),
        cached_input_usd_per_mtok=price_or(
            "cached_input_usd_per_mtok", cached_input_usd_per_mtok, base.cached_input_usd_per_mtok
        ),
        name=name,
        provider=provider or base.provider,
        encoding=encoding or base.encoding,
        context_window=context_window or base.context_window,
        max_output_tokens=max_output_tokens or base.max_output_tokens,
        encoding_assumed=False if encoding else base.encoding_assumed,
        known=True,
    )
    if (info.input_usd_per_mtok is None) != (info.output_usd_per_mtok is None) or (
        info.cached_input_usd_per_mtok is not None and info.input_usd_per_mtok is None
    ):
        # A half-given price would be silently replaced by the price data's.
        raise ConfigurationError(
            f"model {describe(name)}: give input_usd_per_mtok and output_usd_per_mtok together "
            "(and cached_input_usd_per_mtok only with them)"
        )
    with _lock:
        _registered[name] = info
    return info


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
