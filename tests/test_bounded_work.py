"""Bounded work before any limit applies (item 7): counting stops once a prompt is known to
exceed what can be sent, the lower bound it stops on is a true bound, the chunked count is
the exact count, and crafted images are read in bounded time. (Speed itself is measured in
bench/bench_bounded.py, not here.)"""

from __future__ import annotations

import base64
from typing import Any

import openai
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

import guardrail
from guardrail import ContextWindowExceeded, Guard, Policy
from guardrail.counting import bounded
from guardrail.counting.images import image_size, worst_case_tokens
from guardrail.counting.text import PromptTooLong, counting_limit, new_cache


@pytest.mark.parametrize("encoding", sorted(bounded.CLASS_MAXIMA))
def test_class_maxima_are_those_of_the_vocabulary(encoding: str) -> None:
    vocabulary = tiktoken.get_encoding(encoding).token_byte_values()
    assert bounded.class_maxima(vocabulary) == bounded.CLASS_MAXIMA[encoding]


PIECES = st.sampled_from(
    [
        "hello",
        " world",
        "\n",
        "\n\n",
        "Hello",
        " ",
        "  ",
        "42",
        "12345",
        "!",
        "?!\n",
        "'s",
        "é",
        "日本語",
        "\t",
        "x",
        "xxxxxxxx",
        " a",
        "a ",
        "\r\n",
        "--",
        "🙂",
    ]
)
TEXTS = st.lists(PIECES, max_size=80).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=TEXTS, encoding=st.sampled_from(["o200k_base", "cl100k_base"]))
def test_chunked_count_is_exact_and_the_bound_is_a_bound(text: str, encoding: str) -> None:
    encode = tiktoken.get_encoding(encoding).encode_ordinary
    exact = len(encode(text))
    with pytest.MonkeyPatch.context() as patch:  # chunks of a few characters: many splits
        patch.setattr(bounded, "CHUNK_CHARS", 7)
        patch.setattr(bounded, "_BOUND_CHUNK", 5)
        n, is_exact = bounded.bounded_count(text, encode, encoding, None, 1 << 40)
        assert is_exact and n == exact
        assert bounded.lower_bound(text, bounded.CLASS_MAXIMA[encoding], 1 << 40) <= exact
        n, is_exact = bounded.bounded_count(text, encode, encoding, None, exact // 2)
        assert n == exact if is_exact else exact // 2 < n <= exact


def test_a_whole_prompt_count_stops_once_it_is_over() -> None:
    cache = new_cache("o200k_base")
    text = "x" * 10_000_000
    with counting_limit(100_000, whole_prompt=True), pytest.raises(PromptTooLong) as info:
        cache[text]
    assert 100_000 < info.value.at_least <= len(text)
    assert text not in cache  # a bound is never cached
    with counting_limit(100_000, whole_prompt=False):
        assert cache[text] > 100_000  # judged on its own: a bound above the limit
    assert text not in cache


def test_a_ten_megabyte_prompt_is_refused_and_nothing_is_sent(server: Any) -> None:
    guard = Guard(Policy())
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    with pytest.raises(ContextWindowExceeded) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x" * 10_000_000}]
        )
    refused = info.value
    assert "counting stopped" in str(refused)
    assert refused.prompt_tokens + refused.reserved_output_tokens > refused.limit
    assert server.chat_requests == []


def test_trimming_drops_a_huge_old_message_without_encoding_it(server: Any) -> None:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(trim=True), sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    history = [
        {"role": "user", "content": "x" * 5_000_000},
        {"role": "assistant", "content": "That is a lot of x."},
        {"role": "user", "content": "Never mind. Hello!"},
    ]
    client.chat.completions.create(model="gpt-4o", messages=history, max_tokens=10)
    (sent,) = server.chat_requests
    assert [m["content"] for m in sent.json["messages"]] == history_tail(history)
    assert records[0].trimmed_messages == 1


def history_tail(history: list[dict[str, str]]) -> list[str]:
    return [m["content"] for m in history[1:]]


def test_a_crafted_jpeg_is_read_in_bounded_steps_and_counts_the_worst_case() -> None:
    url = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8" + b"\xff" * 3_000_000).decode()
    assert image_size(url) is None
    part = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
    rule = guardrail.model_info("gpt-4o").image_rule
    n = guardrail.count_messages([{"role": "user", "content": [part]}], "gpt-4o")
    bare = guardrail.count_messages([{"role": "user", "content": []}], "gpt-4o")
    assert n - bare == worst_case_tokens("high", rule)
