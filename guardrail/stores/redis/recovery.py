"""What the Redis store owes Redis while it cannot reach it, so that nothing is lost.

* **Settlements and releases that could be written nowhere** (Redis down and the spool
  unwritable: its directory cannot be made, the disk is full) are kept in memory and
  retried before every later call of the store, and moved to the spool as soon as it
  takes them. Never dropped: one left at exit is logged at CRITICAL with its cost.
* **Reserves whose outcome is unknown** (a timeout: the script may still run when a
  stalled Redis resumes, and nobody would release its hold) are released by id as soon
  as Redis answers again; a release is idempotent, so releasing one that never ran is
  harmless.
* **Local charges**: every settlement Redis did not take (spooled or kept) is also
  charged to an in-process :class:`~guardrail.MemoryStore`, and a call let through with
  ``on_store_error="fail_open"`` is reserved there (``reserve_offline``), so one process
  cannot spend past a cap during an outage. It is emptied once Redis answers again (by
  then what it held is in Redis, or in the spool that is replayed next).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict
from datetime import tzinfo
from typing import Any

from guardrail._clock import Clock
from guardrail.stores.base import Reservation, ReservationRequest, Settlement, nanos_to_usd
from guardrail.stores.memory import MemoryStore
from guardrail.stores.spool import Spool

__all__ = ["Recovery"]

_log = logging.getLogger("guardrail")
_RETRY_SECONDS = 1.0  # between attempts to write what is owed, while Redis keeps failing


class Recovery:
    def __init__(self, clock: Clock, timezone: str | tzinfo, spool: Spool) -> None:
        self._clock, self._timezone, self.spool = clock, timezone, spool
        self._lock = threading.Lock()
        self.pending: list[dict[str, Any]] = []
        self.unknown: dict[str, dict[str, Any]] = {}
        self.offline = MemoryStore(clock=clock, timezone=timezone)
        self.down = False
        self._retry_after = 0.0
        atexit.register(_at_exit, weakref.ref(self))

    # -- while Redis fails

    def failed(self) -> None:
        self.down = True

    def unknown_reserve(self, request: ReservationRequest, day: str, month: str) -> None:
        """A reserve that failed after it may have been sent: release it by id later."""
        now = self._clock()
        reservation = Reservation(
            id=request.id,
            scopes=tuple(s.scope for s in request.scopes),
            cost_nanos=request.cost_nanos,
            tokens=request.tokens,
            day=day,
            month=month,
            created_at=now,
            expires_at=now + request.ttl_seconds,
            model=request.model,
        )
        with self._lock:
            self.unknown[request.id] = {"op": "release", "r": asdict(reservation)}
        self.down = True

    def keep(self, record: dict[str, Any], exc: BaseException) -> str:
        """Spool ``record``; when the spool cannot take it either, keep it in memory.
        Returns where it went: ``"spooled"`` or ``"pending"``."""
        self.down = True
        try:
            self.spool.append(record)
        except OSError as spool_error:
            with self._lock:
                self.pending.append(record)
            _log.error(
                "guardrail: Redis failed on %s of reservation %s (%r) and the spool %s "
                "cannot take it (%r): kept in memory and retried before every call; "
                "%s, charged in this process meanwhile",
                record["op"],
                record["r"]["id"],
                exc,
                self.spool.path,
                spool_error,
                _amounts(record),
            )
            return "pending"
        _log.error(
            "guardrail: Redis failed on %s of reservation %s (%r); spooled to %s for replay; %s",
            record["op"],
            record["r"]["id"],
            exc,
            self.spool.path,
            _amounts(record),
        )
        return "spooled"

    def charge(self, reservation: Reservation, settlement: Settlement) -> None:
        """Charge a settlement Redis did not take to this process's local budgets."""
        self.offline.settle(reservation, settlement)

    def reserve_offline(self, request: ReservationRequest) -> Reservation:
        return self.offline.reserve(request)

    # -- once Redis may answer again

    def owed(self) -> bool:
        return bool(self.pending or self.unknown)

    def due(self) -> bool:
        """Something is owed and the last attempt was long enough ago."""
        return self.owed() and time.monotonic() >= self._retry_after

    def drain(
        self, apply: Callable[[dict[str, Any]], None], down: tuple[type[BaseException], ...]
    ) -> int:
        """Release the unknown reserves and apply the kept records, oldest first; on a
        failure keep the rest (moving them to the spool if it takes them now) and try
        again later. Returns how many were written to Redis."""
        with self._lock:
            owed = list(self.unknown.items()), list(self.pending)
        done = 0
        try:
            for rid, record in owed[0]:
                apply(record)
                with self._lock:
                    self.unknown.pop(rid, None)
                done += 1
            for record in owed[1]:
                apply(record)
                with self._lock:
                    self.pending.remove(record)
                done += 1
        except Exception as exc:
            self._retry_after = time.monotonic() + _RETRY_SECONDS
            self._to_spool()
            if not isinstance(exc, down):
                _log.error("guardrail: writing what Redis is owed failed (%r); will retry", exc)
        if done:
            _log.warning(
                "guardrail: wrote %d owed store writes (kept in memory, or reserves whose "
                "outcome was unknown) to Redis",
                done,
            )
        return done

    def _to_spool(self) -> None:
        with self._lock:
            records = list(self.pending)
        for record in records:
            try:
                self.spool.append(record)
            except OSError:
                return
            with self._lock:
                self.pending.remove(record)

    def answered(self) -> None:
        """Redis answered: the local charges are in Redis now (or in the spool, replayed
        next), so this process stops counting them."""
        if self.down and not self.pending:
            self.down = False
            self.offline = MemoryStore(clock=self._clock, timezone=self._timezone)


def _amounts(record: dict[str, Any]) -> str:
    settled = record.get("s")
    if settled is None:
        return f"a hold of {nanos_to_usd(record['r']['cost_nanos'])} USD to return"
    return (
        f"{nanos_to_usd(settled['cost_nanos'])} USD, {settled['input_tokens']} input and "
        f"{settled['output_tokens']} output tokens of tenant {record['r']['scopes'][0]!r}"
    )


def _at_exit(ref: weakref.ReferenceType[Recovery]) -> None:
    recovery = ref()
    if recovery is None or not recovery.pending:
        return
    recovery._to_spool()
    for record in recovery.pending:
        _log.critical(
            "guardrail: at exit, %s of reservation %s was written neither to Redis nor to "
            "the spool %s: %s",
            record["op"],
            record["r"]["id"],
            recovery.spool.path,
            _amounts(record),
        )
