"""Reading an Anthropic ``usage`` (a response's, or a stream's ``message_start`` and
``message_delta``) as a :class:`~guardrail.catalog.pricing.TokenUsage`.

``input_tokens`` excludes cache reads and writes, which are added; the 1-hour writes come
from ``cache_creation``. Sampling passes the top-level fields leave out are added from
``usage.iterations``: a ``compaction`` entry ("not included in the top-level usage
fields", the SDK says), an ``advisor_message`` (the advisor tool's own inference), any
other type but ``message`` and ``fallback_message`` (the passes the top level sums). They
are counted at the call's model: the calls that make them (compaction, the advisor tool,
fallbacks) are refused under a money limit, and go through without one at an unknown cost,
so only their tokens are at stake. ``usage.inference_geo`` other than ``"global"`` (where
inference ran: US-only inference, 1.1x) is the usage's premium (``service_tier``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from guardrail.catalog.premiums import geo_premium
from guardrail.catalog.pricing import TokenUsage
from guardrail.engine.adapter import PartialUsage
from guardrail.providers.common import token_count, usage_of

__all__ = ["field", "final_usage", "input_count", "read_usage"]

_SUMMED = frozenset(("message", "fallback_message"))
"""``usage.iterations`` types whose tokens the top-level usage already sums."""


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` or ``obj.name``; None when it has none (or cannot be read)."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    try:
        return getattr(obj, name, None)
    except Exception:  # an SDK object missing a required field
        return None


def _count(value: Any) -> int | None:
    """A token count from the provider, clamped to >= 0; None when it is not a number.
    The call was made and billed: a malformed usage must never fail its settlement."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return max(0, int(value))


def _get(obj: Any, name: str) -> int:
    return _count(field(obj, name)) or 0


def input_count(usage: Any) -> int | None:
    """``usage.input_tokens``; None when missing, unreadable or negative (a prompt of 0
    would be billed as free: the engine bills its own count of the prompt instead)."""
    return token_count(field(usage, "input_tokens"))


def _unsummed(usage: Any) -> TokenUsage:
    """The tokens of the ``usage.iterations`` entries the top-level fields leave out."""
    entries = field(usage, "iterations")
    if not isinstance(entries, (list, tuple)):
        return TokenUsage()
    uncached = read = written = w1 = output = 0
    for entry in entries:
        if field(entry, "type") in _SUMMED:
            continue
        uncached += _get(entry, "input_tokens")
        read += _get(entry, "cache_read_input_tokens")
        write = _get(entry, "cache_creation_input_tokens")
        creation = field(entry, "cache_creation")
        hour = _get(creation, "ephemeral_1h_input_tokens")
        write = max(write, _get(creation, "ephemeral_5m_input_tokens") + hour)
        written += write
        w1 += min(hour, write)
        output += _get(entry, "output_tokens")
    return TokenUsage(
        input_tokens=uncached + read + written,
        output_tokens=output,
        cached_input_tokens=read,
        cache_write_tokens=written,
        cache_write_1h_tokens=w1,
    )


def _plus(usage: TokenUsage, more: TokenUsage) -> TokenUsage:
    if not (more.input_tokens or more.output_tokens):
        return usage
    fields = {k: v for k, v in vars(usage).items()}
    for name in (
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
    ):
        fields[name] += getattr(more, name)
    return type(usage)(**fields)


def read_usage(usage: Any, *, iterations: bool = True) -> TokenUsage | None:
    """An Anthropic ``usage`` as a :class:`TokenUsage` (with the passes
    ``usage.iterations`` adds, unless ``iterations`` is False: a stream's start). Cache,
    thinking and search counts are clamped to >= 0 (a missing one is 0). A missing,
    unreadable or negative ``input_tokens`` or ``output_tokens`` is flagged (a
    :class:`PartialUsage` keeping the readable fields): the engine bills its own count of
    the prompt, or the reserved output, never 0."""
    if usage is None:
        return None
    creation = field(usage, "cache_creation")
    uncached = input_count(usage)
    read = _get(usage, "cache_read_input_tokens")
    written = _get(usage, "cache_creation_input_tokens")
    output = token_count(field(usage, "output_tokens"))
    w1 = _get(creation, "ephemeral_1h_input_tokens")
    # The total and its split disagreeing (or the total missing): bill the larger.
    written = max(written, _get(creation, "ephemeral_5m_input_tokens") + w1)
    thinking = _get(field(usage, "output_tokens_details"), "thinking_tokens")
    read_back = usage_of(
        None if uncached is None else uncached + read + written,
        output,
        cached_input_tokens=read,
        cache_write_tokens=written,
        cache_write_1h_tokens=min(w1, written),
        reasoning_tokens=thinking if output is None else min(thinking, output),
        web_searches=_get(field(usage, "server_tool_use"), "web_search_requests"),
        service_tier=geo_premium(field(usage, "inference_geo")),
    )
    return _plus(read_back, _unsummed(usage)) if iterations else read_back


def _geo(usage: Any, start: TokenUsage) -> str | None:
    """The premium of where inference ran: the delta's ``inference_geo`` when it says, else
    ``message_start``'s."""
    geo = field(usage, "inference_geo")
    return start.service_tier if geo is None else geo_premium(geo)


def final_usage(start: TokenUsage | None, usage: Any) -> TokenUsage:
    """``message_delta`` usage (cumulative) over ``message_start``'s: the delta's fields
    win where it has them; the 1-hour cache-write split only comes with the start; the
    passes its ``iterations`` add are added; ``inference_geo`` as :func:`read_usage`.
    Cache, thinking and search counts are clamped
    to >= 0; an input count neither gives, or an unreadable output count, is flagged as
    :func:`read_usage` does."""
    start = start or TokenUsage()

    def get(name: str) -> int | None:
        return _count(field(usage, name))

    cached = get("cache_read_input_tokens")
    cached = start.cached_input_tokens if cached is None else cached
    written = get("cache_creation_input_tokens")
    written = start.cache_write_tokens if written is None else written
    uncached = input_count(usage)
    if uncached is None and not (isinstance(start, PartialUsage) and start.input_unread):
        uncached = max(0, start.input_tokens - start.cached_input_tokens - start.cache_write_tokens)
    output = token_count(field(usage, "output_tokens"))
    thinking = _count(field(field(usage, "output_tokens_details"), "thinking_tokens"))
    thinking = start.reasoning_tokens if thinking is None else thinking
    final = usage_of(
        None if uncached is None else uncached + cached + written,
        output,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        cache_write_1h_tokens=min(start.cache_write_1h_tokens, written),
        reasoning_tokens=thinking if output is None else min(thinking, output),
        web_searches=max(
            start.web_searches, _get(field(usage, "server_tool_use"), "web_search_requests")
        ),
        service_tier=_geo(usage, start),
    )
    return _plus(final, _unsummed(usage))
