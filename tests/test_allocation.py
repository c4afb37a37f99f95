"""Budget allocation between prompt parts, and the prompt builder that always fits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.catalog.models import model_info
from guardrail.counting.messages import count_messages, count_text
from guardrail.errors import ConfigurationError, ContextWindowExceeded, InvalidRequestError
from guardrail.prompt.allocation import BudgetPart, TokenBudget, allocate
from guardrail.prompt.builder import PromptBuilder
from guardrail.prompt.packing import Document
from tests.test_truncation import texts

# --------------------------------------------------------------------------- allocate


def test_shares_with_headroom() -> None:
    result = allocate(
        1000,
        [BudgetPart("context", 5000, share=0.3), BudgetPart("history", 5000, share=0.5)],
        headroom=0.2,
    )
    assert result.headroom == 200
    assert (result["context"].granted, result["history"].granted) == (300, 500)
    assert result["context"].cut == 4700 and result.unused == 0


def test_unused_share_flows_to_the_parts_that_need_it() -> None:
    result = allocate(
        1000,
        [
            BudgetPart("context", 5000, share=0.3),
            BudgetPart("history", 120, share=0.5),
            BudgetPart("user", 30, share=0.2),
        ],
        headroom=0.2,
    )
    assert result["history"].granted == 120 and result["user"].granted == 30
    assert result["context"].granted == 800 - 150
    assert result.granted + result.headroom == 1000


def test_everything_fits_leaves_the_rest_unused() -> None:
    result = allocate(1000, [BudgetPart("a", 100), BudgetPart("b", 200)])
    assert [p.granted for p in result.parts.values()] == [100, 200]
    assert result.unused == 700


def test_priorities_serve_higher_parts_first() -> None:
    result = allocate(
        1000,
        [
            BudgetPart("context", 5000, share=3),
            BudgetPart("history", 5000, share=5),
            BudgetPart("user", 400, priority=1),
        ],
    )
    assert result["user"].granted == 400
    assert (result["context"].granted, result["history"].granted) == (225, 375)
    starved = allocate(100, [BudgetPart("low", 50), BudgetPart("high", 500, priority=2)])
    assert (starved["high"].granted, starved["low"].granted) == (100, 0)


def test_minimums_come_first_and_may_use_the_headroom() -> None:
    result = allocate(
        1000,
        [BudgetPart("high", 5000, priority=1), BudgetPart("low", 300, min_tokens=250)],
        headroom=0.5,
    )
    assert result["low"].granted == 250 and result["high"].granted == 250
    squeezed = allocate(1000, [BudgetPart("must", 900, min_tokens=900)], headroom=0.5)
    assert squeezed["must"].granted == 900 and squeezed.headroom == 100
    with pytest.raises(InvalidRequestError, match="minimums"):
        allocate(100, [BudgetPart("a", 80, min_tokens=80), BudgetPart("b", 30, min_tokens=30)])


def test_headroom_in_tokens() -> None:
    result = allocate(1000, [BudgetPart("a", 5000)], headroom=150)
    assert result.headroom == 150 and result["a"].granted == 850
    assert allocate(100, [BudgetPart("a", 10)], headroom=500).headroom == 100


def test_rounding_gives_every_token_out() -> None:
    result = allocate(10, [BudgetPart(n, 100) for n in "abc"])
    assert sorted(p.granted for p in result.parts.values()) == [3, 3, 4]
    assert result.unused == 0


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: BudgetPart("", 10), ConfigurationError),
        (lambda: BudgetPart("a", -1), InvalidRequestError),
        (lambda: BudgetPart("a", 10, share=0), ConfigurationError),
        (lambda: BudgetPart("a", 10, share=float("inf")), ConfigurationError),
        (lambda: BudgetPart("a", 10, priority=1.5), ConfigurationError),  # type: ignore[arg-type]
        (lambda: allocate(10, [BudgetPart("a", 1), BudgetPart("a", 2)]), InvalidRequestError),
        (lambda: allocate(10, [BudgetPart("a", 1)], headroom=1.0), ConfigurationError),
        (lambda: allocate(10, [BudgetPart("a", 1)], headroom=-1), ConfigurationError),
        (lambda: allocate(-5, []), InvalidRequestError),
        (lambda: TokenBudget("gpt-4o", reserve_output=200_000), ConfigurationError),
        (lambda: TokenBudget("gpt-4o", reserve_output=10, context_window=0), ConfigurationError),
    ],
)
def test_bad_budgets(make: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        make()


parts_strategy = st.lists(
    st.builds(
        BudgetPart,
        name=st.just("x"),
        demand=st.integers(0, 5000),
        share=st.floats(0.01, 10),
        priority=st.integers(0, 2),
        min_tokens=st.integers(0, 300),
    ),
    max_size=6,
).map(
    lambda parts: [
        BudgetPart(f"p{i}", p.demand, p.share, p.priority, p.min_tokens)
        for i, p in enumerate(parts)
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    available=st.integers(0, 10_000),
    parts=parts_strategy,
    headroom=st.one_of(st.floats(0, 0.99), st.integers(0, 2000)),
)
def test_allocation_properties(
    available: int, parts: list[BudgetPart], headroom: float | int
) -> None:
    mins = sum(min(p.min_tokens, p.demand) for p in parts)
    if mins > available:
        with pytest.raises(InvalidRequestError):
            allocate(available, parts, headroom=headroom)
        return
    result = allocate(available, parts, headroom=headroom)
    granted = {p.name: result[p.name].granted for p in parts}
    # Never more than the total, never more than asked, never less than the minimum.
    assert result.granted + result.headroom <= available
    assert result.unused >= 0
    for p in parts:
        assert min(p.min_tokens, p.demand) <= granted[p.name] <= p.demand
    hungry = [p for p in parts if granted[p.name] < p.demand]
    # Work-conserving: while a part is cut, nothing is left over.
    if hungry:
        assert result.unused == 0
    for h in hungry:
        for p in parts:
            if p.priority < h.priority:  # lower priorities get nothing beyond minimums
                assert granted[p.name] == min(p.min_tokens, p.demand)
            if p.priority == h.priority and p is not h:
                # Weighted fairness, up to a token of rounding.
                extra_p = granted[p.name] - min(p.min_tokens, p.demand)
                extra_h = granted[h.name] - min(h.min_tokens, h.demand)
                slack = 1 / p.share + 1 / h.share  # each may be a token off its fair share
                assert extra_p / p.share <= extra_h / h.share + slack + 1e-6


def test_token_budget_subtracts_the_reserve_and_fixed_parts() -> None:
    budget = TokenBudget("gpt-4", reserve_output=1000, headroom=0.1)
    assert budget.limit == model_info("gpt-4").context_window - 1000 == 7192
    result = budget.allocate(
        [BudgetPart("history", 10_000)], fixed={"system": 150, "reply_priming": 3}
    )
    assert result.limit == 7192 and result.reserve_output == 1000
    assert result.available == 7192 - 153 and result.headroom == 704
    assert sum(result.fixed.values()) + result.headroom + result.granted <= result.limit
    with pytest.raises(ContextWindowExceeded, match="fixed parts"):
        budget.allocate([BudgetPart("history", 10)], fixed={"system": 8000})


# --------------------------------------------------------------------------- builder

SYSTEM = "You are a careful assistant. Answer from the context; say when you do not know."


def turn(i: int, words: int = 30) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"Question {i}: " + "tell me more " * (words // 3)},
        {"role": "assistant", "content": f"Answer {i}: " + "here is more " * words},
    ]


def tool_turn(i: int) -> list[dict[str, Any]]:
    call = {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": "lookup", "arguments": json.dumps({"q": f"item {i}"})},
    }
    return [
        {"role": "user", "content": f"Look up item {i}"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{i}", "content": f"item {i}: " + "data " * 40},
        {"role": "assistant", "content": f"Item {i} is fine."},
    ]


def docs(n: int, words: int = 120) -> list[Document]:
    return [
        Document(
            " ".join(f"Fact {i}.{j} about the topic." for j in range(words // 5)),
            score=1 - i / n,
            metadata={"id": i},
        )
        for i in range(n)
    ]


def assert_fits(prompt: Any, model: str, limit: int, tools: Any = None) -> None:
    assert count_messages(prompt.messages, model, tools=tools) == prompt.prompt_tokens
    assert prompt.prompt_tokens <= prompt.limit == limit


@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o", "claude-sonnet-4-5"])
def test_a_big_prompt_fits_the_window_minus_the_reserve(model: str) -> None:
    builder = PromptBuilder(model, reserve_output=1000, headroom=0.1)
    history = [m for i in range(2000) for m in turn(i)]
    prompt = builder.build(
        system=SYSTEM,
        context=docs(3000),
        history=history,
        user="What does fact 3.7 say? " * 10,
    )
    window = model_info(model).context_window
    assert_fits(prompt, model, window - 1000)
    # Nearly all of it is used: what is left is the headroom and less than one message.
    assert prompt.room - prompt.allocation.headroom < 130
    assert [m["role"] for m in prompt.messages[:1]] == ["system"]
    assert prompt.messages[-1] == {"role": "user", "content": "What does fact 3.7 say? " * 10}
    ctx = prompt.parts["context"]
    assert ctx.dropped and ctx.used <= ctx.granted < ctx.requested
    hist = prompt.parts["history"]
    assert hist.dropped == history[: len(hist.dropped)]  # the oldest went
    kept = prompt.messages[1 : 1 + len(history) - len(hist.dropped)]
    assert kept == history[len(hist.dropped) :]
    assert prompt.parts["user"].truncated is False


def test_shares_split_context_and_history() -> None:
    builder = PromptBuilder(
        "gpt-4",
        reserve_output=1192,
        headroom=0.2,
        shares={"context": 0.3, "history": 0.5},
    )
    prompt = builder.build(
        system=SYSTEM,
        context=docs(100),
        history=[m for i in range(200) for m in turn(i)],
        user="And what about fact 7?",
    )
    alloc = prompt.allocation  # the plan: the user input first, then context:history 3:5
    assert alloc["user"].granted == alloc["user"].requested
    share_total = alloc.available - alloc.headroom - alloc["user"].granted
    assert abs(alloc["context"].granted - share_total * 3 / 8) <= 1
    assert abs(alloc["history"].granted - share_total * 5 / 8) <= 1
    # What a part could not use (whole documents, whole messages) went to the other.
    ctx, hist = prompt.parts["context"], prompt.parts["history"]
    assert ctx.used + hist.used <= share_total
    assert share_total - (ctx.used + hist.used) < 100
    assert_fits(prompt, "gpt-4", 7000)


def test_without_context_history_takes_it_all() -> None:
    builder = PromptBuilder("gpt-4", reserve_output=1000)
    history = [m for i in range(300) for m in turn(i)]
    prompt = builder.build(system=SYSTEM, history=history, user="and now?")
    assert prompt.parts["context"].requested == 0
    assert prompt.room < 200  # one more turn would not have fitted
    assert_fits(prompt, "gpt-4", 7192)


def test_a_part_s_unused_grant_flows_to_the_others() -> None:
    # One useful document, then a long one that cannot be cut usefully: most of the
    # context grant is left over, and history gets it in the second pass.
    documents = [Document("Short and relevant. " * 20, 0.9), Document("Long. " * 5000, 0.5)]
    builder = PromptBuilder(
        "gpt-4",
        reserve_output=1000,
        context_window=3000,
        shares={"context": 1, "history": 1},
        min_tokens_for_partial=5000,
    )
    history = [m for i in range(100) for m in turn(i)]
    prompt = builder.build(context=documents, history=history, user="q")
    ctx, hist = prompt.parts["context"], prompt.parts["history"]
    assert ctx.used < 200 and ctx.dropped == [documents[1]]
    assert hist.used > 1500  # more than its first-pass half
    assert prompt.room < 150
    assert_fits(prompt, "gpt-4", 2000)


def test_message_order_and_examples() -> None:
    examples = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    builder = PromptBuilder("gpt-4o", reserve_output=500, context_role="user")
    prompt = builder.build(
        system=SYSTEM,
        examples=examples,
        context=["The sky is blue."],
        history=turn(1),
        user="What colour is the sky?",
    )
    assert prompt.messages == [
        {"role": "system", "content": SYSTEM},
        *examples,
        *turn(1),
        {"role": "user", "content": "Use the following context to answer.\n\nThe sky is blue."},
        {"role": "user", "content": "What colour is the sky?"},
    ]
    assert prompt.context is not None and prompt.context.text == "The sky is blue."
    assert prompt.parts["context"].cut == 0 and prompt.parts["history"].cut == 0


def test_a_huge_user_input_is_cut_in_the_middle() -> None:
    question = "Here is my log:\n" + "line of noise\n" * 5000 + "Why does it fail?"
    builder = PromptBuilder("gpt-4", reserve_output=1000)
    prompt = builder.build(system=SYSTEM, user=question)
    content = prompt.messages[-1]["content"]
    assert content.startswith("Here is my log:") and content.endswith("Why does it fail?")
    assert "…" in content and prompt.parts["user"].truncated
    assert_fits(prompt, "gpt-4", 7192)
    strict = PromptBuilder("gpt-4", reserve_output=1000, truncate_user=False)
    with pytest.raises(ContextWindowExceeded):
        strict.build(system=SYSTEM, user=question)


def test_tool_calls_stay_with_their_results() -> None:
    history = [m for i in range(60) for m in tool_turn(i)]
    builder = PromptBuilder("gpt-4o", reserve_output=100, context_window=1200)
    for window in range(400, 1200, 37):
        builder = PromptBuilder("gpt-4o", reserve_output=100, context_window=window)
        prompt = builder.build(system=SYSTEM, history=history, user="next")
        kept = prompt.messages[1:-1]
        assert kept == history[len(history) - len(kept) :]
        if kept:
            assert kept[0]["role"] != "tool"
        for i, m in enumerate(kept):
            if m["role"] == "tool":
                assert kept[i - 1].get("tool_calls") or kept[i - 1]["role"] == "tool"
        assert_fits(prompt, "gpt-4o", window - 100)


def test_without_user_input_the_latest_turn_is_required() -> None:
    history = [m for i in range(50) for m in tool_turn(i)][:-1]  # ends with a tool result
    builder = PromptBuilder("gpt-4o", reserve_output=100, context_window=600)
    prompt = builder.build(system=SYSTEM, context=docs(20), history=history)
    kept = prompt.messages[1:-1]  # between the system prompt and the context
    assert kept[-3:] == history[-3:]  # the user message, the call, the result
    assert prompt.messages[-1]["content"].startswith("Use the following context")
    assert_fits(prompt, "gpt-4o", 500)
    tiny = PromptBuilder("gpt-4o", reserve_output=100, context_window=150)
    with pytest.raises(ContextWindowExceeded):
        tiny.build(system=SYSTEM, history=history)


def test_tools_are_a_fixed_part() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look an item up.",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    builder = PromptBuilder("gpt-4o", reserve_output=100, context_window=800)
    prompt = builder.build(
        system=SYSTEM, history=[m for i in range(40) for m in turn(i)], user="q", tools=tools
    )
    assert prompt.allocation.fixed["tools"] > 0
    assert_fits(prompt, "gpt-4o", 700, tools=tools)


def test_fixed_parts_that_do_not_fit_are_refused() -> None:
    builder = PromptBuilder("gpt-4o", reserve_output=100, context_window=200)
    with pytest.raises(ContextWindowExceeded, match="fixed parts"):
        builder.build(system="long system prompt " * 100, user="hi")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shares": {"memory": 1}},
        {"shares": {"context": 0}},
        {"priorities": {"user": "high"}},
        {"context_template": "no placeholder"},
        {"separator": None},
        {"context_order": "random"},
        {"user_truncation": "words"},
        {"min_tokens_for_partial": 0},
    ],
)
def test_bad_builder_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        PromptBuilder("gpt-4o", reserve_output=100, **kwargs)


def test_bad_build_inputs() -> None:
    builder = PromptBuilder("gpt-4o", reserve_output=100)
    with pytest.raises(InvalidRequestError):
        builder.build(user=["not", "a", "str"])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        builder.build(system=3)  # type: ignore[arg-type]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    window=st.integers(150, 1500),
    reserve=st.integers(0, 100),
    system=st.one_of(st.none(), texts),
    documents=st.lists(st.builds(Document, texts, st.floats(0, 1)), max_size=5),
    history=st.lists(texts, max_size=8),
    user=st.one_of(st.none(), texts),
    model=st.sampled_from(["gpt-4o", "gpt-4", "claude-sonnet-4-5"]),
    headroom=st.floats(0, 0.5),
)
def test_built_prompts_always_fit(
    window: int,
    reserve: int,
    system: str | None,
    documents: list[Document],
    history: list[str],
    user: str | None,
    model: str,
    headroom: float,
) -> None:
    builder = PromptBuilder(model, reserve_output=reserve, context_window=window, headroom=headroom)
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text}
        for i, text in enumerate(history)
    ]
    try:
        prompt = builder.build(system=system, context=documents, history=messages, user=user)
    except ContextWindowExceeded:
        # Only when the system prompt (or the required latest turn) cannot fit.
        required = count_messages([{"role": "system", "content": system or ""}], model)
        assert required > window - reserve - 8 or user is None
        return
    assert_fits(prompt, model, window - reserve)
    for message in prompt.messages:
        content = message["content"]
        assert content.encode("utf-8").decode("utf-8") == content
    if user is not None:
        last = prompt.messages[-1]["content"]
        assert count_text(last, model) <= count_text(user, model)
    for name, part in prompt.parts.items():
        assert part.used <= part.granted <= part.requested or part.requested == 0, name


def test_rag_example_runs_offline() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "rag_prompt.py"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "tokens of 2400 allowed" in done.stdout and "dropped:" in done.stdout
