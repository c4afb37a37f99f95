"""The memory store's bookkeeping stays bounded, and costs the same on the millionth call
as on the first: no per-call pass over everything it remembers.

Found by a benchmark: once 100,000 settlements had been made within two days, every
settlement rebuilt the 100,000-entry map of settled ids (13 ms a call instead of 0.03 ms).
A settlement of the store's own reservation is now recognised by its hold, as in Redis;
only the ids of reservations it did not make are remembered, oldest first, bounded.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from guardrail import ManualClock, MemoryStore
from guardrail.stores import memory
from guardrail.stores.base import ReservationRequest, ScopeLimits, Settlement
from tests._redis_helpers import START_TS

SCOPE = (ScopeLimits("t", daily_nanos=10**15),)
USD = 10**9


def request(n: int, ttl: float = 60) -> ReservationRequest:
    return ReservationRequest(f"r{n}", SCOPE, 10, 1, ttl, "m")


def paid(nanos: int = 3) -> Settlement:
    return Settlement(nanos, 1, 1, "m")


def test_its_own_settlements_leave_no_ids_behind_and_replays_still_count_once() -> None:
    store = MemoryStore(clock=ManualClock(START_TS))
    reservations = [store.reserve(request(n)) for n in range(2_000)]
    for r in reservations:
        store.settle(r, paid())
    for r in reservations:  # every one replayed: a spool after a crash
        store.settle(r, paid())
    assert len(store._s.settled) == 0
    assert store.usage("t").spent_usd == Decimal(3 * 2_000) / USD
    assert store.usage("t").requests == 2_000


def test_a_release_then_a_settlement_of_its_own_reservation_is_a_replay() -> None:
    store = MemoryStore(clock=ManualClock(START_TS))
    r = store.reserve(request(1))
    store.release(r)
    store.settle(r, paid())
    assert store.usage("t").spent_usd == 0 and len(store._s.settled) == 0


def test_foreign_reservations_are_remembered_in_bounded_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reservation the store did not make (another store's, as when a Redis outage's
    calls are charged here): its id is remembered to recognise a replay, at most
    ``_MAX_UNHELD`` of them, oldest forgotten first."""
    monkeypatch.setattr(memory, "_MAX_UNHELD", 100)
    maker = MemoryStore(clock=ManualClock(START_TS))
    store = MemoryStore(clock=ManualClock(START_TS))
    foreign = [maker.reserve(request(n)) for n in range(1_000)]
    for r in foreign:
        store.settle(r, paid())
    assert len(store._s.settled) == 100
    store.settle(foreign[-1], paid())  # a replay of a remembered one: not applied
    assert store.usage("t").requests == 1_000
    store.settle(dataclasses.replace(foreign[-1], token="other"), paid())  # same id
    assert store.usage("t").requests == 1_000


def test_markers_of_expired_holds_apply_one_late_settlement_then_are_forgotten() -> None:
    clock = ManualClock(START_TS)
    store = MemoryStore(clock=clock)
    r = store.reserve(request(1, ttl=60))
    clock.advance(120)
    assert store.usage("t").reserved_usd == 0  # expired: a marker waits for a late settlement
    assert list(store._s.expired) == ["r1"]
    store.settle(r, paid(7))
    store.settle(r, paid(7))  # replayed: once
    assert store.usage("t").spent_usd == Decimal(7) / USD
    assert len(store._s.expired) == 0
    store.reserve(request(2, ttl=60))
    clock.advance(120)
    store.usage("t")
    assert list(store._s.expired) == ["r2"]  # never settled: its marker waits
    clock.advance(memory._FORGET_AFTER)
    store.usage("t")
    assert len(store._s.expired) == 0  # forgotten after the retention


@pytest.mark.parametrize("kind", ["notes", "claims"])
def test_full_maps_are_pruned_rarely_not_on_every_insert(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """With every entry still live, a map at its bound is cut to half of it: pruning runs
    about once per quarter of the bound's inserts, not on each (a full rebuild per call)."""
    limit = 400
    monkeypatch.setattr(memory, "_MAX_NOTES" if kind == "notes" else "_MAX_CLAIMS", limit)
    prunings = []
    real = memory.pruned

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        prunings.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(memory, "pruned", counting)
    store = MemoryStore(clock=ManualClock(START_TS))
    for n in range(10_000):  # live for a day: none expires during the test
        if kind == "notes":
            store.remember("t", f"k{n}", n, 86_400)
        else:
            assert store.claim_once("t", f"k{n}", 86_400)
    entries = store._s.notes if kind == "notes" else store._s.claims
    assert len(entries) <= limit
    assert len(prunings) <= 10_000 // (limit // 4) + 1
    if kind == "notes":
        assert store.recall("t", "k9999") == 9_999  # the newest are the ones kept


def test_settled_reservations_do_not_pile_up_in_the_expiry_queue() -> None:
    # A heap cannot drop a settled reservation's entry; it is compacted to the holds.
    clock = ManualClock(START_TS)
    store = MemoryStore(clock=clock)
    waiting = store.reserve(request(-1, ttl=60))  # held across every compaction
    for n in range(20_000):
        store.settle(store.reserve(request(n, ttl=900)), paid())
    assert len(store._s.expiry) <= 2 * len(store._s.holds) + memory._SLACK + 1
    assert len(store._s.expiry) < 2_000  # not 20,000
    assert store.usage("t").reserved_usd == Decimal(10) / USD  # the one still held
    clock.advance(61)
    assert store.usage("t").reserved_usd == 0  # it still expires on time
    store.settle(waiting, paid())  # a late settlement of it counts once
    store.settle(waiting, paid())
    assert store.usage("t").requests == 20_001
