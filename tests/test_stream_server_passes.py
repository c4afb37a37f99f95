"""A streamed Claude call with a server tool (web_fetch), left after the server-side loop
has run a further pass, is charged the passes its stream showed: ``message_start`` reports
only the first pass's input, and every later pass (the context plus the fetched PDF) is
billed as input but reported only in the final, cumulative ``message_delta``. A stream that
ends before it (broken out of, or cut) is charged each further pass its ``server_tool_use``
blocks began, at the bound the plan held for one (found by a review: it was charged the
first pass only, 26 times less on a 125,000-token PDF, repeatable on purpose)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import pytest

import guardrail
from guardrail import Guard, Policy
from guardrail.testing import anthropic_handler
from tests._sdk_http import cut_stream_errors

CUT = cut_stream_errors(anthropic)

HAIKU = "claude-haiku-4-5"
ASK = [{"role": "user", "content": "Summarise https://arxiv.org/pdf/2501.00001"}]
FETCH = {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 1}
COUNTED = 5_000
PDF_TOKENS = 125_000
BILLED = COUNTED + (COUNTED + PDF_TOKENS)  # two passes


def _prompt(request: dict[str, Any]) -> int:
    return COUNTED if "max_tokens" not in request else BILLED  # count_tokens: pass 1 only


def _server_tool_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The event shape of a web_fetch loop: message_start with pass 1's input, the tool
    use and its result, the answer's text, then the cumulative message_delta."""
    start = {k: v for k, v in message.items() if not k.startswith("_")}
    start.update(
        content=[],
        stop_reason=None,
        usage={
            "input_tokens": COUNTED,
            "output_tokens": 1,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    )
    use = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_fetch", "input": {}}
    result = {
        "type": "web_fetch_tool_result",
        "tool_use_id": "srvtoolu_1",
        "content": {
            "type": "web_fetch_result",
            "url": "https://arxiv.org/pdf/2501.00001",
            "content": {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": "..."},
            },
        },
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": use},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {
                "type": "input_json_delta",
                "partial_json": '{"url": "https://arxiv.org/pdf/2501.00001"}',
            },
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": result},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
    ]
    for word in ("The ", "paper ", "shows ", "that ", "streams ", "leak."):
        events.append(
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "text_delta", "text": word},
            }
        )
    events += [
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": BILLED,
                "output_tokens": 40,
                "server_tool_use": {"web_fetch_requests": 1},
            },
        },
        {"type": "message_stop"},
    ]
    return events


@pytest.mark.parametrize("how", ["break", "cut"])
def test_a_server_tool_stream_left_after_the_second_pass_is_charged_what_was_billed(
    fake, monkeypatch, how
) -> None:
    monkeypatch.setattr(anthropic_handler, "_events", _server_tool_events)
    fake.prompt_tokens = _prompt
    if how == "cut":  # the connection drops before the final message_delta
        fake.enqueue_stream_cut(after_events=9)
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(daily_spend_usd=Decimal(1), loop_limit=None), sinks=[records.append])
    client = guard.wrap(anthropic.Anthropic(base_url=fake.base_url, api_key="t", max_retries=0))

    stream = client.messages.create(
        model=HAIKU, max_tokens=1_000, messages=ASK, tools=[FETCH], stream=True
    )
    try:
        for event in stream:
            # The answer's text has started: the second pass ran (and was billed).
            text = event.type == "content_block_delta" and event.delta.type == "text_delta"
            if text and how == "break":
                break
    except CUT:
        assert how == "cut"
    stream.close()

    record = records[-1]
    assert guard.usage("default").reserved_usd == 0
    # The provider billed 135,000 input tokens; the guard must charge at least that.
    assert record.input_tokens >= BILLED, (
        f"settled {record.input_tokens} input tokens (message_start's pass 1) for a call "
        f"billed {BILLED}: ${record.cost_usd} charged, at least "
        f"${guardrail.estimate_cost(HAIKU, BILLED, 1)} billed"
    )
    assert record.extra["reserved_prompt_tokens"] >= record.input_tokens  # at most the hold


def test_a_stream_left_before_any_server_tool_use_is_charged_the_first_pass(
    fake, monkeypatch
) -> None:
    monkeypatch.setattr(anthropic_handler, "_events", _server_tool_events)
    fake.prompt_tokens = _prompt
    fake.enqueue_stream_cut(after_events=1)  # message_start only: no further pass began
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(daily_spend_usd=Decimal(1), loop_limit=None), sinks=[records.append])
    client = guard.wrap(anthropic.Anthropic(base_url=fake.base_url, api_key="t", max_retries=0))
    stream = client.messages.create(
        model=HAIKU, max_tokens=1_000, messages=ASK, tools=[FETCH], stream=True
    )
    with pytest.raises(CUT):
        for _ in stream:
            pass
    assert records[-1].input_tokens == COUNTED
    assert guard.usage("default").reserved_usd == 0
