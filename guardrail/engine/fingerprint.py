"""The fingerprint of a whole request: what the loop detector compares.

Every parameter that reaches the provider is part of it (model, every message, tools,
sampling parameters, ``user``...), so two conversations that end in the same message are
different requests. Transport options that do not change what the model is asked
(``extra_headers``, ``extra_query``, ``timeout``) are left out. The fingerprint is a
128-bit BLAKE2b digest of the request's canonical JSON (sorted keys), so a long prompt
costs one hash, and nothing of the prompt is kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["fingerprint"]

_LEFT_OUT = frozenset(("extra_headers", "extra_query", "timeout"))


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump()
    return repr(value)


def fingerprint(kwargs: Mapping[str, Any]) -> str:
    """32 hex digits identifying the request ``kwargs`` (see the module docstring)."""
    body = {
        k: v
        for k, v in kwargs.items()
        if k not in _LEFT_OUT and v is not None and type(v).__name__ not in ("NotGiven", "Omit")
    }
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, default=_default)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
