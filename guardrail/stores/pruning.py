"""Bounded maps of expiring entries (the memory store's claims, notes and loop counts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["pruned"]

K = TypeVar("K")
V = TypeVar("V")


def pruned(entries: dict[K, V], now: float, expiry: Callable[[V], float], limit: int) -> dict[K, V]:
    """``entries`` without the expired ones and, if more than three quarters of ``limit``
    are still live, only the ``limit // 2`` that expire last: every pruning frees at least
    a quarter of the room, so its cost is spread over the inserts that refill it (pruning
    only the expired would rebuild a full map on every insert once it held ``limit`` live
    entries)."""
    live = {k: v for k, v in entries.items() if expiry(v) > now}
    if len(live) > limit * 3 // 4:
        live = dict(sorted(live.items(), key=lambda kv: expiry(kv[1]))[-(limit // 2) :])
    return live
