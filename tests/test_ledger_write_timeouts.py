"""On PostgreSQL, ``LedgerSink(timeout_seconds=...)`` bounds a write, not only the connect:
a write waiting on a lock (a migration, an admin's open transaction on usage_records) gives
up after the timeout and the record is spooled, not held in memory for good (found by a
review). A migration itself is not held to it."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from guardrail import UsageRecord
from guardrail.ledger import LedgerSink, connect, schema
from guardrail.ledger.schema import migrate

pytestmark = pytest.mark.postgres


def _record() -> UsageRecord:
    return UsageRecord(
        tenant="u-1",
        scopes=("u-1",),
        model="gpt-4o",
        requested_model="gpt-4o",
        outcome="ok",
        cost_usd=Decimal("0.01"),
        timestamp=1_795_435_200.0,
        reservation_id="r-1",
    )


LOCKS = {
    # An admin's open transaction, or a migration, holding the table.
    "table": "LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE",
    # Another process migrating (the migrators' advisory lock), which the writer's own
    # migration on (re)connecting waits for.
    "migrators": f"SELECT pg_advisory_xact_lock({schema._LOCK})",
}


@pytest.fixture(params=sorted(LOCKS))
def lock(request: pytest.FixtureRequest) -> str:
    return LOCKS[request.param]


def _locked(postgres_url: str, lock: str) -> psycopg.Connection:
    db = connect(postgres_url)
    migrate(db)
    db.close()
    locker = psycopg.connect(postgres_url)
    locker.execute(lock)  # held until rollback
    return locker


@pytest.mark.parametrize("flush_within", [6.0, 2.0])
def test_a_write_blocked_on_a_lock_is_spooled_and_flush_keeps_its_timeout(
    postgres_url: str, tmp_path: Path, lock: str, flush_within: float
) -> None:
    locker = _locked(postgres_url, lock)
    sink = LedgerSink(
        postgres_url,
        spool_path=tmp_path / "s.jsonl",
        flush_seconds=0.01,
        timeout_seconds=1.0,
        retry_seconds=0.1,
    )
    done = threading.Event()
    try:
        sink(_record())
        # flush in a thread of its own: it waited on the writer's lock for good before
        flush = threading.Thread(
            target=lambda: (sink.flush(timeout=flush_within), done.set()), daemon=True
        )
        flush.start()
        assert done.wait(flush_within + 4), f"flush({flush_within}) still blocked"
        if flush_within > 2:  # the write gave up after its 1 s, and was spooled
            assert sink.spooled == 1, f"written={sink.written} spooled={sink.spooled}"
    finally:
        locker.rollback()
        locker.close()
        sink.close(timeout=10)


def test_a_migration_is_not_held_to_a_writers_bound(postgres_url: str) -> None:
    from guardrail.ledger.database import connect as open_db

    db = open_db(postgres_url, timeout_seconds=0.001, bounded=True)  # 1 ms per statement
    try:
        with db.transaction() as tx:
            tx.run("DROP TABLE IF EXISTS guardrail_schema CASCADE")
            tx.run("DROP TABLE IF EXISTS usage_records CASCADE")
        assert migrate(db) > 0  # every migration ran, none cut at 1 ms
    finally:
        db.close()
