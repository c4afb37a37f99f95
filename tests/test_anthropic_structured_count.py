"""Claude's structured outputs bill their schema as input: the exact count
(``messages.count_tokens``) is sent the request's ``output_config`` (or ``parse``'s
``output_format`` type), so the reservation holds the schema's tokens before anything is
sent. The real SDK over loopback, against guardrail.testing's fake, which counts a schema
as a fixed figure here."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import anthropic
import pydantic
import pytest

import guardrail
from guardrail import Guard, Policy
from guardrail.testing import FakeAnthropicServer

MODEL = "claude-sonnet-4-5"
HI = [{"role": "user", "content": "Extract the invoice."}]
SCHEMA_TOKENS = 4_000  # what the fake bills for a schema
SCHEMA = {
    "format": {
        "type": "json_schema",
        "schema": {
            "type": "object",
            "properties": {"total": {"type": "number"}},
            "required": ["total"],
            "additionalProperties": False,
        },
    }
}


class Invoice(pydantic.BaseModel):
    total: float


def _billed(request: dict[str, Any]) -> int:
    return 30 + (SCHEMA_TOKENS if "output_config" in request else 0)


@pytest.fixture
def schema_fake(fake: FakeAnthropicServer) -> FakeAnthropicServer:
    fake.prompt_tokens = _billed
    fake.reply = json.dumps({"total": 12.5})
    return fake


def _make(fake: FakeAnthropicServer) -> tuple[Any, list[guardrail.UsageRecord]]:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(daily_spend_usd=Decimal(5), loop_limit=None), sinks=[records.append])
    raw = anthropic.Anthropic(base_url=fake.base_url, api_key="t", max_retries=0)
    return guard.wrap(raw), records


def test_the_schema_is_counted_and_reserved_before_sending(schema_fake) -> None:
    client, records = _make(schema_fake)
    client.messages.create(model=MODEL, max_tokens=200, messages=HI, output_config=SCHEMA)
    (count,) = schema_fake.count_requests
    assert json.loads(count.body)["output_config"] == SCHEMA  # counted with the schema
    record = records[-1]
    assert record.extra["exact_prompt_tokens"] == 30 + SCHEMA_TOKENS
    assert record.input_tokens == 30 + SCHEMA_TOKENS and record.overrun_tokens == 0


def test_parse_s_type_is_counted_as_the_schema_it_sends(schema_fake) -> None:
    client, records = _make(schema_fake)
    parsed = client.messages.parse(model=MODEL, max_tokens=200, messages=HI, output_format=Invoice)
    assert parsed.parsed_output == Invoice(total=12.5)
    (count,) = schema_fake.count_requests
    sent = json.loads(count.body)["output_config"]["format"]
    assert sent["type"] == "json_schema" and "total" in sent["schema"]["properties"]
    assert records[-1].overrun_tokens == 0


async def test_the_async_client_counts_the_schema_too(schema_fake) -> None:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(daily_spend_usd=Decimal(5), loop_limit=None), sinks=[records.append])
    client = guard.wrap(
        anthropic.AsyncAnthropic(base_url=schema_fake.base_url, api_key="t", max_retries=0)
    )
    await client.messages.create(model=MODEL, max_tokens=200, messages=HI, output_config=SCHEMA)
    assert records[-1].extra["exact_prompt_tokens"] == 30 + SCHEMA_TOKENS
    assert records[-1].overrun_tokens == 0
