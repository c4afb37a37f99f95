"""In-process store: one lock, plain dicts, an injectable clock.

Right for one process. Several processes or hosts sharing limits need the Redis store:
each process's memory store only knows its own spend.
"""

from __future__ import annotations

import heapq
import os
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, tzinfo

from guardrail._clock import Clock, system_clock
from guardrail.stores.base import (
    SECONDS_PER_DAY,
    SECONDS_PER_MINUTE,
    Reservation,
    ReservationRequest,
    ScopeLimits,
    Settlement,
    UsageRow,
    UsageSummary,
    Windows,
    bounded,
    bucket_level,
    budget_error,
    in_flight_error,
    loop_error,
    nanos_to_usd,
    report_range,
)
from guardrail.stores.pruning import pruned

__all__ = ["MemoryStore"]


@dataclass
class _Aggregate:
    cost_nanos: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0


@dataclass
class _Hold:
    reservation: Reservation
    released: bool = False


@dataclass
class _State:
    spent: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    held: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    buckets: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    usage: dict[tuple[str, str], _Aggregate] = field(
        default_factory=lambda: defaultdict(_Aggregate)
    )
    by_model: dict[tuple[str, str, str], _Aggregate] = field(
        default_factory=lambda: defaultdict(_Aggregate)
    )
    holds: dict[str, _Hold] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    expiry: list[tuple[float, str]] = field(default_factory=list)
    # id -> forget at, oldest first: holds that expired unsettled (a late settlement is
    # applied once), and settlements of reservations this store never held (a replay of
    # one is recognised). Any other settlement is recognised by its hold, as in Redis.
    expired: OrderedDict[str, float] = field(default_factory=OrderedDict)
    settled: OrderedDict[str, float] = field(default_factory=OrderedDict)
    claims: dict[tuple[str, str], float] = field(default_factory=dict)
    notes: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    records: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    # (scope, loop key) -> (failures, first failure at, window): oldest updated first
    loops: dict[tuple[str, str], tuple[int, float, float]] = field(default_factory=dict)


_BUCKETS = (("tokens_per_minute", SECONDS_PER_MINUTE), ("tokens_per_day", SECONDS_PER_DAY))
_MAX_NOTES = 100_000
_MAX_LOOPS = 100_000  # failing requests remembered; past it, those gone quiet are forgotten
_MAX_CLAIMS = 200_000  # live alert claims (~50 MB); past 3/4 of it, the soonest to expire go
_FORGET_AFTER = 35 * SECONDS_PER_DAY  # as long as RedisStore keeps its markers by default
_MAX_UNHELD = 100_000  # settlements of reservations held elsewhere remembered, at most
_SLACK = 1_024  # expiry entries of settled reservations let wait, beyond twice the holds


class MemoryStore:
    """Thread-safe in-memory budgets. ``clock`` returns POSIX seconds (inject one in tests)."""

    def __init__(self, *, clock: Clock = system_clock, timezone: str | tzinfo = "UTC") -> None:
        self._clock = clock
        # Its async reserve and writes run the sync ones and never await, so the async
        # driver calls the sync ones (in the caller's task: nothing to shield from a
        # cancellation). A subclass that overrides them (and may suspend) is awaited, and
        # its writes shielded, again. Decided once: the driver asks on every call.
        cls = type(self)
        self.async_writes_never_suspend = (
            cls.asettle is MemoryStore.asettle
            and cls.arelease is MemoryStore.arelease
            and cls.areserve is MemoryStore.areserve
        )
        self.windows = Windows(timezone)
        self._lock = threading.Lock()
        self._s = _State()
        # Stamped on this store's reservations: a settlement of one that is no longer held
        # (settled, released) is a replay; the store needs no list of settled ids for it.
        self._token = os.urandom(8).hex()

    def now(self) -> float:
        return self._clock()

    # -- internals (called with the lock held)

    def _expire(self, now: float) -> None:
        s = self._s
        while s.expiry and s.expiry[0][0] <= now:
            expires_at, rid = heapq.heappop(s.expiry)
            hold = s.holds.get(rid)
            if hold is not None and hold.reservation.expires_at > expires_at:
                continue  # renewed (extend): its later entry waits in the queue
            s.holds.pop(rid, None)
            if hold is not None and not hold.released:
                self._unhold(hold.reservation)
                s.expired[rid] = expires_at + _FORGET_AFTER
        # Both lists are oldest first: forgetting costs one look at the head per call.
        for ids in (s.expired, s.settled):
            while ids and next(iter(ids.values())) <= now:
                ids.popitem(last=False)
        while len(s.settled) > _MAX_UNHELD:
            s.settled.popitem(last=False)

    def _compact_expiry(self) -> None:
        """Keep the expiry queue to the holds: a settled reservation leaves its entry
        behind (a heap cannot drop one cheaply), and at 600 calls a second, with the
        default 900-second TTL, half a million of them (about 90 MB) would wait there."""
        s = self._s
        s.expiry = [(h.reservation.expires_at, rid) for rid, h in s.holds.items()]
        heapq.heapify(s.expiry)

    def _unhold(self, r: Reservation) -> None:
        s = self._s
        for scope in r.scopes:
            s.held[(scope, r.day)] -= r.cost_nanos
            s.held[(scope, r.month)] -= r.cost_nanos
            s.in_flight[scope] -= 1

    def _bucket(self, scope: str, name: str, capacity: int, period: float, now: float) -> float:
        level, updated = self._s.buckets.get((scope, name), (float(capacity), now))
        return bucket_level(level, updated, now, capacity, period)

    def _refund_tokens(self, r: Reservation, tokens: int, now: float) -> None:
        """Give ``tokens`` back to (or, if negative, take them from) every bucket."""
        if not self._s.buckets:  # no token limit anywhere
            return
        for scope in r.scopes:
            for name, _period in _BUCKETS:
                key = (scope, name)
                if key in self._s.buckets:
                    level, updated = self._s.buckets[key]
                    self._s.buckets[key] = (level + tokens, updated)

    def _check_spend(
        self, sc: str, limit: str, cap: int, window: str, cost: int, now: float
    ) -> None:
        used = self._s.spent[(sc, window)] + self._s.held[(sc, window)]
        if used + cost > cap:
            raise budget_error(
                scope=sc,
                limit=limit,
                windows=self.windows,
                now=now,
                requested=cost,
                used=used,
                cap=cap,
            )

    def _check_buckets(
        self,
        lim: ScopeLimits,
        tokens: int,
        now: float,
        levels: list[tuple[tuple[str, str], float]],
    ) -> None:
        """Refuse if a token bucket of ``lim`` holds fewer than ``tokens``; else add the
        buckets' levels to ``levels`` (taken once every scope has passed)."""
        sc = lim.scope
        for (name, period), capacity in zip(
            _BUCKETS, (lim.tokens_per_minute, lim.tokens_per_day), strict=True
        ):
            if capacity is not None:
                level = self._bucket(sc, name, capacity, period, now)
                if tokens > level:
                    raise budget_error(
                        scope=sc,
                        limit=name,
                        windows=self.windows,
                        now=now,
                        requested=tokens,
                        used=capacity - int(level),
                        cap=capacity,
                        rate_period=period,
                    )
                levels.append(((sc, name), level))

    # -- the Store interface

    def reserve(self, request: ReservationRequest) -> Reservation:
        with self._lock:
            now = self._clock()
            self._expire(now)
            s = self._s
            day, month = self.windows.keys(now)
            cost, tokens = request.cost_nanos, request.tokens
            rule = request.loop
            if rule is not None and request.scopes:
                seen = s.loops.get((request.scopes[0].scope, rule.key))
                if seen is not None and seen[1] + rule.window > now and seen[0] >= rule.limit:
                    raise loop_error(request.scopes[0].scope, rule, seen[0], seen[1], now)
            levels: list[tuple[tuple[str, str], float]] = []
            for lim in request.scopes:
                sc = lim.scope
                if lim.daily_nanos is not None:
                    self._check_spend(sc, "daily_spend_usd", lim.daily_nanos, day, cost, now)
                if lim.monthly_nanos is not None:
                    self._check_spend(sc, "monthly_spend_usd", lim.monthly_nanos, month, cost, now)
                if lim.tokens_per_minute is not None or lim.tokens_per_day is not None:
                    self._check_buckets(lim, tokens, now, levels)
                if lim.max_in_flight is not None and s.in_flight[sc] + 1 > lim.max_in_flight:
                    raise in_flight_error(
                        scope=sc, in_flight=s.in_flight[sc], cap=lim.max_in_flight
                    )
            # Every check passed: take everything.
            for key, level in levels:
                s.buckets[key] = (level - tokens, now)
            scopes = tuple(lim.scope for lim in request.scopes)
            reservation = Reservation(
                id=request.id,
                scopes=scopes,
                cost_nanos=cost,
                tokens=tokens,
                day=day,
                month=month,
                created_at=now,
                expires_at=now + request.ttl_seconds,
                model=request.model,
                token=self._token,
                loop_key="" if rule is None else rule.key,
                loop_window=0.0 if rule is None else rule.window,
            )
            for sc in scopes:
                s.held[(sc, day)] += cost
                s.held[(sc, month)] += cost
                s.in_flight[sc] += 1
            s.holds[request.id] = _Hold(reservation)
            heapq.heappush(s.expiry, (reservation.expires_at, request.id))
            if len(s.expiry) > 2 * len(s.holds) + _SLACK:
                self._compact_expiry()
            return reservation

    def settle(self, reservation: Reservation, settlement: Settlement) -> str:
        with self._lock:
            self._settle(reservation, bounded(settlement))  # as Redis: at most 2**53-1
        return "settled"

    def _settle(self, reservation: Reservation, settlement: Settlement) -> None:
        now = self._clock()
        s, r = self._s, reservation
        ours = r.token == self._token
        if r.id in s.holds:
            self._drop_hold(r)
        elif s.expired.pop(r.id, None) is None and (ours or r.id in s.settled):
            # No hold, no marker of one that expired: a replay (held here, and settled or
            # released since; or a foreign reservation seen before).
            return
        if not ours:  # a reservation this store did not make: its id is remembered
            s.settled[r.id] = now + _FORGET_AFTER
            while len(s.settled) > _MAX_UNHELD:  # bounded (as _expire keeps it)
                s.settled.popitem(last=False)
        if r.loop_key:
            self._loop_outcome(r, settlement.failed, now)
        for sc in r.scopes:
            s.spent[(sc, r.day)] += settlement.cost_nanos
            s.spent[(sc, r.month)] += settlement.cost_nanos
            for agg in (s.usage[(sc, r.day)], s.by_model[(sc, r.day, settlement.model)]):
                agg.cost_nanos += settlement.cost_nanos
                agg.input_tokens += settlement.input_tokens
                agg.output_tokens += settlement.output_tokens
                agg.requests += 1
        self._refund_tokens(r, r.tokens - settlement.tokens, now)
        # No expiry pass: a settlement adds nothing that expires, and every reserve,
        # release and read of the usage runs one first.

    def extend(self, reservation: Reservation, ttl_seconds: float) -> Reservation | None:
        """Keep a live call's hold ``ttl_seconds`` more from now; None when it is not held
        (settled, released or expired already)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            hold = self._s.holds.get(reservation.id)
            if hold is None:
                return None
            hold.reservation = replace(hold.reservation, expires_at=now + ttl_seconds)
            heapq.heappush(self._s.expiry, (hold.reservation.expires_at, reservation.id))
            return hold.reservation

    def release(self, reservation: Reservation, *, failed: bool = False) -> str:
        with self._lock:
            self._release(reservation, failed)
        return "settled"

    def _release(self, reservation: Reservation, failed: bool) -> None:
        now = self._clock()
        self._expire(now)  # an expired reservation is gone: its tokens are not given back
        s, r = self._s, reservation
        if r.id not in s.holds:  # settled, released or expired already
            return
        # Released for good: a later settlement finds no hold, and is a replay.
        if r.token != self._token:  # a reservation this store did not make (see _settle)
            s.settled[r.id] = now + _FORGET_AFTER
        if failed:
            self._loop_outcome(r, True, now)
        self._drop_hold(r)
        self._refund_tokens(r, r.tokens, now)

    def _loop_outcome(self, r: Reservation, failed: bool, now: float) -> None:
        """A failure counts towards the request's loop check; a success clears it."""
        if not r.loop_key or not r.scopes:
            return
        loops, key = self._s.loops, (r.scopes[0], r.loop_key)
        seen = loops.pop(key, None)
        if not failed:
            return
        if seen is None or seen[1] + seen[2] <= now:
            loops[key] = (1, now, r.loop_window)
        else:
            loops[key] = (seen[0] + 1, seen[1], seen[2])
        if len(loops) > _MAX_LOOPS:  # bounded: forget the quiet ones, then the oldest
            self._s.loops = pruned(loops, now, lambda v: v[1] + v[2], _MAX_LOOPS)

    def _drop_hold(self, r: Reservation) -> None:
        hold = self._s.holds.pop(r.id, None)
        if hold is not None and not hold.released:
            hold.released = True
            self._unhold(r)

    def usage(self, scope: str, day: date | None = None) -> UsageSummary:
        with self._lock:
            now = self._clock()
            self._expire(now)
            if day is None:
                day_key, month_key = self.windows.keys(now)
            else:
                day_key, month_key = self.windows.day_key(day), day.strftime("%Y-%m")
            agg = self._s.usage.get((scope, day_key), _Aggregate())
            return UsageSummary(
                scope=scope,
                day=day_key,
                spent_usd=nanos_to_usd(self._s.spent.get((scope, day_key), 0)),
                reserved_usd=nanos_to_usd(self._s.held.get((scope, day_key), 0)),
                month_spent_usd=nanos_to_usd(self._s.spent.get((scope, month_key), 0)),
                input_tokens=agg.input_tokens,
                output_tokens=agg.output_tokens,
                requests=agg.requests,
            )

    def usage_by_model(self, scope: str, day: date | None = None) -> dict[str, UsageSummary]:
        """Per-model usage of one scope in one day."""
        with self._lock:
            now = self._clock()
            day_key = self.windows.keys(now)[0] if day is None else self.windows.day_key(day)
            return {
                model: UsageSummary(
                    scope=scope,
                    day=day_key,
                    spent_usd=nanos_to_usd(agg.cost_nanos),
                    reserved_usd=nanos_to_usd(0),
                    month_spent_usd=nanos_to_usd(0),
                    input_tokens=agg.input_tokens,
                    output_tokens=agg.output_tokens,
                    requests=agg.requests,
                )
                for (sc, d, model), agg in sorted(self._s.by_model.items())
                if sc == scope and d == day_key
            }

    def usage_report(
        self,
        scopes: Sequence[str] | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[UsageRow]:
        """Usage per scope, per model, per day from ``start`` to ``end`` inclusive."""
        with self._lock:
            days = {
                self.windows.day_key(d): d
                for d in report_range(self.windows, self._clock(), start, end)
            }
            wanted = None if scopes is None else set(scopes)
            return sorted(
                UsageRow(
                    scope=sc,
                    day=days[d],
                    model=model,
                    cost_usd=nanos_to_usd(agg.cost_nanos),
                    input_tokens=agg.input_tokens,
                    output_tokens=agg.output_tokens,
                    requests=agg.requests,
                )
                for (sc, d, model), agg in self._s.by_model.items()
                if d in days and (wanted is None or sc in wanted)
            )

    def claim_once(self, scope: str, key: str, ttl_seconds: float) -> bool:
        """True for the first claim of ``(scope, key)`` until ``ttl_seconds`` have passed
        (on this store's clock)."""
        with self._lock:
            now = self._clock()
            claims = self._s.claims
            if claims.get((scope, key), now) > now:
                return False
            if len(claims) >= _MAX_CLAIMS:
                self._s.claims = claims = pruned(claims, now, lambda v: v, _MAX_CLAIMS)
            claims[(scope, key)] = now + ttl_seconds
            return True

    def release_claim(self, scope: str, key: str) -> None:
        """Drop a claim whose alert was never delivered: a later event may fire it again."""
        with self._lock:
            self._s.claims.pop((scope, key), None)

    def remember(self, scope: str, key: str, value: int, ttl_seconds: int) -> None:
        now = self._clock()
        with self._lock:
            notes = self._s.notes
            if len(notes) >= _MAX_NOTES:
                self._s.notes = notes = pruned(notes, now, lambda v: v[1], _MAX_NOTES)
            notes[(scope, key)] = (int(value), now + ttl_seconds)

    def recall(self, scope: str, key: str) -> int | None:
        now = self._clock()
        with self._lock:
            found = self._s.notes.get((scope, key))
            if found is None or found[1] <= now:
                return None
            return found[0]

    # The memory store does no I/O: its async face runs the same code inline.

    async def aremember(self, scope: str, key: str, value: int, ttl_seconds: int) -> None:
        self.remember(scope, key, value, ttl_seconds)

    async def aput_record(self, kind: str, name: str, value: str) -> None:
        with self._lock:
            self._s.records[kind][name] = value

    async def aget_record(self, kind: str, name: str) -> str | None:
        with self._lock:
            return self._s.records[kind].get(name)

    async def adelete_record(self, kind: str, name: str) -> bool:
        with self._lock:
            return self._s.records[kind].pop(name, None) is not None

    async def alist_records(self, kind: str) -> dict[str, str]:
        with self._lock:
            return dict(self._s.records[kind])

    async def arecall(self, scope: str, key: str) -> int | None:
        return self.recall(scope, key)

    async def areserve(self, request: ReservationRequest) -> Reservation:
        return self.reserve(request)

    async def asettle(self, reservation: Reservation, settlement: Settlement) -> str:
        return self.settle(reservation, settlement)

    async def aextend(self, reservation: Reservation, ttl_seconds: float) -> Reservation | None:
        return self.extend(reservation, ttl_seconds)

    async def arelease(self, reservation: Reservation, *, failed: bool = False) -> str:
        return self.release(reservation, failed=failed)

    async def ausage(self, scope: str, day: date | None = None) -> UsageSummary:
        return self.usage(scope, day)

    async def ausage_report(
        self,
        scopes: Sequence[str] | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[UsageRow]:
        return self.usage_report(scopes, start, end)

    async def aclaim_once(self, scope: str, key: str, ttl_seconds: float) -> bool:
        return self.claim_once(scope, key, ttl_seconds)
