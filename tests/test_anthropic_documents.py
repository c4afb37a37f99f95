"""A Claude document guardrail cannot read (by ``file_id`` or URL, or a PDF whose pages
cannot be seen) is reserved as ``Policy.file_id_tokens`` says, never at a guess: refused,
held as the whole window less the output, or a figure per document. When the exact count
is off or fails, that bound is what is held; when ``count_tokens`` answers, its count (which
reads the document) replaces the bound. The real SDK over loopback, against
guardrail.testing's fake (adapted from the review's reproductions)."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import anthropic
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, InvalidRequestError, Policy
from guardrail.catalog.models import model_info
from guardrail.counting.claude import uncountable_documents
from guardrail.testing import FakeAnthropicServer

MODEL = "claude-haiku-4-5"  # 200K window
FILES_BETA = {"anthropic-beta": "files-api-2025-04-14"}
FILE = {"type": "document", "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wX"}}
ASK = {"type": "text", "text": "Summarise this report."}
DOC = [{"role": "user", "content": [FILE, ASK]}]
BILLED_PROMPT = 190_000  # what a 100-page PDF really costs as input
OUT = 500


def pdf_b64(pages: int, *, visible: bool = True) -> str:
    objects = b"".join(b"<< /Type /Page >>\n" for _ in range(pages)) if visible else b"x" * 64
    return base64.b64encode(b"%PDF-1.7\n" + objects + b"%%EOF").decode()


def make(
    fake: FakeAnthropicServer, cap: str | None = "1", *, exact_count: bool = True, **policy: Any
) -> tuple[Guard, Any, list[guardrail.UsageRecord]]:
    records: list[guardrail.UsageRecord] = []
    daily = None if cap is None else Decimal(cap)
    guard = Guard(Policy(daily_spend_usd=daily, loop_limit=None, **policy), sinks=[records.append])
    raw = anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0)
    return guard, guard.wrap(raw, exact_count=exact_count), records


def send(client: Any, messages: list[dict[str, Any]] = DOC) -> Any:
    return client.messages.create(
        model=MODEL, max_tokens=OUT, messages=messages, extra_headers=FILES_BETA
    )


def window_less_output() -> int:
    return model_info(MODEL).context_window - OUT


def test_file_id_tokens_refuse_refuses_a_file_id_document(fake) -> None:
    _, client, _ = make(fake, file_id_tokens="refuse")
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content\[0\] .a document by"):
        send(client)
    assert fake.requests == []  # not even a count


def test_with_the_exact_count_off_the_window_is_reserved_not_a_guess(fake) -> None:
    fake.prompt_tokens, fake.output_tokens = BILLED_PROMPT, 200
    guard, client, _ = make(fake, "0.15", exact_count=False)
    with pytest.raises(BudgetExceeded):  # the window ($0.20) is past the cap
        send(client)
    assert fake.requests == []
    guard, client, records = make(fake, "1", exact_count=False)
    send(client)
    record = records[-1]
    assert record.extra["reserved_prompt_tokens"] == window_less_output()
    assert record.extra["uncounted_parts"] == 1
    assert record.reserved_usd == guardrail.estimate_cost(MODEL, window_less_output(), OUT)
    assert record.cost_usd == guardrail.estimate_cost(MODEL, BILLED_PROMPT, 200)
    assert record.overrun_tokens == 0


def test_a_failed_count_keeps_the_bound(fake) -> None:
    """count_tokens has its own rate limit: a 529 keeps what was reserved, the bound."""
    fake.prompt_tokens, fake.output_tokens = BILLED_PROMPT, 200
    fake.enqueue_error(529, endpoint="count_tokens")
    guard, client, records = make(fake, "0.25")
    send(client)
    assert len(fake.count_requests) == 1 and "exact_prompt_tokens" not in records[-1].extra
    assert records[-1].extra["reserved_prompt_tokens"] == window_less_output()
    assert Decimal(str(guard.usage("default").spent_usd)) <= Decimal("0.25")


def test_a_cap_below_the_bound_refuses_before_the_count(fake) -> None:
    """The bound is reserved first, so a budget refusal sends nothing, not even a count."""
    fake.prompt_tokens = BILLED_PROMPT
    _, client, _ = make(fake, "0.15")
    with pytest.raises(BudgetExceeded):
        send(client)
    assert fake.requests == []


def test_the_exact_count_replaces_the_bound(fake) -> None:
    fake.prompt_tokens, fake.output_tokens = 20_000, 200  # a short PDF
    _, client, records = make(fake, "1")
    send(client)
    record = records[-1]
    assert record.extra["exact_prompt_tokens"] == 20_000
    assert "reserved_prompt_tokens" not in record.extra  # the count is the reservation
    assert record.reserved_usd == guardrail.estimate_cost(MODEL, 20_000, OUT)
    assert record.cost_usd == guardrail.estimate_cost(MODEL, 20_000, 200)


def test_a_figure_per_document_is_held_until_the_count_replaces_it(fake) -> None:
    fake.prompt_tokens = 30_000
    two = [{"role": "user", "content": [FILE, FILE, ASK]}]
    _, client, records = make(fake, "1", exact_count=False, file_id_tokens=5_000)
    send(client, two)
    extra = records[-1].extra
    assert extra["uncounted_parts"] == 2
    text_only = extra["reserved_prompt_tokens"] - 2 * 5_000  # the documents count 0 locally
    assert 0 < text_only < 200
    assert records[-1].overrun_tokens == 30_000 - extra["reserved_prompt_tokens"]
    _, counted, records = make(fake, "1", file_id_tokens=5_000)
    send(counted, two)
    assert records[-1].extra["exact_prompt_tokens"] == 30_000
    assert "reserved_prompt_tokens" not in records[-1].extra


def test_which_documents_cannot_be_read() -> None:
    url = {"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}}
    seen = {"type": "document", "source": {"type": "base64", "data": pdf_b64(3)}}
    unseen = {"type": "document", "source": {"type": "base64", "data": pdf_b64(3, visible=False)}}
    text = {"type": "document", "source": {"type": "text", "data": "plain"}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": [FILE, ASK]}
    messages = [
        {"role": "user", "content": "no blocks"},
        {"role": "user", "content": [url, seen, unseen, text, ASK]},
        {"role": "user", "content": [result]},
    ]
    assert uncountable_documents(messages) == [
        "messages[1].content[0] (a document by URL)",
        "messages[1].content[2] (a PDF whose pages cannot be seen)",
        "messages[2].content[0].content[0] (a document by file_id)",
    ]


def test_a_pdf_whose_pages_are_seen_is_counted_not_bounded(fake) -> None:
    seen = {"type": "document", "source": {"type": "base64", "data": pdf_b64(3)}}
    fake.prompt_tokens = 1_000
    _, client, records = make(fake, "1", exact_count=False)
    send(client, [{"role": "user", "content": [seen, ASK]}])
    assert "reserved_prompt_tokens" not in records[-1].extra
