"""Bounded work for long strings: a prompt known to exceed what can be sent is refused
without encoding all of it.

Two tools, used only for strings of at least :data:`BOUND_MIN_CHARS` characters and only
while a limit is in force (:func:`counting_limit`, set by the planner around its count):

* **A lower bound in one cheap pass.** Every token of an encoding holds at most ``M_C``
  bytes of a class ``C`` (ASCII letters, digits, non-ASCII bytes; any byte at all), so a
  text with ``n_C`` bytes of class ``C`` has at least ``ceil(n_C / M_C)`` tokens. The
  bound holds for any prefix too (the tokens covering a prefix cover all its bytes), so
  it is computed chunk by chunk and stops as soon as it passes the limit. For
  ``o200k_base`` a token holds at most 26 ASCII letters, 3 digits, 60 non-ASCII bytes
  and 128 bytes in all (:data:`CLASS_MAXIMA`, checked against the vocabularies by the
  tests): 10 MB of ``"x"`` is at least 384,616 tokens, known after reading 3 MB.
* **Counting in chunks.** Otherwise the string is encoded in chunks of about
  :data:`CHUNK_CHARS` characters, split where the pre-tokenizers of ``o200k_base`` and
  ``cl100k_base`` always split (after a newline followed by an ASCII letter, and before a
  single space between two ASCII letters: no piece of either pattern spans those), so the
  sum of the chunks' counts is the exact count; counting stops as soon as the sum passes
  the limit. Other encodings are encoded whole.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

__all__ = [
    "BOUND_MIN_CHARS",
    "CHUNK_CHARS",
    "CLASS_MAXIMA",
    "bounded_count",
    "class_maxima",
    "lower_bound",
]

BOUND_MIN_CHARS = 64 * 1024
"""Strings shorter than this are encoded as they are (it takes well under 20 ms)."""
CHUNK_CHARS = 256 * 1024

CLASS_MAXIMA: dict[str, tuple[int, int, int, int]] = {
    "o200k_base": (26, 3, 60, 128),
    "cl100k_base": (41, 3, 48, 128),
}
"""Per encoding, the most bytes one token holds of: ASCII letters, ASCII digits, bytes
>= 0x80, and bytes of any kind (``class_maxima`` computes them from a vocabulary)."""

_SAFE_SPLITS = frozenset(("o200k_base", "cl100k_base"))
_SPLIT = re.compile(r"(?<=[A-Za-z])(?= [A-Za-z])|(?<=\n)(?=[A-Za-z])")

_TABLE = bytearray(range(256))
for _b in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
    _TABLE[_b] = ord("a")
for _b in b"0123456789":
    _TABLE[_b] = ord("0")
for _b in range(128, 256):
    _TABLE[_b] = ord("h")
_CLASSES = bytes(_TABLE)
_BOUND_CHUNK = 512 * 1024


def class_maxima(token_bytes: Sequence[bytes]) -> tuple[int, int, int, int]:
    """:data:`CLASS_MAXIMA` for a vocabulary (``tiktoken.Encoding.token_byte_values()``)."""
    letters = digits = high = longest = 0
    for token in token_bytes:
        classes = token.translate(_CLASSES)
        letters = max(letters, classes.count(b"a"))
        digits = max(digits, classes.count(b"0"))
        high = max(high, classes.count(b"h"))
        longest = max(longest, len(token))
    return letters, digits, high, longest


def lower_bound(text: str, maxima: tuple[int, int, int, int], stop_above: int) -> int:
    """A lower bound on the tokens of ``text``; computed on growing prefixes, it returns
    as soon as it passes ``stop_above`` (so it may be lower than the bound of the whole)."""
    letters_max, digits_max, high_max, longest = maxima
    letters = digits = high = size = 0
    bound = 0
    for start in range(0, len(text), _BOUND_CHUNK):
        chunk = text[start : start + _BOUND_CHUNK].encode("utf-8", "surrogatepass")
        classes = chunk.translate(_CLASSES)
        letters += classes.count(b"a")
        digits += classes.count(b"0")
        high += classes.count(b"h")
        size += len(chunk)
        bound = max(
            -(-letters // letters_max),
            -(-digits // digits_max),
            -(-high // high_max),
            -(-size // longest),
        )
        if bound > stop_above:
            break
    return bound


def bounded_count(
    text: str,
    encode: Callable[[str], Sequence[int]],
    encoding: str,
    margin: float | None,
    limit: int,
) -> tuple[int, bool]:
    """``(count, True)``: the exact count of ``text`` (times ``margin``, rounded up, for an
    estimate); or ``(n, False)`` with ``n > limit`` a lower bound, when ``text`` alone is
    known to be over ``limit`` before all of it was encoded."""

    def scaled(n: int) -> int:
        return n if margin is None else math.ceil(n * margin)

    maxima = CLASS_MAXIMA.get(encoding)
    if maxima is not None:
        bound = lower_bound(text, maxima, limit)
        if scaled(bound) > limit:
            return scaled(bound), False
    if encoding not in _SAFE_SPLITS:
        return scaled(len(encode(text))), True
    total, start = 0, 0
    while start < len(text):
        end = start + CHUNK_CHARS
        if end < len(text):
            found = _SPLIT.search(text, end)
            end = found.start() if found else len(text)
        total += len(encode(text[start:end]))
        start = end
        if start < len(text) and scaled(total) > limit:
            return scaled(total), False
    return scaled(total), True
