"""Sliding-window trimming: what stays, what goes, and never an orphaned tool result."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guardrail
from guardrail import ContextWindowExceeded, fit_messages, trim_messages
from guardrail.counting.messages import counter_for

MODEL = "gpt-4o"


def msg(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def tool_turn(i: int) -> list[dict[str, Any]]:
    call_id = f"call_{i}"
    return [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "lookup", "arguments": f'{{"q": "item {i}"}}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": f"result {i} " + "data " * 40},
    ]


def conversation(turns: int) -> list[dict[str, Any]]:
    messages = [msg("system", "You are terse.")]
    for i in range(turns):
        messages.append(msg("user", f"question {i} " + "blah " * 30))
        messages.extend(tool_turn(i))
        messages.append(msg("assistant", f"answer {i} " + "blah " * 30))
    messages.append(msg("user", "and finally?"))
    return messages


def test_fits_untouched_when_it_fits() -> None:
    messages = conversation(2)
    budget = guardrail.count_messages(messages, MODEL)
    assert trim_messages(messages, MODEL, budget) == messages


def test_keeps_system_and_latest_and_a_contiguous_recent_window() -> None:
    messages = conversation(10)
    budget = guardrail.count_messages(messages, MODEL) // 3
    kept = trim_messages(messages, MODEL, budget)
    assert guardrail.count_messages(kept, MODEL) <= budget
    assert kept[0] == messages[0]
    assert kept[-1] == messages[-1]
    tail = kept[1:]
    assert tail == messages[len(messages) - len(tail) :]
    assert len(kept) < len(messages)


def test_never_orphans_a_tool_result() -> None:
    messages = conversation(8)
    total = guardrail.count_messages(messages, MODEL)
    for budget in range(total // 10, total, max(1, total // 60)):
        try:
            kept = trim_messages(messages, MODEL, budget)
        except ContextWindowExceeded:
            continue
        ids = {
            call["id"]
            for m in kept
            if m["role"] == "assistant"
            for call in m.get("tool_calls") or ()
        }
        for m in kept:
            if m["role"] == "tool":
                assert m["tool_call_id"] in ids, f"orphan at budget {budget}"
        assert kept[1]["role"] != "tool"


def test_latest_turn_with_its_tool_calls_is_kept_whole() -> None:
    messages = [msg("system", "s"), msg("user", "old " * 200), msg("user", "now"), *tool_turn(1)]
    need = guardrail.count_messages([messages[0], *messages[2:]], MODEL)
    kept = trim_messages(messages, MODEL, need)
    assert kept == [messages[0], *messages[2:]]


def test_raises_rather_than_drop_the_question() -> None:
    messages = [msg("system", "rules " * 50), msg("user", "old"), msg("user", "question " * 50)]
    need = guardrail.count_messages([messages[0], messages[2]], MODEL)
    with pytest.raises(ContextWindowExceeded) as info:
        trim_messages(messages, MODEL, need - 1)
    assert info.value.prompt_tokens == need and info.value.limit == need - 1


def test_developer_messages_are_pinned_wherever_they_are() -> None:
    messages = [
        msg("user", "first " * 100),
        msg("developer", "policy"),
        msg("assistant", "reply " * 100),
        msg("user", "now"),
    ]
    need = guardrail.count_messages([messages[1], messages[3]], MODEL)
    kept = trim_messages(messages, MODEL, need)
    assert kept == [messages[1], messages[3]]


def test_tools_count_against_the_budget() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a thing up " * 20,
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    messages = conversation(3)
    without = trim_messages(messages, MODEL, 400)
    with_tools = trim_messages(messages, MODEL, 400, tools=tools)
    assert len(with_tools) < len(without)
    assert guardrail.count_messages(with_tools, MODEL, tools=tools) <= 400


def test_fit_messages_reports_what_was_dropped_and_max_history() -> None:
    messages = conversation(5)
    counter = counter_for(MODEL)
    result = fit_messages(messages, counter, 10**9, max_history_messages=4)
    assert result.dropped_count == len(messages) - len(result.messages)
    history = [m for m in result.messages if m["role"] != "system"][:-1]
    assert len(history) <= 4
    assert result.prompt_tokens == guardrail.count_messages(result.messages, MODEL)
    assert [m for m in messages if m not in result.messages] == result.dropped


def test_summarizer_folds_dropped_turns_into_one_message() -> None:
    messages = conversation(10)
    seen: list[list[dict[str, Any]]] = []

    def summarize(dropped: list[Any]) -> str:
        seen.append(dropped)
        return f"{len(dropped)} earlier messages about items"

    budget = guardrail.count_messages(messages, MODEL) // 3
    result = fit_messages(messages, counter_for(MODEL), budget, summarizer=summarize)
    assert result.summary is not None and seen
    assert result.messages[0] == messages[0]
    assert result.messages[1] is result.summary
    assert guardrail.count_messages(result.messages, MODEL) == result.prompt_tokens <= budget
    assert result.messages[-1] == messages[-1]


def test_guard_uses_the_summarizer(server) -> None:
    import openai

    guard = guardrail.Guard(
        guardrail.Policy(trim=True, max_input_tokens=600),
        summarizer=lambda dropped: f"({len(dropped)} messages summarised)",
    )
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    client.chat.completions.create(model=MODEL, messages=conversation(10))
    sent = server.chat_requests[-1].json["messages"]
    assert "messages summarised" in sent[1]["content"]


def test_malformed_input_is_a_clear_error() -> None:
    with pytest.raises(guardrail.InvalidRequestError, match="messages"):
        trim_messages("hello", MODEL, 100)  # type: ignore[arg-type]
    with pytest.raises(guardrail.InvalidRequestError, match=r"messages\[1\]"):
        trim_messages([msg("user", "a"), "b"], MODEL, 100)  # type: ignore[list-item]
    with pytest.raises(guardrail.InvalidRequestError, match="max_tokens"):
        trim_messages([msg("user", "a")], MODEL, 0)


roles = st.sampled_from(["system", "user", "assistant", "tool-pair", "developer"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(roles, st.integers(1, 60)), min_size=1, max_size=30), st.data())
def test_property_window_rules_hold(shape: list[tuple[str, int]], data: st.DataObject) -> None:
    messages: list[dict[str, Any]] = []
    for i, (role, words) in enumerate(shape):
        if role == "tool-pair":
            messages.extend(tool_turn(i))
        else:
            messages.append(msg(role, "w " * words))
    messages.append(msg("user", "q"))
    total = guardrail.count_messages(messages, MODEL)
    budget = data.draw(st.integers(1, total))
    try:
        kept = trim_messages(messages, MODEL, budget)
    except ContextWindowExceeded:
        pinned = [m for m in messages if m["role"] in ("system", "developer")]
        assert guardrail.count_messages([*pinned, messages[-1]], MODEL) > budget
        return
    assert guardrail.count_messages(kept, MODEL) <= budget
    assert kept[-1] is messages[-1]
    assert all(m in kept for m in messages if m["role"] in ("system", "developer"))
    positions = [i for i, m in enumerate(messages) if any(m is k for k in kept)]
    history = [i for i in positions if messages[i]["role"] not in ("system", "developer")]
    assert history == list(range(history[0], history[0] + len(history))) or all(
        messages[j]["role"] in ("system", "developer")
        for j in range(history[0], history[-1] + 1)
        if j not in history
    )
    assert not kept or kept[0]["role"] != "tool"


def test_sdk_message_objects_in_the_history_are_understood() -> None:
    from openai.types.chat import ChatCompletionMessage

    old = ChatCompletionMessage(role="assistant", content="an old answer " * 50)
    messages = [msg("system", "s"), msg("user", "q1 " * 50), old, msg("user", "now")]
    need = guardrail.count_messages([messages[0], messages[3]], MODEL)
    assert trim_messages(messages, MODEL, need) == [messages[0], messages[3]]
    everything = guardrail.count_messages(messages, MODEL)
    assert trim_messages(messages, MODEL, everything)[2] is old
