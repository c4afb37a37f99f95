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

The packed text is counted once more as a whole (tokens are not additive across a
separator) and is guaranteed to count at most ``max_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, Union

from guardrail.errors import InvalidRequestError
from guardrail.models import ModelInfo
from guardrail.tokens import TokenCounter, counter_for
from guardrail.truncation import Strategy, _Encoder, _truncate, check_truncation_args

__all__ = ["Document", "PackResult", "pack_documents"]

Order = Literal["score", "original"]
DEFAULT_SEPARATOR = "\n\n"
DEFAULT_MIN_TOKENS_FOR_PARTIAL = 64


@dataclass(frozen=True)
class Document:
    """A retrieved document: its text, its relevance score (higher is better) and any
    metadata (source, id, page...) the application wants back."""

    text: str
    score: float = 0.0
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InvalidRequestError(f"document text must be a str, got {type(self.text)}")
        if isinstance(self.score, bool) or not isinstance(self.score, (int, float)):
            raise InvalidRequestError(f"document score must be a number, got {self.score!r}")
        if math.isnan(self.score):
            raise InvalidRequestError("document score must not be NaN")
        if not isinstance(self.metadata, Mapping):
            raise InvalidRequestError("document metadata must be a mapping")


DocumentLike: TypeAlias = Union[Document, Mapping[str, Any], str]  # noqa: UP007
"""A :class:`Document`; a dict with ``"text"`` and optional ``"score"`` and ``"metadata"``
(any other key is added to the metadata); or a plain string (score 0)."""


def as_document(doc: DocumentLike, index: int = 0) -> Document:
    """``doc`` as a :class:`Document` (see :data:`DocumentLike`)."""
    if isinstance(doc, Document):
        return doc
    if isinstance(doc, str):
        return Document(doc)
    if isinstance(doc, Mapping):
        if "text" not in doc:
            raise InvalidRequestError(f"docs[{index}] has no 'text'")
        extra = {k: v for k, v in doc.items() if k not in ("text", "score", "metadata")}
        meta = doc.get("metadata") or {}
        if not isinstance(meta, Mapping):
            raise InvalidRequestError(f"docs[{index}].metadata must be a mapping")
        return Document(doc["text"], doc.get("score", 0.0), {**meta, **extra})
    raise InvalidRequestError(
        f"docs[{index}] must be a Document, a dict or a str, got {type(doc).__name__}"
    )


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
    if not isinstance(separator, str):
        raise InvalidRequestError("separator must be a str")
    if order not in ("score", "original"):
        raise InvalidRequestError(f"order must be 'score' or 'original', got {order!r}")
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
    size: Callable[[str], int] = counter.text
    total: Callable[[int], int] = int
    if not counter.exact:
        enc = _Encoder(counter)
        size, total = (lambda text: len(enc.encode(text))), enc.from_length
    sep_size = size(separator)
    budget = max_tokens
    while True:
        # Best-first by the sum of the parts; then the joined text is counted whole.
        pieces: dict[int, str] = {}
        partial: int | None = None
        used = 0
        for i in ranked:
            join = sep_size if pieces else 0
            cost = size(texts[i]) + join
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
            break
        keys = sorted(pieces) if order == "original" else list(pieces)
        text = separator.join(pieces[i] for i in keys)
        tokens = counter.text(text)
        if tokens <= max_tokens:
            break
        budget -= tokens - max_tokens  # rare: the joins cost more than their parts
    included = [documents[i] for i in keys]
    dropped = [documents[i] for i in ranked if i not in pieces]
    truncated = None if partial is None else documents[partial]
    return PackResult(text, tokens, included, truncated, dropped)
