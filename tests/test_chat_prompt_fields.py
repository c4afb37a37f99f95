"""Chat Completions fields the model reads as prompt besides ``messages`` and ``tools``:
the legacy ``functions`` (counted as tools are) and a structured-output ``response_format``
schema (its rendering is unpublished: every string and key counted, which errs high). Both
were left out, so a request with a 47,000-token schema was reserved as a 10-token prompt."""

from __future__ import annotations

import openai
import pydantic
import pytest

import guardrail
from guardrail import Guard, Policy
from guardrail.catalog.models import model_info
from guardrail.counting.messages import counter_for
from guardrail.providers.openai.chat import OpenAIAdapter
from guardrail.testing import FakeOpenAIServer

HI = [{"role": "user", "content": "hi"}]
FUNCTION = {
    "name": "lookup",
    "description": "Look a customer up by their account number and return the record",
    "parameters": {
        "type": "object",
        "properties": {
            f"field_{i}": {"type": "string", "description": "a field"} for i in range(40)
        },
    },
}


def _count(**kwargs: object) -> int:
    adapter = OpenAIAdapter()
    view = adapter.read({"model": "gpt-4o", "messages": HI, **kwargs})
    return adapter.count(counter_for(model_info("gpt-4o")), view, view.messages)


def test_legacy_functions_count_as_tools() -> None:
    as_tools = _count(tools=[{"type": "function", "function": FUNCTION}])
    assert _count(functions=[FUNCTION]) == as_tools > _count() + 200


def test_a_response_format_schema_is_counted() -> None:
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "record", "schema": FUNCTION["parameters"]},
    }
    assert _count(response_format=schema) > _count() + 200
    assert _count(response_format={"type": "json_object"}) == _count()


class Record(pydantic.BaseModel):
    account_number: str
    customer_name: str
    shipping_address: str


@pytest.fixture(scope="module")
def oai():
    with FakeOpenAIServer() as server:
        yield server


def test_a_large_schema_is_refused_before_sending_under_a_cap(oai) -> None:
    guard = Guard(Policy(daily_spend_usd="0.001", loop_limit=None))
    client = guard.wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    big = {
        "name": "big",
        "parameters": {
            "type": "object",
            "properties": {
                f"f{i}": {"type": "string", "description": "lorem ipsum " * 20} for i in range(300)
            },
        },
    }
    before = len(oai.requests)
    with pytest.raises(guardrail.BudgetExceeded):
        client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=10, functions=[big])
    assert oai.requests[before:] == []


def test_parse_with_a_pydantic_model_counts_its_schema(oai) -> None:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(daily_spend_usd=1, loop_limit=None), sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=50)
    # The fake's reply is not a Record: parse fails after the call; what matters is what
    # was reserved for it.
    with pytest.raises(pydantic.ValidationError):
        client.chat.completions.parse(
            model="gpt-4o", messages=HI, max_tokens=50, response_format=Record
        )
    plain, parsed = records
    assert parsed.reserved_usd > plain.reserved_usd
