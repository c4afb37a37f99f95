"""The providers' published image-token rules, for an image of known size.

A rule is a small dict from the catalog (``ModelInfo.image_rule``; ``data/models.json``
names the rule of every family, docs/catalog.md says where each figure comes from). Four
kinds:

* ``tile`` (OpenAI: gpt-4o, gpt-4.1, gpt-5/5.1, o-series): ``detail="low"`` costs ``base``.
  Otherwise the image is scaled to fit in 2048x2048 (aspect kept, never up), then so that
  its shortest side is at most 768px, and every 512px tile costs ``tile`` on top of
  ``base``: 1024x1024 is 85 + 4 * 170 = 765 on gpt-4o. Computed in exact rational
  arithmetic, as the guide states it (no pixel rounding between the two steps).
* ``patch`` (OpenAI: gpt-4.1-mini/nano, o4-mini, gpt-5-mini/nano, gpt-5.2 and later):
  the image (first fitted into ``max_dimension`` px where the rule has one) is covered by
  32px patches; over the ``budget`` it is shrunk, aspect kept, to the largest size whose
  limiting side is a whole number of patches and that fits the budget (the guide's
  two-step shrink, computed exactly); tokens = patches (at most the budget) times the
  ``multiplier``, rounded up. ``budgets`` gives a budget per ``detail`` (``"high"``,
  ``"original"``) and ``auto`` says which one ``"auto"`` means; a budget of ``None`` is
  "no published budget": the image is only fitted into the API's own limits
  (``max_dimension``, ``max_pixels``).
* ``claude`` (Anthropic): ``ceil(w/28) * ceil(h/28)`` tokens; an image whose long edge is
  over ``max_edge`` or whose count is over ``max_tokens`` is first scaled down to the
  largest aspect-preserving size within both. 1928x1928 is 4,761 on the high-resolution
  tier (2576 px, 4784 tokens) and 1,521 on the standard one (1568 px, 1568 tokens).
* ``max``: the larger of several rules (``rules``), for a model whose guide and public
  measurements disagree: the count never falls below either.

Where a provider leaves a detail open (how "auto" chooses on tile models, how a resized
side is rounded to whole pixels), the rule takes the larger reading, so an image is never
counted below its provider's rule. ``tests/test_images.py`` checks that on random sizes
against a plain transcription of each published rule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal
from typing import Any

__all__ = [
    "claude_tokens",
    "patch_count",
    "patch_tokens",
    "resolve_detail",
    "size_free_tokens",
    "tile_tokens",
    "tokens_for_size",
    "worst_case_tokens",
]

PATCH = 32
"""OpenAI's patch side, in pixels."""
CLAUDE_PATCH = 28
"""Anthropic's patch side, in pixels."""
_DEFAULT_TILE_RULE: Mapping[str, Any] = {"kind": "tile", "base": 85, "tile": 170}
DETAILS = ("low", "high", "auto", "original")
"""The ``detail`` values OpenAI documents; anything else is counted as the costliest."""


# --------------------------------------------------------------------------- tile


def tile_tokens(width: int, height: int, base: int, tile: int) -> int:
    """High-detail tokens of a ``width`` x ``height`` image under the tile rule, exactly.

    With L the long side and S the short one: when the short side is still over 768 after
    the 2048 fit, the image ends as 768 x (768 L / S): 2 tiles across. Otherwise, when the
    fit applied, as (2048 S / L) x 2048: 4 tiles along. Otherwise it is not scaled at all.
    """
    long_side, short_side = max(width, height), min(width, height)
    if short_side * min(2048, long_side) > 768 * long_side:  # S * min(1, 2048/L) > 768
        tiles = 2 * -(-768 * long_side // (512 * short_side))
    elif long_side > 2048:
        tiles = 4 * -(-2048 * short_side // (512 * long_side))
    else:
        tiles = -(-width // 512) * -(-height // 512)
    return base + tile * tiles


# --------------------------------------------------------------------------- patch


def _ceil_sqrt(p: int, q: int) -> int:
    """The smallest n with n * n >= p / q (p, q > 0): ceil(sqrt(p / q)), exactly."""
    n = math.isqrt(p // q)
    while n * n * q < p:
        n += 1
    return n


def _fitted_sides(
    width: int, height: int, max_dimension: int | None, max_pixels: int | None
) -> tuple[int, int]:
    """Patch columns and rows of the image once fitted (never enlarged) into the limits."""
    area = width * height
    num, den = 1, 1  # the dimension fit's scale, num / den
    longest = max(width, height)
    if max_dimension is not None and longest > max_dimension:
        num, den = max_dimension, longest
    if max_pixels is not None and area * num * num > max_pixels * den * den:
        # The pixel limit binds: scale = sqrt(max_pixels / area), irrational in general.
        # ceil(side * scale / 32) is the smallest n with (32n)^2 * area >= side^2 * max_pixels.
        cols = _ceil_sqrt(width * width * max_pixels, PATCH * PATCH * area)
        rows = _ceil_sqrt(height * height * max_pixels, PATCH * PATCH * area)
        return cols, rows
    return -(-width * num // (den * PATCH)), -(-height * num // (den * PATCH))


def patch_count(
    width: int,
    height: int,
    budget: int | None,
    *,
    max_dimension: int | None = None,
    max_pixels: int | None = None,
) -> int:
    """32px patches of a ``width`` x ``height`` image under a patch budget (None: none)."""
    cols, rows = _fitted_sides(width, height, max_dimension, max_pixels)
    patches = cols * rows
    if budget is None:
        if max_pixels is not None:
            patches = min(patches, _most_patches(max_dimension, max_pixels))
        return patches
    if patches <= budget:
        return patches
    # The guide's shrink: r = sqrt(budget * 32^2 / (w * h)) makes the image exactly
    # `budget` patches of area; it is then shrunk by min(floor(pw)/pw, floor(ph)/ph) so
    # that the limiting side is a whole number of patches. With pw = sqrt(budget * w/h)
    # and ph = sqrt(budget * h/w), that side has floor(pw) (or floor(ph)) patches and the
    # other side a*h/w (or b*w/h): all integer arithmetic, no float error.
    a = math.isqrt(budget * width // height)  # floor(pw)
    b = math.isqrt(budget * height // width)  # floor(ph)
    if a * height <= b * width:  # a/pw <= b/ph: the width limits
        patches = a * -(-a * height // width)
    else:
        patches = b * -(-b * width // height)
    return min(patches, budget)


@functools.lru_cache(maxsize=64)
def _most_patches(max_dimension: int | None, max_pixels: int) -> int:
    """The most patches any image within the limits can have (whole pixels)."""
    side = max_dimension or max_pixels
    best = 0
    for cols in range(1, -(-side // PATCH) + 1):
        w = (cols - 1) * PATCH + 1  # the narrowest image with this many columns: the tallest
        h = min(side, max_pixels // w)
        if h <= 0:
            break
        best = max(best, cols * -(-h // PATCH))
    return best


def _times(count: int, multiplier: Decimal | str) -> int:
    # OpenAI does not say how it rounds patches * multiplier; rounding up never under-counts.
    return int((count * Decimal(multiplier)).to_integral_value(rounding=ROUND_CEILING))


def patch_tokens(
    width: int,
    height: int,
    multiplier: Decimal | str,
    cap: int | None,
    *,
    max_dimension: int | None = None,
    max_pixels: int | None = None,
) -> int:
    """Tokens of a ``width`` x ``height`` image under the patch rule (32px patches)."""
    patches = patch_count(width, height, cap, max_dimension=max_dimension, max_pixels=max_pixels)
    return _times(patches, multiplier)


def _budgets(rule: Mapping[str, Any]) -> Mapping[str, int | None]:
    budgets: Mapping[str, int | None] | None = rule.get("budgets")
    if budgets is None:
        return {"high": rule.get("budget", rule.get("cap"))}
    return budgets


def resolve_detail(detail: str | None, rule: Mapping[str, Any]) -> str | None:
    """The detail level an image is counted at: ``"auto"`` (or no detail) as the rule's
    ``auto`` says; a detail the rule does not know, as its costliest. None for rules
    where detail plays no part (single-budget patch rules, Claude)."""
    kind = rule.get("kind")
    if kind == "tile":
        return "low" if detail == "low" else "high"  # "auto" is not published: "high"
    if kind == "patch" and "budgets" in rule:
        budgets: Mapping[str, int | None] = rule["budgets"]
        if detail in (None, "auto"):
            detail = str(rule.get("auto", "high"))
        if detail == "low" and "low" not in budgets and "high" in budgets:
            return "high"  # an unpublished "low" costs no more than "high"
        if detail in budgets:
            return str(detail)

        def cost(d: str) -> float:
            budget = budgets[d]
            return math.inf if budget is None else budget

        return max(budgets, key=cost)
    return None


def _patch_budget(detail: str | None, rule: Mapping[str, Any]) -> int | None:
    budgets = _budgets(rule)
    chosen = resolve_detail(detail, rule)
    if chosen is None:
        return next(iter(budgets.values()))
    return budgets[chosen]


# --------------------------------------------------------------------------- claude


def claude_tokens(width: int, height: int, max_edge: int, max_tokens: int) -> int:
    """Tokens of a ``width`` x ``height`` image under Anthropic's 28px patch rule.

    An image within ``max_edge`` and ``max_tokens`` costs ``ceil(w/28) * ceil(h/28)``.
    A larger one is resized to the largest aspect-preserving size within both; Anthropic
    does not say how the short side is rounded to whole pixels, so this returns the most
    any rounding could give: the long edge L is the largest whose rounded-down short side
    fits, and the count is that of L with the short side rounded up (at most max_tokens).
    """

    def count(w: int, h: int) -> int:
        return -(-w // CLAUDE_PATCH) * -(-h // CLAUDE_PATCH)

    if max(width, height) <= max_edge and count(width, height) <= max_tokens:
        return count(width, height)
    long_side, short_side = max(width, height), min(width, height)

    def floor_fits(edge: int) -> bool:
        return count(edge, max(1, short_side * edge // long_side)) <= max_tokens

    low, high = 1, min(long_side, max_edge)  # floor_fits(1) holds for any max_tokens >= 1
    while low < high:
        mid = (low + high + 1) // 2
        if floor_fits(mid):
            low = mid
        else:
            high = mid - 1
    return min(max_tokens, count(low, -(-short_side * low // long_side)))


# --------------------------------------------------------------------------- any rule


def size_free_tokens(detail: str | None, rule: Mapping[str, Any]) -> int | None:
    """The tokens of an image whose size does not matter (a low-detail tile image), or
    None when the size is needed."""
    rule = rule or _DEFAULT_TILE_RULE
    if rule.get("kind") == "tile" and detail == "low":
        return int(rule["base"])
    return None


def tokens_for_size(width: int, height: int, detail: str | None, rule: Mapping[str, Any]) -> int:
    """Tokens of an image of known size under ``rule`` (a catalog ``image_rule``)."""
    if width <= 0 or height <= 0:
        return worst_case_tokens(detail, rule)
    rule = rule or _DEFAULT_TILE_RULE
    kind = rule.get("kind")
    if kind == "tile":
        if detail == "low":
            return int(rule["base"])
        return tile_tokens(width, height, int(rule["base"]), int(rule["tile"]))
    if kind == "patch":
        return patch_tokens(
            width,
            height,
            str(rule["multiplier"]),
            _patch_budget(detail, rule),
            max_dimension=rule.get("max_dimension"),
            max_pixels=rule.get("max_pixels"),
        )
    if kind == "claude":
        return claude_tokens(width, height, int(rule["max_edge"]), int(rule["max_tokens"]))
    if kind == "max":
        return max(tokens_for_size(width, height, detail, r) for r in rule["rules"])
    raise ValueError(f"unknown image rule kind {kind!r}")


def worst_case_tokens(detail: str | None, rule: Mapping[str, Any]) -> int:
    """The most an image of any size can cost at this detail level under ``rule``.

    Tile rule: ``base`` for ``"low"``, else ``base + 8 * tile`` (after the two scalings an
    image is at most 768 x 2048, which is 2 x 4 tiles). Patch rule: the budget times the
    multiplier (without a budget, the most patches an image within the API's limits can
    have). Claude: ``max_tokens``.
    """
    rule = rule or _DEFAULT_TILE_RULE
    kind = rule.get("kind")
    if kind == "tile":
        if detail == "low":
            return int(rule["base"])
        return int(rule["base"]) + 8 * int(rule["tile"])
    if kind == "patch":
        budget = _patch_budget(detail, rule)
        if budget is None:
            max_pixels = rule.get("max_pixels")
            if max_pixels is None:
                raise ValueError("a patch rule without a budget needs max_pixels")
            budget = _most_patches(rule.get("max_dimension"), int(max_pixels))
        return _times(budget, str(rule["multiplier"]))
    if kind == "claude":
        return int(rule["max_tokens"])
    if kind == "max":
        return max(worst_case_tokens(detail, r) for r in rule["rules"])
    raise ValueError(f"unknown image rule kind {kind!r}")
