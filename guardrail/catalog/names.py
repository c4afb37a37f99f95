"""Model names as the providers and the platforms that resell them spell them.

One model has many names: ``gpt-4o-2024-08-06`` (a dated snapshot), ``azure/gpt-4o`` or
``openai/gpt-4o`` (a router's prefix), ``gpt-35-turbo`` (Azure's spelling),
``ft:gpt-4o-mini:org::id`` (a fine-tune), ``us.anthropic.claude-sonnet-4-5-20250929-v1:0``
(Amazon Bedrock, with its cross-region prefix and version suffix),
``claude-sonnet-4-5@20250929`` (Google Vertex AI). :func:`parse_name` reduces each to the
name the catalog's families are matched against, and says what it took off.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ParsedName", "normalise_name", "parse_name"]

# [region.]anthropic.<model>[-vN[:M]]: Bedrock's model and inference-profile ids.
_BEDROCK = re.compile(
    r"^(?:[a-z][a-z0-9-]*\.)?anthropic\.(?P<model>claude-[^:/]+?)(?:-v\d+(?::\d+)?)?$"
)
_VERSION = re.compile(r"@.*$")


@dataclass(frozen=True)
class ParsedName:
    """What a model name says."""

    name: str
    """The normalised name families are matched against (lower case, no prefix/suffix)."""
    fine_tune: bool = False
    """An OpenAI fine-tune (``ft:<base>:<org>:<suffix>:<id>``); ``name`` is its base."""
    platform: str | None = None
    """``"bedrock"`` for Amazon Bedrock ids, ``"vertex"`` for ``@version`` ids, else None."""


def parse_name(model: str, aliases: Mapping[str, str] | None = None) -> ParsedName:
    """Strip what does not change the model: platform prefixes and suffixes, the fine-tune
    wrapper, a ``@version``; then apply ``aliases`` (name prefix -> catalog prefix)."""
    name = model.strip().lower()
    fine_tune = False
    platform: str | None = None
    if name.startswith("ft:"):
        parts = name.split(":")
        if len(parts) > 1 and parts[1]:
            name, fine_tune = parts[1], True
    if "/" in name:
        name = name.rsplit("/", 1)[1]
    if "@" in name:
        name, platform = _VERSION.sub("", name), "vertex"
    bedrock = _BEDROCK.match(name)
    if bedrock is not None:
        name, platform = bedrock.group("model"), "bedrock"
    for prefix, replacement in (aliases or {}).items():
        if not prefix.startswith("_") and name.startswith(prefix):
            name = replacement + name[len(prefix) :]
            break
    return ParsedName(name, fine_tune, platform)


def normalise_name(model: str, aliases: Mapping[str, str] | None = None) -> str:
    """The normalised name of ``model`` (see :func:`parse_name`)."""
    return parse_name(model, aliases).name
