"""The store interface: atomic reserve, settle and release against per-scope limits.

A store keeps, per scope (a tenant, an organisation, the whole application):

* spend per calendar day and calendar month (in the store's time zone), split into
  *settled* spend and *held* reservations; money is integer nano-dollars, never floats;
* token buckets (tokens per minute, tokens per day) that refill continuously;
* usage aggregates (requests, input/output tokens, cost) per day and per model.

``reserve`` checks every limit of every scope of a call and takes all of them or none
(atomically: no two concurrent reservations can both see the same headroom).
``settle`` swaps a reservation for the actual cost; ``release`` returns it whole.
Reservations expire by themselves after their TTL, so a crashed worker cannot hold
budget forever, and settling is idempotent per reservation id (a replayed settlement
is applied once).

Every store has a sync and an async face with the same semantics; the logic lives in
one place per store (Python for memory, Lua for Redis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, tzinfo
from decimal import ROUND_CEILING, Decimal
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from guardrail._frozen import quick_init
from guardrail.errors import BudgetExceeded, ConfigurationError, LoopDetected

__all__ = [
    "MAX_SETTLED",
    "NANOS_PER_USD",
    "LoopRule",
    "Reservation",
    "ReservationRequest",
    "ScopeLimits",
    "Settlement",
    "Store",
    "UsageRow",
    "UsageSummary",
    "Windows",
    "bounded",
    "nanos_to_usd",
    "usd_to_nanos",
]

NANOS_PER_USD = 1_000_000_000
SECONDS_PER_MINUTE = 60.0
SECONDS_PER_DAY = 86_400.0


def usd_to_nanos(amount: Decimal) -> int:
    """USD to integer nano-dollars, rounded up: a reservation never under-holds."""
    return int((amount * NANOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_USD


@dataclass(frozen=True)
class ScopeLimits:
    """The limits of one scope; None means "no limit" (usage is still recorded)."""

    scope: str
    daily_nanos: int | None = None
    monthly_nanos: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_in_flight: int | None = None

    @property
    def money_limited(self) -> bool:
        """A daily or monthly spend cap applies: a cost that cannot be bounded is refused."""
        return self.daily_nanos is not None or self.monthly_nanos is not None


@dataclass(frozen=True)
class LoopRule:
    """The loop check of a reservation: refuse it when the request ``key`` (a hash of the
    whole request) has failed ``limit`` times for the first scope within ``window``
    seconds with no success since. Settling a failed call counts a failure; settling a
    successful one clears the count (see :func:`loop_error`)."""

    key: str
    limit: int
    window: float


@quick_init
@dataclass(frozen=True)
class ReservationRequest:
    id: str
    scopes: tuple[ScopeLimits, ...]
    cost_nanos: int
    tokens: int
    ttl_seconds: float
    model: str = ""
    loop: LoopRule | None = None

    def __post_init__(self) -> None:
        if len(self.scopes) < 2:
            return
        names = [s.scope for s in self.scopes]
        if len(set(names)) != len(names):
            # A scope charged twice would be held twice and released once by some stores.
            raise ConfigurationError(f"a reservation names a scope more than once: {names}")


@quick_init
@dataclass(frozen=True)
class Reservation:
    """A granted reservation: what was held, in which windows, until when."""

    id: str
    scopes: tuple[str, ...]
    cost_nanos: int
    tokens: int
    day: str
    month: str
    created_at: float
    expires_at: float
    model: str = ""
    # What the store needs to recognise its own reservation later (Redis: the generation
    # of the first scope's state); opaque, and not part of a reservation's identity.
    token: str = field(default="", compare=False)
    loop_key: str = ""
    """The request's loop key ("" without a loop check): its failures count on it."""
    loop_window: float = 0.0


@quick_init
@dataclass(frozen=True)
class Settlement:
    """What a call actually cost."""

    cost_nanos: int
    input_tokens: int
    output_tokens: int
    model: str
    failed: bool = False
    """The call failed after it was sent (timed out, cut off): a failure for the loop
    check; a settlement that did not fail clears the request's failures."""

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


MAX_SETTLED = 2**53 - 1
"""The most nano-dollars (about $9.0M), and tokens, one settlement records: the Redis
store's range (its Lua numbers are doubles, exact below 2**53). A call billed more (a
hostile or broken usage) is charged this much, far past any cap, which locks its tenant
out, rather than being refused by the store and lost. Every store clamps here (:func:`bounded`),
so they agree."""


def bounded(s: Settlement) -> Settlement:
    """``s`` with its cost, and its tokens together, clamped at :data:`MAX_SETTLED`."""
    if s.cost_nanos <= MAX_SETTLED and s.input_tokens + s.output_tokens <= MAX_SETTLED:
        return s
    input_tokens = min(s.input_tokens, MAX_SETTLED)
    return replace(
        s,
        cost_nanos=min(s.cost_nanos, MAX_SETTLED),
        input_tokens=input_tokens,
        output_tokens=min(s.output_tokens, MAX_SETTLED - input_tokens),
    )


@dataclass(frozen=True)
class UsageSummary:
    """One scope's usage in one calendar day (and its month)."""

    scope: str
    day: str
    spent_usd: Decimal
    reserved_usd: Decimal
    month_spent_usd: Decimal
    input_tokens: int
    output_tokens: int
    requests: int


@dataclass(frozen=True, order=True)
class UsageRow:
    """One line of a usage report: one scope's usage of one model in one calendar day."""

    scope: str
    day: date
    model: str
    cost_usd: Decimal
    input_tokens: int
    output_tokens: int
    requests: int


class Windows:
    """Calendar windows (day, month) in one time zone, and when they reset."""

    def __init__(self, timezone: str | tzinfo = "UTC") -> None:
        try:
            self.tz = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        except (KeyError, ValueError) as exc:
            raise ConfigurationError(f"unknown time zone {timezone!r}") from exc
        self._day: tuple[float, float, tuple[str, str]] = (0.0, 0.0, ("", ""))

    def local(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, tz=self.tz)

    def keys(self, now: float) -> tuple[str, str]:
        """The day's and the month's keys at ``now``; kept for the day it falls in (every
        reservation asks, and two ``strftime`` cost more than the memory store's checks)."""
        start, end, keys = self._day
        if start <= now < end:
            return keys
        local = self.local(now)
        keys = local.strftime("%Y-%m-%d"), local.strftime("%Y-%m")
        midnight = datetime(local.year, local.month, local.day, tzinfo=self.tz).timestamp()
        self._day = (midnight, self.next_day(now).timestamp(), keys)  # one tuple: thread-safe
        return keys

    def day_key(self, day: date) -> str:
        return day.strftime("%Y-%m-%d")

    def next_day(self, now: float) -> datetime:
        tomorrow = self.local(now).date() + timedelta(days=1)
        return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=self.tz)

    def next_month(self, now: float) -> datetime:
        local = self.local(now)
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        return datetime(year, month, 1, tzinfo=self.tz)

    def seconds_until(self, now: float, when: datetime) -> float:
        return max(0.0, when.timestamp() - now)


def report_range(windows: Windows, now: float, start: date | None, end: date | None) -> list[date]:
    """The days of a report, ``start`` to ``end`` inclusive; ``end`` defaults to today and
    ``start`` to ``end``."""
    last = end or windows.local(now).date()
    first = start or last
    if last < first:
        raise ConfigurationError(
            f"usage report from {first} to {last}: the end is before the start"
        )
    if (last - first).days > 366:
        raise ConfigurationError("a usage report covers at most 367 days")
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def bucket_level(
    level: float, updated_at: float, now: float, capacity: int, period: float
) -> float:
    """A token bucket's level after refilling at ``capacity`` per ``period`` seconds.

    The Redis scripts compute the same expression in the same order, so both stores
    make bit-identical decisions.
    """
    elapsed = max(0.0, now - updated_at)
    return min(float(capacity), level + elapsed * capacity / period)


def loop_error(
    scope: str, rule: LoopRule, failures: int, first_at: float, now: float
) -> LoopDetected:
    return LoopDetected(
        tenant=scope,
        repeats=failures,
        window_seconds=rule.window,
        limit=rule.limit,
        retry_after=max(0.0, first_at + rule.window - now),
    )


def in_flight_error(*, scope: str, in_flight: int, cap: int) -> BudgetExceeded:
    """The BudgetExceeded for a scope that has ``cap`` calls in flight already."""
    return BudgetExceeded(
        tenant=scope,
        limit="max_in_flight",
        requested=1,
        remaining=max(0, cap - in_flight),
        cap=cap,
        detail=f"{in_flight} in flight; one returns when it is settled or released",
        unit="calls",
    )


def budget_error(
    *,
    scope: str,
    limit: str,
    windows: Windows,
    now: float,
    requested: int,
    used: int,
    cap: int,
    rate_period: float | None = None,
) -> BudgetExceeded:
    """The BudgetExceeded for one failed check; ``used`` is spent+held or bucket deficit."""
    if rate_period is None:
        resets = windows.next_day(now) if limit == "daily_spend_usd" else windows.next_month(now)
        return BudgetExceeded(
            tenant=scope,
            limit=limit,
            requested=nanos_to_usd(requested),
            remaining=nanos_to_usd(max(0, cap - used)),
            cap=nanos_to_usd(cap),
            resets_at=resets,
            retry_after=windows.seconds_until(now, resets),
        )
    available = max(0, cap - used)
    retry_after: float | None = None
    detail = ""
    if requested > cap:
        detail = "larger than the whole bucket: this call can never fit"
    else:
        retry_after = math.ceil((requested - available) * rate_period / cap * 1000) / 1000
    return BudgetExceeded(
        tenant=scope,
        limit=limit,
        requested=requested,
        remaining=available,
        cap=cap,
        retry_after=retry_after,
        detail=detail,
    )


@runtime_checkable
class Store(Protocol):
    """What the guarded clients need from a store; memory and Redis implement it."""

    windows: Windows

    def now(self) -> float: ...

    def reserve(self, request: ReservationRequest) -> Reservation:
        """Hold ``request.cost_nanos`` and ``request.tokens`` on every scope, or raise
        :class:`~guardrail.BudgetExceeded` naming the first limit that has no room."""
        ...

    def settle(self, reservation: Reservation, settlement: Settlement) -> str | None:
        """Swap the hold for the actual cost. May return where the settlement went
        (``"settled"``, ``"spooled"``, ``"pending"``: see ``UsageRecord.settlement``)."""
        ...

    def release(self, reservation: Reservation, *, failed: bool = False) -> str | None:
        """Return the hold whole; ``failed``: the call was sent and failed without usage
        (an HTTP error), a failure for the loop check."""
        ...

    def usage(self, scope: str, day: date | None = None) -> UsageSummary: ...

    async def areserve(self, request: ReservationRequest) -> Reservation: ...

    async def asettle(self, reservation: Reservation, settlement: Settlement) -> str | None: ...

    async def arelease(self, reservation: Reservation, *, failed: bool = False) -> str | None: ...

    async def ausage(self, scope: str, day: date | None = None) -> UsageSummary: ...

    def usage_report(
        self,
        scopes: Sequence[str] | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[UsageRow]:
        """Usage per scope, per model, per day from ``start`` to ``end`` inclusive (default:
        today), sorted; ``scopes=None`` reports every scope with usage in the range."""
        ...

    async def ausage_report(
        self,
        scopes: Sequence[str] | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[UsageRow]: ...

    def claim_once(self, scope: str, key: str, ttl_seconds: float) -> bool:
        """True for the first caller, in any process sharing the store, to claim ``key``
        of ``scope``; False while that claim lives (``ttl_seconds``). Alerts use it to fire
        once per window: ``key`` names its window (``"refusal:2026-11-23"``), so the TTL
        only bounds how long a claim is kept."""
        ...

    async def aclaim_once(self, scope: str, key: str, ttl_seconds: float) -> bool: ...
    def remember(self, scope: str, key: str, value: int, ttl_seconds: int) -> None:
        """Keep a number under ``key`` for ``scope`` for ``ttl_seconds`` (what a stored
        response left in its context, for the next call that continues it)."""
        ...

    def recall(self, scope: str, key: str) -> int | None:
        """The number :meth:`remember` kept, or None (never kept, or expired)."""
        ...

    async def aremember(self, scope: str, key: str, value: int, ttl_seconds: int) -> None: ...

    async def arecall(self, scope: str, key: str) -> int | None: ...

    async def aput_record(self, kind: str, name: str, value: str) -> None:
        """Keep a small text record (the gateway's keys and tenant policies), shared by
        every process on the store, until deleted."""
        ...

    async def aget_record(self, kind: str, name: str) -> str | None: ...

    async def adelete_record(self, kind: str, name: str) -> bool:
        """Whether there was a record to delete."""
        ...

    async def alist_records(self, kind: str) -> dict[str, str]: ...
