"""A 500-turn chat whose memory never leaves its token budget.

Offline: replies come from a fake model (deterministic, some turns call a tool), time is a
``ManualClock`` (one turn every 30 seconds, and one two-hour pause), and the summarizer is
a stand-in for a cheap model call. Every prompt sent is checked against the budget with
``count_messages``.

    python examples/chat_memory.py
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from guardrail import ManualClock
from guardrail.counting.messages import count_messages
from guardrail.prompt.conversation import ConversationMemory

MODEL = "gpt-4o-mini"
BUDGET = 3_000  # the memory's share of the prompt; the model's window is far larger
SYSTEM = {"role": "system", "content": "You are a patient cooking assistant. Be concise."}
DISHES = ["risotto", "ramen", "tarte tatin", "dal", "paella", "pho", "gnocchi", "mole"]


def fake_reply(rng: random.Random, question: str, turn: int) -> list[dict[str, Any]]:
    """What the model would answer: sometimes a tool call and its result first."""
    dish = DISHES[turn % len(DISHES)]
    out: list[dict[str, Any]] = []
    if turn % 7 == 0:
        call_id = f"call_{turn}"
        out.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "find_recipe", "arguments": json.dumps({"q": dish})},
                    }
                ],
            }
        )
        steps = " ".join(f"Step {k}: stir the {dish} gently." for k in range(rng.randint(3, 12)))
        out.append({"role": "tool", "tool_call_id": call_id, "content": steps})
    words = " ".join(rng.choice(["salt", "heat", "taste", "rest", "fold"]) for _ in range(40))
    sentences = rng.randint(1, 6)
    answer = f"For {dish}: " + " ".join(f"{words[: 20 * (k + 1)]}." for k in range(sentences))
    out.append({"role": "assistant", "content": answer})
    return out


def summarize(messages: list[Any]) -> str:
    """Stand-in for a cheap model call: keep the dishes discussed."""
    previous = ""
    if messages and str(messages[0].get("content", "")).startswith("Summary"):
        previous = messages[0]["content"].split(": ", 1)[1]
    seen = {d for d in DISHES if d in previous}
    seen |= {d for m in messages for d in DISHES if d in str(m.get("content") or "")}
    return "The user asked about " + ", ".join(sorted(seen)) + "."


def main() -> None:
    rng = random.Random(6)
    clock = ManualClock(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    memory = ConversationMemory(
        MODEL,
        BUDGET,
        pinned=[SYSTEM],
        max_age=timedelta(hours=1),
        clock=clock,
        summarizer=summarize,
        summary_max_tokens=200,
    )
    largest = dropped = expired = 0
    started = time.perf_counter()
    for turn in range(500):
        if turn == 300:
            clock.advance(2 * 3600)  # the user comes back after lunch: old turns expire
            expired = len(memory.expire())
        question = f"Turn {turn}: how do I make {DISHES[turn % len(DISHES)]}? " * rng.randint(1, 8)
        dropped += len(memory.add({"role": "user", "content": question}))
        prompt = memory.messages()  # what would be sent to the model
        tokens = count_messages(prompt, MODEL)
        assert tokens == memory.tokens <= BUDGET, (turn, tokens)
        largest = max(largest, tokens)
        for message in fake_reply(rng, question, turn):
            dropped += len(memory.add(message))
        assert memory.tokens <= BUDGET
        clock.advance(30)
    elapsed = time.perf_counter() - started

    print(f"500 turns, budget {BUDGET} tokens: largest prompt {largest}, now {memory.tokens}")
    print(f"messages dropped for room {dropped}, expired after the pause {expired}")
    print(f"in memory now: {len(memory)} messages")
    print(f"summary: {memory.summary['content'] if memory.summary else None}")
    print(f"{elapsed * 1000 / 500:.2f} ms per turn (memory work and the budget checks)")


if __name__ == "__main__":
    main()
