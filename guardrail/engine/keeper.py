"""Keepers: the holds of calls in flight, renewed until the calls settle.

A hold expires by itself after its TTL (``Policy.reservation_ttl_seconds``) so that a
crashed process gives its room back; a call still waiting for its provider (a long
request, a silent stream) must not lose it, or other calls spend that room. The drivers
track a call's hold while its ``Send`` (or ``CountTokens``) is awaited and, for a stream,
until the stream ends; a keeper renews each tracked hold half a TTL before it would expire
(:func:`~guardrail.engine.holds.renew_at`), with the store's ``extend``.

Tracking costs a call a set insert and a delete: one daemon thread per process keeps the
sync calls' holds, sleeping until the earliest renewal is due (the store's clock says when),
and one timer handle per event loop keeps the async calls'. Neither wakes for a call
shorter than half its TTL. Each store is renewed on its own, so that one that hangs (a
Redis that stopped answering) delays only its own holds: a store whose writes never block
(in-process: ``async_writes_never_suspend``, the memory store's) is renewed inline, by the
thread or the timer; any other by a worker thread of its own
(:mod:`guardrail.engine.renewers`), or in a task of its own for each wake. A renewal that
fails is logged and the call goes on; nothing a keeper does raises into a call.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from guardrail.engine.holds import not_renewed, renew_at, renewal_failed
from guardrail.engine.renewers import Renewers
from guardrail.stores.base import Reservation, Store

__all__ = ["AsyncKeeper", "Kept", "SyncKeeper", "async_keeper", "async_keepers", "sync_keeper"]

_log = logging.getLogger("guardrail")

_MAX_WAIT = 3600.0  # the longest a keeper sleeps at once (a TTL may be longer)
_LAST_TRY = 1.0  # a renewal that failed is tried again while its hold has this long left
# (an eighth of its TTL when that is shorter: a TTL of a few seconds still gets its retries)
_IDLE = 60.0  # a store's renewing thread ends once it had nothing to do for this long


class Kept:
    """One tracked hold: the call's reservation as last renewed, and when (by its store's
    clock) it is renewed next."""

    __slots__ = ("busy", "due", "keeper", "renew", "reservation", "store", "suspends", "ttl")

    def __init__(
        self,
        keeper: SyncKeeper | AsyncKeeper,
        store: Store,
        reservation: Reservation,
        ttl: float,
        renew: Callable[[Reservation, float], Any],
        suspends: bool,
    ) -> None:
        self.keeper, self.store, self.reservation, self.ttl = keeper, store, reservation, ttl
        self.renew, self.suspends = renew, suspends
        self.due = renew_at(reservation, ttl)
        self.busy = False  # being renewed

    def drop(self) -> None:
        """The call settled (or ended): its hold is no longer kept."""
        self.keeper.drop(self)


def _now(store: Store) -> float:
    """The store's time; -inf when its clock fails (then nothing of it is ever due)."""
    try:
        return store.now()
    except Exception:
        return -math.inf


def _holds(reservation: Reservation | None, ttl: float) -> bool:
    """Whether ``reservation`` holds anything to keep: a fail-open call let through unheld
    has a reservation that expired as it was made."""
    return reservation is not None and ttl > 0 and reservation.expires_at > reservation.created_at


def _due(kept: Iterable[Kept]) -> tuple[list[Kept], float]:
    """The holds due for renewal now (each by its store's clock), marked busy, and the
    seconds until the next one of the others is due (inf: none)."""
    due: list[Kept] = []
    soonest = math.inf
    clocks: dict[int, float] = {}
    for k in list(kept):  # a copy: a finaliser may drop a hold meanwhile, on this thread
        if k.busy:
            continue
        now = clocks.get(id(k.store))
        if now is None:
            now = clocks[id(k.store)] = _now(k.store)
        left = k.due - now
        if left <= 0:
            k.busy = True
            due.append(k)
        elif left < soonest:
            soonest = left
    return due, soonest


def _in_process(store: Store) -> bool:
    """Whether ``store``'s writes never block (nor suspend): renewed inline, it cannot
    hold up another store's renewals."""
    return getattr(store, "async_writes_never_suspend", False) is True


def _by_store(kept: Iterable[Kept]) -> list[list[Kept]]:
    """``kept`` grouped by store, in order."""
    groups: dict[int, list[Kept]] = {}
    for k in kept:
        groups.setdefault(id(k.store), []).append(k)
    return list(groups.values())


_SKIPPED = ConnectionError("the store failed a renewal just before")
"""The error of a renewal not tried: its store failed one in the same pass."""


def _failed(kept: Kept, exc: Exception, down: set[int]) -> Exception:
    down.add(id(kept.store))  # a store that failed is not asked again in this pass
    renewal_failed(kept.reservation, exc)
    return exc


def _try(kept: Kept, down: set[int]) -> tuple[Any, Exception | None]:
    """Renew ``kept`` with the store's sync ``extend``: (what it returned, its error)."""
    if id(kept.store) in down:
        return None, _SKIPPED
    try:
        return kept.renew(kept.reservation, kept.ttl), None
    except Exception as exc:
        return None, _failed(kept, exc, down)


def _outcome(kept: Kept, renewed: Any, error: Exception | None, tracked: bool) -> bool:
    """Apply one renewal's outcome to ``kept``; whether it stays tracked."""
    kept.busy = False
    if not tracked:  # the call ended meanwhile: a hold settled under it is not news
        return False
    if error is not None:
        now = _now(kept.store)
        left = kept.reservation.expires_at - now
        if min(_LAST_TRY, kept.ttl / 8) < left < math.inf:  # again halfway to the expiry
            kept.due = now + left / 2
            return True
        return False
    if not isinstance(renewed, Reservation):
        not_renewed(kept.reservation)
        return False
    kept.reservation = renewed
    kept.due = renew_at(renewed, kept.ttl)
    return True


class _Holds:
    """What both keepers share: the set of holds they keep."""

    _kept: set[Kept]

    def drop(self, kept: Kept) -> None:
        # Without a lock: a stream's finaliser drops its hold, and may run on any thread at
        # any allocation, a keeper's own with its lock held included (a set's discard is
        # atomic; whoever reads the set copies it first).
        self._kept.discard(kept)

    def tracked(self, store: Store | None = None) -> int:
        """How many holds are kept (``store``'s only, when given)."""
        return sum(1 for k in list(self._kept) if store is None or k.store is store)


class SyncKeeper(_Holds):
    """Keeps the holds of the sync calls of this process (every store's): one daemon
    thread, started when a hold is tracked, sleeping until the earliest renewal is due;
    it ends once nothing was tracked for a whole wait. It renews the holds of in-process
    stores itself and hands any other store's to that store's worker thread, which ends
    once it had nothing to do for ``idle`` seconds."""

    def __init__(self, idle: float = _IDLE) -> None:
        self._idle = idle
        self._reset()

    def _reset(self) -> None:
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._renewers = Renewers(lock, self._renewed, self._idle)
        self._kept: set[Kept] = set()
        self._thread: threading.Thread | None = None
        self._wake_at = -math.inf  # monotonic; -inf: no thread
        self._horizon = math.inf  # the shortest half-TTL tracked since the last wait began

    def track(self, store: Store, reservation: Reservation | None, ttl: float) -> Kept | None:
        """Keep ``reservation`` (the hold of a call being sent) until :meth:`Kept.drop`;
        None when there is nothing to keep (or the store cannot renew holds)."""
        renew = getattr(store, "extend", None)
        if renew is None or not _holds(reservation, ttl):
            return None
        assert reservation is not None
        kept = Kept(self, store, reservation, ttl, renew, False)
        try:
            at = time.monotonic() + (kept.due - store.now())
        except Exception:  # a clock that fails: renew at once rather than never
            at = -math.inf
        with self._cond:
            self._kept.add(kept)
            if ttl / 2 < self._horizon:
                self._horizon = ttl / 2
            if self._thread is None:
                self._start()
            elif at < self._wake_at:
                self._cond.notify()
        return kept

    @property
    def thread(self) -> threading.Thread | None:
        """The keeper's thread while it runs (None once nothing is tracked)."""
        return self._thread

    @property
    def renewers(self) -> list[threading.Thread]:
        """The threads renewing a store's holds now (one per store that may block)."""
        return self._renewers.threads

    @property
    def wakes_in(self) -> float | None:
        """Seconds until the thread wakes next (None: no thread, or awake)."""
        with self._cond:
            at = self._wake_at
        return None if math.isinf(at) else max(0.0, at - time.monotonic())

    def renew_due(self) -> int:
        """Renew, on this thread, every hold whose renewal is due by its store's clock (what
        the keeper's thread and the stores' workers do when they wake); how many were due.
        For tests, which move a store's clock rather than wait."""
        with self._cond:
            due, _ = _due(self._kept)
        self._renewed(due)
        return len(due)

    def _renewed(self, due: list[Kept]) -> None:
        """Renew ``due`` here, then have the thread plan its wait again (a worker's batch)."""
        self._renew(due)
        with self._cond:
            if self._thread is not None:
                self._cond.notify()  # only the thread waits on it (the workers on their own)
            elif self._kept:  # it ended while these were renewed elsewhere
                self._start()

    def _start(self) -> None:
        """Start the thread (the lock held)."""
        thread = threading.Thread(target=self._run, name="guardrail-hold-keeper", daemon=True)
        self._thread, self._wake_at = thread, math.inf
        try:
            thread.start()
        except Exception as exc:  # no thread to be had: the holds are not renewed
            self._thread, self._wake_at = None, -math.inf
            _log.error("guardrail: cannot start the thread that renews holds: %r", exc)

    def _run(self) -> None:
        me = threading.current_thread()
        try:
            while True:
                with self._cond:
                    due, soonest = _due(self._kept)
                    if not due:
                        if soonest == math.inf:
                            if self._horizon == math.inf:  # nothing tracked for a whole wait
                                self._thread, self._wake_at = None, -math.inf
                                return
                            soonest = self._horizon  # no call can be due sooner than this
                        self._horizon = math.inf
                        wait = min(soonest, _MAX_WAIT)
                        self._wake_at = time.monotonic() + wait
                        self._cond.wait(wait)
                        continue
                    self._wake_at = math.inf  # awake: a track need not notify
                    # Here only what cannot block: a store that hangs holds up no other.
                    here = [k for k in due if _in_process(k.store)]
                    here += self._renewers.hand([k for k in due if not _in_process(k.store)])
                self._renew(here)
        except BaseException as exc:  # pragma: no cover - a bug: log it, let a track restart
            _log.error("guardrail: the thread that renews holds failed: %r", exc)
            with self._cond:
                if self._thread is me:
                    self._thread, self._wake_at = None, -math.inf

    def _renew(self, due: list[Kept]) -> None:
        down: set[int] = set()
        for kept in due:
            renewed, error = _try(kept, down)
            with self._cond:
                tracked = kept in self._kept
                if not _outcome(kept, renewed, error, tracked) and tracked:
                    self._kept.discard(kept)


class AsyncKeeper(_Holds):
    """Keeps the holds of the async calls of one event loop (every store's): one timer
    handle at the earliest renewal due. A store whose async writes never suspend (the
    memory store's) is renewed inline; any other in a task the keeper holds, one per store
    and wake (one store's awaits never hold up another's)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._kept: set[Kept] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._wake_at = math.inf  # loop time
        self._horizon = math.inf
        self._tasks: set[asyncio.Task[None]] = set()

    def track(self, store: Store, reservation: Reservation | None, ttl: float) -> Kept | None:
        """As :meth:`SyncKeeper.track`, for a call on this keeper's loop."""
        inline = getattr(store, "async_writes_never_suspend", False) is True
        renew = getattr(store, "extend" if inline else "aextend", None)
        if renew is None or not _holds(reservation, ttl):
            return None
        assert reservation is not None
        kept = Kept(self, store, reservation, ttl, renew, not inline)
        self._kept.add(kept)
        if ttl / 2 < self._horizon:
            self._horizon = ttl / 2
        try:
            at = self.loop.time() + (kept.due - store.now())
        except Exception:  # a clock that fails: renew at once rather than never
            at = self.loop.time()
        if at < self._wake_at:
            self._schedule(at)
        return kept

    @property
    def wakes_in(self) -> float | None:
        """Seconds until the keeper's timer fires (None: no timer)."""
        at = self._wake_at
        return None if math.isinf(at) else max(0.0, at - self.loop.time())

    async def renew_due(self) -> int:
        """Renew every hold due by its store's clock, and wait for the renewals; how many
        were due. For tests (see :meth:`SyncKeeper.renew_due`)."""
        due, _ = _due(self._kept)
        self._renew_inline(due)
        stores = _by_store(k for k in due if k.suspends)
        await asyncio.gather(*(self._renew_suspending(group) for group in stores))
        self._replan()
        return len(due)

    def _schedule(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._wake_at = at
        # An empty context: the renewal is no call's (their context variables stay theirs).
        self._handle = self.loop.call_at(at, self._fire, context=contextvars.Context())

    def _plan(self, soonest: float) -> None:
        """Schedule the next wake (``soonest``: seconds until the next renewal is due)."""
        if soonest == math.inf:
            if self._horizon == math.inf:  # nothing tracked for a whole wait: idle
                self._handle, self._wake_at = None, math.inf
                return
            soonest = self._horizon  # no call can be due sooner than this
        self._horizon = math.inf
        self._schedule(self.loop.time() + min(soonest, _MAX_WAIT))

    def _replan(self) -> None:
        """Wake sooner if a renewal is now due before the planned wake."""
        at = self.loop.time() + _due_in(self._kept)
        if at < self._wake_at:
            self._schedule(at)

    def _fire(self) -> None:
        self._handle, self._wake_at = None, math.inf
        try:
            due, _ = _due(self._kept)
            self._renew_inline(due)
            for group in _by_store(k for k in due if k.suspends):
                task = self.loop.create_task(self._renew_suspending(group, replan=True))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._plan(_due_in(self._kept))
        except Exception as exc:  # pragma: no cover - a bug: log it, never break the loop
            _log.error("guardrail: renewing holds failed: %r", exc)

    def _renew_inline(self, due: list[Kept]) -> None:
        down: set[int] = set()
        for kept in due:
            if not kept.suspends:
                self._apply(kept, *_try(kept, down))

    async def _renew_suspending(self, due: list[Kept], replan: bool = False) -> None:
        down: set[int] = set()
        try:
            for kept in due:
                if id(kept.store) in down:
                    self._apply(kept, None, _SKIPPED)
                    continue
                try:
                    renewed = await kept.renew(kept.reservation, kept.ttl)
                except Exception as exc:
                    self._apply(kept, None, _failed(kept, exc, down))
                else:
                    self._apply(kept, renewed, None)
        except asyncio.CancelledError:  # the loop is ending: not renewed, nor planned
            replan = False
            raise
        finally:
            for kept in due:
                kept.busy = False
            if replan:
                self._replan()

    def _apply(self, kept: Kept, renewed: Any, error: Exception | None) -> None:
        tracked = kept in self._kept
        if not _outcome(kept, renewed, error, tracked) and tracked:
            self._kept.discard(kept)


def _due_in(kept: Iterable[Kept]) -> float:
    """Seconds until the next renewal of ``kept`` not being renewed is due (inf: none)."""
    soonest = math.inf
    for k in list(kept):
        if not k.busy:
            soonest = min(soonest, k.due - _now(k.store))
    return max(soonest, 0.0)


_SYNC = SyncKeeper()
_LOOPS: dict[asyncio.AbstractEventLoop, AsyncKeeper] = {}


def sync_keeper() -> SyncKeeper:
    """The keeper of this process's sync calls."""
    return _SYNC


def async_keeper(loop: asyncio.AbstractEventLoop | None = None) -> AsyncKeeper:
    """The keeper of ``loop``'s async calls (the running loop's by default)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    keeper = _LOOPS.get(loop)
    if keeper is None:
        for closed in [lp for lp in _LOOPS if lp.is_closed()]:
            del _LOOPS[closed]
        keeper = _LOOPS[loop] = AsyncKeeper(loop)
    return keeper


def async_keepers() -> list[AsyncKeeper]:
    """The keepers of every event loop not closed."""
    return [k for loop, k in list(_LOOPS.items()) if not loop.is_closed()]


def _forked() -> None:
    """In a forked child: the parent's calls are not its own, nor its thread or loops."""
    _SYNC._reset()
    _LOOPS.clear()


os.register_at_fork(after_in_child=_forked)
