"""Conversation memory: a token budget over whole turns, pins, expiry, summaries, Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail import ManualClock
from guardrail.counting.messages import TokenCounter, count_messages, counter_for
from guardrail.errors import ConfigurationError, ContextWindowExceeded, InvalidRequestError
from guardrail.prompt.conversation import ConversationMemory, RedisConversationMemory
from guardrail.prompt.trimming import fit_messages
from tests.conftest import REDIS_HOST, REDIS_PORT
from tests.test_truncation import texts

MODEL = "gpt-4o"
SYSTEM = {"role": "system", "content": "You are a terse assistant."}


def user(i: int, words: int = 10) -> dict[str, Any]:
    return {"role": "user", "content": f"question {i} " + "more " * words}


def assistant(i: int, words: int = 20) -> dict[str, Any]:
    return {"role": "assistant", "content": f"answer {i} " + "text " * words}


def call(i: int) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": "search", "arguments": json.dumps({"q": i})},
            }
        ],
    }


def result(i: int, words: int = 15) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": f"call_{i}", "content": "result " * words}


def check(memory: Any) -> list[Any]:
    """The budget invariant, and no orphaned tool result; returns the messages."""
    messages = memory.messages()
    assert memory.tokens == count_messages(messages, MODEL) <= memory.max_tokens
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            before = messages[i - 1]
            assert before.get("tool_calls") or before["role"] == "tool", messages
    return messages


def window(memory: ConversationMemory) -> list[Any]:
    skip = len(memory.pinned) + (memory.summary is not None)
    return memory.messages()[skip:]


# --------------------------------------------------------------------------- in memory


def test_stays_within_budget_over_many_turns_dropping_whole_turns() -> None:
    memory = ConversationMemory(MODEL, 400, pinned=[SYSTEM])
    for i in range(300):
        memory.add(user(i))
        memory.add(assistant(i))
        messages = check(memory)
        assert messages[0] == SYSTEM
        assert messages[1]["role"] == "user"  # whole turns go, never half of one
    assert messages[-2:] == [user(299), assistant(299)]
    assert memory.tokens > 400 - 60  # and it is not needlessly empty


def test_add_returns_what_was_dropped() -> None:
    memory = ConversationMemory(MODEL, 150)
    dropped: list[Any] = []
    for i in range(10):
        dropped += memory.add(user(i))
        dropped += memory.add(assistant(i))
    kept = window(memory)
    everything = [m for i in range(10) for m in (user(i), assistant(i))]
    assert dropped + kept == everything


def test_tool_calls_stay_with_their_results() -> None:
    memory = ConversationMemory(MODEL, 300)
    for i in range(40):
        memory.extend([user(i, 5), call(i), result(i), result(i), assistant(i, 5)])
        messages = check(memory)
        assert messages[0]["role"] == "user"


def test_a_long_agent_turn_drops_its_own_oldest_units_but_keeps_the_question() -> None:
    memory = ConversationMemory(MODEL, 250)
    memory.add(user(0))
    memory.add(assistant(0))
    memory.add(user(1))
    for i in range(30):
        memory.add(call(i))
        memory.add(result(i))
        messages = check(memory)
        assert user(1) in messages  # the turn's question stays
        assert messages[-2:] == [call(i), result(i)]  # and so does the newest unit
    assert messages[0] == user(1)  # the older turn went first
    assert call(0) not in messages


def test_a_message_that_can_never_fit_is_refused_and_changes_nothing() -> None:
    memory = ConversationMemory(MODEL, 200, pinned=[SYSTEM])
    memory.extend([user(1), assistant(1)])
    before, tokens = memory.messages(), memory.tokens
    with pytest.raises(ContextWindowExceeded, match="memory"):
        memory.add(user(2, words=500))
    assert memory.messages() == before and memory.tokens == tokens
    # A tool result that would make the newest unit too big is refused too.
    memory.add(user(3))
    memory.add(call(3))
    with pytest.raises(ContextWindowExceeded):
        memory.add(result(3, words=400))
    assert window(memory)[-2:] == [user(3), call(3)]


def test_pinned_messages_are_never_dropped() -> None:
    profile = {"role": "user", "content": "My name is Ada; I like short answers."}
    memory = ConversationMemory(MODEL, 300, pinned=[SYSTEM])
    for i in range(20):
        memory.extend([user(i), assistant(i)])
    dropped = memory.pin(profile)
    assert dropped  # room was made for it
    assert memory.messages()[:2] == [SYSTEM, profile]
    for i in range(20, 40):
        memory.extend([user(i), assistant(i)])
        assert check(memory)[:2] == [SYSTEM, profile]
    memory.clear()
    assert memory.messages() == [SYSTEM, profile]
    with pytest.raises(ContextWindowExceeded):
        memory.pin({"role": "system", "content": "rule " * 400})
    assert memory.pinned == [SYSTEM, profile]


def test_pins_that_do_not_fit_the_budget_are_refused() -> None:
    with pytest.raises(ContextWindowExceeded):
        ConversationMemory(MODEL, 10, pinned=[{"role": "system", "content": "x " * 50}])


def test_idle_turns_expire(clock: ManualClock) -> None:
    memory = ConversationMemory(MODEL, 10_000, max_age=timedelta(minutes=30), clock=clock)
    memory.extend([user(1), assistant(1)])
    clock.advance(20 * 60)
    memory.extend([user(2), assistant(2)])
    clock.advance(15 * 60)  # turn 1 is now 35 minutes old, turn 2 is 15
    assert memory.messages() == [user(2), assistant(2)]
    # A turn's age runs from its last message: an ongoing turn does not expire.
    memory.add(user(3))
    clock.advance(25 * 60)  # turn 2: 40 minutes old, turn 3: 25
    assert memory.add(call(3)) == [user(2), assistant(2)]
    clock.advance(25 * 60)  # turn 3 began 50 minutes ago, but its last message is 25 old
    assert memory.add(result(3)) == []
    assert memory.messages() == [user(3), call(3), result(3)]
    clock.advance(31 * 60)  # idle for longer than max_age: everything goes
    assert memory.expire() == [user(3), call(3), result(3)]
    assert memory.messages() == [] and memory.tokens == count_messages([], MODEL)


def test_expiry_keeps_pins_and_does_not_summarize(clock: ManualClock) -> None:
    seen: list[list[Any]] = []
    memory = ConversationMemory(
        MODEL,
        10_000,
        pinned=[SYSTEM],
        max_age=60,
        clock=clock,
        summarizer=lambda msgs: seen.append(msgs) or "s",
    )
    memory.extend([user(1), assistant(1)])
    clock.advance(61)
    assert memory.messages() == [SYSTEM] and len(memory) == 1 and seen == []


def test_summaries_fold_dropped_turns() -> None:
    calls: list[list[Any]] = []

    def summarize(messages: list[Any]) -> str:
        calls.append(messages)
        folded = sum(1 for m in messages if m["role"] == "user")
        previous = messages[0]["content"] if messages[0]["role"] == "system" else ""
        count = int(previous.rsplit(" ", 1)[-1]) if previous else 0
        return f"user turns so far: {count + folded}"

    memory = ConversationMemory(
        MODEL, 400, pinned=[SYSTEM], summarizer=summarize, summary_max_tokens=40
    )
    for i in range(50):
        memory.extend([user(i), assistant(i)])
        messages = check(memory)
    assert calls and calls[0][0]["role"] == "user"  # no previous summary the first time
    assert calls[-1][0] == calls[-2][0] or calls[-1][0]["role"] == "system"
    summary = memory.summary
    assert summary is not None and messages[1] is summary and messages[0] == SYSTEM
    kept_turns = sum(1 for m in window(memory) if m["role"] == "user")
    assert summary["content"].endswith(f"user turns so far: {50 - kept_turns}")


def test_a_long_summary_is_cut_to_its_budget() -> None:
    memory = ConversationMemory(
        MODEL,
        300,
        summarizer=lambda msgs: "This happened. " * 200,
        summary_max_tokens=30,
    )
    for i in range(20):
        memory.extend([user(i), assistant(i)])
        check(memory)
    summary = memory.summary
    assert summary is not None and counter_for(MODEL).message(summary) <= 30
    assert summary["content"].endswith("This happened. …")
    parts = ConversationMemory(
        MODEL,
        300,
        summarizer=lambda msgs: {
            "role": "system",
            "content": [{"type": "text", "text": "x" * 999}],
        },
        summary_max_tokens=30,
    )
    for i in range(20):
        parts.extend([user(i), assistant(i)])
        check(parts)
    assert parts.summary is None  # content parts cannot be cut: no summary rather than overflow


def test_adding_a_turn_counts_only_that_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[object] = []
    original = TokenCounter.message

    def spy(self: TokenCounter, message: Any) -> int:
        counted.append(message)
        return original(self, message)

    memory = ConversationMemory(MODEL, 5_000, pinned=[SYSTEM])
    monkeypatch.setattr(TokenCounter, "message", spy)
    for i in range(1_000):
        memory.add(user(i))
        memory.add(assistant(i))
        assert memory.tokens <= 5_000
    assert len(counted) == 2_000  # each message once, whatever the history's length
    monkeypatch.undo()
    assert memory.tokens == count_messages(memory.messages(), MODEL)


def test_concurrent_adds_keep_the_invariant() -> None:
    memory = ConversationMemory(MODEL, 600, pinned=[SYSTEM])

    def worker(n: int) -> None:
        for i in range(100):
            memory.add(user(n * 1000 + i, 3))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(memory)
    assert len(memory) == len(memory.messages())


def test_repr_and_len() -> None:
    memory = ConversationMemory(MODEL, 1000, pinned=[SYSTEM])
    memory.extend([user(1), assistant(1)])
    assert len(memory) == 3
    assert "turns=1" in repr(memory) and "gpt-4o" in repr(memory)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_tokens": 0}, ConfigurationError),
        ({"max_tokens": True}, ConfigurationError),
        ({"max_age": 0}, ConfigurationError),
        ({"max_age": float("inf")}, ConfigurationError),
        ({"max_age": "1h"}, ConfigurationError),
        ({"summary_max_tokens": 10}, ConfigurationError),
        ({"summarizer": lambda m: "s", "summary_max_tokens": 0}, ConfigurationError),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], error: type[Exception]) -> None:
    args = {"max_tokens": 100, **kwargs}
    with pytest.raises(error):
        ConversationMemory(MODEL, **args)


def test_messages_need_a_role() -> None:
    with pytest.raises(InvalidRequestError):
        ConversationMemory(MODEL, 100).add({"content": "hi"})


kinds = st.sampled_from(["user", "assistant", "toolturn", "tool"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.tuples(kinds, texts), max_size=40),
    budget=st.integers(40, 400),
    model=st.sampled_from(["gpt-4o", "gpt-4", "claude-sonnet-4-5"]),
)
def test_memory_properties(steps: list[tuple[str, str]], budget: int, model: str) -> None:
    memory = ConversationMemory(model, budget, pinned=[{"role": "system", "content": "Be kind."}])
    for n, (kind, text) in enumerate(steps):
        if kind == "toolturn":
            batch = [call(n), result(n, 2)]
        elif kind == "tool":
            batch = [{"role": "tool", "tool_call_id": "x", "content": text}]
        else:
            batch = [{"role": kind, "content": text}]
        for message in batch:
            before = (memory.messages(), memory.tokens)
            try:
                memory.add(message)
            except ContextWindowExceeded:
                assert (memory.messages(), memory.tokens) == before
            messages = memory.messages()
            assert memory.tokens == count_messages(messages, model) <= budget
            assert messages[0]["content"] == "Be kind."
            for m in messages:
                content = m.get("content")
                if isinstance(content, str):
                    assert content.encode("utf-8").decode("utf-8") == content


def test_trimming_keeps_a_legacy_function_call_with_its_result() -> None:
    messages = [
        {"role": "user", "content": "q1 " * 50},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": "r " * 30},
        {"role": "user", "content": "q2"},
    ]
    counter = counter_for("gpt-4")
    for budget in range(counter.messages(messages[-1:]), counter.messages(messages), 3):
        kept = fit_messages(messages, counter, budget).messages
        assert kept[0]["role"] != "function"


# --------------------------------------------------------------------------- Redis


@pytest.fixture(
    params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)],
)
def redis_client(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "fakeredis":
        pytest.importorskip("lupa", reason="fakeredis runs Lua with lupa")
        import fakeredis

        yield fakeredis.FakeRedis()
        return
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: Any) -> Iterator[str]:
    value = f"gt-mem-{uuid.uuid4().hex[:12]}:"
    yield value
    keys = list(redis_client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        redis_client.delete(*keys)


def shared(client: Any, prefix: str, max_tokens: int = 400, **kw: Any) -> RedisConversationMemory:
    return RedisConversationMemory(client, "conv-1", MODEL, max_tokens, prefix=prefix, **kw)


def test_redis_stays_within_budget_dropping_whole_turns(redis_client: Any, prefix: str) -> None:
    memory = shared(redis_client, prefix, pinned=[SYSTEM])
    dropped: list[Any] = []
    for i in range(150):
        dropped += memory.add(user(i))
        dropped += memory.add(assistant(i))
        messages = check(memory)
        assert messages[0] == SYSTEM and messages[1]["role"] == "user"
    kept = messages[1:]
    assert dropped + kept == [m for i in range(150) for m in (user(i), assistant(i))]
    assert memory.tokens > 400 - 60


def test_redis_is_shared_between_workers(redis_client: Any, prefix: str) -> None:
    a = shared(redis_client, prefix, pinned=[SYSTEM])
    b = shared(redis_client, prefix, pinned=[SYSTEM])
    a.add(user(1))
    b.add(assistant(1))
    assert a.messages() == b.messages() == [SYSTEM, user(1), assistant(1)]
    assert a.tokens == b.tokens == count_messages(a.messages(), MODEL)
    other = RedisConversationMemory(redis_client, "conv-2", MODEL, 400, prefix=prefix)
    assert other.messages() == []
    a.clear()
    assert b.messages() == [SYSTEM] and redis_client.exists(*a.keys) == 0


def test_redis_tool_calls_stay_with_their_results(redis_client: Any, prefix: str) -> None:
    memory = shared(redis_client, prefix, 300)
    for i in range(30):
        memory.extend([user(i, 5), call(i), result(i), assistant(i, 5)])
        assert check(memory)[0]["role"] == "user"


def test_redis_refuses_a_newest_turn_that_does_not_fit(redis_client: Any, prefix: str) -> None:
    memory = shared(redis_client, prefix, 200)
    memory.extend([user(1), assistant(1)])
    before = memory.messages()
    with pytest.raises(ContextWindowExceeded, match="nothing was added"):
        memory.extend([user(2), assistant(2, 400)])
    assert memory.messages() == before  # all or nothing
    with pytest.raises(ContextWindowExceeded):
        RedisConversationMemory(redis_client, "c", MODEL, 5, pinned=[SYSTEM], prefix=prefix)


def test_redis_ttl_expires_the_conversation(redis_client: Any, prefix: str) -> None:
    memory = shared(redis_client, prefix, ttl=timedelta(minutes=10))
    memory.add(user(1))
    assert 0 < redis_client.pttl(memory.keys[0]) <= 600_000
    assert 0 < redis_client.pttl(memory.keys[1]) <= 600_000
    forever = RedisConversationMemory(redis_client, "kept", MODEL, 400, prefix=prefix)
    forever.add(user(2))
    assert redis_client.pttl(forever.keys[0]) == -1  # no ttl given: none set


def test_redis_decoded_responses_and_unicode() -> None:
    pytest.importorskip("lupa")
    import fakeredis

    client = fakeredis.FakeRedis(decode_responses=True)
    memory = RedisConversationMemory(client, "u", MODEL, 300)
    message = {"role": "user", "content": "日本語 🚀 <|endoftext|>\ttab"}
    memory.add(message)
    assert memory.messages() == [message]
    assert memory.tokens == count_messages([message], MODEL)


def test_redis_rejects_bad_input(redis_client: Any, prefix: str) -> None:
    memory = shared(redis_client, prefix)
    with pytest.raises(InvalidRequestError):
        memory.add({"content": "no role"})
    assert memory.extend([]) == []
    with pytest.raises(ConfigurationError):
        RedisConversationMemory(redis_client, "a{b}", MODEL, 100, prefix=prefix)
    with pytest.raises(ConfigurationError):
        RedisConversationMemory(redis_client, "a", MODEL, 100, ttl=0, prefix=prefix)


@pytest.fixture
def real_redis_prefix() -> Iterator[str]:
    import redis

    value = f"gt-mem-{uuid.uuid4().hex[:12]}:"
    yield value
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    keys = list(client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.redis
def test_redis_concurrent_workers_never_exceed_the_budget(real_redis_prefix: str) -> None:
    import redis

    prefix = real_redis_prefix
    pool = redis.ConnectionPool(host=REDIS_HOST, port=REDIS_PORT, max_connections=32)
    errors: list[BaseException] = []
    evicted: list[Any] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        memory = RedisConversationMemory(
            redis.Redis(connection_pool=pool), "busy", MODEL, 500, prefix=prefix
        )
        try:
            for i in range(25):
                out = memory.extend([user(n * 100 + i, 3), assistant(n * 100 + i, 5)])
                with lock:
                    evicted.extend(out)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    memory = RedisConversationMemory(
        redis.Redis(connection_pool=pool), "busy", MODEL, 500, prefix=prefix
    )
    messages = check(memory)
    # Every message is either still there or was evicted, exactly once.
    everything = [m for n in range(16) for i in range(25) for m in (user(n * 100 + i, 3),)]
    seen = [m["content"] for m in messages + evicted if m["role"] == "user"]
    assert sorted(seen) == sorted(m["content"] for m in everything)
    # extend() is atomic: each worker's turn stays whole, user then assistant.
    for i in range(0, len(messages), 2):
        assert messages[i]["role"] == "user" and messages[i + 1]["role"] == "assistant"
    pool.disconnect()


def test_chat_example_stays_in_budget_over_500_turns() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "chat_memory.py"
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr  # it asserts the budget on every turn
    assert "500 turns, budget 3000 tokens" in done.stdout
    assert "expired after the pause" in done.stdout and "summary: Summary" in done.stdout
