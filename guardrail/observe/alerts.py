"""Alerts before the bill: rules over usage records, delivered off the call path.

>>> alerts = Alerts(destinations=[Webhook("https://hooks.slack.com/...", slack=True)])
>>> guard = Guard(policy, store=store, alerts=alerts)

The guard hands every :class:`~guardrail.UsageRecord` to ``alerts`` (a sink): that only
puts it on a bounded queue (a full queue drops it and counts the drop), so a call never
waits for an alert. One worker thread evaluates the rules (:mod:`guardrail.observe.rules`)
and claims each event in the store (``Store.claim_once``: ``SET NX`` with a TTL in the
scope's hash slot on Redis), so **each rule fires once per scope per window across every
process sharing the store** (a spend threshold: once per cap and threshold); each
destination then has its own worker, with retries and backoff
(:mod:`guardrail.observe.delivery`). :attr:`Alerts.stats` counts what happened.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from guardrail.errors import ConfigurationError
from guardrail.observe.delivery import Delivery, Destination, LogDestination, Worker
from guardrail.observe.rules import (
    AlertEvent,
    Figure,
    Rule,
    StoreProblem,
    Window,
    default_rules,
    window_of,
)
from guardrail.observe.sinks import UsageRecord
from guardrail.stores.base import Store, UsageSummary, Windows

if TYPE_CHECKING:
    from guardrail.observe.telemetry import Telemetry

__all__ = ["AlertStats", "Alerts"]

_log = logging.getLogger("guardrail")


@dataclass(frozen=True)
class AlertStats:
    """What the alerts did so far. ``fired``: events claimed and handed to the
    destinations; ``suppressed``: events another process (or an earlier call) had already
    fired in their window; ``delivered`` / ``failed``: per destination, after retries;
    ``dropped``: events or records lost to a full queue, by where."""

    records: int = 0
    fired: int = 0
    suppressed: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: Mapping[str, int] | None = None

    @property
    def dropped_total(self) -> int:
        return sum((self.dropped or {}).values())


class Alerts:
    """Alert rules and where their events go; pass it as ``Guard(alerts=...)``.

    * ``rules``: :class:`~guardrail.observe.rules.Rule` objects; :func:`default_rules`
      (every rule, with its defaults) when omitted.
    * ``destinations``: callables taking an :class:`AlertEvent`, such as
      :class:`~guardrail.observe.delivery.Webhook` and
      :class:`~guardrail.observe.delivery.LogDestination`; the log when omitted.
    * ``queue_size``: how many records (and events per destination) may wait.
    * ``attempts``, ``backoff_seconds``: each delivery's tries and first wait.
    * ``refresh_seconds``: how often a scope's spend is read from the store at most; in
      between, this process's own spend is added to the last read, and an estimate that
      crosses a threshold is confirmed with a fresh read before anything fires.
    """

    def __init__(
        self,
        rules: Iterable[Rule] | None = None,
        destinations: Iterable[Destination] | None = None,
        *,
        queue_size: int = 10_000,
        attempts: int = 3,
        backoff_seconds: float = 0.5,
        refresh_seconds: float = 30.0,
    ) -> None:
        self.rules: list[Rule] = list(default_rules() if rules is None else rules)
        for rule in self.rules:
            if not isinstance(rule, Rule):
                raise ConfigurationError(f"an alert rule must be a guardrail Rule, got {rule!r}")
        given = list(destinations) if destinations is not None else [LogDestination()]
        if queue_size < 1 or attempts < 1 or backoff_seconds < 0 or refresh_seconds < 0:
            raise ConfigurationError(
                "queue_size and attempts must be >= 1, backoff and refresh >= 0 seconds"
            )
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._deliveries = [
            Delivery(
                d,
                attempts=attempts,
                backoff=backoff_seconds,
                maxsize=queue_size,
                on_result=self._delivered,
            )
            for d in given
        ]
        self._worker = Worker("guardrail-alerts", self._evaluate, queue_size)
        self._store: Store | None = None
        self._telemetry: Telemetry | None = None
        self.windows = Windows()
        self._spend: dict[str, tuple[float, str, UsageSummary, Decimal]] = {}
        self._baselines: dict[tuple[str, str, int], Decimal] = {}
        self._local_claims: dict[tuple[str, str], float] = {}
        # id(event) -> [deliveries outstanding, one succeeded, the event (keeps its id)]
        self._outstanding: dict[int, list[Any]] = {}
        self._day: tuple[float, float, date] | None = None
        self._at_exit = False

    # -- wiring (Guard does it)

    def bind(self, store: Store, telemetry: Telemetry | None = None) -> None:
        """Use ``store`` for claims and spend figures (done by ``Guard(alerts=...)``)."""
        if self._store is not None and self._store is not store:
            raise ConfigurationError("these Alerts already belong to a Guard on another store")
        self._store, self._telemetry, self.windows = store, telemetry, store.windows
        self._day = None

    # -- the call path: enqueue only

    def __call__(self, record: UsageRecord) -> None:
        """The sink: queue the record for the rules (never blocks)."""
        self._put(record, "records")

    def store_problem(self, problem: StoreProblem) -> None:
        self._put(problem, "records")

    def _put(self, item: UsageRecord | StoreProblem, where: str) -> None:
        if not self._at_exit:
            with self._lock:
                if not self._at_exit:
                    self._at_exit = True
                    atexit.register(self.close, 2.0)
        if not self._worker.put(item):
            self._drop(where)

    def _drop(self, where: str) -> None:
        with self._lock:
            self._dropped[where] = self._dropped.get(where, 0) + 1
        if self._telemetry is not None:
            self._telemetry.alert_dropped(where)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1

    # -- the alert worker

    def _evaluate(self, item: UsageRecord | StoreProblem) -> None:
        if isinstance(item, UsageRecord):
            self._count("records")
            self._note(item)
        for rule in self.rules:
            try:
                events = (
                    rule.check(item, self)
                    if isinstance(item, UsageRecord)
                    else rule.check_problem(item, self)
                )
                for event in events:
                    self._fire(event)
            except Exception:
                _log.exception("guardrail: alert rule %s failed", rule.name)

    def _fire(self, event: AlertEvent) -> None:
        if not self._claim(event):
            self._count("suppressed")
            return
        self._count("fired")
        if self._telemetry is not None:
            self._telemetry.alert_fired(event.rule)
        if self._deliveries:
            with self._lock:
                self._outstanding[id(event)] = [len(self._deliveries), False, event]
        for delivery in self._deliveries:
            if not delivery.worker.put(event):
                self._drop(delivery.worker.name)
                self._settled_delivery(event, delivered=False)

    def _claim(self, event: AlertEvent) -> bool:
        store = self._store
        claim = getattr(store, "claim_once", None)
        if claim is not None:
            try:
                return bool(claim(event.scope, event.key, event.ttl_seconds))
            except Exception as exc:  # the store is down: fire once per process instead
                _log.warning("guardrail: alert claim failed (%r); deduplicating locally", exc)
        now = event.at
        key = (event.scope, event.key)
        with self._lock:
            if self._local_claims.get(key, now) > now:
                return False
            if len(self._local_claims) > 10_000:
                self._local_claims = {k: v for k, v in self._local_claims.items() if v > now}
            self._local_claims[key] = now + event.ttl_seconds
        return True

    def _delivered(self, event: AlertEvent, error: BaseException | None) -> None:
        self._count("delivered" if error is None else "failed")
        if error is not None:
            self._drop("delivery_failed")
        self._settled_delivery(event, delivered=error is None)

    def _settled_delivery(self, event: AlertEvent, *, delivered: bool) -> None:
        """One delivery of ``event`` ended. Once all have, and none delivered it, its claim
        is given back, so that a later event of its window fires it again: a webhook down
        for a moment must not silence the alert for the whole window."""
        with self._lock:
            entry = self._outstanding.get(id(event))
            if entry is None:
                return
            entry[0] -= 1
            entry[1] = entry[1] or delivered
            if entry[0] > 0:
                return
            del self._outstanding[id(event)]
            if entry[1]:
                return
            self._local_claims.pop((event.scope, event.key), None)
        release = getattr(self._store, "release_claim", None)
        if release is not None:
            try:
                release(event.scope, event.key)
            except Exception as exc:  # the store is down: the claim expires with its window
                _log.warning("guardrail: could not give back an alert's claim (%r)", exc)

    # -- the RuleContext the rules see

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
    ) -> AlertEvent:
        every = rule.every if every is None else every
        window, ttl = window_of(self.windows, every, at)
        if day is not None and every in ("day", "month"):  # the day it was charged to
            window = day if every == "day" else day[:7]
        key = ":".join(part for part in (rule.name, detail, window) if part)
        return AlertEvent(
            rule=rule.name,
            scope=scope,
            tenant=tenant,
            at=at,
            window=window,
            text=text,
            figures=dict(figures),
            model=model,
            key=key,
            ttl_seconds=ttl,
        )

    def _note(self, record: UsageRecord) -> None:
        """This process's spend since each scope's last read (rules add it to the read)."""
        if record.cost_usd <= 0:
            return
        for scope in record.scopes:
            cached = self._spend.get(scope)
            if cached is not None:
                self._spend[scope] = (*cached[:3], cached[3] + record.cost_usd)

    def _today(self, at: float) -> str:
        """The store's calendar day at ``at`` (cached: strftime is the worker's main cost)."""
        day = self._day
        if day is None or not day[0] <= at < day[1]:
            local = self.windows.local(at)
            start = local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
            day = self._day = (start, self.windows.next_day(at).timestamp(), local.date())
        return day[2].isoformat()

    def _spend_on(self, scope: str, day: str) -> tuple[Decimal, Decimal] | None:
        if self._store is None:
            return None
        try:
            summary = self._store.usage(scope, date.fromisoformat(day))
        except Exception as exc:
            _log.warning("guardrail: alerts could not read %s's spend: %r", scope, exc)
            return None
        return summary.spent_usd, summary.month_spent_usd

    def spend(
        self, scope: str, at: float, *, fresh: bool = False, day: str | None = None
    ) -> tuple[Decimal, Decimal] | None:
        today = self._today(at)
        if day is not None and day != today:  # charged to another day: read it (rare)
            return self._spend_on(scope, day)
        cached = self._spend.get(scope)
        if fresh or cached is None or cached[1] != today or at - cached[0] >= self.refresh_seconds:
            if self._store is None:
                return None
            try:
                summary = self._store.usage(scope)
            except Exception as exc:
                _log.warning("guardrail: alerts could not read %s's spend: %r", scope, exc)
                return None
            if len(self._spend) > 10_000:
                self._spend = {}
            cached = self._spend[scope] = (at, today, summary, Decimal(0))
        _, _, summary, since = cached
        return summary.spent_usd + since, summary.month_spent_usd + since

    def baseline(self, scope: str, at: float, days: int) -> Decimal | None:
        key = (scope, self._today(at), days)
        today = date.fromisoformat(key[1])
        cached = self._baselines.get(key)
        if cached is None:
            if self._store is None:
                return None
            try:
                rows = self._store.usage_report(
                    [scope], today - timedelta(days=days), today - timedelta(days=1)
                )
            except Exception as exc:
                _log.warning("guardrail: alerts could not read %s's history: %r", scope, exc)
                return None
            if len(self._baselines) > 10_000:
                self._baselines = {}
            cached = self._baselines[key] = sum((r.cost_usd for r in rows), Decimal(0)) / days
        return cached

    # -- reading and stopping

    @property
    def stats(self) -> AlertStats:
        with self._lock:
            counts, dropped = dict(self._counts), dict(self._dropped)
        return AlertStats(
            records=counts.get("records", 0),
            fired=counts.get("fired", 0),
            suppressed=counts.get("suppressed", 0),
            delivered=counts.get("delivered", 0),
            failed=counts.get("failed", 0),
            dropped=dropped,
        )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record so far is evaluated and its events delivered (or given
        up on); False if ``timeout`` seconds ran out first."""
        workers: Sequence[Worker] = [self._worker, *(d.worker for d in self._deliveries)]
        deadline = _Deadline(timeout)
        return all(w.join(deadline.left()) for w in workers)

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver what is queued (within ``timeout``), then stop the worker threads."""
        deadline = _Deadline(timeout)
        done = self._worker.stop(deadline.left())
        for delivery in self._deliveries:
            done = delivery.worker.stop(deadline.left()) and done
        if self._at_exit:
            atexit.unregister(self.close)
            self._at_exit = False
        return done


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())
