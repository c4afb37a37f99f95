"""Replaying the spool: settlements and releases written while Redis was down are applied
in order once it answers (a mixin of :class:`~guardrail.stores.redis.RedisStore`)."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from guardrail._clock import Clock
from guardrail.stores.base import Settlement, bounded
from guardrail.stores.redis.codec import Codec, reservation_from
from guardrail.stores.spool import Spool

__all__ = ["SpoolReplay"]

_log = logging.getLogger("guardrail")
_REPLAY_BACKOFF = 1.0  # seconds between replay attempts while Redis keeps failing


class SpoolReplay:
    spool: Spool
    codec: Codec
    _clock: Clock
    _replay_lock: threading.Lock
    _replay_after: float
    _down: tuple[type[BaseException], ...]

    if TYPE_CHECKING:

        def _call(self, name: str, keys: list[str], args: list[str]) -> Any: ...

    # Spooled writes are replayed before a call (so it sees them) unless the last replay
    # failed: after a connection failure, right after the next call that succeeds; after
    # any other failure, at most once per _REPLAY_BACKOFF seconds.

    def _replay_due(self) -> bool:
        return self.spool.pending() and time.monotonic() >= self._replay_after

    def _answered(self) -> bool:
        """Redis just answered: whether a replay waits for that."""
        if self._replay_after == math.inf:
            self._replay_after = 0.0
            return True
        return False

    # -- the spool

    def _apply(self, record: dict[str, Any]) -> None:
        r = reservation_from(record["r"])
        now = self._clock()
        if record["op"] == "settle":
            keys, args = self.codec.settle_call(r, bounded(Settlement(**record["s"])), now)
            self._call("settle", keys, args)
        elif record["op"] == "release":
            keys, args = self.codec.release_call(r, now, bool(record.get("failed")))
            self._call("release", keys, args)
        else:  # pragma: no cover - only this module writes records
            raise ValueError(f"unknown spool record {record!r}")

    def replay_spool(self) -> int:
        """Apply the spooled settlements and releases (oldest first); returns how many.
        Raises the store's error, keeping the rest, if Redis fails again."""
        with self._replay_lock:
            return self.spool.replay(self._apply)

    async def areplay_spool(self) -> int:
        return await asyncio.to_thread(self.replay_spool)

    def _auto_replay(self) -> None:
        if not self._replay_lock.acquire(blocking=False):
            return  # another thread is replaying
        try:
            applied = self.spool.replay(self._apply)
        except Exception as exc:  # never fail the call that happened to trigger a replay
            down = isinstance(exc, self._down)
            self._replay_after = math.inf if down else time.monotonic() + _REPLAY_BACKOFF
            _log.error("guardrail: spool replay stopped (%r); will retry", exc)
        else:
            if applied:
                _log.warning("guardrail: replayed %d spooled store writes", applied)
        finally:
            self._replay_lock.release()
