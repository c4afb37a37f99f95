"""Writing usage records to the ledger, off the call path: :class:`LedgerSink`.

``Guard(sinks=[LedgerSink("sqlite:///usage.db")])``: a call hands its record to a bounded
queue and returns (it never waits on the database, the disk, or a lock either of them
holds); one thread writes them in batches, each in one transaction, idempotent by
``record_id``. When the database does not answer, the batch goes to a local spool file
(fsync'd, as the store's settlements do) and is written once the database answers again,
before anything newer. A record the database refuses for what it holds goes to a
``.bad`` file beside the spool, and the rest are written. Nothing is lost, nothing is
written twice, and one bad record never stops the ledger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from guardrail.ledger.database import Database, DatabaseError, check_url, connect
from guardrail.ledger.rows import LIMIT_FIELDS, Item, write_items
from guardrail.ledger.schema import migrate
from guardrail.observe.rules import AlertEvent
from guardrail.observe.sinks import UsageRecord
from guardrail.stores.spool import Spool

__all__ = ["LedgerSink", "redacted"]

_log = logging.getLogger("guardrail")
_STOP = object()


def redacted(url: str) -> str:
    """``url`` without its password (for logs and file names)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    user, host = rest.rsplit("@", 1)
    return f"{scheme}://{user.split(':', 1)[0]}@{host}"


def _default_spool(url: str) -> Path:
    """A spool per ledger: named by a hash of its URL (without the password, so rotating
    it keeps the spool), in the user's cache folder (or a private one in /tmp)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(cache) / "guardrail" / "ledger-spool"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        uid = os.getuid() if hasattr(os, "getuid") else 0
        folder = Path(tempfile.gettempdir()) / f"guardrail-ledger-spool-{uid}"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest = hashlib.sha256(redacted(url).encode()).hexdigest()[:20]
    return folder / f"{url.split(':', 1)[0]}-{digest}.jsonl"


class LedgerSink:
    """A sink that writes every usage record to the ledger (see the module doc).

    * ``url``: ``sqlite:///path.db`` or ``postgresql://...``; the schema is migrated to the
      current version on the first connection.
    * ``timezone``: the store's, so a record's day is the store's day.
    * ``batch_size``, ``flush_seconds``: a batch is written when it has this many records,
      or this long after its first.
    * ``queue_size``: records waiting for the writer; past it they wait in memory (the call
      still never blocks) and a warning is logged.
    * ``retention_days``: days older than this (by ``clock``) are deleted, checked once an
      hour; None keeps all.
    * ``timeout_seconds``: how long a write waits for the database before it is spooled;
      ``retry_seconds``: how soon the writer tries again.
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
        self.bad_path = self.spool.path.with_name(self.spool.path.name + ".bad")
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.retention_days = retention_days
        self.retry_seconds = retry_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock  # what "older than retention_days" is measured from
        self.written = 0
        self.spooled = 0
        self.quarantined = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()  # held only for list and counter updates, never I/O
        self._settled = threading.Condition(self._lock)
        self._pending = 0  # items given and not yet written, spooled or quarantined
        self._overflow: deque[Item] = deque()  # given while the queue was full
        self._held: list[Item] = []  # neither the database nor the disk took them
        self._closed = False
        self._db: Database | None = None
        self._next_prune = 0.0
        self._io = threading.Lock()  # the writer thread and flush() share the database
        self._thread = threading.Thread(target=self._run, name="guardrail-ledger", daemon=True)
        self._thread.start()

    # -- the call path: a lock for a counter and a queue put, nothing else

    def __call__(self, record: UsageRecord) -> None:
        data = record.to_dict()
        data["limits"] = [
            {"scope": limit.scope, **{name: getattr(limit, name) for name in LIMIT_FIELDS}}
            for limit in record.limits
        ]
        self._give(data)

    def alert(self, event: AlertEvent) -> None:
        """An alert destination: ``Alerts(destinations=[..., sink.alert])`` keeps every alert
        fired in the ledger (for the dashboard), spooled like the records."""
        # An event is claimed once per scope and window: its key makes a re-delivery a no-op.
        alert_id = f"{event.scope}:{event.key}" if event.key else os.urandom(12).hex()
        self._give({"alert": event.to_dict(), "at": event.at, "alert_id": alert_id})

    def _give(self, item: Item) -> None:
        with self._lock:
            self._pending += 1
            if self._closed:
                self._held.append(item)
                _log.error("guardrail: a usage record reached a closed ledger sink: held")
                return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                if not self._overflow:
                    _log.warning("guardrail: the ledger's queue is full; records wait in memory")
                self._overflow.append(item)

    # -- the writer thread

    def _backlog(self) -> bool:
        return bool(self._held or self._overflow) or self._spooled_records()

    def _spooled_records(self) -> bool:
        """Whether the spool holds records (a replay empties the file). Not
        ``Spool.pending()``, which looks at the file only every few seconds."""
        try:
            return self.spool.path.stat().st_size > 0
        except OSError:
            return False

    def _run(self) -> None:
        while True:
            try:  # with a backlog, wake up to retry it even when no call comes
                first = self._queue.get(timeout=self.retry_seconds if self._backlog() else None)
            except queue.Empty:
                self._cycle([])
                continue
            if first is _STOP:
                self._cycle([])
                return
            batch = [first]
            deadline = time.monotonic() + self.flush_seconds
            stop = False
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._cycle(batch)
            if stop:
                self._cycle([])
                return

    def _cycle(self, batch: list[Item]) -> None:
        with self._lock:  # what waited in memory is older than the batch: it goes first
            items = [*self._held, *self._overflow, *batch]
            self._held, self._overflow = [], deque()
        with self._io:
            ok = self._store(items)
        if not ok:
            time.sleep(self.retry_seconds)  # the writer thread backs off, off the call path

    def _store(self, items: list[Item]) -> bool:
        """The spool, then ``items``, to the database; else ``items`` to the spool; else to
        memory. Whether the database took everything."""
        answering, why = True, ""
        if self._spooled_records():
            try:
                self.spool.replay(lambda r: self._write(r["records"]))
            except DatabaseError as exc:  # still down: the new items join the spool
                answering = False
                why = repr(exc)
            except OSError as exc:  # the disk (the replay's bookkeeping) failed, not the
                # database: the new items can still be written (writes are idempotent)
                _log.error("guardrail: the ledger's spool %s: %r", self.spool.path, exc)
            except Exception as exc:  # a spool line this code cannot read: keep it
                _log.exception(
                    "guardrail: the ledger's spool %s cannot be replayed", self.spool.path
                )
                why = repr(exc)
        if answering:
            try:
                self._write(items)
                self._prune()
            except DatabaseError as exc:
                why = repr(exc)
            except Exception as exc:  # never kill the thread; the items are spooled below
                _log.exception("guardrail: the ledger writer failed")
                why = repr(exc)
            else:
                self._done(len(items))
                return not self._spooled_records()
        self._forget_connection()
        if not items:
            return False
        try:
            self.spool.append({"records": items})
        except OSError as disk:  # the disk is full or gone too: keep them in memory
            with self._lock:
                self._held = [*items, *self._held]
            _log.error(
                "guardrail: %d usage records are held in memory: neither the ledger (%s) "
                "nor the spool (%r) could take them",
                len(items),
                why,
                disk,
            )
            return False
        with self._lock:
            self.spooled += len(items)
        _log.error(
            "guardrail: the ledger could not take %d usage records (%s); spooled to %s",
            len(items),
            why,
            self.spool.path,
        )
        self._done(len(items))
        return False

    def _write(self, items: list[Item]) -> None:
        if not items:
            return
        write_items(self._database(), items, self.timezone, self._quarantine)
        with self._lock:
            self.written += len(items)

    def _quarantine(self, item: Item, why: str) -> None:
        """An item the database refuses for what it holds: kept in a file for a person."""
        line = json.dumps({"why": why, "item": item}, default=str, separators=(",", ":"))
        try:
            with open(self.bad_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            _log.error("guardrail: a usage record the ledger refused (%s): %s", why, line)
        else:
            _log.error(
                "guardrail: the ledger refused a usage record (%s); kept in %s", why, self.bad_path
            )
        with self._lock:
            self.quarantined += 1
            self.written -= 1  # counted by _write with its batch

    def _done(self, count: int) -> None:
        with self._settled:
            self._pending -= count
            self._settled.notify_all()

    def _database(self) -> Database:
        if self._db is None:
            db = connect(self.url, timeout_seconds=self.timeout_seconds, bounded=True)
            try:
                migrate(db)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _forget_connection(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _prune(self) -> None:
        if self.retention_days is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + 3600
        cutoff = self.clock() - self.retention_days * 86_400
        day = datetime.fromtimestamp(cutoff, self.timezone).strftime("%Y-%m-%d")
        db = self._database()
        db.execute_many(
            [
                ("DELETE FROM usage_scopes WHERE day < ?", [(day,)]),
                ("DELETE FROM usage_records WHERE day < ?", [(day,)]),
                ("DELETE FROM alert_events WHERE ts < ?", [(cutoff,)]),
                # A scope whose latest call is past the cutoff: else every scope ever seen
                # (one per end user) stays, and the dashboard lists it.
                ("DELETE FROM scope_limits WHERE ts < ?", [(cutoff,)]),
            ]
        )

    # -- control

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record given so far is written or spooled, and try the spool
        once more: whether every record is now in the database (False while some wait in
        the spool, or in memory when the disk failed too)."""
        started = time.monotonic()
        with self._settled:
            done = self._settled.wait_for(lambda: self._pending <= 0, timeout)
        # The writer may be inside a write (a database that stopped answering): the replay
        # is its to do then, and flush keeps to its timeout.
        if not self._io.acquire(timeout=max(0.0, timeout - (time.monotonic() - started))):
            return False
        try:
            if self._spooled_records():
                self.spool.replay(lambda r: self._write(r["records"]))
        except Exception:  # still down, or the disk: the writer keeps trying
            self._forget_connection()
            return False
        finally:
            self._io.release()
        with self._lock:
            return done and not self._held and not self._overflow

    def close(self, timeout: float = 10.0) -> None:
        """Flush, then stop the writer. Records given later are held and logged."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            _log.error("guardrail: the ledger's writer did not take the stop in %ss", timeout)
        self._thread.join(timeout)
        with self._lock:
            left = len(self._held) + len(self._overflow)
        if left:
            _log.error(
                "guardrail: %d usage records were not written to the ledger nor spooled "
                "(the database and the disk both failed) and are lost with this process",
                left,
            )
        self._forget_connection()
