"""Token-exact text truncation: cut a string to a token budget, marker included.

:func:`truncate_text` keeps part of a text so that the result, **marker included**, counts
at most ``max_tokens`` for the model (an estimate for Claude models, see
:mod:`guardrail.counting.messages`). Strategies are named after *what is cut*:

``"end"``
    keep the beginning, cut the end: ``"The quick brown…"``.
``"start"``
    keep the end, cut the beginning: ``"… lazy dog."`` (logs, the latest output).
``"middle"``
    keep both ends, cut the middle: ``"The quick… lazy dog."`` (stack traces, files whose
    head and tail matter).
``"sentence"``
    keep the beginning, in whole sentences: the cut falls after a sentence's final
    punctuation (``. ! ? …``, CJK ``。！？``) or at a line or paragraph break. When not even
    the first sentence fits, the cut falls at a word boundary instead, and when there is no
    word boundary either, at a token boundary.

How it stays exact and valid:

* Cuts are made on token boundaries of the text's own encoding, found by a galloping
  binary search (a handful of encodes of at most ``max_tokens`` worth of text, never a
  character-by-character loop). Tokens are not additive across a cut or a marker, so every
  candidate is re-counted as the final string, and the result is counted once more by the
  model's :class:`~guardrail.counting.messages.TokenCounter` before it is returned.
* A token can hold part of a multi-byte character (an emoji is often two tokens). Token
  slices are decoded to bytes (``decode_bytes``) and an incomplete character at the edge of
  the cut is dropped, so the result is always whole characters: no ``U+FFFD`` is introduced,
  and it round-trips through UTF-8.
* Special-token strings such as ``<|endoftext|>`` are ordinary text, as everywhere in
  guardrail.
* A text that fits is returned unchanged (the same object). A text that does not fit gets
  the marker; when the marker alone does not fit the budget, the text is cut without it
  (so ``max_tokens=0`` gives ``""``).
* Lone surrogates (not valid Unicode) are replaced with ``U+FFFD`` in a cut text, as
  tiktoken does when it counts them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import tiktoken

from guardrail.catalog.models import FALLBACK_ENCODING, ModelInfo
from guardrail.counting.messages import TokenCounter, counter_for
from guardrail.counting.text import estimate_margin
from guardrail.errors import InvalidRequestError, describe

__all__ = ["DEFAULT_MARKERS", "Strategy", "truncate_text"]

Strategy = Literal["end", "start", "middle", "sentence"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
DEFAULT_MARKERS: dict[str, str] = {"end": "…", "start": "…", "middle": "…", "sentence": " …"}
"""The marker each strategy puts at the cut when none is given (``marker=""`` for none)."""

# How far past max_tokens a cut is searched for: re-encoding a slice of k tokens gives
# about k tokens, a few more or fewer at the edge. Past this a cut cannot fit.
_SLACK = 16
# Sentence ends: final punctuation (with closing quotes/brackets) before whitespace; CJK
# full stops (no space follows them); the end of a line (before trailing blanks).
_SENTENCE_END = re.compile(
    r"[.!?…]+[\"'”’»)\]]*(?=\s)|[。！？]+[」』”’)\]]*|(?<=\S)(?=[ \t]*\r?\n)"
)
_WORD_END = re.compile(r"\S(?=\s)")
# Texts up to this long are counted whole by the counter (and cached) before any cut.
_COUNT_WHOLE_CHARS = 65_536


class _Encoder:
    """The model's tokenizer, used directly: same rule as the counter, no cache churn."""

    __slots__ = ("decode_bytes", "encode", "margin")

    def __init__(self, counter: TokenCounter) -> None:
        if counter.encoding == "claude":
            enc = tiktoken.get_encoding(FALLBACK_ENCODING)
            self.margin: float | None = estimate_margin(counter.info)
        else:
            enc = tiktoken.get_encoding(counter.encoding)
            self.margin = None
        self.encode: Callable[[str], list[int]] = enc.encode_ordinary
        self.decode_bytes: Callable[[Sequence[int]], bytes] = enc.decode_bytes

    def from_length(self, n: int) -> int:
        return n if self.margin is None else math.ceil(n * self.margin)

    def to_length(self, tokens: int) -> int:
        """How many encoder tokens at most ``tokens`` counted tokens can hold."""
        return tokens if self.margin is None else math.floor(tokens / self.margin)

    def count(self, text: str) -> int:
        return self.from_length(len(self.encode(text)))


def _head(data: bytes) -> str:
    """Decode a prefix of valid UTF-8, dropping an incomplete character at its end."""
    end = len(data)
    i = end - 1
    while i >= 0 and end - i < 4 and data[i] & 0xC0 == 0x80:
        i -= 1  # back over continuation bytes to the last character's lead byte
    if i >= 0:
        lead = data[i]
        size = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if i + size > end:
            end = i
    return data[:end].decode("utf-8")


def _tail(data: bytes) -> str:
    """Decode a suffix of valid UTF-8, dropping the rest of a character cut at its start."""
    start = 0
    while start < len(data) and start < 3 and data[start] & 0xC0 == 0x80:
        start += 1
    return data[start:].decode("utf-8")


def _largest(fits: Callable[[int], bool], guess: int, lo: int, hi: int) -> int:
    """The largest ``k`` in ``[lo, hi]`` with ``fits(k)``, given ``fits(lo)``.

    Gallops from ``guess`` (usually right or off by a few) then bisects: a handful of
    calls. ``fits`` is nearly monotone (re-encoding can differ by a token at the edge);
    where it is not, the answer is a valid fit, if not always the very largest.
    """
    guess = max(lo, min(hi, guess))
    step = 1
    if guess > lo and not fits(guess):
        bad = guess  # gallop down to a fit
        while True:
            probe = max(lo, guess - step)
            if probe == lo or fits(probe):
                break
            bad = probe
            step *= 2
        lo, hi = probe, bad - 1
    else:
        lo = guess  # gallop up to a miss
        while lo < hi:
            probe = min(hi, guess + step)
            if not fits(probe):
                hi = probe - 1
                break
            lo = probe
            step *= 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _valid_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: replace them, as tiktoken does
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class _Source:
    """A text to cut, with the tokens of its first and last stretches encoded on demand.

    Cutting to a budget of ``b`` tokens only ever looks at the first or last ``b`` tokens,
    so a 10 MB text is not encoded whole: a window of characters is encoded, twice as
    large each time, until it holds more than twice the tokens the cut needs; past half
    the text, the whole text is encoded instead (so head and tail windows never overlap).
    A window's tokens decode to a prefix (suffix) of the text's bytes, which is all a cut
    needs; every candidate is re-counted anyway.
    """

    __slots__ = ("_head", "_tail", "complete", "enc", "need", "text")

    def __init__(self, text: str, enc: _Encoder, need: int) -> None:
        self.text, self.enc, self.need = text, enc, need
        self._head: list[int] | None = None
        self._tail: list[int] | None = None
        self.complete = False

    def _window(self, from_end: bool) -> list[int]:
        text, size = self.text, max(4096, 12 * self.need)
        while 2 * size < len(text):  # windows stay under half the text: never overlap
            tokens = self.enc.encode(text[-size:] if from_end else text[:size])
            if len(tokens) > 2 * self.need:
                return tokens
            size *= 2
        self.complete = True
        self._head = self._tail = self.enc.encode(text)
        return self._head

    def head_tokens(self) -> list[int]:
        if self._head is None:
            self._head = self._window(from_end=False)
        return self._head

    def tail_tokens(self) -> list[int]:
        if self._tail is None:
            self._tail = self._window(from_end=True)
        return self._tail

    def fits_whole(self, max_tokens: int) -> bool:
        """Whether the whole text fits, from its first window: a window of more than twice
        the needed tokens means it does not."""
        tokens = self.head_tokens()
        return self.complete and self.enc.from_length(len(tokens)) <= max_tokens


def _cut(src: _Source, budget: int, strategy: str, marker: str) -> str:
    """The longest cut of the text by ``strategy`` whose re-count is within ``budget``."""
    enc, text = src.enc, src.text
    if enc.count(marker) > budget:
        marker = ""

    def fits(candidate: str) -> bool:
        return enc.count(candidate) <= budget

    room = enc.to_length(budget)
    guess = room - len(enc.encode(marker))
    hi = room + _SLACK

    if strategy == "middle":
        head_tokens, tail_tokens = src.head_tokens(), src.tail_tokens()
    elif strategy == "start":
        head_tokens = tail_tokens = src.tail_tokens()
    else:
        head_tokens = tail_tokens = src.head_tokens()
    n_tail = len(tail_tokens)

    def head(k: int) -> str:
        return _head(enc.decode_bytes(head_tokens[:k]))

    def tail(k: int) -> str:
        return _tail(enc.decode_bytes(tail_tokens[n_tail - k :])) if k else ""

    if strategy == "end":
        k = _largest(lambda k: fits(head(k) + marker), guess, 0, min(hi, len(head_tokens)))
        return head(k) + marker
    if strategy == "start":
        k = _largest(lambda k: fits(marker + tail(k)), guess, 0, min(hi, n_tail))
        return marker + tail(k)
    if strategy == "middle":

        def both(k: int) -> str:
            return head((k + 1) // 2) + marker + tail(k // 2)

        top = min(hi, len(head_tokens) - 1) if src.complete else hi
        k = _largest(lambda k: fits(both(k)), guess, 0, max(0, top))
        return both(k)
    # "sentence": whole sentences, else whole words, else tokens.
    reach = len(head(min(hi, len(head_tokens))))  # no cut past this many characters fits
    for pattern in (_SENTENCE_END, _WORD_END):
        ends = pattern.finditer(text, 0, reach + 1)
        cuts = [end for end in dict.fromkeys(m.end() for m in ends) if 0 < end <= reach]
        if cuts and fits(text[: cuts[0]] + marker):
            return text[: _best_cut(cuts, text, marker, fits)] + marker
    k = _largest(lambda k: fits(head(k) + marker), guess, 0, min(hi, len(head_tokens)))
    return head(k) + marker


def _best_cut(cuts: list[int], text: str, marker: str, fits: Callable[[str], bool]) -> int:
    """The last of ``cuts`` (character offsets, ascending) where the kept text fits."""
    return cuts[_largest(lambda i: fits(text[: cuts[i]] + marker), len(cuts) - 1, 0, len(cuts) - 1)]


def _truncate(
    text: str, max_tokens: int, counter: TokenCounter, strategy: str, marker: str | None
) -> tuple[str, int]:
    """``truncate_text`` with the counter resolved; returns the text and its token count."""
    if len(text) <= _COUNT_WHOLE_CHARS:
        tokens = counter.text(text)  # cached: packing and builders see the same texts again
        if tokens <= max_tokens:
            return text, tokens
    enc = _Encoder(counter)
    src = _Source(_valid_text(text), enc, enc.to_length(max_tokens) + _SLACK)
    if len(text) > _COUNT_WHOLE_CHARS and src.fits_whole(max_tokens):
        return text, counter.text(text)
    mark = DEFAULT_MARKERS[strategy] if marker is None else marker
    budget = max_tokens
    while True:
        # The counter has the last word: should it ever count a cut higher than the
        # search did, cut again with the excess taken off the budget.
        result = _cut(src, budget, strategy, mark)
        tokens = counter.text(result)
        if tokens <= max_tokens or not result:
            return result, tokens
        budget = max(0, budget - (tokens - max_tokens))


def check_truncation_args(max_tokens: object, strategy: object, marker: object) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise InvalidRequestError(f"max_tokens must be an int >= 0, got {describe(max_tokens)}")
    if strategy not in STRATEGIES:
        raise InvalidRequestError(
            f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {describe(strategy)}"
        )
    if marker is not None and not isinstance(marker, str):
        raise InvalidRequestError(f"marker must be a str or None, got {type(marker).__name__}")


def truncate_text(
    text: str,
    max_tokens: int,
    model: str | ModelInfo,
    *,
    strategy: Strategy = "end",
    marker: str | None = None,
) -> str:
    """``text`` cut to at most ``max_tokens`` tokens for ``model``, marker included.

    ``strategy`` names what is cut: ``"end"`` keeps the beginning, ``"start"`` keeps the
    end, ``"middle"`` keeps both ends, ``"sentence"`` keeps the beginning in whole
    sentences (see the module docstring). ``marker`` goes where text was removed; ``None``
    uses :data:`DEFAULT_MARKERS` (``"…"``, or ``" …"`` after whole sentences), ``""``
    marks nothing. A text that fits is returned unchanged.

    The result never counts more than ``max_tokens``, is whole characters (never a split
    multi-byte character, never ``U+FFFD`` introduced), and works for every model of the
    catalog (for Claude models the count is guardrail's estimate).
    """
    if not isinstance(text, str):
        raise InvalidRequestError(f"text must be a str, got {type(text).__name__}")
    check_truncation_args(max_tokens, strategy, marker)
    return _truncate(text, max_tokens, counter_for(model), strategy, marker)[0]
