"""Packing retrieved documents into a token budget, most relevant first.

:func:`pack_documents` takes documents (text, a relevance score, optional metadata) and
joins as many as fit ``max_tokens`` with a separator:

1. Documents are ranked by score, highest first; equal scores keep their input order.
2. They are added whole, in rank order, while they fit.
3. The first one that does not fit whole is truncated into the room left, but only when
   at least ``min_tokens_for_partial`` tokens of it fit (a few words of a document are
   noise, not context); otherwise it is dropped.
4. Everything ranked below it is dropped, even a short document that would have fitted:
   a less relevant document is never kept in place of a more relevant one.
5. ``order="score"`` emits the kept documents best first; ``order="original"`` in their
   input order (for documents that read in sequence, such as chunks of one file).

The packed text is counted as a whole (tokens are not additive across a separator: a
join can merge into fewer tokens, rarely more) and is guaranteed to count at most
``max_tokens``; room that merged joins free is used, so a set that fits joined is kept
whole. Sizes for Claude models add up in raw tokens and take the estimate's margin once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeAlias, Union

from guardrail.catalog.models import ModelInfo
from guardrail.counting.messages import TokenCounter, counter_for
from guardrail.errors import InvalidRequestError, describe
from guardrail.prompt.truncation import (
    Strategy,
    _Encoder,
    _largest,
    _truncate,
    check_truncation_args,
)

__all__ = ["Document", "PackResult", "pack_documents"]

Order = Literal["score", "original"]
DEFAULT_SEPARATOR = "\n\n"
DEFAULT_MIN_TOKENS_FOR_PARTIAL = 64
_UNLIMITED = 1 << 62
_Packed: TypeAlias = "tuple[int, dict[int, str], int | None, str, int]"
"""A packing: its tokens, the pieces kept by index, the one cut, text, estimated size."""


@dataclass(frozen=True)
class Document:
    """A retrieved document: its text, its relevance score (higher is better) and any
    metadata (source, id, page...) the application wants back. ``source`` is the object it
    was read from (a LangChain ``Document``, a LlamaIndex node, a dict), when it was."""

    text: str
    score: float = 0.0
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)
    source: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InvalidRequestError(f"document text must be a str, got {type(self.text)}")
        if isinstance(self.score, bool) or not isinstance(self.score, (int, float)):
            raise InvalidRequestError(
                f"document score must be a number, got {describe(self.score)}"
            )
        if math.isnan(self.score):
            raise InvalidRequestError("document score must not be NaN")
        if not isinstance(self.metadata, Mapping):
            raise InvalidRequestError("document metadata must be a mapping")


DocumentLike: TypeAlias = Union[Document, Mapping[str, Any], str, Any]  # noqa: UP007
"""What :func:`pack_documents` accepts as a document:

* a :class:`Document` or a plain string (score 0);
* a dict with its text under ``"text"``, ``"content"`` (the shape most RAG code passes
  around) or ``"page_content"``, an optional ``"score"`` and ``"metadata"`` (any other key
  is added to the metadata);
* a LangChain ``Document`` (``page_content``, ``metadata``), a LlamaIndex node
  (``text``/``get_content()``, ``metadata``) or ``NodeWithScore`` (``node``, ``score``), a
  Haystack ``Document`` (``content``, ``meta``, ``score``);
* a ``(document, score)`` pair, as ``similarity_search_with_score`` returns them.

The score is read from the pair, the dict's or object's ``score``, or its metadata's
``score`` / ``relevance_score``, in that order; 0 when none has one."""

_TEXT_KEYS = ("text", "content", "page_content")
_TEXT_ATTRIBUTES = ("page_content", "text", "content")
_SCORE_KEYS = ("score", "relevance_score")
_EXPECTED = (
    "a Document, a str, a dict with 'text', 'content' or 'page_content', a LangChain "
    "Document, a LlamaIndex node, a Haystack Document or a (document, score) pair"
)


def _number(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidRequestError(f"{where} must be a number, got {value!r}")
    return float(value)


def _score(explicit: object, metadata: Mapping[str, Any], where: str) -> float:
    score = _number(explicit, f"{where}.score")
    for key in _SCORE_KEYS:
        if score is not None:
            break
        score = _number(metadata.get(key), f"{where}.metadata[{key!r}]")
    return 0.0 if score is None else score


def _from_mapping(doc: Mapping[str, Any], where: str) -> Document:
    key = next((k for k in _TEXT_KEYS if k in doc), None)
    if key is None:
        raise InvalidRequestError(
            f"{where} has no 'text' (nor 'content' or 'page_content'): expected {_EXPECTED}"
        )
    text = doc[key]
    if not isinstance(text, str):
        raise InvalidRequestError(f"{where}[{key!r}] must be a str, got {type(text).__name__}")
    meta = doc.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise InvalidRequestError(f"{where}.metadata must be a mapping")
    extra = {k: v for k, v in doc.items() if k not in (key, "score", "metadata")}
    metadata = {**meta, **extra}
    return Document(text, _score(doc.get("score"), metadata, where), metadata, doc)


def _from_object(doc: Any, where: str, score: object = None) -> Document | None:
    node = getattr(doc, "node", None)
    if node is not None and hasattr(doc, "score"):  # LlamaIndex NodeWithScore
        found = _from_object(node, f"{where}.node", getattr(doc, "score", None))
        return None if found is None else replace(found, source=doc)
    text = next((t for a in _TEXT_ATTRIBUTES if isinstance(t := getattr(doc, a, None), str)), None)
    if text is None:
        get_content = getattr(doc, "get_content", None)
        text = get_content() if callable(get_content) else None
        if not isinstance(text, str):
            return None
    meta = getattr(doc, "metadata", None)
    if not isinstance(meta, Mapping):
        meta = getattr(doc, "meta", None)  # Haystack
    metadata = dict(meta) if isinstance(meta, Mapping) else {}
    if score is None:
        score = getattr(doc, "score", None)
    return Document(text, _score(score, metadata, where), metadata, doc)


def as_document(doc: DocumentLike, index: int = 0) -> Document:
    """``doc`` as a :class:`Document` (see :data:`DocumentLike`)."""
    where = f"docs[{index}]"
    if isinstance(doc, Document):
        return doc
    if isinstance(doc, str):
        return Document(doc, source=doc)
    if isinstance(doc, Mapping):
        return _from_mapping(doc, where)
    if isinstance(doc, (tuple, list)) and len(doc) == 2 and not isinstance(doc[1], str):
        inner, score = doc
        base = as_document(inner, index)
        found = _number(score, f"{where}[1] (the score)")
        return replace(base, score=base.score if found is None else found, source=doc)
    if not isinstance(doc, (bytes, int, float, tuple, list)):
        found_doc = _from_object(doc, where)
        if found_doc is not None:
            return found_doc
    raise InvalidRequestError(f"{where} must be {_EXPECTED}, got {type(doc).__name__}")


@dataclass(frozen=True)
class PackResult:
    """What :func:`pack_documents` kept and dropped.

    ``included`` is in output order (as they appear in ``text``); ``truncated`` is the one
    included document that was cut, if any; ``dropped`` is in rank order. ``tokens`` is
    the count of ``text`` as a whole.
    """

    text: str
    tokens: int
    included: list[Document]
    truncated: Document | None
    dropped: list[Document]


def pack_documents(
    docs: Iterable[DocumentLike],
    max_tokens: int,
    model: str | ModelInfo,
    *,
    separator: str = DEFAULT_SEPARATOR,
    min_tokens_for_partial: int = DEFAULT_MIN_TOKENS_FOR_PARTIAL,
    order: Order = "score",
    truncation: Strategy = "sentence",
    marker: str | None = None,
    render: Callable[[Document], str] | None = None,
) -> PackResult:
    """Join the most relevant ``docs`` that fit ``max_tokens`` tokens of ``model``.

    ``separator`` goes between documents. ``min_tokens_for_partial`` is the least of the
    last document worth keeping (its tokens, marker included); ``truncation`` and
    ``marker`` say how it is cut (see :func:`~guardrail.truncate_text`). ``order`` is
    ``"score"`` (best first) or ``"original"`` (input order among the kept). ``render``
    turns a document (for example with its source) before it is counted and packed.
    See the module docstring for the rules.
    """
    if isinstance(docs, (str, bytes, Mapping)) or not isinstance(docs, Iterable):
        raise InvalidRequestError(f"docs must be a list of documents, got {type(docs).__name__}")
    if not isinstance(separator, str):
        raise InvalidRequestError("separator must be a str")
    if order not in ("score", "original"):
        raise InvalidRequestError(f"order must be 'score' or 'original', got {describe(order)}")
    if (
        isinstance(min_tokens_for_partial, bool)
        or not isinstance(min_tokens_for_partial, int)
        or min_tokens_for_partial < 1
    ):
        raise InvalidRequestError("min_tokens_for_partial must be an int >= 1")
    check_truncation_args(max_tokens, truncation, marker)
    documents = [as_document(d, i) for i, d in enumerate(docs)]
    return _pack(
        documents,
        max_tokens,
        counter_for(model),
        separator=separator,
        min_partial=min_tokens_for_partial,
        order=order,
        truncation=truncation,
        marker=marker,
        render=render,
    )


def _pack(
    documents: list[Document],
    max_tokens: int,
    counter: TokenCounter,
    *,
    separator: str,
    min_partial: int,
    order: str,
    truncation: str,
    marker: str | None,
    render: Callable[[Document], str] | None,
) -> PackResult:
    texts = [render(d) if render is not None else d.text for d in documents]
    for text in texts:
        if not isinstance(text, str):
            raise InvalidRequestError(f"render() must return a str, got {type(text).__name__}")
    ranked = sorted(range(len(documents)), key=lambda i: -documents[i].score)
    # Sizes add up in the encoder's own tokens. For an estimate (Claude: o200k tokens
    # times a margin, rounded up) the margin is applied to the sum, not to each piece,
    # or the rounding of every document and separator would waste room.
    measure: Callable[[str], int] = counter.text
    total: Callable[[int], int] = int
    if not counter.exact:
        enc = _Encoder(counter)
        measure, total = (lambda text: len(enc.encode(text))), enc.from_length
    sizes: dict[int, int] = {}

    def size(i: int) -> int:
        if i not in sizes:
            sizes[i] = measure(texts[i])
        return sizes[i]

    sep_size = measure(separator)

    def greedy(budget: int) -> tuple[dict[int, str], int | None, int]:
        """Best-first by the sum of the parts: pieces kept, the cut one, estimated size."""
        pieces: dict[int, str] = {}
        partial: int | None = None
        used = 0
        for i in ranked:
            join = sep_size if pieces else 0
            cost = size(i) + join
            if total(used + cost) <= budget:
                pieces[i] = texts[i]
                used += cost
                continue
            room = budget - total(used + join)
            if room >= min_partial:
                cut, cut_tokens = _truncate(texts[i], room, counter, truncation, marker)
                if cut_tokens >= min_partial:
                    pieces[i] = cut
                    partial = i
                    used += join + measure(cut)
            break
        return pieces, partial, total(used)

    def pack(budget: int) -> _Packed:
        pieces, partial, estimate = greedy(budget)
        keys = sorted(pieces) if order == "original" else list(pieces)
        text = separator.join(pieces[i] for i in keys)
        return counter.text(text), pieces, partial, text, estimate

    # The joined text is counted whole: tokens are not additive across a separator.
    everything = sum(map(size, ranked)) + sep_size * max(0, len(texts) - 1)
    if total(everything) <= max_tokens + 2 * len(texts):  # joins save a token or two each
        best = pack(_UNLIMITED)
        if best[0] <= max_tokens:
            return _result(documents, ranked, order, best)
    # Rarely the joins cost more than the parts: shrink the budget by the excess.
    low = max_tokens
    best = pack(low)
    while best[0] > max_tokens:
        low -= best[0] - max_tokens
        best = pack(low)
    # Usually they cost less (".\n\n" is one token): the largest budget whose packing
    # still fits, searched from the first packing's saving (a few packings in all).
    saved = best[4] - best[0]
    if saved > 0:
        packings = {low: best}

        def fits(budget: int) -> bool:
            if budget not in packings:
                packings[budget] = pack(budget)
            return packings[budget][0] <= max_tokens

        best = packings[_largest(fits, low + saved, low, low + 2 * saved + 4)]
    return _result(documents, ranked, order, best)


def _result(
    documents: list[Document],
    ranked: list[int],
    order: str,
    best: _Packed,
) -> PackResult:
    tokens, pieces, partial, text, _ = best
    keys = sorted(pieces) if order == "original" else list(pieces)
    included = [documents[i] for i in keys]
    dropped = [documents[i] for i in ranked if i not in pieces]
    truncated = None if partial is None else documents[partial]
    return PackResult(text, tokens, included, truncated, dropped)
