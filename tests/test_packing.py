"""pack_documents: best-first packing with a partial last document and a dropped rest."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.counting.messages import count_text
from guardrail.errors import InvalidRequestError
from guardrail.prompt.packing import Document, PackResult, as_document, pack_documents
from tests.test_truncation import PIECES, texts

MODEL = "gpt-4o"


def doc(words: int, score: float, label: str) -> Document:
    text = " ".join(f"{label}{i}." for i in range(words))
    return Document(text, score, {"id": label})


def ids(docs: list[Document]) -> list[str]:
    return [d.metadata["id"] for d in docs]


def test_best_first_then_truncated_then_dropped() -> None:
    docs = [doc(40, 0.2, "low"), doc(40, 0.9, "best"), doc(200, 0.5, "mid"), doc(5, 0.1, "tiny")]
    best = count_text(docs[1].text, MODEL)
    result = pack_documents(docs, best + 100, MODEL, min_tokens_for_partial=20)
    assert ids(result.included) == ["best", "mid"]
    assert result.truncated is docs[2]
    # Everything ranked below the cut document is dropped, even one that would fit.
    assert ids(result.dropped) == ["low", "tiny"]
    assert result.tokens == count_text(result.text, MODEL) <= best + 100
    first, second = result.text.split("\n\n")
    assert first == docs[1].text and docs[2].text.startswith(second.removesuffix(" …"))


def test_the_last_document_is_cut_only_when_enough_of_it_fits() -> None:
    docs = [doc(40, 0.9, "best"), doc(200, 0.5, "mid")]
    best = count_text(docs[0].text, MODEL)
    sep = count_text("\n\n", MODEL)
    room = 30
    budget = best + sep + room
    cut = pack_documents(docs, budget, MODEL, min_tokens_for_partial=room, truncation="end")
    assert cut.truncated is docs[1] and cut.dropped == []
    assert budget - 2 <= cut.tokens <= budget  # a join can merge into fewer tokens
    whole_only = pack_documents(
        docs, budget, MODEL, min_tokens_for_partial=room + 1, truncation="end"
    )
    assert whole_only.truncated is None and ids(whole_only.dropped) == ["mid"]
    assert whole_only.text == docs[0].text
    # The minimum applies to what is kept: a sentence cut keeps a little less than the room.
    by_sentence = pack_documents(docs, budget, MODEL, min_tokens_for_partial=room)
    assert by_sentence.truncated is None and ids(by_sentence.dropped) == ["mid"]
    by_sentence = pack_documents(docs, budget, MODEL, min_tokens_for_partial=room - 5)
    assert by_sentence.truncated is docs[1] and by_sentence.text.endswith(". …")


def test_original_order_among_the_kept() -> None:
    docs = [doc(10, 0.1, "a"), doc(10, 0.9, "b"), doc(10, 0.5, "c"), doc(300, 0.05, "d")]
    budget = sum(count_text(d.text, MODEL) for d in docs[:3]) + 2 * count_text("\n\n", MODEL)
    by_score = pack_documents(docs, budget, MODEL)
    original = pack_documents(docs, budget, MODEL, order="original")
    assert ids(by_score.included) == ["b", "c", "a"]
    assert ids(original.included) == ["a", "b", "c"]
    assert original.text == "\n\n".join(d.text for d in docs[:3])
    assert ids(original.dropped) == ids(by_score.dropped) == ["d"]


def test_joins_that_merge_leave_room_for_more() -> None:
    # ".\n\n" can be one token: the joined text is shorter than its parts' sum, and
    # that room is used rather than cutting the last document.
    docs = [Document(f"Sentence number {i} ends here.", 1 - i / 100) for i in range(40)]
    joined = "\n\n".join(d.text for d in docs)
    parts = sum(count_text(d.text, MODEL) for d in docs) + 39 * count_text("\n\n", MODEL)
    assert count_text(joined, MODEL) < parts  # the premise
    result = pack_documents(docs, count_text(joined, MODEL), MODEL)
    assert result.text == joined and result.truncated is None and result.dropped == []
    for less in (1, 2, 3):  # the last document is cut, not dropped, and no room is wasted
        almost = pack_documents(
            docs,
            count_text(joined, MODEL) - less,
            MODEL,
            min_tokens_for_partial=3,
            truncation="end",
        )
        assert len(almost.included) == 40 and almost.truncated is docs[-1]
        assert almost.tokens >= count_text(joined, MODEL) - less - 2


def test_equal_scores_keep_input_order() -> None:
    docs = [doc(5, 1.0, str(i)) for i in range(6)]
    result = pack_documents(docs, 10_000, MODEL)
    assert ids(result.included) == [str(i) for i in range(6)]
    assert result.truncated is None and result.dropped == []


def test_dicts_strings_and_metadata() -> None:
    result = pack_documents(
        [
            {"text": "from a dict", "score": 2, "source": "a.md", "metadata": {"page": 3}},
            "a plain string",
            Document("a document", 1.5),
        ],
        100,
        MODEL,
        separator="\n---\n",
    )
    assert result.text == "from a dict\n---\na document\n---\na plain string"
    assert result.included[0].metadata == {"page": 3, "source": "a.md"}
    assert result.included[2] == Document("a plain string", 0.0)


def test_render_formats_each_document() -> None:
    docs = [Document("Paris is in France.", 0.9, {"source": "geo.md"})]
    result = pack_documents(docs, 100, MODEL, render=lambda d: f"[{d.metadata['source']}] {d.text}")
    assert result.text == "[geo.md] Paris is in France."


def test_empty_inputs() -> None:
    assert pack_documents([], 100, MODEL) == PackResult("", 0, [], None, [])
    result = pack_documents(["some text here"], 0, MODEL)
    assert result.text == "" and result.tokens == 0 and len(result.dropped) == 1


def test_claude_packs_by_the_estimate() -> None:
    docs = [doc(100, 1 - i / 10, str(i)) for i in range(5)]
    result = pack_documents(docs, 500, "claude-sonnet-4-5")
    assert count_text(result.text, "claude-sonnet-4-5") <= 500
    assert result.included and result.dropped


@pytest.mark.parametrize(
    ("docs", "kwargs", "match"),
    [
        ([{"score": 1}], {}, "no 'text'"),
        ([3], {}, "must be a Document"),
        ([{"text": "x", "score": float("nan")}], {}, "NaN"),
        ([{"text": "x", "score": "high"}], {}, "score"),
        ([{"text": "x", "metadata": 3}], {}, "metadata"),
        (["x"], {"order": "random"}, "order"),
        (["x"], {"min_tokens_for_partial": 0}, "min_tokens_for_partial"),
        (["x"], {"separator": None}, "separator"),
        (["x"], {"truncation": "words"}, "strategy"),
    ],
)
def test_bad_arguments(docs: list[Any], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        pack_documents(docs, 100, MODEL, **kwargs)


def test_as_document_passes_documents_through() -> None:
    d = Document("x", 1.0)
    assert as_document(d) is d


documents = st.lists(
    st.builds(
        Document,
        text=texts,
        score=st.floats(-10, 10, allow_nan=False),
    ),
    max_size=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=documents,
    budget=st.integers(0, 120),
    separator=st.sampled_from(["\n\n", " ", "", "<|endoftext|>", "\n---\n", "🚀"]),
    order=st.sampled_from(["score", "original"]),
    model=st.sampled_from(["gpt-4o", "gpt-4", "claude-sonnet-4-5"]),
    min_partial=st.integers(1, 30),
)
def test_packing_properties(
    docs: list[Document], budget: int, separator: str, order: Any, model: str, min_partial: int
) -> None:
    result = pack_documents(
        docs, budget, model, separator=separator, order=order, min_tokens_for_partial=min_partial
    )
    assert result.tokens == count_text(result.text, model) <= budget
    assert result.text.encode("utf-8").decode("utf-8") == result.text
    assert result.text.count("\ufffd") <= sum(d.text.count("\ufffd") for d in docs) + (
        separator.count("\ufffd") * len(docs)
    )
    # Every document is either included or dropped, once.
    assert sorted(map(id, result.included + result.dropped)) == sorted(map(id, docs))
    # Never a less relevant document kept while a more relevant one is dropped.
    if result.included and result.dropped:
        assert min(d.score for d in result.included) >= max(d.score for d in result.dropped)
    # When everything fits joined in the order it is emitted, everything is kept whole
    # (in the other order it may not fit: the joins merge differently).
    ranked = sorted(docs, key=lambda d: -d.score)
    emitted = docs if order == "original" else ranked
    if count_text(separator.join(d.text for d in emitted), model) <= budget:
        assert result.dropped == [] and result.truncated is None
    whole = [d for d in result.included if d is not result.truncated]
    for d in whole:
        assert d.text in result.text
    if order == "original":
        positions = [next(i for i, x in enumerate(docs) if x is d) for d in result.included]
        assert positions == sorted(positions)


def test_pieces_are_packed_safely() -> None:
    docs = [Document(piece * 20, float(i)) for i, piece in enumerate(PIECES)]
    for budget in (5, 50, 500):
        result = pack_documents(docs, budget, MODEL, min_tokens_for_partial=3)
        assert result.tokens <= budget and "\ufffd" not in result.text.replace("\ufffd" * 20, "")


# ----------------------------------------------------------------------------- shapes
#
# Stand-ins with the attribute names of the real classes (langchain_core.documents.Document,
# llama_index.core.schema.TextNode / NodeWithScore, haystack.Document), so that these tests
# need none of those libraries.


class LangChainDocument:
    def __init__(self, page_content: str, metadata: dict[str, Any] | None = None) -> None:
        self.page_content = page_content
        self.metadata = metadata or {}
        self.id = None


class LlamaTextNode:
    def __init__(self, text: str, metadata: dict[str, Any] | None = None) -> None:
        self.text = text
        self.metadata = metadata or {}
        self.id_ = "node-1"

    def get_content(self, metadata_mode: object = None) -> str:
        return self.text


class LlamaNodeWithScore:
    def __init__(self, node: LlamaTextNode, score: float | None = None) -> None:
        self.node = node
        self.score = score


class HaystackDocument:
    def __init__(self, content: str, meta: dict[str, Any], score: float | None) -> None:
        self.content = content
        self.meta = meta
        self.score = score


class OnlyGetContent:
    def get_content(self) -> str:
        return "from get_content"


@pytest.mark.parametrize(
    ("doc", "text", "score", "metadata"),
    [
        ({"text": "a", "score": 2}, "a", 2.0, {}),
        ({"content": "b", "score": 0.5, "id": 7}, "b", 0.5, {"id": 7}),
        ({"page_content": "c", "metadata": {"score": 0.25, "src": "x"}}, "c", 0.25, None),
        ({"content": "d", "metadata": {"relevance_score": 0.75}}, "d", 0.75, None),
        (LangChainDocument("e", {"source": "f.md"}), "e", 0.0, {"source": "f.md"}),
        (LangChainDocument("f", {"score": 0.9}), "f", 0.9, {"score": 0.9}),
        ((LangChainDocument("g"), 0.3), "g", 0.3, {}),
        (LlamaTextNode("h", {"page": 2}), "h", 0.0, {"page": 2}),
        (LlamaNodeWithScore(LlamaTextNode("i"), 0.8), "i", 0.8, {}),
        (LlamaNodeWithScore(LlamaTextNode("j", {"score": 0.1}), None), "j", 0.1, None),
        (HaystackDocument("k", {"file": "k.pdf"}, 0.6), "k", 0.6, {"file": "k.pdf"}),
        (OnlyGetContent(), "from get_content", 0.0, {}),
        (("l", 4), "l", 4.0, {}),
    ],
)
def test_documents_in_the_ecosystems_shapes(
    doc: Any, text: str, score: float, metadata: dict[str, Any] | None
) -> None:
    found = as_document(doc)
    assert (found.text, found.score) == (text, score)
    if metadata is not None:
        assert dict(found.metadata) == metadata
    assert found.source is doc  # the caller's object comes back with the result


def test_pack_documents_takes_mixed_shapes_and_hands_back_the_originals() -> None:
    lc = LangChainDocument("LangChain text. " * 5, {"score": 0.2})
    node = LlamaNodeWithScore(LlamaTextNode("LlamaIndex text. " * 5), 0.9)
    rag = {"content": "Plain RAG dict. " * 5, "score": 0.5}
    result = pack_documents([lc, node, rag], 10_000, MODEL)
    assert [d.source for d in result.included] == [node, rag, lc]
    assert result.text.startswith("LlamaIndex text.")


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"score": 1}, "no 'text' \\(nor 'content' or 'page_content'\\)"),
        ({"content": 3}, r"docs\[0\]\['content'\] must be a str"),
        ({"text": "x", "score": None, "metadata": {"score": "high"}}, "metadata\\['score'\\]"),
        (LangChainDocument("x", {"score": "high"}), "score"),
        ((LangChainDocument("x"), "high"), "must be a Document"),
        ((LangChainDocument("x"), float("nan")), "NaN"),
        (object(), "a LangChain Document, a LlamaIndex node"),
        (b"bytes", "got bytes"),
    ],
)
def test_unreadable_documents_say_what_was_expected(doc: Any, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        pack_documents([doc], 100, MODEL)


def test_everything_is_kept_when_it_fits_in_the_order_it_is_emitted() -> None:
    # Found by the property above: these fit 88 tokens of gpt-4o joined best first (88)
    # but not in their input order (89), which order="original" emits.
    texts = [
        "\U0001f468\u200d\U0001f469\u200d\U0001f4670\U000109c000\U000100000\U00010000"
        "\U0001f680\U0001f680" + "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 3,
        "\U0001f1eb\U0001f1f7\U00010000",
        "0",
        "\U0001f680" + "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 3 + "a",
    ]
    docs = [Document(t, score=1.0 if t == "0" else 0.0) for t in texts]
    ranked = [docs[2], docs[0], docs[1], docs[3]]
    assert count_text(" ".join(d.text for d in ranked), "gpt-4o") == 88
    assert count_text(" ".join(texts), "gpt-4o") == 89
    best_first = pack_documents(
        docs, 88, "gpt-4o", separator=" ", order="score", min_tokens_for_partial=1
    )
    assert best_first.dropped == [] and best_first.truncated is None and best_first.tokens == 88
    original = pack_documents(
        docs, 88, "gpt-4o", separator=" ", order="original", min_tokens_for_partial=1
    )
    assert original.tokens == count_text(original.text, "gpt-4o") <= 88
    assert original.truncated is not None or original.dropped
