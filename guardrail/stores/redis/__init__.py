"""The Redis store: budgets shared by every process and host that talks to one Redis.

:mod:`.store` is the :class:`RedisStore` (running the scripts, the spool, both faces);
:mod:`.keys` names the keys, :mod:`.codec` packs the scripts' arguments and unpacks their
results, :mod:`.scripts` loads the Lua (``lua/``), :mod:`.connection` makes clients.
"""

from guardrail.stores.redis.scripts import SCRIPTS, script_source
from guardrail.stores.redis.store import RedisStore

__all__ = ["SCRIPTS", "RedisStore", "script_source"]
