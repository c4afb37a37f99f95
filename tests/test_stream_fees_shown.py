"""A Responses stream that ends before ``response.completed`` (cut, or closed by the caller)
is charged the fee-bearing tool calls it showed (``web_search_call`` items as they were
added), not none: the fees are otherwise read only from the final response's output
(found by a review: three searches shown, $0.03 of fees, charged $0)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

import guardrail
from guardrail import Guard, Policy, TokenUsage, usage_cost
from guardrail.testing import openai_responses
from tests._sdk_http import cut_stream_errors

MODEL = "gpt-4o"
SEARCHES = 3


def _with_searches(original: Any) -> Any:
    def output_items(completion: Any, response_id: str) -> list[dict[str, Any]]:
        calls = [
            {
                "type": "web_search_call",
                "id": f"ws_{response_id}_{i}",
                "status": "completed",
                "action": {"type": "search", "query": f"query {i}"},
            }
            for i in range(SEARCHES)
        ]
        return [*calls, *original(completion, response_id)]

    return output_items


@pytest.mark.parametrize("how", ["cut", "close"])
def test_searches_streamed_before_a_cut_are_charged(server, monkeypatch, how) -> None:
    monkeypatch.setattr(
        openai_responses, "_output_items", _with_searches(openai_responses._output_items)
    )
    server.reply = "one two three four five six seven eight nine ten"
    # created, in_progress, then added+done per search: the three searches are all shown.
    shown = 2 + 2 * SEARCHES
    if how == "cut":
        server.enqueue_stream_cut(after_chunks=shown + 3)
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(daily_spend_usd=Decimal(1), loop_limit=None), sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))

    stream = client.responses.create(
        model=MODEL,
        input="What happened today?",
        tools=[{"type": "web_search"}],
        max_tool_calls=SEARCHES,
        stream=True,
    )
    seen_searches = 0
    try:
        for event in stream:
            if event.type == "response.output_item.done" and event.item.type == "web_search_call":
                seen_searches += 1
            if how == "close" and event.type == "response.output_text.delta":
                break
    except cut_stream_errors(openai):
        pass
    stream.close()

    assert seen_searches == SEARCHES  # the caller saw every search run
    record = records[-1]
    assert guard.usage("default").reserved_usd == 0
    fee = usage_cost(MODEL, TokenUsage(web_searches=SEARCHES))
    tokens = guardrail.estimate_cost(MODEL, record.input_tokens, record.output_tokens)
    assert record.cost_usd >= tokens + fee, (
        f"charged ${record.cost_usd} for a stream that ran {SEARCHES} searches "
        f"(${fee} of search fees alone)"
    )
