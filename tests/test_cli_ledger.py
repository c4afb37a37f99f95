"""``guardrail usage`` and ``guardrail ledger``, run in-process over a real SQLite ledger
(and a real Redis for the rebuild): the figures equal the store's."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from guardrail import MemoryStore
from guardrail.cli import main
from guardrail.ledger import LedgerSink
from tests._ledger import TODAY, calls

DAY = ["--since", TODAY.isoformat(), "--until", TODAY.isoformat()]


@pytest.fixture
def ledger(server: Any, clock: Any, tmp_path: Path) -> Iterator[tuple[str, MemoryStore]]:
    """A ledger with the calls of tests/_ledger.py, and the store they were charged to."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    sink = LedgerSink(url, spool_path=tmp_path / "spool.jsonl", flush_seconds=0.01)
    store = MemoryStore(clock=clock)
    calls(server, store, sink)
    assert sink.flush()
    sink.close()
    yield url, store


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_usage_json_by_tenant_equals_the_store(capsys, ledger) -> None:
    url, store = ledger
    status, out, err = run(capsys, "usage", "--ledger", url, *DAY, "--format", "json")
    assert status == 0, err
    doc = json.loads(out)
    rows = {r["tenant"]: r for r in doc["rows"]}
    assert set(rows) == {"acme", "alice", "bob", "carol"}
    for scope, row in rows.items():
        usage = store.usage(scope)
        assert Decimal(row["cost_usd"]) == usage.spent_usd
        assert row["requests"] == usage.requests
        assert (row["input_tokens"], row["output_tokens"]) == (
            usage.input_tokens,
            usage.output_tokens,
        )
    assert Decimal(doc["total"]["cost_usd"]) == store.usage("_global").spent_usd
    assert doc["total"]["requests"] == 4 and doc["by"] == ["tenant"]


def test_usage_csv_by_model_and_day(capsys, ledger) -> None:
    url, store = ledger
    argv = ["usage", "--ledger", url, *DAY, "--by", "model,day", "--format", "csv"]
    status, out, _ = run(capsys, *argv)
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    want = {(r.model, r.day.isoformat()): r for r in store.usage_report(["_global"], TODAY, TODAY)}
    assert {(r["model"], r["day"]) for r in rows} == set(want)
    for r in rows:
        assert Decimal(r["cost_usd"]) == want[(r["model"], r["day"])].cost_usd
        assert int(r["requests"]) == want[(r["model"], r["day"])].requests


def test_usage_table_for_one_tenant(capsys, ledger) -> None:
    url, store = ledger
    status, out, _ = run(
        capsys, "usage", "--ledger", url, *DAY, "--tenant", "acme", "--by", "model"
    )
    assert status == 0
    lines = out.splitlines()
    assert "acme" in lines[0]  # the title
    models = {line.split()[0]: line.split() for line in lines[2:] if line.strip()}
    assert set(models) == {"gpt-4o", "gpt-4o-mini", "total"}
    assert models["total"][1] == "$" + format(store.usage("acme").spent_usd.normalize(), "f")


def test_usage_records_are_the_audit_trail(capsys, ledger, tmp_path) -> None:
    url, _ = ledger
    target = tmp_path / "audit.csv"
    argv = ["usage", "--ledger", url, *DAY, "--records", "--format", "csv", "-o", str(target)]
    status, out, err = run(capsys, *argv, "--progress")
    assert status == 0 and out == ""
    assert "exporting: 5/5 records" in err
    rows = list(csv.DictReader(target.open()))
    assert [r["outcome"] for r in rows].count("rejected") == 1 and len(rows) == 5
    assert len({r["record_id"] for r in rows}) == 5
    status, out, _ = run(capsys, "usage", "--ledger", url, *DAY, "--records", "--format", "json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["record_id"] for r in lines] == [r["record_id"] for r in rows]  # oldest first
    status, out, _ = run(capsys, "usage", "--ledger", url, *DAY, "--records", "--tenant", "acme")
    assert status == 0 and sum("alice" in line or "bob" in line for line in out.splitlines()) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--by", "colour"], "--by is tenant, model, day"),
        (["--since", "2026-11-24", "--until", "2026-11-23"], "before --since"),
        (["--timezone", "Mars/Olympus"], "unknown time zone"),
    ],
)
def test_usage_errors_are_one_line(capsys, ledger, argv, message) -> None:
    url, _ = ledger
    status, out, err = run(capsys, "usage", "--ledger", url, *argv)
    assert status == 2 and out == "" and message in err
    assert err.startswith("guardrail: error: ") and len(err.splitlines()) == 1


def test_an_unknown_ledger_url_is_a_usage_error(capsys) -> None:
    status, _, err = run(capsys, "usage", "--ledger", "mysql://db/x")
    assert status == 2 and "unknown ledger URL" in err


def test_a_ledger_that_cannot_open_is_an_error(capsys, tmp_path) -> None:
    folder = tmp_path / "dir.db"
    folder.mkdir()
    status, _, err = run(capsys, "usage", "--ledger", f"sqlite:///{folder}")
    assert status == 1 and err.startswith("guardrail: error: ") and "Traceback" not in err


def test_ledger_migrate(capsys, tmp_path) -> None:
    from guardrail.ledger import SCHEMA_VERSION

    status, out, _ = run(capsys, "ledger", "migrate", "--ledger", f"sqlite:///{tmp_path}/new.db")
    assert status == 0 and f"version {SCHEMA_VERSION}" in out


@pytest.mark.redis
def test_ledger_rebuild_restores_a_redis_that_lost_its_data(
    capsys, server, clock, tmp_path
) -> None:
    from tests._redis_helpers import REDIS_URL, cleanup, make_store

    store = make_store("redis", clock, tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    sink = LedgerSink(url, spool_path=tmp_path / "spool.jsonl", flush_seconds=0.01)
    try:
        calls(server, store, sink)
        assert sink.flush()
        before = {s: store.usage(s, TODAY) for s in ("alice", "acme", "_global")}
        cleanup(store)  # a restart without persistence
        argv = ["ledger", "rebuild", "--ledger", url, "--store", REDIS_URL]
        argv += ["--prefix", store.prefix, "--day", TODAY.isoformat()]
        status, out, err = run(capsys, *argv, "--dry-run", "--json")
        assert status == 0, err
        dry = json.loads(out)
        assert not dry["applied"] and dry["gaps"]
        assert store.usage("acme", TODAY).spent_usd == 0  # a dry run changes nothing
        status, out, err = run(capsys, *argv)
        assert status == 0 and "restored" in out, err
        after = {s: store.usage(s, TODAY) for s in before}
        for scope, was in before.items():
            now = after[scope]
            assert (now.spent_usd, now.month_spent_usd, now.requests) == (
                was.spent_usd,
                was.month_spent_usd,
                was.requests,
            )
        status, out, _ = run(capsys, *argv)
        assert status == 0 and "nothing to restore" in out
    finally:
        sink.close()
        cleanup(store)


def test_ledger_rebuild_refuses_a_memory_store(capsys, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    status, _, err = run(capsys, "ledger", "rebuild", "--ledger", url, "--store", "memory://")
    assert status == 2 and "redis://" in err


def test_ledger_rebuild_when_redis_is_down(capsys, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    argv = ["ledger", "rebuild", "--ledger", url, "--store", "redis://127.0.0.1:1/0"]
    status, _, err = run(capsys, *argv)
    assert status == 1 and err.startswith("guardrail: error: ") and "Traceback" not in err
