"""Each store's holds are renewed on their own (guardrail.engine.keeper, .renewers): a store
that hangs delays only its own renewals. One thread renewed every store's due holds in
turn, and one task every suspending store's, so a Redis that stopped answering (a command
takes about 59 s to fail with redis-py's defaults) held up a memory store's renewal until
its hold expired (found by a review), or another Redis store's.

A hanging store here is a memory store that says its writes may block and whose renewal
waits for an Event; the keepers run for real (their thread, its workers, the loop's
timer), with holds already due when tracked (the stores' clock moved past half a TTL), so
nothing waits on a timer and each step waits on an Event."""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from guardrail import ManualClock, MemoryStore
from guardrail.engine.keeper import AsyncKeeper, Kept, SyncKeeper, sync_keeper
from guardrail.stores.base import Reservation, ReservationRequest, ScopeLimits
from tests._redis_helpers import cleanup, make_store

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TTL = 60.0
WAIT = 10  # seconds an Event is waited for before the test fails


class _Store(MemoryStore):
    """A memory store that records its renewals (reservation id, thread) and, unless
    ``in_process``, says its writes may block (a keeper renews it apart, as a Redis store);
    with ``blocks``, a renewal waits for ``release`` (a Redis that stopped answering)."""

    def __init__(self, clock: ManualClock, *, in_process: bool = False, blocks: bool = False):
        super().__init__(clock=clock)
        if not in_process:
            self.async_writes_never_suspend = False
        self.blocks = blocks
        self.entered = threading.Event()  # a renewal began
        self.renewed = threading.Event()  # a renewal returned
        self.release = threading.Event()
        self.calls: list[tuple[str, threading.Thread]] = []
        self.returned: list[Reservation | None] = []

    def extend(self, reservation: Reservation, ttl_seconds: float) -> Reservation | None:
        self.calls.append((reservation.id, threading.current_thread()))
        self.entered.set()
        if self.blocks:
            self.release.wait(60)
        renewed = super().extend(reservation, ttl_seconds)
        self.returned.append(renewed)
        self.renewed.set()
        return renewed


def _held(store: MemoryStore, rid: str) -> Reservation:
    return store.reserve(ReservationRequest(rid, (ScopeLimits("t"),), 1_000, 10, TTL))


def _track(keeper: SyncKeeper | AsyncKeeper, store: MemoryStore, hold: Reservation) -> Kept:
    kept = keeper.track(store, hold, TTL)
    assert kept is not None
    return kept


def test_a_hanging_store_never_holds_up_an_in_process_stores_renewal() -> None:
    # The review's case: a memory store's hold due while a Redis store's renewal hangs.
    clock = ManualClock(START)
    keeper = SyncKeeper(idle=0)  # a worker ends as soon as it has nothing to do
    hanging, memory = _Store(clock, blocks=True), _Store(clock, in_process=True)
    stuck_hold, memory_hold = _held(hanging, "stuck"), _held(memory, "memory")
    clock.advance(TTL / 2 + 1)  # both due
    stuck = _track(keeper, hanging, stuck_hold)
    try:
        assert hanging.entered.wait(WAIT)  # its renewal hangs
        kept = _track(keeper, memory, memory_hold)  # due at once: the thread wakes for it
        assert memory.renewed.wait(WAIT), "the memory store's renewal waited for the other"
        renewed = memory.returned[0]
        assert renewed is not None and renewed.expires_at == clock() + TTL
        assert stuck.busy and not hanging.renewed.is_set()
        (worker,) = keeper.renewers
        assert worker is not keeper.thread and worker.daemon
        assert hanging.calls == [("stuck", worker)] and memory.calls[0][1] is keeper.thread
    finally:
        hanging.release.set()
    worker.join(WAIT)  # it applied the outcome, then ended: nothing left to do
    assert not worker.is_alive() and keeper.renewers == []
    assert not stuck.busy and stuck.reservation.expires_at == clock() + TTL
    clock.advance(TTL / 2)  # past both holds' first expiry: the renewals keep them
    assert memory.usage("t").reserved_usd > 0 and hanging.usage("t").reserved_usd > 0
    assert keeper.tracked() == 2
    stuck.drop()
    kept.drop()


def test_a_hold_being_renewed_is_not_handed_over_again() -> None:
    # While a store's renewal hangs, later passes of the keeper's thread skip that hold;
    # the store's holds due meanwhile wait for its one worker.
    clock = ManualClock(START)
    keeper = SyncKeeper(idle=0)
    hanging, memory = _Store(clock, blocks=True), _Store(clock, in_process=True)
    holds = [_held(hanging, "first"), _held(hanging, "second"), _held(memory, "marker")]
    clock.advance(TTL / 2 + 1)
    first = _track(keeper, hanging, holds[0])
    try:
        assert hanging.entered.wait(WAIT)
        (worker,) = keeper.renewers
        clock.advance(TTL / 4)  # later still: "first" would be due again, were it free
        second = _track(keeper, hanging, holds[1])
        marker = _track(keeper, memory, holds[2])  # renewed by the same pass: it is over
        assert memory.renewed.wait(WAIT)
        assert hanging.calls == [("first", worker)] and keeper.renewers == [worker]
        assert first.busy and second.busy  # "second" queued behind "first"
    finally:
        hanging.release.set()
    worker.join(WAIT)
    assert hanging.calls == [("first", worker), ("second", worker)]  # each once
    assert not first.busy and not second.busy and keeper.tracked() == 3
    for kept in (first, second, marker):
        kept.drop()


def test_a_stores_worker_is_a_daemon_that_stays_while_busy_and_ends_when_idle() -> None:
    clock = ManualClock(START)
    store = _Store(clock)  # may block: renewed by a worker of its own, though it never does
    holds = [_held(store, f"r{i}") for i in range(3)]
    clock.advance(TTL / 2 + 1)
    lasting = SyncKeeper(idle=3600)
    kept = [_track(lasting, store, holds[0])]
    assert store.renewed.wait(WAIT)
    store.renewed.clear()
    kept.append(_track(lasting, store, holds[1]))
    assert store.renewed.wait(WAIT)
    (worker,) = lasting.renewers
    assert [thread for _, thread in store.calls] == [worker, worker]  # the same, kept
    assert worker.daemon and worker.name == "guardrail-hold-renewer"

    brief = SyncKeeper(idle=0.05)
    store.renewed.clear()
    kept.append(_track(brief, store, holds[2]))
    assert store.renewed.wait(WAIT)
    (ending,) = [thread for rid, thread in store.calls if rid == "r2"]
    ending.join(WAIT)  # nothing to do for 0.05 s: it ended
    assert not ending.is_alive() and brief.renewers == [] and worker.is_alive()
    for k in kept:
        k.drop()


@pytest.mark.parametrize("kind", ["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_redis_stores_holds_are_renewed_by_its_own_worker(kind: str, tmp_path: Path) -> None:
    clock = ManualClock(START)
    store = make_store(kind, clock, tmp_path)
    seen: list[threading.Thread] = []
    renewed = threading.Event()
    extend = store.extend

    def watched(reservation: Reservation, ttl_seconds: float) -> Reservation | None:
        seen.append(threading.current_thread())
        try:
            return extend(reservation, ttl_seconds)
        finally:
            renewed.set()

    store.extend = watched  # what the keeper calls
    keeper = SyncKeeper(idle=0)
    try:
        hold = store.reserve(ReservationRequest("r1", (ScopeLimits("t"),), 10**6, 10, TTL))
        clock.advance(TTL / 2 + 1)
        kept = _track(keeper, store, hold)
        assert renewed.wait(WAIT)
        seen[0].join(WAIT)  # the worker: it applied the outcome, then ended
        assert seen[0] is not keeper.thread and seen[0].name == "guardrail-hold-renewer"
        assert kept.reservation.expires_at == clock() + TTL and not kept.busy
        clock.advance(TTL / 2)  # past the hold's first expiry
        assert store.usage("t").reserved_usd > 0
        kept.drop()
    finally:
        cleanup(store)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_has_none_of_its_parents_workers() -> None:
    # The parent's worker for the store hangs; in the child it does not exist: a hold of
    # that same store must get a worker of the child's own, not wait for the parent's.
    clock = ManualClock(START)
    hanging = _Store(clock, blocks=True)
    parent_hold, child_hold = _held(hanging, "parent"), _held(hanging, "child")
    clock.advance(TTL / 2 + 1)
    kept = _track(sync_keeper(), hanging, parent_hold)
    try:
        assert hanging.entered.wait(WAIT) and sync_keeper().renewers
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                child = sync_keeper()
                if child.renewers == [] and child.tracked() == 0:
                    hanging.release.set()  # the child's renewals of it do not hang
                    _track(child, hanging, child_hold)
                    code = 0 if hanging.renewed.wait(WAIT) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert kept.busy  # the parent's renewal still hangs
    finally:
        hanging.release.set()
        kept.drop()


# -- async: one task per store ----------------------------------------------------------


class _AStore(MemoryStore):
    """A memory store renewed with ``aextend`` (its writes may suspend), which waits for
    ``release``: each renewal says when it began, and returns once released."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.async_writes_never_suspend = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.calls: list[str] = []

    async def aextend(self, reservation: Reservation, ttl_seconds: float) -> Any:
        self.calls.append(reservation.id)
        self.entered.set()
        await self.release.wait()
        return self.extend(reservation, ttl_seconds)


def test_a_hanging_async_store_never_holds_up_another_stores_renewal() -> None:
    async def main() -> None:
        clock = ManualClock(START)
        keeper = AsyncKeeper(asyncio.get_running_loop())
        hanging, other = _AStore(clock), _AStore(clock)
        stuck_hold, other_hold = _held(hanging, "stuck"), _held(other, "other")
        clock.advance(TTL / 2 + 1)
        stuck = _track(keeper, hanging, stuck_hold)  # both due: the timer's one wake
        kept = _track(keeper, other, other_hold)
        try:
            # Both renewals are under way at once (in turn, the second never begins).
            both = asyncio.gather(hanging.entered.wait(), other.entered.wait())
            await asyncio.wait_for(both, WAIT)
            other.release.set()
            tasks = set(keeper._tasks)
            assert len(tasks) == 2
            done, pending = await asyncio.wait(
                tasks, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED
            )
            assert len(done) == 1 and len(pending) == 1  # the other store's, done
            assert kept.reservation.expires_at == clock() + TTL and not kept.busy
            assert stuck.busy and stuck.reservation is stuck_hold
            clock.advance(TTL / 4)
            keeper._fire()  # another wake: the hold being renewed is not handed over again
            assert set(keeper._tasks) == pending and hanging.calls == ["stuck"]
        finally:
            hanging.release.set()
        await asyncio.wait_for(asyncio.gather(*pending), WAIT)
        assert not stuck.busy and stuck.reservation.expires_at == clock() + TTL
        assert hanging.calls == ["stuck"] and other.calls == ["other"]
        assert keeper.tracked() == 2
        stuck.drop()
        kept.drop()

    asyncio.run(main())


def test_the_async_renew_due_renews_each_store_at_once() -> None:
    async def main() -> None:
        clock = ManualClock(START)
        keeper = AsyncKeeper(asyncio.get_running_loop())
        stores = [_AStore(clock), _AStore(clock)]
        holds = [_held(store, f"r{i}") for i, store in enumerate(stores)]
        clock.advance(TTL / 2 + 1)
        kept = [_track(keeper, store, hold) for store, hold in zip(stores, holds, strict=True)]
        timer = keeper._handle
        assert timer is not None
        timer.cancel()  # renew_due alone renews them, not the timer
        renewing = asyncio.create_task(keeper.renew_due())
        await asyncio.wait_for(asyncio.gather(*(s.entered.wait() for s in stores)), WAIT)
        for store in stores:
            store.release.set()
        assert await asyncio.wait_for(renewing, WAIT) == 2
        assert all(k.reservation.expires_at == clock() + TTL and not k.busy for k in kept)
        for k in kept:
            k.drop()

    asyncio.run(main())
