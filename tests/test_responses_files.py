"""Responses ``input_file`` parts guardrail cannot read (by ``file_id`` or URL) are
reserved as ``Policy.file_id_tokens`` says, as Chat Completions' ``file`` parts are: they
were counted as their visible fields only, so a 100-page PDF by id reserved a few tokens."""

from __future__ import annotations

import openai
import pytest

import guardrail
from guardrail import Guard, Policy
from guardrail.testing import FakeOpenAIServer


@pytest.fixture(scope="module")
def oai():
    with FakeOpenAIServer() as server:
        yield server


def _input(file: dict[str, str]) -> list[dict[str, object]]:
    part = {"type": "input_file", **file}
    return [{"role": "user", "content": [part, {"type": "input_text", "text": "Summarise"}]}]


@pytest.mark.parametrize(
    "file", [{"file_id": "file-abc"}, {"file_url": "https://example.com/report.pdf"}]
)
def test_an_unreadable_input_file_reserves_the_window(oai, file: dict[str, str]) -> None:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(daily_spend_usd=100, loop_limit=None), sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    client.responses.create(model="gpt-4o", input=_input(file), max_output_tokens=16)
    (record,) = records
    assert record.extra["uncounted_parts"] == 1
    # file_id_tokens="window": the prompt is reserved up to the window less the output bound
    assert record.extra["reserved_prompt_tokens"] == 128_000 - 16


def test_refused_under_file_id_tokens_refuse(oai) -> None:
    guard = Guard(Policy(daily_spend_usd=100, loop_limit=None, file_id_tokens="refuse"))
    client = guard.wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    before = len(oai.requests)
    with pytest.raises(guardrail.InvalidRequestError, match=r"input\[0\]\.content\[0\]"):
        client.responses.create(
            model="gpt-4o", input=_input({"file_id": "file-abc"}), max_output_tokens=16
        )
    assert oai.requests[before:] == []


def test_a_fixed_reservation_per_file(oai) -> None:
    records: list[guardrail.UsageRecord] = []
    policy = Policy(daily_spend_usd=100, loop_limit=None, file_id_tokens=5_000)
    guard = Guard(policy, sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    client.responses.create(
        model="gpt-4o", input=_input({"file_id": "file-abc"}), max_output_tokens=16
    )
    (record,) = records
    assert record.extra["reserved_prompt_tokens"] >= 5_000


def test_history_grows_the_reservation_on_top_of_a_files_bound(oai) -> None:
    """A stored response's history (recorded when it settled) is added to what the request
    holds, the file's bound included: not to the count alone, which would hold less than
    the bound plus the history."""
    records: list[guardrail.UsageRecord] = []
    policy = Policy(daily_spend_usd=100, loop_limit=None, file_id_tokens=5_000)
    guard = Guard(policy, sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    first = client.responses.create(
        model="gpt-4o", input="word " * 3_000, max_output_tokens=16, store=True
    )
    history = records[0].input_tokens + records[0].output_tokens
    assert history > 3_000
    client.responses.create(
        model="gpt-4o",
        input=_input({"file_id": "file-abc"}),
        previous_response_id=first.id,
        max_output_tokens=16,
    )
    second = records[1]
    assert second.extra["uncounted_parts"] == 1
    assert second.extra["reserved_prompt_tokens"] >= 5_000 + history
