"""The cap holds whatever the provider bills: documents reserved at a stated upper bound
(item 1), usage past a reservation charged and flagged, a concurrency test whose upstream
bills more than was counted (with the bound on the overrun stated and asserted), and the
reasoning model whose usage never arrives (item 2). Real SDK, loopback fake server."""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
from decimal import Decimal
from typing import Any

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, InvalidRequestError, Policy
from guardrail.counting.documents import PDF_TEXT_TOKENS_PER_PAGE, pdf_page_tokens
from guardrail.counting.images import worst_case_tokens
from guardrail.stores.base import usd_to_nanos
from tests._sdk_http import cut_stream_errors

MODEL = "gpt-4o"


def pdf(pages: int) -> str:
    objects = [b"1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj"]
    objects.append(b"2 0 obj << /Type /Pages /Count %d >> endobj" % pages)
    objects += [b"%d 0 obj << /Type /Page /Parent 2 0 R >> endobj" % (3 + i) for i in range(pages)]
    raw = b"%PDF-1.4\n" + b"\n".join(objects) + b"\n%%EOF\n"
    return "data:application/pdf;base64," + base64.b64encode(raw).decode()


def file_part(**file: Any) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"type": "text", "text": "Sum it up."}, {"type": "file", "file": file}],
    }


def client_for(server: Any, policy: Policy, **guard_kw: Any) -> tuple[Guard, Any]:
    guard = Guard(policy, **guard_kw)
    raw = openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0)
    return guard, guard.wrap(raw)


def test_a_pdf_is_counted_per_page_at_the_documented_bound() -> None:
    rule = guardrail.model_info(MODEL).image_rule
    per_page = pdf_page_tokens(rule)
    assert per_page == PDF_TEXT_TOKENS_PER_PAGE + worst_case_tokens("high", rule) == 3_000 + 1_445
    text_only = guardrail.count_messages([file_part(filename="a.pdf")], MODEL)
    three = guardrail.count_messages([file_part(filename="a.pdf", file_data=pdf(3))], MODEL)
    assert three - text_only == 3 * per_page


def test_file_ids_are_reserved_at_the_window_by_default(server: Any) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = client_for(server, Policy(), sinks=[records.append])
    client.chat.completions.create(
        model=MODEL, messages=[file_part(file_id="file-abc")], max_tokens=100
    )
    (record,) = records
    window = guardrail.model_info(MODEL).context_window
    assert record.extra["reserved_prompt_tokens"] == window - 100
    assert record.extra["uncounted_parts"] == 1
    assert record.reserved_usd == guardrail.estimate_cost(MODEL, window - 100, 100)
    assert record.overrun_tokens == 0 and guard.usage("default").reserved_usd == 0


def test_file_ids_refused_or_reserved_at_a_stated_figure(server: Any) -> None:
    _, strict = client_for(server, Policy(file_id_tokens="refuse"))
    with pytest.raises(InvalidRequestError, match="file_id_tokens='refuse'"):
        strict.chat.completions.create(model=MODEL, messages=[file_part(file_id="file-abc")])
    assert server.chat_requests == []
    records: list[guardrail.UsageRecord] = []
    _, client = client_for(server, Policy(file_id_tokens=2_000), sinks=[records.append])
    messages = [file_part(file_id="file-abc")]
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10)
    assert (
        records[0].extra["reserved_prompt_tokens"]
        == guardrail.count_messages(messages, MODEL) + 2_000
    )


def test_a_summary_with_a_file_id_is_looked_at_though_the_history_was_plain(server: Any) -> None:
    # Plain-text messages need no search for documents; the summary that replaces the
    # trimmed ones is the summariser's and may hold one.
    summary = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Earlier:"},
            {"type": "file", "file": {"file_id": "file-abc"}},
        ],
    }
    history = [{"role": "system", "content": "s"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(6)
    ]
    policy = Policy(trim=True, max_history_messages=2, file_id_tokens="refuse")
    _, client = client_for(server, policy, summarizer=lambda dropped: summary)
    with pytest.raises(InvalidRequestError, match="file_id_tokens='refuse'"):
        client.chat.completions.create(model=MODEL, messages=history, max_tokens=10)
    assert server.chat_requests == []


def test_usage_past_the_reservation_is_charged_flagged_and_logged(server: Any, caplog: Any) -> None:
    server.prompt_tokens = lambda request: 50_000  # the provider bills far more than counted
    records: list[guardrail.UsageRecord] = []
    guard, client = client_for(server, Policy(), sinks=[records.append])
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        out = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=20
        )
    (record,) = records
    counted = guardrail.count_messages([{"role": "user", "content": "Hi"}], MODEL)
    assert record.input_tokens == 50_000
    assert record.overrun_tokens == 50_000 - counted
    assert record.overrun_usd == record.cost_usd - record.reserved_usd > 0
    assert record.cost_usd == guardrail.usage_cost(MODEL, out.usage)
    assert guard.usage("default").spent_usd == Decimal(usd_to_nanos(record.cost_usd)) / 10**9
    assert (
        "billed past its reservation" in caplog.text and str(record.overrun_tokens) in caplog.text
    )


BILLED_PROMPT = 100_000
CALLS = 50


def crowd(server: Any, policy: Policy) -> tuple[Guard, list[guardrail.UsageRecord]]:
    """CALLS parallel calls, each with a file_id part the provider bills BILLED_PROMPT
    prompt tokens for, against one tenant."""
    server.prompt_tokens = lambda request: BILLED_PROMPT
    records: list[guardrail.UsageRecord] = []
    lock = threading.Lock()

    def sink(record: guardrail.UsageRecord) -> None:
        with lock:
            records.append(record)

    guard, client = client_for(server, policy, sinks=[sink])
    tenant = client.for_tenant("crowd")
    barrier = threading.Barrier(CALLS)

    def call() -> None:
        barrier.wait()
        with contextlib.suppress(BudgetExceeded):
            tenant.chat.completions.create(
                model=MODEL, messages=[file_part(file_id="file-big")], max_tokens=50
            )

    threads = [threading.Thread(target=call) for _ in range(CALLS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return guard, records


def test_an_upstream_billing_more_than_counted_cannot_pass_the_cap(server: Any) -> None:
    """The default for a file_id is the window: a true upper bound, so the cap holds
    exactly however much the provider bills (it cannot bill a prompt past its window)."""
    cap = Decimal("1")
    guard, records = crowd(server, Policy(daily_spend_usd=cap, loop_limit=None))
    sent = [r for r in records if r.outcome == "ok"]
    assert sent and len(sent) == len(server.chat_requests) < CALLS
    assert all(r.overrun_tokens == 0 for r in sent)
    usage = guard.usage("crowd")
    assert usage.spent_usd <= cap and usage.reserved_usd == 0


def test_a_stated_figure_below_what_is_billed_overruns_by_a_bounded_amount(server: Any) -> None:
    """With file_id_tokens below what the provider bills, each call overruns its
    reservation; the cap still stops new calls once spend reaches it, so the spend past
    the cap is at most (calls in flight at once) x (the largest overrun of one call):
    here max_in_flight=4 calls x (BILLED_PROMPT - reserved prompt) tokens at the input
    price. Every overrun is charged in full and flagged on its record."""
    cap, in_flight = Decimal("1"), 4
    policy = Policy(
        daily_spend_usd=cap, max_in_flight=in_flight, file_id_tokens=1_000, loop_limit=None
    )
    guard, records = crowd(server, policy)
    sent = [r for r in records if r.outcome == "ok"]
    assert sent and len(sent) == len(server.chat_requests)
    reserved_prompt = sent[0].extra["reserved_prompt_tokens"]
    worst_overrun = guardrail.estimate_cost(MODEL, BILLED_PROMPT - reserved_prompt, 0)
    assert all(r.overrun_tokens == BILLED_PROMPT - reserved_prompt for r in sent)
    assert all(0 < r.overrun_usd <= worst_overrun for r in sent)
    spent = guard.usage("crowd").spent_usd
    assert spent == sum(Decimal(usd_to_nanos(r.cost_usd)) for r in sent) / 10**9
    assert spent <= cap + in_flight * worst_overrun
    assert spent > cap  # the figure was too low: the overrun is real, and bounded


# -- item 2: a reasoning model whose usage never arrives ------------------------------


def test_a_cut_reasoning_stream_is_settled_at_the_whole_reserved_output(server: Any) -> None:
    server.reasoning_tokens = 3_000
    server.enqueue_stream_cut(after_chunks=2)
    records: list[guardrail.UsageRecord] = []
    _, client = client_for(server, Policy(max_attempts=1), sinks=[records.append])
    stream = client.chat.completions.create(
        model="o3",
        messages=[{"role": "user", "content": "Think hard."}],
        max_completion_tokens=4_000,
        stream=True,
    )
    with pytest.raises(cut_stream_errors(openai)):
        for _ in stream:
            pass
    (record,) = records
    assert record.outcome == "stream_error" and record.usage_source == "local_count"
    assert record.output_tokens == 4_000  # what may have been billed, not the visible few
    assert record.cost_usd == record.reserved_usd


def test_a_reasoning_call_cut_before_its_answer_pays_the_reserved_output(server: Any) -> None:
    server.enqueue_disconnect()
    records: list[guardrail.UsageRecord] = []
    _, client = client_for(server, Policy(max_attempts=1), sinks=[records.append])
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(
            model="o4-mini",
            messages=[{"role": "user", "content": "Think."}],
            max_completion_tokens=2_000,
        )
    (billed,) = [r for r in records if r.cost_usd]  # the attempt's settlement (then the outcome)
    assert billed.output_tokens == 2_000 and billed.cost_usd == billed.reserved_usd


def test_a_cut_stream_of_a_plain_model_keeps_the_local_count(server: Any) -> None:
    server.enqueue_stream_cut(after_chunks=3)
    records: list[guardrail.UsageRecord] = []
    _, client = client_for(server, Policy(max_attempts=1), sinks=[records.append])
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=500, stream=True
    )
    with pytest.raises(cut_stream_errors(openai)):
        for _ in stream:
            pass
    assert 0 < records[0].output_tokens < 500


def test_reasoning_effort_none_is_not_hidden_reasoning() -> None:
    from guardrail.providers.openai.chat import hidden_reasoning

    assert hidden_reasoning("o3", {}) and hidden_reasoning("gpt-5-mini", {})
    assert not hidden_reasoning("gpt-5.1", {"reasoning_effort": "none"})
    assert not hidden_reasoning("gpt-4o", {}) and not hidden_reasoning("gpt-5-chat-latest", {})
    assert hidden_reasoning("gpt-4o", {"reasoning_effort": "low"})


def test_a_stream_without_its_usage_chunk_is_settled_from_what_it_may_have_cost(
    server: Any,
) -> None:
    """A provider that never sends the usage chunk: a plain model settles from the local
    count, a reasoning model at its whole reserved output."""
    server.stream_usage = False
    server.reasoning_tokens = 500
    records: list[guardrail.UsageRecord] = []
    _, client = client_for(server, Policy(), sinks=[records.append])
    for model in (MODEL, "o3"):
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=900, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == server.reply
    plain, reasoning = records
    assert plain.usage_source == reasoning.usage_source == "local_count"
    assert plain.output_tokens == guardrail.count_text(server.reply, MODEL)
    assert reasoning.output_tokens == 900 and reasoning.cost_usd == reasoning.reserved_usd
