"""Premiums: published multipliers on a model's token prices, which the price data does not
hold (it has the standard prices only).

* **US-only inference** on Anthropic's API: "US-only inference is available at 1.1x pricing"
  on every token price (input, output, cache writes and reads). A request asks for it with
  ``inference_geo="us"``, or gets it from its workspace's default geo; the response's
  ``usage.inference_geo`` says where inference ran. The API refuses the option (a 400,
  nothing billed) for the models that do not offer it (those released before Opus 4.6), so
  guardrail prices it at 1.1x whenever it is asked or reported, on any model: a call the
  API refuses is released, and one it serves is billed at 1.1x. A geo guardrail does not
  know (only ``"global"`` and ``"us"`` exist today) is charged at least the 1.1x when a
  response reports it, and logged; a request naming one is refused under a money limit.
* **Vertex AI regional endpoints**: an ``AnthropicVertex`` client whose ``region`` is not
  ``"global"`` (a region such as ``"us-east5"``, or the ``"us"`` / ``"eu"`` multi-regions)
  is billed 10% above the global endpoint (the price data's Vertex prices) from Claude
  Sonnet 4.5 on; older models keep one price (:func:`vertex_regional_applies`).

A premium is carried where a call's service tier is (``RequestView.service_tier``,
``Plan.service_tier``, ``TokenUsage.service_tier``), under a name no OpenAI tier has
(``"inference_geo=us"``, ``"vertex=regional"``): the planner reserves at it, the flow settles
at it when the response says nothing else, and :mod:`guardrail.catalog.pricing` prices the
tokens of such a usage at the standard prices times the factor. Fees (web searches,
containers) are not multiplied: the premiums are on token prices.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

from guardrail.catalog.models import ModelInfo
from guardrail.catalog.names import normalise_name

__all__ = [
    "GEO_PREFIX",
    "PREMIUM",
    "US_INFERENCE",
    "VERTEX_REGIONAL",
    "WORKSPACE_GEO",
    "assumed_geo",
    "describe_premium",
    "geo_premium",
    "is_premium",
    "known_premium",
    "premium_of",
    "vertex_regional_applies",
]

PREMIUM = Decimal("1.1")
"""The factor of both premiums: 1.1x the standard token prices."""
PREMIUM_RATIO = (11, 10)
""":data:`PREMIUM` as a ratio, for the integer-rate path."""

GEO_PREFIX = "inference_geo="
US_INFERENCE = GEO_PREFIX + "us"
"""Anthropic US-only inference (``inference_geo="us"``)."""
VERTEX_REGIONAL = "vertex=regional"
"""A Vertex AI regional or multi-region endpoint (``AnthropicVertex(region=...)`` other than
``"global"``)."""
WORKSPACE_GEO = GEO_PREFIX + "default"
"""A request that names no ``inference_geo``: its workspace's default geo applies, which
``Policy.assume_inference_geo`` says (only ever a request's, never a usage's)."""

_STANDARD_GEOS = frozenset(("global",))
_KNOWN_GEOS = frozenset(("us",))


def geo_premium(geo: object) -> str | None:
    """The premium of an ``inference_geo`` a request asks for or a usage reports: None for
    ``"global"`` (or none), ``"inference_geo=<geo>"`` for any other string."""
    if not isinstance(geo, str) or not geo or geo in _STANDARD_GEOS:
        return None
    return GEO_PREFIX + geo


def assumed_geo(geo: Literal["global", "us"] | None) -> str | None:
    """The premium a request naming no geo is reserved at, by ``Policy.assume_inference_geo``."""
    return geo_premium(geo)


def is_premium(tier: str) -> bool:
    """Whether a service-tier name is one of the premiums here."""
    return tier.startswith(GEO_PREFIX) or tier == VERTEX_REGIONAL


def known_premium(tier: str) -> bool:
    """Whether the premium is one whose factor is published (an unknown geo is charged at
    :data:`PREMIUM`, which may be below its bill)."""
    return tier == VERTEX_REGIONAL or tier[len(GEO_PREFIX) :] in _KNOWN_GEOS


# Vertex: "from Claude Sonnet 4.5 and all future models" regional endpoints cost 10% more;
# "older models (Claude Sonnet 4, Opus 4 and earlier) maintain their existing pricing".
_CLAUDE_VERSION = re.compile(
    r"^claude-(?:(?:opus|sonnet|haiku)-(?P<new>\d+(?:-\d(?!\d))?)"
    r"|(?P<old>\d+(?:-\d(?!\d))?)-(?:opus|sonnet|haiku))"
)


def vertex_regional_applies(info: ModelInfo) -> bool:
    """Whether Vertex bills the model 10% more on a regional endpoint: every Claude from
    version 4.5 on (Sonnet 4.5, Haiku 4.5, Opus 4.5, 4.6...), and any model whose name does
    not say an older version (an upper bound); not Claude 3.x, Sonnet 4, Opus 4 and 4.1."""
    name = normalise_name(info.price_ref or info.name)
    found = _CLAUDE_VERSION.match(name)
    if found is None:
        return True
    version = tuple(int(part) for part in (found["new"] or found["old"]).split("-"))
    return version >= (4, 5)


def premium_of(info: ModelInfo, tier: str | None) -> bool:
    """Whether a usage at ``tier`` on this model is priced at :data:`PREMIUM` times the
    standard token prices."""
    if tier is None:
        return False
    if tier.startswith(GEO_PREFIX):
        return tier != WORKSPACE_GEO
    return tier == VERTEX_REGIONAL and vertex_regional_applies(info)


def describe_premium(tier: str) -> str:
    """How a log or an error names the premium."""
    if tier == VERTEX_REGIONAL:
        return "a regional Vertex AI endpoint (1.1x from Claude Sonnet 4.5 on)"
    geo = tier[len(GEO_PREFIX) :]
    if geo in _KNOWN_GEOS:
        return f"inference_geo {geo!r} (1.1x)"
    return f"inference_geo {geo!r} (unknown: charged at least 1.1x)"
