"""A store from a URL: ``memory://`` (this process only) or a Redis URL (``redis://``,
``rediss://``, ``unix://``). What the gateway's config and the command line name."""

from __future__ import annotations

from guardrail.errors import ConfigurationError
from guardrail.stores.base import Store
from guardrail.stores.memory import MemoryStore

__all__ = ["open_store"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(url: str, *, prefix: str = "guardrail", timezone: str = "UTC") -> Store:
    """The store ``url`` names (Redis needs the ``redis`` extra)."""
    if url.startswith("memory://"):
        return MemoryStore(timezone=timezone)
    if url.startswith(REDIS_SCHEMES):
        from guardrail.stores.redis import RedisStore

        return RedisStore.from_url(url, prefix=prefix, timezone=timezone)
    raise ConfigurationError(f"a store URL is memory:// or redis://..., got {url!r}")
