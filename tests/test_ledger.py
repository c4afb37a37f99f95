"""The usage ledger on SQLite and on a real PostgreSQL: records equal the store's totals,
writes are idempotent, an outage is replayed exactly once, migrations run from an empty
and from the previous schema, and a lost store is rebuilt from the ledger."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from guardrail import MemoryStore
from guardrail.errors import ConfigurationError
from guardrail.ledger import (
    SCHEMA_VERSION,
    LedgerSink,
    connect,
    migrate,
    rebuild,
    recent_refusals,
    report,
    version,
)
from tests._ledger import TODAY, calls, ledger_rows, store_rows


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sink(ledger_url: str, tmp_path: Path) -> Iterator[LedgerSink]:
    made = LedgerSink(ledger_url, spool_path=tmp_path / "ledger-spool.jsonl", flush_seconds=0.01)
    try:
        yield made
    finally:
        made.close()


def test_the_ledger_equals_the_store(server, clock, sink, ledger_url) -> None:
    store = MemoryStore(clock=clock)
    calls(server, store, sink)
    assert sink.flush()
    assert ledger_rows(ledger_url) == store_rows(store)
    assert sink.written == 5 and sink.spooled == 0
    db = connect(ledger_url)
    by_tenant = {r.key[0]: r for r in report(db, by=("tenant",))}
    assert set(by_tenant) == {"alice", "bob", "carol", "acme"}  # refused dave spent nothing
    assert by_tenant["acme"].requests == 3
    assert by_tenant["acme"].cost_usd == store.usage("acme").spent_usd
    (refusal,) = recent_refusals(db)
    assert refusal["tenant"] == "dave" and refusal["limit"] == "daily_spend_usd"
    db.close()


def test_writing_a_record_twice_is_a_no_op(server, clock, sink, ledger_url) -> None:
    records: list[Any] = []
    store = MemoryStore(clock=clock)
    calls(server, store, records.append)
    for record in [*records, *records]:
        sink(record)
    assert sink.flush()
    assert sink.written == 10  # every record was given twice...
    assert ledger_rows(ledger_url) == store_rows(store)  # ...and counted once
    db = connect(ledger_url)
    assert db.execute("SELECT COUNT(*) FROM usage_records") == [(5,)]
    db.close()


def test_a_bad_url_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown ledger URL"):
        LedgerSink("mysql://x", spool_path=tmp_path / "s")


# --------------------------------------------------------------------------- migrations


def test_migrations_from_an_empty_database(ledger_url) -> None:
    db = connect(ledger_url)
    assert version(db) == 0
    assert migrate(db) == SCHEMA_VERSION
    assert migrate(db) == SCHEMA_VERSION  # nothing left to do
    assert db.execute("SELECT COUNT(*) FROM guardrail_schema") == [(SCHEMA_VERSION,)]
    db.close()


@pytest.mark.parametrize("start", range(1, SCHEMA_VERSION))
def test_migrations_from_an_earlier_schema_keep_the_rows(ledger_url, start: int) -> None:
    db = connect(ledger_url)
    migrate(db, target=start)
    assert version(db) == start
    db.execute(  # a row as version 1 wrote it (every later version only adds)
        "INSERT INTO usage_records (record_id, ts, day, tenant, model, requested_model, "
        "outcome, settled, input_tokens, cached_input_tokens, output_tokens, "
        "reasoning_tokens, cost_nanos, reserved_nanos, latency_seconds, attempts, "
        "request_id, reservation_id, usage_source, error, record) VALUES "
        "('r1', 1.0, '2026-11-23', 'alice', 'gpt-4o', 'gpt-4o', 'ok', 1, 10, 0, 5, 0, "
        "1500, 2000, 0.1, 1, NULL, 'res1', 'provider', NULL, '{}')"
    )
    db.execute("INSERT INTO usage_scopes VALUES ('r1', 'alice', '2026-11-23')")
    assert migrate(db) == SCHEMA_VERSION
    (row,) = report(db, by=("tenant",))
    assert row.key == ("alice",) and row.cost_usd == Decimal("0.0000015") and row.requests == 1
    assert db.execute("SELECT provider, operation FROM usage_records") == [("", "chat")]
    db.close()


# --------------------------------------------------------------------------- outages


def test_an_outage_is_replayed_exactly_once(server, clock, ledger_url, tmp_path) -> None:
    """The database refuses writes; the records go to the spool; once it answers they are
    written, once each, before anything newer."""
    spool = tmp_path / "outage-spool.jsonl"
    sink = LedgerSink(
        ledger_url, spool_path=spool, flush_seconds=0.01, retry_seconds=0.01, timeout_seconds=0.2
    )
    store = MemoryStore(clock=clock)
    with _outage(ledger_url):
        calls(server, store, sink)
        assert not sink.flush()  # every record is in the spool, none in the database...
        assert sink.written == 0 and sink.spooled == 5 and spool.stat().st_size > 0
    assert sink.flush()  # ...and once the database answers, in the ledger
    assert ledger_rows(ledger_url) == store_rows(store)
    sink.close()
    # A new process on the same spool finds nothing left to replay.
    again = LedgerSink(ledger_url, spool_path=spool)
    assert again.flush() and again.written == 0
    again.close()
    assert ledger_rows(ledger_url) == store_rows(store)


def test_a_spool_left_by_a_dead_process_is_replayed_by_the_next(
    server, clock, ledger_url, tmp_path
) -> None:
    spool = tmp_path / "left-spool.jsonl"
    store = MemoryStore(clock=clock)
    with _outage(ledger_url):
        first = LedgerSink(ledger_url, spool_path=spool, flush_seconds=0.01, timeout_seconds=0.2)
        calls(server, store, first)
        assert not first.flush(timeout=10) and first.spooled == 5
        first._queue.put(None)  # the process dies: no close(), no last replay
        first._thread.join(5)
    second = LedgerSink(ledger_url, spool_path=spool)
    assert second.flush()
    assert second.written == 5
    second.close()
    assert ledger_rows(ledger_url) == store_rows(store)


class _outage:
    """The database refuses connections and writes, for real: SQLite is locked by another
    connection's exclusive transaction; PostgreSQL stops accepting connections to the
    database and ends the ones it has."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._held: Any = None

    def __enter__(self) -> _outage:
        if self.url.startswith("sqlite"):
            import sqlite3

            migrate(connect(self.url))  # the file exists before it is locked
            self._held = sqlite3.connect(self.url[len("sqlite:///") :], isolation_level=None)
            self._held.execute("BEGIN EXCLUSIVE")
        else:
            self._postgres(False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            self._held.execute("ROLLBACK")
            self._held.close()
        else:
            self._postgres(True)

    def _postgres(self, allow: bool) -> None:
        import psycopg

        from tests.conftest import POSTGRES_URL

        name = self.url.rsplit("/", 1)[1]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
            if not allow:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )


def test_a_full_queue_never_blocks_the_call(server, clock, ledger_url, tmp_path) -> None:
    """The writer is stuck (a slow database): past the queue's size, records wait in memory
    and the calls go on; once the writer moves, every record is written, once."""
    sink = LedgerSink(ledger_url, spool_path=tmp_path / "q.jsonl", queue_size=1, batch_size=1)
    gate = threading.Event()
    real = sink._cycle

    def slow(batch: list[dict[str, Any]]) -> None:
        gate.wait(10)
        real(batch)

    sink._cycle = slow  # type: ignore[method-assign]
    store = MemoryStore(clock=clock)
    calls(server, store, sink)  # five records: one with the writer, one queued, three over
    assert len(sink._overflow) >= 3 and sink.spooled == 0 and sink.written == 0
    gate.set()
    assert sink.flush()
    sink.close()
    assert ledger_rows(ledger_url) == store_rows(store) and sink.written == 5


# --------------------------------------------------------------------------- rebuild


def test_a_lost_store_is_rebuilt_from_the_ledger(server, clock, sink, ledger_url) -> None:
    store = MemoryStore(clock=clock)
    calls(server, store, sink)
    assert sink.flush()
    before = store_rows(store)
    month = {s: store.usage(s).month_spent_usd for s in ("alice", "acme", "_global")}

    lost = MemoryStore(clock=clock)  # Redis restarted without persistence
    db = connect(ledger_url)
    result = rebuild(db, lost)
    assert result.applied and result.day == TODAY.isoformat() and not result.ahead
    assert store_rows(lost) == before
    assert {s: lost.usage(s).month_spent_usd for s in month} == month
    again = rebuild(db, lost)  # a second run finds nothing missing
    assert again.gaps == () and store_rows(lost) == before
    db.close()


def test_a_rebuild_adds_only_what_the_store_lacks(server, clock, ledger_url, tmp_path) -> None:
    """The store restarted, then served calls before the rebuild: those are kept, and the
    day ends up with exactly the ledger's totals (one call's cost short of the cap)."""
    sink = LedgerSink(ledger_url, spool_path=tmp_path / "s.jsonl", flush_seconds=0.01)
    store = MemoryStore(clock=clock)
    calls(server, store, sink)
    assert sink.flush()
    restarted = MemoryStore(clock=clock)
    calls(server, restarted, sink)  # the same calls again, on the empty store
    assert sink.flush()
    db = connect(ledger_url)
    dry = rebuild(db, restarted, dry_run=True)
    assert not dry.applied and dry.gaps and store_rows(restarted) != ledger_rows(ledger_url)
    rebuild(db, restarted)
    assert store_rows(restarted) == ledger_rows(ledger_url)
    assert restarted.usage("acme").spent_usd == 2 * store.usage("acme").spent_usd
    db.close()
    sink.close()


@pytest.mark.redis
def test_rebuild_on_real_redis(server, clock, sink, ledger_url, tmp_path) -> None:
    from tests._redis_helpers import cleanup, make_store

    store = make_store("redis", clock, tmp_path)
    try:
        calls(server, store, sink)
        assert sink.flush()
        before = store_rows(store)
        cleanup(store)  # every key gone, as after a restart without persistence
        assert store_rows(store) == {}
        db = connect(ledger_url)
        rebuild(db, store)
        assert store_rows(store) == before
        assert rebuild(db, store).gaps == ()
        db.close()
    finally:
        cleanup(store)


def test_retention_deletes_whole_days_past_the_limit(server, clock, ledger_url, tmp_path) -> None:
    """Records from 2026-11-23, a ledger kept 7 days, read on 2026-12-01: they go (and their
    scopes with them, and the scopes' caps: the dashboard listed every scope ever seen); a
    record of the day itself stays."""
    store = MemoryStore(clock=clock)
    later = clock() + 8 * 86_400
    sink = LedgerSink(
        ledger_url, spool_path=tmp_path / "r.jsonl", retention_days=7, clock=lambda: later
    )
    calls(server, store, sink)
    assert sink.flush()
    sink.close()
    assert ledger_rows(ledger_url) == {}
    db = connect(ledger_url)
    assert db.execute("SELECT COUNT(*) FROM usage_scopes") == [(0,)]
    assert db.execute("SELECT COUNT(*) FROM scope_limits") == [(0,)]
    clock.advance(8 * 86_400)
    fresh = LedgerSink(ledger_url, spool_path=tmp_path / "r2.jsonl", retention_days=7, clock=clock)
    calls(server, store, fresh)
    assert fresh.flush()
    fresh.close()
    assert ledger_rows(ledger_url) == store_rows(store, clock_day(clock))
    assert db.execute("SELECT COUNT(*) FROM scope_limits") != [(0,)]  # today's calls' caps
    db.close()


def clock_day(clock: Any) -> date:
    return datetime.fromtimestamp(clock(), UTC).date()
