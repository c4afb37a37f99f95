"""Server tools under a money limit: a tool whose cost guardrail cannot bound or price (the
advisor, code execution, an MCP toolset, a type it does not know) is refused before
anything is sent; web fetch, web search and tool search are reserved at a stated bound,
the prompt plus one whole context window per further pass of the server-side tool loop
(each pass reads the context again, with what the tools added, and bills it as input),
and settled at what the provider reports. The real SDK over loopback, against
guardrail.testing's fake (adapted from the review's reproductions)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, Policy, TokenUsage, UnpricedOption, usage_cost
from guardrail.catalog.models import model_info
from guardrail.providers.anthropic import SERVER_LOOP_PASSES
from guardrail.testing import FakeAnthropicServer

OPUS, HAIKU = "claude-opus-4-7", "claude-haiku-4-5"
ASK = [{"role": "user", "content": "Summarise https://arxiv.org/pdf/2501.00001"}]
FETCH = {"type": "web_fetch_20250910", "name": "web_fetch"}
SEARCH = {"type": "web_search_20250305", "name": "web_search"}
COUNTED = 5_000  # what count_tokens answers: above the local estimate of these requests
PDF_TOKENS = 125_000


def make(
    fake: FakeAnthropicServer, cap: str | None, **guard_kw: Any
) -> tuple[Guard, Any, list[guardrail.UsageRecord]]:
    records: list[guardrail.UsageRecord] = []
    policy = Policy(daily_spend_usd=None if cap is None else Decimal(cap), loop_limit=None)
    guard = Guard(policy, sinks=[records.append], **guard_kw)
    raw = anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0)
    return guard, guard.wrap(raw), records


def billed_input(request: dict[str, Any]) -> int:
    """count_tokens counts the request; the message bills two passes, the second reading
    the fetched PDF (a count request is the one without max_tokens)."""
    if "max_tokens" not in request:
        return COUNTED
    return COUNTED + (COUNTED + PDF_TOKENS)


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "advisor_20260301", "name": "advisor", "model": OPUS},
        {"type": "code_execution_20250825", "name": "code_execution"},
        {"type": "mcp_toolset", "mcp_server_name": "big-mcp"},
        {"type": "browser_toolset_20260801"},
        {"type": "some_server_tool_20270101", "name": "new"},
    ],
    ids=lambda tool: tool["type"],
)
def test_a_tool_guardrail_cannot_bound_is_refused_under_a_money_limit(fake, tool) -> None:
    _, client, _ = make(fake, "5")
    with pytest.raises(UnpricedOption, match=repr(tool["type"])):
        client.messages.create(model=HAIKU, max_tokens=100, messages=ASK, tools=[tool])
    assert fake.requests == []  # neither the message nor its count


@pytest.mark.parametrize(
    "tool",
    [
        {"name": "get_weather", "input_schema": {"type": "object"}},
        {"type": "custom", "name": "lookup", "input_schema": {"type": "object"}},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "memory_20250818", "name": "memory"},
        {"type": "computer_20250124", "name": "computer", "display_width_px": 1024},
    ],
    ids=lambda tool: tool.get("type", "no type"),
)
def test_client_tools_cost_only_their_tokens_and_are_sent(fake, tool) -> None:
    _, client, records = make(fake, "5")
    client.messages.create(model=HAIKU, max_tokens=100, messages=ASK, tools=[tool])
    assert len(fake.message_requests) == 1
    assert "reserved_prompt_tokens" not in records[-1].extra  # nothing held beyond the count


def test_an_unbounded_web_fetch_cannot_pass_the_cap(fake) -> None:
    """No max_uses: the loop's own limit of passes, each up to Opus 4.7's 1M window, is
    far past a $0.25 cap: refused before anything is sent (the review's figure: a call
    reserved at $0.025 was charged $0.65)."""
    fake.prompt_tokens = billed_input
    guard, client, _ = make(fake, "0.25")
    with pytest.raises(BudgetExceeded):
        client.messages.create(model=OPUS, max_tokens=1_000, messages=ASK, tools=[FETCH])
    assert fake.requests == []
    assert guard.usage("default").spent_usd == 0


def test_a_bounded_web_fetch_reserves_the_window_and_is_charged_what_was_billed(fake) -> None:
    fake.prompt_tokens = billed_input
    fake.output_tokens = 800
    fake.usage_patch = {"server_tool_use": {"web_fetch_requests": 1, "web_search_requests": 0}}
    guard, client, records = make(fake, "1")
    client.messages.create(
        model=HAIKU, max_tokens=1_000, messages=ASK, tools=[{**FETCH, "max_uses": 1}]
    )
    record = records[-1]
    held = COUNTED + model_info(HAIKU).context_window  # the prompt, and one further pass
    assert record.extra["reserved_prompt_tokens"] == held
    assert record.reserved_usd == guardrail.estimate_cost(HAIKU, held, 1_000)
    billed = guardrail.estimate_cost(HAIKU, COUNTED + COUNTED + PDF_TOKENS, 800)
    assert record.cost_usd == billed and record.overrun_tokens == 0
    assert Decimal(str(guard.usage("default").spent_usd)) == billed


def test_web_search_results_are_held_for_each_search_and_the_fees_reserved(fake) -> None:
    """Search results are billed as input, in every later pass: max_uses=3 holds three
    further passes on top of the prompt, besides the three searches' fee."""
    fake.prompt_tokens = COUNTED
    fake.usage_patch = {"server_tool_use": {"web_search_requests": 2}}
    _, client, records = make(fake, "5")
    client.messages.create(
        model=HAIKU, max_tokens=100, messages=ASK, tools=[{**SEARCH, "max_uses": 3}]
    )
    record = records[-1]
    held = COUNTED + 3 * model_info(HAIKU).context_window
    assert record.extra["reserved_prompt_tokens"] == held
    fees = usage_cost(HAIKU, TokenUsage(web_searches=3))
    assert record.reserved_usd == guardrail.estimate_cost(HAIKU, held, 100) + fees
    assert record.cost_usd == guardrail.estimate_cost(
        HAIKU, record.input_tokens, record.output_tokens
    ) + usage_cost(HAIKU, TokenUsage(web_searches=2))


def test_passes_add_up_over_server_tools_up_to_the_loop_limit(fake) -> None:
    fake.prompt_tokens = COUNTED
    _, client, records = make(fake, None)
    window = model_info(HAIKU).context_window
    for tools, passes in (
        ([{**SEARCH, "max_uses": 2}, {**FETCH, "max_uses": 3}], 5),
        ([{**SEARCH, "max_uses": 0}], 0),
        ([{**SEARCH, "max_uses": 8}, {**FETCH, "max_uses": 8}], SERVER_LOOP_PASSES),
        ([{"type": "tool_search_tool_bm25_20251119", "name": "tool_search"}], SERVER_LOOP_PASSES),
    ):
        client.messages.create(model=HAIKU, max_tokens=100, messages=ASK, tools=tools)
        held = records[-1].extra.get("reserved_prompt_tokens", COUNTED)
        assert held == COUNTED + passes * window, tools


def test_the_passes_stay_held_when_the_exact_count_is_off(fake) -> None:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(loop_limit=None), sinks=[records.append])
    raw = anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0)
    client = guard.wrap(raw, exact_count=False)
    client.messages.create(
        model=HAIKU, max_tokens=100, messages=ASK, tools=[{**FETCH, "max_uses": 2}]
    )
    assert fake.count_requests == []
    extra = records[-1].extra
    local = extra["reserved_prompt_tokens"] - 2 * model_info(HAIKU).context_window
    assert 0 < local < 2_000  # the local estimate of the request, plus two passes


def test_a_policy_figure_per_pass_holds_that_much_instead_of_the_window(fake) -> None:
    """Policy(server_pass_tokens=N): each further pass is held at N tokens (the user's own
    bound), so a searching call fits a cap the whole-window bound is far past."""
    fake.prompt_tokens = COUNTED
    tools = [{**SEARCH, "max_uses": 3}]
    _, windowed, _ = make(fake, "0.20")
    with pytest.raises(BudgetExceeded):  # three passes of a 200K window: about $0.60 held
        windowed.messages.create(model=HAIKU, max_tokens=100, messages=ASK, tools=tools)
    assert fake.message_requests == []
    records: list[guardrail.UsageRecord] = []
    policy = Policy(daily_spend_usd=Decimal("0.20"), loop_limit=None, server_pass_tokens=20_000)
    guard = Guard(policy, sinks=[records.append])
    raw = anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0)
    guard.wrap(raw).messages.create(model=HAIKU, max_tokens=100, messages=ASK, tools=tools)
    held = COUNTED + 3 * 20_000
    assert records[-1].extra["reserved_prompt_tokens"] == held
    fees = usage_cost(HAIKU, TokenUsage(web_searches=3))
    assert records[-1].reserved_usd == guardrail.estimate_cost(HAIKU, held, 100) + fees


def test_a_figure_per_pass_is_never_above_the_window(fake) -> None:
    fake.prompt_tokens = COUNTED
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(loop_limit=None, server_pass_tokens=10**9), sinks=[records.append])
    raw = anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0)
    tools = [{**FETCH, "max_uses": 2}]
    guard.wrap(raw).messages.create(model=HAIKU, max_tokens=100, messages=ASK, tools=tools)
    window = model_info(HAIKU).context_window
    assert records[-1].extra["reserved_prompt_tokens"] == COUNTED + 2 * window


@pytest.mark.parametrize("figure", [0, -5, True, 1.5, "all"])
def test_a_figure_per_pass_must_be_a_positive_int(figure: Any) -> None:
    with pytest.raises(guardrail.GuardrailError, match="server_pass_tokens"):
        Policy(server_pass_tokens=figure)
