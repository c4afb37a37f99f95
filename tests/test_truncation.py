"""truncate_text: token-exact cuts that never exceed the budget or break a character."""

from __future__ import annotations

from typing import Any

import pytest
import tiktoken
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guardrail.counting.messages import count_text, counter_for
from guardrail.errors import InvalidRequestError
from guardrail.prompt.truncation import DEFAULT_MARKERS, _Encoder, _head, _tail, truncate_text

MODELS = ["gpt-4o", "gpt-4", "claude-sonnet-4-5"]
STRATEGIES = ["end", "start", "middle", "sentence"]

PROSE = (
    "The quick brown fox jumps over the lazy dog. It was a sunny day! Was it? Yes.\n\n"
    "A second paragraph starts here, and it goes on for a while. Then it stops.\n"
    "日本語の文です。次の文もあります。 Émojis too 🚀🎉 and <|endoftext|> as text."
)

# Texts that make tokenizers and cuts misbehave.
PIECES = [
    "🚀",
    "👨\u200d👩\u200d👧",
    "🇫🇷",
    "日本語のテキスト",
    "。",
    "e\u0301",
    "a\u0300\u0301\u0302",
    "<|endoftext|>",
    "<|im_start|>",
    "<|fim_prefix|>",
    " ",
    "\n",
    "\n\n",
    ". ",
    "! ",
    "\t",
    "\u00a0",
    "\ufffd",
    "x" * 300,
    "Donaudampfschifffahrtsgesellschaftskapitän",
]
texts = st.lists(
    st.one_of(st.text(max_size=40), st.sampled_from(PIECES), st.text("ab🚀é ", max_size=200)),
    max_size=30,
).map("".join)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid(result: str, original: str) -> None:
    assert result.encode("utf-8").decode("utf-8") == result
    assert result.count("\ufffd") <= original.count("\ufffd")


# --------------------------------------------------------------------------- properties


@FAST
@given(
    text=texts,
    budget=st.integers(0, 40),
    model=st.sampled_from(MODELS),
    strategy=st.sampled_from(STRATEGIES),
)
@example(text="🚀" * 50, budget=3, model="gpt-4o", strategy="end")
@example(text="🚀" * 50, budget=3, model="gpt-4o", strategy="start")
@example(text="🚀" * 50, budget=5, model="gpt-4", strategy="middle")
@example(text="<|endoftext|>" * 20, budget=7, model="gpt-4o", strategy="sentence")
def test_fits_and_is_valid_text(text: str, budget: int, model: str, strategy: Any) -> None:
    result = truncate_text(text, budget, model, strategy=strategy)
    assert count_text(result, model) <= budget
    _valid(result, text)
    if count_text(text, model) <= budget:
        assert result is text


@FAST
@given(text=texts, budget=st.integers(0, 40), strategy=st.sampled_from(STRATEGIES))
def test_what_is_kept_comes_from_the_text(text: str, budget: int, strategy: Any) -> None:
    marker = "[cut]"
    result = truncate_text(text, budget, "gpt-4o", strategy=strategy, marker=marker)
    if result is text:
        return
    if marker in result:
        head, _, tail = result.partition(marker)
    else:  # the marker alone did not fit
        assert count_text(marker, "gpt-4o") > budget
        splits = [
            i
            for i in range(len(result) + 1)
            if text.startswith(result[:i]) and text.endswith(result[i:])
        ]
        assert splits, result
        i = {"end": len(result), "sentence": len(result), "start": 0}.get(strategy, splits[0])
        head, tail = result[:i], result[i:]
    assert text.startswith(head) or strategy == "start"
    assert text.endswith(tail) or strategy not in ("start", "middle")
    if strategy in ("end", "sentence"):
        assert tail == ""
    if strategy == "start":
        assert head == ""
    if strategy == "middle":
        assert len(head) + len(tail) <= len(text)


@settings(max_examples=25, deadline=None)
@given(text=texts, budget=st.integers(1, 30))
def test_a_larger_budget_never_keeps_less(text: str, budget: int) -> None:
    small = truncate_text(text, budget, "gpt-4o", marker="")
    large = truncate_text(text, budget + 10, "gpt-4o", marker="")
    assert large.startswith(small) or large is text


# --------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_text_that_fits_is_returned_unchanged(model: str, strategy: Any) -> None:
    budget = count_text(PROSE, model)
    assert truncate_text(PROSE, budget, model, strategy=strategy) is PROSE
    assert truncate_text("", 0, model, strategy=strategy) == ""


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("strategy", ["end", "start", "middle"])
def test_cuts_use_nearly_all_of_the_budget(model: str, strategy: Any) -> None:
    text = " ".join(f"word{i}" for i in range(2000))
    for budget in (10, 57, 500):
        result = truncate_text(text, budget, model, strategy=strategy)
        # Only the cut's edge (and the Claude estimate's rounding) can leave a gap.
        assert budget - 3 <= count_text(result, model) <= budget


def test_end_keeps_the_beginning_and_marks_the_cut() -> None:
    result = truncate_text(PROSE, 10, "gpt-4o")
    assert result.startswith("The quick brown fox") and result.endswith("…")
    assert count_text(result, "gpt-4o") == 10


def test_start_keeps_the_end() -> None:
    result = truncate_text(PROSE, 10, "gpt-4o", strategy="start")
    assert result.startswith("…") and result.endswith("endoftext|> as text.")
    assert count_text(result, "gpt-4o") == 10


def test_middle_keeps_both_ends() -> None:
    result = truncate_text(PROSE, 20, "gpt-4o", strategy="middle", marker=" [...] ")
    head, tail = result.split(" [...] ")
    assert PROSE.startswith(head) and PROSE.endswith(tail)
    assert head.startswith("The quick") and tail.endswith("as text.")
    assert abs(count_text(head, "gpt-4o") - count_text(tail, "gpt-4o")) <= 2


def test_sentence_keeps_whole_sentences() -> None:
    result = truncate_text(PROSE, 22, "gpt-4o", strategy="sentence")
    assert (
        result == "The quick brown fox jumps over the lazy dog. It was a sunny day! Was it? Yes. …"
    )
    # A paragraph end is a sentence end too; CJK full stops need no space after them.
    for budget in range(39, 45):
        result = truncate_text(PROSE, budget, "gpt-4o", strategy="sentence", marker="")
        assert result.endswith("for a while. Then it stops."), budget
    cjk = "日本語の文です。次の文もあります。最後の文。"
    assert truncate_text(cjk, 12, "gpt-4o", strategy="sentence", marker="") == (
        "日本語の文です。次の文もあります。"
    )


def test_sentence_falls_back_to_words_then_tokens() -> None:
    long_sentence = "one two three four five six seven eight nine ten eleven twelve."
    result = truncate_text(long_sentence, 6, "gpt-4o", strategy="sentence", marker="")
    assert result == "one two three four five six"
    no_spaces = "x" * 500
    result = truncate_text(no_spaces, 6, "gpt-4o", strategy="sentence", marker="")
    assert result and set(result) == {"x"} and count_text(result, "gpt-4o") <= 6


def test_emoji_split_across_tokens_is_never_half_kept() -> None:
    enc = tiktoken.get_encoding("o200k_base")
    assert len(enc.encode_ordinary(" 🚀")) > 1  # the premise: one emoji, several tokens
    text = " 🚀" * 100
    for budget in range(0, 12):
        for strategy in ("end", "start", "middle"):
            result = truncate_text(text, budget, "gpt-4o", strategy=strategy, marker="")
            assert "\ufffd" not in result
            assert set(result) <= {" ", "🚀"}, (budget, strategy, result)


def test_utf8_edge_helpers() -> None:
    data = "a€🚀".encode()  # 1 + 3 + 4 bytes
    assert [_head(data[:n]) for n in range(len(data) + 1)] == [
        "",
        "a",
        "a",
        "a",
        "a€",
        "a€",
        "a€",
        "a€",
        "a€🚀",
    ]
    assert [_tail(data[n:]) for n in range(len(data) + 1)] == [
        "a€🚀",
        "€🚀",
        "🚀",
        "🚀",
        "🚀",
        "",
        "",
        "",
        "",
    ]


def test_marker_that_does_not_fit_is_left_out() -> None:
    assert truncate_text(PROSE, 0, "gpt-4o") == ""
    marker = " [the rest of this document was removed] "
    result = truncate_text(PROSE, 3, "gpt-4o", marker=marker)
    assert marker not in result and count_text(result, "gpt-4o") <= 3 and result


def test_default_markers() -> None:
    assert DEFAULT_MARKERS == {"end": "…", "start": "…", "middle": "…", "sentence": " …"}
    assert truncate_text(PROSE, 5, "gpt-4o", marker="").startswith("The quick")


def test_special_token_text_is_plain_text() -> None:
    text = "<|endoftext|>" * 200
    result = truncate_text(text, 25, "gpt-4", strategy="middle")
    assert count_text(result, "gpt-4") <= 25 and "<|" in result


def test_lone_surrogates_do_not_break_the_cut() -> None:
    text = "ab\ud800cd " * 200
    result = truncate_text(text, 10, "gpt-4o")
    result.encode("utf-8")  # valid: the surrogate became U+FFFD, as tiktoken counts it
    assert count_text(result, "gpt-4o") <= 10


def test_claude_budget_uses_the_estimate() -> None:
    text = "Hello world. " * 300
    result = truncate_text(text, 100, "claude-sonnet-4-5")
    assert 96 <= count_text(result, "claude-sonnet-4-5") <= 100
    # The raw o200k tokens are fewer: the estimate's margin is respected.
    assert len(tiktoken.get_encoding("o200k_base").encode_ordinary(result)) <= 80


def test_encoder_counts_like_the_counter() -> None:
    for model in MODELS:
        enc, counter = _Encoder(counter_for(model)), counter_for(model)
        for text in (PROSE, *PIECES, "🚀" * 33):
            assert enc.count(text) == counter.text(text)


def test_large_texts_are_encoded_only_near_the_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[int] = []
    original = tiktoken.Encoding.encode_ordinary

    def spy(self: tiktoken.Encoding, text: str) -> list[int]:
        encoded.append(len(text))
        return original(self, text)

    monkeypatch.setattr(tiktoken.Encoding, "encode_ordinary", spy)
    text = "All work and no play makes Jack a dull boy. " * 100_000  # 4.4 MB
    for strategy in STRATEGIES:
        encoded.clear()
        result = truncate_text(text, 500, "gpt-4o", strategy=strategy)
        assert count_text(result, "gpt-4o") <= 500
        assert sum(encoded) < 200_000, (strategy, sum(encoded))  # not 4.4 MB
    # And a large text that fits is returned whole, after one encode of it.
    encoded.clear()
    big = "word " * 20_000
    assert truncate_text(big, 50_000, "gpt-4o") is big


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"strategy": "both"}, "strategy"),
        ({"marker": 3}, "marker"),
        ({"text": b"bytes"}, "text"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"text": "hello", "max_tokens": 1, "model": "gpt-4o", **kwargs}
    with pytest.raises(InvalidRequestError, match=message):
        truncate_text(args.pop("text"), args.pop("max_tokens"), args.pop("model"), **args)


@pytest.mark.parametrize("budget", [300, 9_000, 25_000])
def test_middle_of_a_long_text_never_overlaps(budget: int) -> None:
    # Small budgets cut from two windows; large ones encode the whole text.
    text = " ".join(f"w{i}" for i in range(20_000))
    marker = " <cut> "
    result = truncate_text(text, budget, "gpt-4o", strategy="middle", marker=marker)
    head, tail = result.split(marker)
    assert text.startswith(head) and text.endswith(tail)
    assert len(head) + len(tail) < len(text)
    assert budget - 4 <= count_text(result, "gpt-4o") <= budget
