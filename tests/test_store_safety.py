"""Nothing acknowledged is lost: the spool after a torn write, memory after a failed add,
and a reservation that names a scope twice."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from guardrail import ConfigurationError, ContextWindowExceeded, ConversationMemory, ManualClock
from guardrail.stores.base import ReservationRequest, ScopeLimits
from guardrail.stores.spool import Spool


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    spool = Spool(path)
    spool.append({"kind": "settle", "n": 1})
    with open(path, "a") as f:  # a write cut short by a crash or a full disk
        f.write('{"sid": "torn", "kind": "sett')
    spool.append({"kind": "settle", "n": 2})
    assert [r["n"] for r in spool.records()] == [1, 2]
    applied: list[int] = []
    assert Spool(path).replay(lambda r: applied.append(r["n"])) == 2
    assert applied == [1, 2] and path.read_text() == ""
    kept = (tmp_path / "spool.jsonl.bad").read_text()
    assert '"sid": "torn"' in kept  # what could not be read is kept, not destroyed


def test_turns_expired_before_a_refused_add_are_reported_next(clock: ManualClock) -> None:
    memory = ConversationMemory("gpt-4o", 200, max_age=timedelta(minutes=30), clock=clock)
    memory.add({"role": "user", "content": "hello"})
    clock.advance(31 * 60)
    with pytest.raises(ContextWindowExceeded):
        memory.add({"role": "user", "content": "word " * 500})
    expired = memory.expire()
    assert expired == [{"role": "user", "content": "hello"}]
    assert json.dumps(expired)  # plain messages, nothing half-built


def test_a_reservation_cannot_name_a_scope_twice() -> None:
    with pytest.raises(ConfigurationError, match="more than once"):
        ReservationRequest("r", (ScopeLimits("t"), ScopeLimits("t")), 1, 1, ttl_seconds=60)
