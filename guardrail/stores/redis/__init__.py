"""The Redis store (see :mod:`.store`): Lua scripts (``lua/``), one live hash per scope."""

from guardrail.stores.redis.store import SCRIPTS, RedisStore, script_source

__all__ = ["SCRIPTS", "RedisStore", "script_source"]
