"""Sampling passes reported only in ``usage.iterations`` are charged: a compaction pass
(``context_management``: "not included in the top-level usage fields") and the advisor
tool's own inference. The calls that make them are refused under a money or token limit
(their cost cannot be bounded before sending); without one they go through, at an unknown
cost, with every billed token counted, streamed or not. The real SDK over loopback, against
guardrail.testing's fake (adapted from the review's reproductions)."""

from __future__ import annotations

import warnings
from decimal import Decimal
from typing import Any

import anthropic
import pytest

import guardrail
from guardrail import Guard, Policy, UnpricedOption
from guardrail.testing import FakeAnthropicServer

OPUS, HAIKU = "claude-opus-4-6", "claude-haiku-4-5"
HI = [{"role": "user", "content": "Now continue the task."}]
COMPACT = {"context_management": {"edits": [{"type": "compact_20260112"}]}}
ADVISOR = {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-7"}


def iteration(kind: str, inp: int, out: int, model: str | None = None, **cache: int) -> dict:
    entry: dict[str, Any] = {
        "type": kind,
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": cache.get("read", 0),
        "cache_creation_input_tokens": cache.get("written", 0),
    }
    if model is not None:
        entry["model"] = model
    return entry


def make(
    fake: FakeAnthropicServer, policy: Policy
) -> tuple[Guard, Any, list[guardrail.UsageRecord]]:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(policy, sinks=[records.append])
    raw = anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0)
    return guard, guard.wrap(raw), records


def call(client: Any, *, stream: bool, **request: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the once-per-option warning of an unknown cost
        if not stream:
            return client.messages.create(max_tokens=1_000, messages=HI, **request)
        with client.messages.stream(max_tokens=1_000, messages=HI, **request) as events:
            return events.get_final_message()


def test_compaction_and_the_advisor_are_refused_under_a_money_or_token_limit(fake) -> None:
    _, client, _ = make(fake, Policy(daily_spend_usd=Decimal("5"), loop_limit=None))
    with pytest.raises(UnpricedOption, match="'context_management'"):
        client.messages.create(model=OPUS, max_tokens=1_000, messages=HI, extra_body=COMPACT)
    with pytest.raises(UnpricedOption, match="'advisor_20260301'"):
        client.messages.create(model=HAIKU, max_tokens=1_000, messages=HI, tools=[ADVISOR])
    _, client, _ = make(fake, Policy(tokens_per_day=10_000_000, loop_limit=None))
    with pytest.raises(guardrail.UnboundedInput, match="'context_management'"):
        client.messages.create(model=OPUS, max_tokens=1_000, messages=HI, extra_body=COMPACT)
    with pytest.raises(guardrail.UnboundedInput, match="'advisor_20260301'"):
        client.messages.create(model=HAIKU, max_tokens=1_000, messages=HI, tools=[ADVISOR])
    assert fake.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_compaction_pass_is_counted(fake, stream: bool) -> None:
    compaction = iteration("compaction", 60_000, 2_000, read=1_000, written=500)
    final = iteration("message", 3_000, 500)
    fake.prompt_tokens, fake.output_tokens = 3_000, 500
    fake.usage_patch = {"iterations": [compaction, final]}
    _, client, records = make(fake, Policy(loop_limit=None))
    message = call(client, stream=stream, model=OPUS, extra_body=COMPACT)
    assert message.usage.input_tokens == 3_000  # the top level: the final pass only
    record = records[-1]
    assert record.input_tokens == 3_000 + 60_000 + 1_000 + 500
    assert record.cached_input_tokens == 1_000
    assert record.extra["cache_write_tokens"] == 500
    assert record.output_tokens == 500 + 2_000
    assert record.extra["cost_unknown"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_advisors_inference_is_counted(fake, stream: bool) -> None:
    executor, advisor = HAIKU, ADVISOR["model"]
    fake.prompt_tokens, fake.output_tokens = 2_000, 300
    fake.usage_patch = {
        "iterations": [
            iteration("message", 900, 100, executor),
            iteration("advisor_message", 1_100, 1_600, advisor),
            iteration("message", 1_100, 200, executor),
        ]
    }
    guard, client, records = make(fake, Policy(loop_limit=None))
    call(client, stream=stream, model=executor, tools=[ADVISOR])
    assert (records[-1].input_tokens, records[-1].output_tokens) == (2_000 + 1_100, 300 + 1_600)
    usage = guard.usage("default")
    assert (usage.input_tokens, usage.output_tokens) == (2_000 + 1_100, 300 + 1_600)


def test_the_passes_the_top_level_sums_are_not_counted_twice(fake) -> None:
    """``message`` and ``fallback_message`` entries are the passes the top-level usage
    already adds up (a server-tool loop, a fallback that served the answer)."""
    fake.prompt_tokens, fake.output_tokens = 1_000, 320
    fake.usage_patch = {
        "iterations": [iteration("message", 500, 20), iteration("fallback_message", 500, 300)]
    }
    _, client, records = make(fake, Policy(daily_spend_usd=Decimal("5"), loop_limit=None))
    client.messages.create(model=HAIKU, max_tokens=1_000, messages=HI)
    record = records[-1]
    assert (record.input_tokens, record.output_tokens) == (1_000, 320)
    assert record.cost_usd == guardrail.estimate_cost(HAIKU, 1_000, 320)
