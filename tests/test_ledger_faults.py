"""The ledger under faults: a value the database refuses, the disk and the database failing
together, a writer stuck on the database, a spool whose bookkeeping fails, migrations cut
short, and a rebuild next to token buckets. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import errno
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from guardrail import Guard, MemoryStore, Policy
from guardrail.ledger import LedgerSink, connect, migrate, rebuild, version
from guardrail.ledger import schema as ledger_schema
from guardrail.ledger.database import DatabaseError
from guardrail.ledger.writer import _default_spool
from tests._ledger import HELLO, calls, ledger_rows, store_rows
from tests.test_ledger import _outage


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("postgres_url"))


def recorded(server: Any, clock: Any) -> tuple[MemoryStore, list[Any]]:
    records: list[Any] = []
    store = MemoryStore(clock=clock)
    calls(server, store, records.append)
    return store, records


def test_a_record_the_database_refuses_is_kept_aside(server, clock, ledger_url, tmp_path) -> None:
    """One record holds a figure no BIGINT column can (2**70 tokens): it goes to the .bad
    file, every other record is written, and the ledger goes on. A NUL in a model name
    (PostgreSQL refuses NUL in text) is written, replaced."""
    store, records = recorded(server, clock)
    huge = dataclasses.replace(records[0], input_tokens=2**70, record_id="huge")
    nul = dataclasses.replace(records[4], model="gpt-4o\x00", record_id="nul")
    sink = LedgerSink(ledger_url, spool_path=tmp_path / "s.jsonl", flush_seconds=0.01)
    for record in [huge, *records, nul]:
        sink(record)
    assert sink.flush()
    sink.close()
    assert sink.quarantined == 1 and sink.written == 6
    (bad,) = [json.loads(line) for line in sink.bad_path.read_text().splitlines()]
    assert bad["item"]["record_id"] == "huge" and bad["why"]
    assert ledger_rows(ledger_url) == store_rows(store)
    db = connect(ledger_url)
    assert db.execute("SELECT model FROM usage_records WHERE record_id = 'nul'") == [
        ("gpt-4o\ufffd",)
    ]
    db.close()


def test_the_disk_and_the_database_failing_together_lose_nothing(server, clock, ledger_url) -> None:
    """The database is down and the spool's disk is full (/dev/full): the records wait in
    memory, and are written when the database answers."""
    sink = LedgerSink(
        ledger_url,
        spool_path="/dev/full",
        flush_seconds=0.01,
        retry_seconds=0.01,
        timeout_seconds=0.2,
    )
    with _outage(ledger_url):
        store, records = recorded(server, clock)
        for record in records:
            sink(record)
        # flush keeps to its timeout while the writer is inside an attempt (the records
        # are then in it, else held in memory): nothing is written, nothing spooled.
        assert not sink.flush(timeout=2)
        assert sink.written == 0 and sink.spooled == 0
    assert sink.flush(timeout=20) and sink.written == 5
    sink.close()
    assert ledger_rows(ledger_url) == store_rows(store)


def test_the_call_never_waits_for_the_writer(server, clock, ledger_url, tmp_path) -> None:
    """The writer holds the database (a slow write) and the queue is full: handing over
    records still returns at once, whatever the database does."""
    store, records = recorded(server, clock)
    sink = LedgerSink(ledger_url, spool_path=tmp_path / "s.jsonl", queue_size=1)
    returned = threading.Event()
    with sink._io:  # what the writer holds while it writes
        giver = threading.Thread(target=lambda: ([sink(r) for r in records], returned.set()))
        giver.start()
        giver.join(timeout=30)
        assert returned.is_set()  # every call returned while the database was held
    assert sink.flush()
    sink.close()
    assert ledger_rows(ledger_url) == store_rows(store)


def test_a_spool_whose_bookkeeping_fails_does_not_hold_back_new_records(
    server, clock, ledger_url, tmp_path
) -> None:
    """The replay writes the spooled records, then cannot mark them done (the disk is
    full): the new records are still written (writes are idempotent), and the spooled ones
    are written once."""
    spool = tmp_path / "s.jsonl"
    store, records = recorded(server, clock)
    sink = LedgerSink(ledger_url, spool_path=spool, flush_seconds=0.01, timeout_seconds=0.2)
    with _outage(ledger_url):
        for record in records[:3]:
            sink(record)
        assert not sink.flush(timeout=10) and sink.spooled == 3
    real = sink.spool.replay

    def full_disk(apply: Any) -> int:
        for entry in sink.spool.records():
            apply(entry)
        raise OSError(errno.ENOSPC, "No space left on device")

    sink.spool.replay = full_disk  # type: ignore[method-assign]
    for record in records[3:]:
        sink(record)
    assert not sink.flush(timeout=10)  # the spool is not empty yet...
    assert ledger_rows(ledger_url) == store_rows(store)  # ...but the ledger has everything
    sink.spool.replay = real  # type: ignore[method-assign]
    assert sink.flush()
    sink.close()
    assert ledger_rows(ledger_url) == store_rows(store)


def test_spool_names_never_collide_and_never_hold_a_password() -> None:
    host = "postgresql://guardrail:s3cr3t-Pa55@" + "a-very-long-host." * 8 + "example.com:5432"
    prod, staging = _default_spool(f"{host}/ledger_prod"), _default_spool(f"{host}/ledger_staging")
    assert prod != staging
    assert "s3cr3t" not in str(prod)
    rotated = _default_spool(f"postgresql://guardrail:n3w@{host.split('@')[1]}/ledger_prod")
    assert rotated == prod  # a new password keeps the spool


def test_a_migration_cut_short_leaves_the_previous_version(ledger_url, monkeypatch) -> None:
    db = connect(ledger_url)
    migrate(db, target=1)
    broken = [
        "ALTER TABLE usage_records ADD COLUMN provider TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE no_such_table ADD COLUMN x TEXT",
    ]
    patched = [ledger_schema.MIGRATIONS[0], broken, *ledger_schema.MIGRATIONS[2:]]
    monkeypatch.setattr(ledger_schema, "MIGRATIONS", patched)
    with pytest.raises(DatabaseError):
        migrate(db)
    assert version(db) == 1
    monkeypatch.undo()
    assert migrate(db) == ledger_schema.SCHEMA_VERSION  # no half-added column in the way
    db.close()


def test_a_rebuild_leaves_the_token_buckets_alone(server, clock, ledger_url, tmp_path) -> None:
    """Ten days of calls under a tokens-per-minute limit, a restarted store that has served
    one call, a rebuild: the next call goes through (past days are not charged to this
    minute's bucket)."""
    import openai

    server.reply = "word " * 40
    policy = Policy(tokens_per_minute=1000, loop_limit=None, max_output_tokens=60)
    clock.advance(8 * 86_400)  # 2026-12-01: ten days of one month
    sink = LedgerSink(ledger_url, spool_path=tmp_path / "s.jsonl", flush_seconds=0.01)

    def client_on(store: Any) -> Any:
        guard = Guard(policy, store=store, clock=store.now, sinks=[sink])
        return guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))

    before = MemoryStore(clock=clock)
    client = client_on(before)
    for _ in range(10):
        for _ in range(5):
            client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=60)
        clock.advance(86_400)
    restarted = MemoryStore(clock=clock)
    client = client_on(restarted)
    client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=60)
    assert sink.flush()
    db = connect(ledger_url)
    result = rebuild(db, restarted)
    assert result.gaps
    client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=60)
    db.close()
    sink.close()
