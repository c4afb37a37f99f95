"""Writing usage records to the ledger, off the call path: :class:`LedgerSink`.

``Guard(sinks=[LedgerSink("sqlite:///usage.db")])``: each record is put on a bounded queue
(the call never waits on the database); one thread writes them in batches, each batch in
one transaction, idempotent by ``record_id``. When the database fails, the batch goes to a
local spool file (fsync'd, as the store's settlements do) and is written once the database
answers again, before anything newer; a queue that fills up spools directly. Nothing is
lost, nothing is written twice.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from guardrail.ledger.database import Database, DatabaseError, check_url, connect
from guardrail.ledger.schema import migrate
from guardrail.observe.rules import AlertEvent
from guardrail.observe.sinks import UsageRecord
from guardrail.stores.base import usd_to_nanos
from guardrail.stores.spool import Spool

__all__ = ["LedgerSink", "row_of"]

_log = logging.getLogger("guardrail")
_INSERT = (
    "INSERT INTO usage_records (record_id, ts, day, tenant, model, requested_model, outcome, "
    "settled, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_nanos, "
    "reserved_nanos, latency_seconds, attempts, request_id, reservation_id, usage_source, "
    "error, record, provider, operation, refusal_limit) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (record_id) DO NOTHING"
)
_INSERT_SCOPE = (
    "INSERT INTO usage_scopes (record_id, scope, day) VALUES (?, ?, ?) "
    "ON CONFLICT (record_id, scope) DO NOTHING"
)
# A scope's caps as its latest call saw them (an older record replayed late does not win).
_UPSERT_LIMITS = (
    "INSERT INTO scope_limits (scope, ts, daily_nanos, monthly_nanos, tokens_per_minute, "
    "tokens_per_day, max_in_flight) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE "
    "SET ts = excluded.ts, daily_nanos = excluded.daily_nanos, "
    "monthly_nanos = excluded.monthly_nanos, tokens_per_minute = excluded.tokens_per_minute, "
    "tokens_per_day = excluded.tokens_per_day, max_in_flight = excluded.max_in_flight "
    "WHERE excluded.ts >= scope_limits.ts"
)
_INSERT_ALERT = (
    "INSERT INTO alert_events (alert_id, ts, rule, scope, tenant, text, event) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id) DO NOTHING"
)
_LIMIT_FIELDS = (
    "daily_nanos",
    "monthly_nanos",
    "tokens_per_minute",
    "tokens_per_day",
    "max_in_flight",
)


def row_of(record: Mapping[str, Any], timezone: ZoneInfo) -> tuple[Any, ...]:
    """The ``usage_records`` row of a record (as :meth:`UsageRecord.to_dict` gives it)."""
    day = record.get("day") or datetime.fromtimestamp(record["timestamp"], timezone).strftime(
        "%Y-%m-%d"
    )
    refusal = record.get("refusal") or {}
    return (
        record["record_id"],
        float(record["timestamp"]),
        day,
        record["tenant"],
        record["model"],
        record["requested_model"],
        record["outcome"],
        1 if record.get("reservation_id") else 0,
        int(record["input_tokens"]),
        int(record["cached_input_tokens"]),
        int(record["output_tokens"]),
        int(record["reasoning_tokens"]),
        usd_to_nanos(Decimal(str(record["cost_usd"]))),
        usd_to_nanos(Decimal(str(record["reserved_usd"]))),
        float(record["latency_seconds"]),
        int(record["attempts"]),
        record.get("request_id"),
        record.get("reservation_id"),
        record.get("usage_source", "none"),
        record.get("error"),
        json.dumps(record, separators=(",", ":"), sort_keys=True),
        record.get("provider", ""),
        record.get("operation", "chat"),
        refusal.get("limit"),
    )


def _alert_row(item: Mapping[str, Any]) -> tuple[Any, ...]:
    event = item["alert"]
    return (
        item["alert_id"],
        float(item["at"]),
        event["rule"],
        event["scope"],
        event.get("tenant"),
        event.get("text", ""),
        json.dumps(event, separators=(",", ":"), sort_keys=True),
    )


def _default_spool(url: str) -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(cache) / "guardrail" / "ledger-spool"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / "guardrail-ledger-spool"
    return folder / f"{quote(url, safe='')[:120]}.jsonl"


class LedgerSink:
    """A sink that writes every usage record to the ledger (see the module doc).

    * ``url``: ``sqlite:///path.db`` or ``postgresql://...``; the schema is migrated to the
      current version on the first connection.
    * ``timezone``: the store's, so a record's day is the store's day.
    * ``batch_size``, ``flush_seconds``: a batch is written when it has this many records,
      or this long after its first.
    * ``retention_days``: days older than this (by ``clock``) are deleted, checked once an
      hour; None keeps all.
    """

    def __init__(
        self,
        url: str,
        *,
        spool_path: str | os.PathLike[str] | None = None,
        timezone: str = "UTC",
        batch_size: int = 500,
        flush_seconds: float = 0.2,
        queue_size: int = 100_000,
        retention_days: int | None = None,
        retry_seconds: float = 1.0,
        timeout_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_url(url)  # a wrong URL or a missing driver is an error now, not in the thread
        self.url = url
        self.timezone = ZoneInfo(timezone)
        self.spool = Spool(spool_path or _default_spool(url))
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.retention_days = retention_days
        self.retry_seconds = retry_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock  # what "older than retention_days" is measured from
        self.written = 0
        self.spooled = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self._db: Database | None = None
        self._pending = 0  # records given and not yet written or spooled
        self._held: list[dict[str, Any]] = []
        self._settled = threading.Condition()
        self._next_prune = 0.0
        self._io = threading.Lock()  # the writer thread and flush() share the database
        self._thread = threading.Thread(target=self._run, name="guardrail-ledger", daemon=True)
        self._thread.start()

    # -- the call path

    def __call__(self, record: UsageRecord) -> None:
        data = record.to_dict()
        data["limits"] = [
            {"scope": limit.scope, **{name: getattr(limit, name) for name in _LIMIT_FIELDS}}
            for limit in record.limits
        ]
        self._give(data)

    def alert(self, event: AlertEvent) -> None:
        """An alert destination: ``Alerts(destinations=[..., sink.alert])`` keeps every alert
        fired in the ledger (for the dashboard), spooled like the records."""
        # An event is claimed once per scope and window: its key makes a re-delivery a no-op.
        alert_id = f"{event.scope}:{event.key}" if event.key else os.urandom(12).hex()
        self._give({"alert": event.to_dict(), "at": event.at, "alert_id": alert_id})

    def _give(self, data: dict[str, Any]) -> None:
        with self._settled:
            self._pending += 1
        try:
            self._queue.put_nowait(data)
        except queue.Full:  # never block the call, never drop: spool it now
            self._spool([data], "the ledger's queue is full")
            self._done(1)

    # -- the writer thread

    def _run(self) -> None:
        while True:
            try:  # with records held in memory, wake up to retry them
                first = self._queue.get(timeout=self.retry_seconds if self._held else None)
            except queue.Empty:
                self._write_or_spool([])
                continue
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.flush_seconds
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._write_or_spool(batch)
                    return
                batch.append(item)
            self._write_or_spool(batch)

    def _done(self, count: int) -> None:
        with self._settled:
            self._pending -= count
            self._settled.notify_all()

    def _database(self) -> Database:
        if self._db is None:
            db = connect(self.url, timeout_seconds=self.timeout_seconds)
            migrate(db)
            self._db = db
        return self._db

    def _write_or_spool(self, batch: list[dict[str, Any]]) -> None:
        with self._io:
            failed = self._try_write(batch)
        if failed:
            time.sleep(self.retry_seconds)  # the writer thread backs off, off the call path

    def _try_write(self, batch: list[dict[str, Any]]) -> bool:
        """Write the spool, then ``batch``; spool (or hold) what fails. Whether it failed."""
        batch = [*self._held, *batch]  # what neither the database nor the disk took before
        self._held = []
        try:
            if self.spool.pending():
                self.spool.replay(lambda r: self._write(r["records"]))
            self._write(batch)
            self._prune()
        except Exception as exc:  # DatabaseError, OSError, or worse: never kill the thread
            self._forget_connection()
            try:
                self._spool(batch, repr(exc))
            except OSError as disk:  # the disk is full or gone too: keep them in memory
                self._held = batch
                _log.error(
                    "guardrail: %d usage records are held in memory: neither the ledger "
                    "(%r) nor the spool (%r) could take them",
                    len(batch),
                    exc,
                    disk,
                )
                return True
            self._done(len(batch))
            return True
        self._done(len(batch))
        return False

    def _write(self, batch: Sequence[Mapping[str, Any]]) -> None:
        """One transaction: the records, their scopes, the caps they saw, the alerts."""
        db = self._database()
        records = [item for item in batch if "alert" not in item]
        rows = [row_of(r, self.timezone) for r in records]
        scopes = [
            (row[0], scope, row[2])
            for row, data in zip(rows, records, strict=True)
            for scope in data["scopes"]
        ]
        limits = [
            (limit["scope"], float(data["timestamp"]), *(limit[n] for n in _LIMIT_FIELDS))
            for data in records
            for limit in data.get("limits", ())
        ]
        alerts = [_alert_row(item) for item in batch if "alert" in item]
        db.execute_many(
            [
                (_INSERT, rows),
                (_INSERT_SCOPE, scopes),
                (_UPSERT_LIMITS, limits),
                (_INSERT_ALERT, alerts),
            ]
        )
        self.written += len(batch)

    def _spool(self, batch: list[dict[str, Any]], why: str) -> None:
        self.spool.append({"records": batch})
        self.spooled += len(batch)
        _log.error(
            "guardrail: the ledger could not take %d usage records (%s); spooled to %s",
            len(batch),
            why,
            self.spool.path,
        )

    def _forget_connection(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _prune(self) -> None:
        if self.retention_days is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + 3600
        cutoff = datetime.fromtimestamp(self.clock() - self.retention_days * 86_400, self.timezone)
        day = cutoff.strftime("%Y-%m-%d")
        db = self._database()
        db.execute("DELETE FROM usage_scopes WHERE day < ?", (day,))
        db.execute("DELETE FROM usage_records WHERE day < ?", (day,))

    # -- control

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record given so far is written or spooled, and try the spool
        once more: whether every record is now in the database (False while some wait in
        the spool, or in memory when the disk failed too)."""
        with self._settled:
            done = self._settled.wait_for(lambda: self._pending <= 0, timeout)
        with self._io:
            try:
                if self.spool.pending():
                    self.spool.replay(lambda r: self._write(r["records"]))
            except (DatabaseError, OSError):
                self._forget_connection()
                return False
        return done and not self._held

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)
        self._forget_connection()
