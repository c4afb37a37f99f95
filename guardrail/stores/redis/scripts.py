"""The Lua scripts (package data in ``lua/``), one per store operation."""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = ["SCRIPTS", "script_source"]

SCRIPTS = ("reserve", "settle", "release", "extend", "usage")
_INCLUDE = re.compile(r"^--! include (\S+)[ \t]*$", re.MULTILINE)


@functools.cache
def script_source(name: str) -> str:
    """The Lua text of one script, with its ``--! include`` lines expanded."""
    folder = resources.files("guardrail.stores.redis") / "lua"
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: folder.joinpath(m.group(1)).read_text(encoding="utf-8"), text)
