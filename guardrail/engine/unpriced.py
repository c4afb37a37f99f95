"""Calls guardrail cannot price: a model nothing prices, or a premium request option the
price data does not know (:attr:`RequestView.unpriced <guardrail.engine.adapter.RequestView>`).
Under a money limit they are refused; else they go through, counted, with an unknown
cost, and a warning is given once per model or option."""

from __future__ import annotations

import threading
import warnings

from guardrail.catalog.models import ModelInfo
from guardrail.errors import UnpricedOption
from guardrail.stores.base import ScopeLimits
from guardrail.tenancy import TenantBinding

__all__ = ["refuse_unpriced", "warn_unpriced"]

_unpriced_lock = threading.Lock()
_unpriced_warned: set[str] = set()


def refuse_unpriced(
    option: str, info: ModelInfo, binding: TenantBinding, scopes: tuple[ScopeLimits, ...]
) -> None:
    """A premium option the price data cannot price: refused under a money limit (it
    would be reserved below what it bills); else warned about once per option."""
    limited = tuple(
        s.scope for s in scopes if s.daily_nanos is not None or s.monthly_nanos is not None
    )
    if limited:
        raise UnpricedOption(option, model=info.name, tenant=binding.tenant, scopes=limited)
    with _unpriced_lock:
        if option in _unpriced_warned:
            return
        _unpriced_warned.add(option)
    warnings.warn(
        f"guardrail cannot price {option}: such calls are counted and recorded with an "
        "unknown cost, and are refused under a money limit",
        UserWarning,
        stacklevel=2,
    )


def warn_unpriced(info: ModelInfo) -> None:
    """One warning per model: its calls go through, counted, with an unknown cost. An
    unknown model already had the catalog's warning, which says it has no price."""
    with _unpriced_lock:
        if info.name in _unpriced_warned or not info.known:
            _unpriced_warned.add(info.name)
            return
        _unpriced_warned.add(info.name)
    warnings.warn(
        f"guardrail has no price for model {info.name!r}: its calls are counted and recorded "
        "with an unknown cost, and would be refused under a money limit. Pass its prices to "
        "guardrail.register_model() to price them.",
        UserWarning,
        stacklevel=2,
    )
