"""``Store.claim_once``: the first claim of a key wins in every process sharing the store,
until its TTL; what alerts use to fire once per window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guardrail import ManualClock
from tests._redis_helpers import KINDS, cleanup, make_store


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, clock: ManualClock, tmp_path: Path) -> Any:
    made = make_store(request.param, clock, tmp_path)
    yield made
    cleanup(made)


def test_the_first_claim_wins_until_its_ttl(store: Any, clock: ManualClock) -> None:
    assert store.claim_once("u-1", "refusal:2026-11-23", 3600) is True
    assert store.claim_once("u-1", "refusal:2026-11-23", 3600) is False
    assert store.claim_once("u-1", "refusal:2026-11-24", 3600) is True  # another window
    assert store.claim_once("u-2", "refusal:2026-11-23", 3600) is True  # another scope
    assert store.claim_once("u:{odd}*", "a key: with {braces}", 60) is True
    assert store.claim_once("u:{odd}*", "a key: with {braces}", 60) is False


@pytest.mark.parametrize("kind", KINDS[1:])
def test_a_redis_claim_lives_in_its_scopes_hash_slot(
    kind: str, clock: ManualClock, tmp_path: Path
) -> None:
    store = make_store(kind, clock, tmp_path)
    try:
        _check_slot(store)
    finally:
        cleanup(store)


def _check_slot(store: Any) -> None:
    assert store.claim_once("org-7", "spend_anomaly:2026-11-23", 90)
    (key,) = store.client.keys(f"{store.key_prefix('org-7')}c:*")
    assert key.decode().startswith(store.key_prefix("org-7"))  # same {tag}: same slot
    assert 0 < store.client.pttl(key) <= 90_000


def test_a_memory_claim_expires_on_the_stores_clock(clock: ManualClock, tmp_path: Path) -> None:
    store = make_store("memory", clock, tmp_path)
    assert store.claim_once("u-1", "k", 60)
    clock.advance(59)
    assert not store.claim_once("u-1", "k", 60)
    clock.advance(1)
    assert store.claim_once("u-1", "k", 60)


async def test_the_async_face_claims_the_same(store: Any) -> None:
    assert await store.aclaim_once("u-9", "k", 60) is True
    assert store.claim_once("u-9", "k", 60) is False
    assert await store.aclaim_once("u-9", "k", 60) is False
    if hasattr(store, "aclose"):
        await store.aclose()
