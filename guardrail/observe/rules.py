"""Alert rules: what a team wants to hear about before the bill, and the event each fires.

A rule reads a :class:`~guardrail.UsageRecord` (or a :class:`StoreProblem`) and returns
the :class:`AlertEvent`\\ s it fires. Rules run in the alert worker, never on the call
path; the worker delivers each event once per scope per window across every process that
shares the store (:meth:`guardrail.Store.claim_once`). The rules production teams set
first are :class:`ContextWindowRule`, :class:`SpendAnomalyRule` and :class:`RefusalRule`;
:func:`default_rules` gives every rule with its defaults.

A rule's ``every`` is its window: ``"day"`` or ``"month"`` (the store's calendar windows,
those of its budgets), or a number of seconds (fixed windows counted from the epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal, Protocol

from guardrail.observe.sinks import UsageRecord
from guardrail.stores.base import Windows, nanos_to_usd, usd_to_nanos
from guardrail.tenancy import GLOBAL_SCOPE

__all__ = [
    "AlertEvent",
    "ContextWindowRule",
    "LoopRule",
    "OverrunRule",
    "RefusalRule",
    "Rule",
    "RuleContext",
    "SpendAnomalyRule",
    "SpendThresholdRule",
    "StoreProblem",
    "StoreRule",
    "Window",
    "default_rules",
]

Window = float | Literal["day", "month"]
Figure = str | int | float | bool | None


@dataclass(frozen=True)
class AlertEvent:
    """One alert: which rule fired, about which scope, with its figures, and when.

    ``scope`` is who the alert is about (the tenant, the organisation whose cap refused,
    or ``"_global"``); ``tenant`` is the tenant whose call set it off. ``at`` is POSIX
    seconds on the guard's clock; ``window`` names the window the alert fires once in;
    ``text`` is one line for a human (a Slack message). ``key`` is the claim the event
    makes in the store (``rule:detail:window``), held for ``ttl_seconds``.
    """

    rule: str
    scope: str
    tenant: str | None
    at: float
    window: str
    text: str
    figures: Mapping[str, Figure] = field(default_factory=dict)
    model: str | None = None
    key: str = ""
    ttl_seconds: float = 86_400.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: what a webhook receives."""
        return {
            "rule": self.rule,
            "scope": self.scope,
            "tenant": self.tenant,
            "model": self.model,
            "time": datetime.fromtimestamp(self.at, tz=UTC).isoformat(),
            "window": self.window,
            "text": self.text,
            "figures": dict(self.figures),
        }


@dataclass(frozen=True)
class StoreProblem:
    """The store failed an operation (``store_unavailable``), or settlements wait in its
    spool (``spool_pending``)."""

    kind: Literal["store_unavailable", "spool_pending"]
    operation: str
    at: float
    error: str | None = None


class RuleContext(Protocol):
    """What a rule may ask of the alert worker: windows, the store's spend figures."""

    windows: Windows

    def event(
        self,
        rule: Rule,
        scope: str,
        at: float,
        text: str,
        figures: Mapping[str, Figure],
        *,
        detail: str = "",
        tenant: str | None = None,
        model: str | None = None,
        every: Window | None = None,
        day: str | None = None,
    ) -> AlertEvent: ...

    def spend(
        self, scope: str, at: float, *, fresh: bool = False, day: str | None = None
    ) -> tuple[Decimal, Decimal] | None:
        """(today's, this month's) settled spend of ``scope``: a cached read of the store
        plus this process's spend since, or a fresh read; None if the store failed.
        ``day``: the store's day a record was charged to, when it is not today's (a call
        reserved before midnight and settled after it): that day's and its month's."""
        ...

    def baseline(self, scope: str, at: float, days: int) -> Decimal | None:
        """The average daily spend of ``scope`` over the ``days`` before today (cached
        per scope per day); None if the store failed."""
        ...


class Rule:
    """The base of every rule: ``name``, its window ``every``, and what it checks."""

    name: ClassVar[str] = "rule"
    every: Window = 3600.0

    def check(self, record: UsageRecord, ctx: RuleContext) -> Iterable[AlertEvent]:
        return ()

    def check_problem(self, problem: StoreProblem, ctx: RuleContext) -> Iterable[AlertEvent]:
        return ()


def _usd(amount: Decimal) -> str:
    """$12.5, $0.0042, $0.000033: four decimals, six for amounts under a cent."""
    places = Decimal("0.0001") if abs(amount) >= Decimal("0.01") else Decimal("0.000001")
    return f"${amount.quantize(places).normalize():f}"


@dataclass(frozen=True)
class ContextWindowRule(Rule):
    """A call that used more than ``share`` of its model's context window (prompt and
    output, as the provider reported them)."""

    share: float = 0.9
    every: Window = 3600.0
    name: ClassVar[str] = "context_window"

    def check(self, record: UsageRecord, ctx: RuleContext) -> Iterable[AlertEvent]:
        window = record.context_window
        used = record.input_tokens + record.output_tokens
        if window <= 0 or record.outcome == "rejected" or used <= self.share * window:
            return ()
        text = (
            f"{record.tenant}: a {record.model} call used {used} of its {window}-token "
            f"context window ({used / window:.0%}, over {self.share:.0%})"
        )
        figures = {"used_tokens": used, "context_window": window, "share": used / window}
        return (
            ctx.event(
                self,
                record.tenant,
                record.timestamp,
                text,
                figures,
                tenant=record.tenant,
                model=record.model,
            ),
        )


@dataclass(frozen=True)
class RefusalRule(Rule):
    """Every refusal of a call before it was sent: a budget limit (and, by default, the
    context window), with the limit and its figures. Fires once per limit of the scope
    that refused (an organisation's cap alerts once, not once per user)."""

    kinds: tuple[str, ...] = ("budget", "context_window")
    every: Window = 3600.0
    name: ClassVar[str] = "refusal"

    def check(self, record: UsageRecord, ctx: RuleContext) -> Iterable[AlertEvent]:
        refusal = record.refusal
        if record.outcome != "rejected" or refusal is None or refusal.kind not in self.kinds:
            return ()
        scope = refusal.scope or record.tenant
        figures: dict[str, Figure] = {
            k: v for k, v in refusal.to_dict().items() if k != "scope" and v is not None
        }
        left = "" if refusal.remaining is None else f"{refusal.remaining} of "
        text = (
            f"{scope}: refused a {record.model} call on {refusal.limit} (it needs "
            f"{refusal.requested} {refusal.unit}; {left}{refusal.cap} {refusal.unit} left)"
        )
        return (
            ctx.event(
                self,
                scope,
                record.timestamp,
                text,
                figures,
                detail=refusal.limit,
                tenant=record.tenant,
                model=record.model,
            ),
        )


@dataclass(frozen=True)
class LoopRule(Rule):
    """The loop detector refused a call: the same request, too often."""

    every: Window = 3600.0
    name: ClassVar[str] = "loop"

    def check(self, record: UsageRecord, ctx: RuleContext) -> Iterable[AlertEvent]:
        refusal = record.refusal
        if refusal is None or refusal.kind != "loop":
            return ()
        text = (
            f"{record.tenant}: the same {record.model} request {refusal.requested} times "
            f"within {refusal.retry_after:g}s (limit {refusal.cap}): refused"
        )
        figures: dict[str, Figure] = {
            "repeats": int(refusal.requested),
            "limit": int(refusal.cap),
            "window_seconds": refusal.retry_after,
        }
        return (
            ctx.event(
                self,
                record.tenant,
                record.timestamp,
                text,
                figures,
                tenant=record.tenant,
                model=record.model,
            ),
        )


@dataclass(frozen=True)
class OverrunRule(Rule):
    """A call whose usage went past its reservation: it cost more than the worst case
    held for it, or its stream produced more output than was reserved."""

    every: Window = 3600.0
    name: ClassVar[str] = "overrun"

    def check(self, record: UsageRecord, ctx: RuleContext) -> Iterable[AlertEvent]:
        refusal = record.refusal
        stream = refusal is not None and refusal.limit == "reserved output tokens"
        costly = record.reserved_usd > 0 and record.cost_usd > record.reserved_usd
        over = record.overrun_tokens > 0 or record.overrun_usd > 0  # the engine's own flag
        if record.outcome == "rejected" or not (stream or costly or over):
            return ()
        text = (
            f"{record.tenant}: a {record.model} call cost {_usd(record.cost_usd)}, "
            f"{_usd(record.reserved_usd)} was reserved"
            + (f"; its stream ran past {refusal.cap} reserved output tokens" if refusal else "")
            + (f"; {record.overrun_tokens} tokens past the reservation" if over else "")
        )
        figures: dict[str, Figure] = {
            "cost_usd": str(record.cost_usd),
            "reserved_usd": str(record.reserved_usd),
            "output_tokens": record.output_tokens,
            "overrun_tokens": record.overrun_tokens,
            "overrun_usd": str(record.overrun_usd),
        }
        return (
            ctx.event(
                self,
                record.tenant,
                record.timestamp,
                text,
                figures,
                tenant=record.tenant,
                model=record.model,
            ),
        )


@dataclass(frozen=True)
class SpendThresholdRule(Rule):
    """Soft thresholds on every money cap: a scope's settled spend reached ``shares`` of
    its ``daily_spend_usd`` or ``monthly_spend_usd``. Each threshold of each cap fires once
    per that cap's window (the day, the month): the caps are checked apart, so a month
    already past 80% does not hide a day crossing 50% of its own cap. A jump past several
    thresholds of one cap fires the highest."""

    shares: tuple[float, ...] = (0.5, 0.8, 1.0)
    name: ClassVar[str] = "spend_threshold"

    def check(self, record: UsageRecord, ctx: RuleContext) -> Iterable[AlertEvent]:
        if record.cost_usd <= 0:
            return []
        events: list[AlertEvent] = []
        for limits in record.limits:
            caps = (
                ("daily_spend_usd", limits.daily_nanos),
                ("monthly_spend_usd", limits.monthly_nanos),
            )
            if all(cap is None for _, cap in caps):
                continue
            events.extend(self._check_scope(record, ctx, limits.scope, caps))
        return events

    def _crossed(self, spent: Decimal, cap: Decimal) -> float | None:
        reached = [s for s in self.shares if cap > 0 and spent >= cap * Decimal(repr(s))]
        return max(reached) if reached else None

    def _reached(
        self, caps: tuple[tuple[str, int | None], ...], spend: tuple[Decimal, Decimal]
    ) -> list[tuple[str, float, Decimal, Decimal]]:
        """(limit, the highest share crossed, spent, cap) of each cap past a threshold."""
        found = []
        for (limit, nanos), spent in zip(caps, spend, strict=True):
            if nanos is None:
                continue
            cap = nanos_to_usd(nanos)
            share = self._crossed(spent, cap)
            if share is not None:
                found.append((limit, share, spent, cap))
        return found

    def _check_scope(
        self,
        record: UsageRecord,
        ctx: RuleContext,
        scope: str,
        caps: tuple[tuple[str, int | None], ...],
    ) -> list[AlertEvent]:
        # The day the record was charged to (a call across midnight: the day it was
        # reserved in), and its month: the cap it counts against.
        day = record.day
        spend = ctx.spend(scope, record.timestamp, day=day)
        if spend is None or not self._reached(caps, spend):
            return []
        spend = ctx.spend(scope, record.timestamp, fresh=True, day=day)  # an estimate: confirm
        if spend is None:
            return []
        events = []
        for limit, share, spent, cap in self._reached(caps, spend):
            text = (
                f"{scope}: spent {_usd(spent)} of its {limit} of {_usd(cap)} "
                f"({spent / cap:.0%}, past {share:.0%})"
            )
            figures: dict[str, Figure] = {
                "limit": limit,
                "spent_usd": str(spent),
                "cap_usd": str(cap),
                "threshold": share,
            }
            events.append(
                ctx.event(
                    self,
                    scope,
                    record.timestamp,
                    text,
                    figures,
                    # The cap too: one raised the same day has thresholds of its own.
                    detail=f"{limit}:{round(share * 100)}:{usd_to_nanos(cap)}",
                    tenant=record.tenant,
                    every="day" if limit == "daily_spend_usd" else "month",
                    day=day,
                )
            )
        return events


@dataclass(frozen=True)
class SpendAnomalyRule(Rule):
    """A scope's settled spend today is above ``factor`` times its average daily spend of
    the ``days`` before (zero-spend days count), and at least ``min_usd``. A scope with no
    spend in those days has no baseline and never fires."""

    factor: float = 2.0
    days: int = 7
    min_usd: Decimal = Decimal("1")
    every: Window = "day"
    name: ClassVar[str] = "spend_anomaly"

    def check(self, record: UsageRecord, ctx: RuleContext) -> Iterable[AlertEvent]:
        if record.cost_usd <= 0:
            return []
        events = []
        for scope in record.scopes:
            fresh = False
            while True:
                spend = ctx.spend(scope, record.timestamp, fresh=fresh)
                base = ctx.baseline(scope, record.timestamp, self.days)
                if spend is None or not base:
                    break
                today = spend[0]
                if today < self.min_usd or today <= base * Decimal(repr(self.factor)):
                    break
                if not fresh:
                    fresh = True
                    continue
                text = (
                    f"{scope}: spent {_usd(today)} today, {today / base:.1f}x its "
                    f"{self.days}-day average of {_usd(base)} (alerts past {self.factor:g}x)"
                )
                figures: dict[str, Figure] = {
                    "spent_usd": str(today),
                    "average_usd": str(base.quantize(Decimal("0.000000001"))),
                    "factor": float(today / base),
                    "days": self.days,
                }
                events.append(
                    ctx.event(self, scope, record.timestamp, text, figures, tenant=record.tenant)
                )
                break
        return events


@dataclass(frozen=True)
class StoreRule(Rule):
    """The budget store failed (calls fail closed, or go unmetered with fail_open), or
    settlements wait in its spool to be replayed. Fires for the ``"_global"`` scope; while
    the store is down the claim cannot reach it, so each process fires once."""

    every: Window = 300.0
    name: ClassVar[str] = "store"

    def check_problem(self, problem: StoreProblem, ctx: RuleContext) -> Iterable[AlertEvent]:
        if problem.kind == "store_unavailable":
            text = f"the budget store failed on {problem.operation}: {problem.error}"
        else:
            text = "settlements are waiting in the store's spool (Redis was unreachable)"
        figures = {"operation": problem.operation, "error": problem.error}
        return (ctx.event(self, GLOBAL_SCOPE, problem.at, text, figures, detail=problem.kind),)


def default_rules() -> list[Rule]:
    """Every rule with its defaults."""
    return [
        ContextWindowRule(),
        SpendAnomalyRule(),
        RefusalRule(),
        SpendThresholdRule(),
        LoopRule(),
        OverrunRule(),
        StoreRule(),
    ]


def window_of(windows: Windows, every: Window, at: float) -> tuple[str, float]:
    """The name of the window ``at`` falls in, and how long a claim in it must live."""
    if every == "day":
        return windows.keys(at)[0], 2 * 86_400.0
    if every == "month":
        return windows.keys(at)[1], 32 * 86_400.0
    seconds = float(every)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a rule's window must be 'day', 'month' or seconds > 0, not {every!r}")
    start = datetime.fromtimestamp(at // seconds * seconds, tz=UTC)
    return f"{start:%Y-%m-%dT%H:%M:%SZ}/{seconds:g}s", seconds + 60.0
