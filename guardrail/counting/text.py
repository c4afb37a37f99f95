"""Token counts of strings, cached per encoding: a conversation re-sends its whole history
every turn, so a string seen before costs one dict lookup, not a re-encode."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import islice

import tiktoken

from guardrail.catalog.models import FALLBACK_ENCODING, ModelInfo
from guardrail.counting.bounded import BOUND_MIN_CHARS, bounded_count

__all__ = [
    "CACHE_MAX_CHARS",
    "CACHE_MAX_ENTRIES",
    "CACHE_MAX_STRING",
    "CLAUDE_SAFETY_MARGIN",
    "PromptTooLong",
    "TextCache",
    "clear_text_caches",
    "counting_limit",
    "estimate_margin",
    "new_cache",
    "shared_cache",
]

CLAUDE_SAFETY_MARGIN = 1.25
"""Claude estimates before Opus 4.7: ``ceil(o200k_base tokens * 1.25)`` per string
(Claude's tokenizer produces more tokens than o200k_base for most text). Each Claude
family has its own margin in the catalog (``ModelInfo.text_margin``: 1.85 from Opus 4.7,
whose new tokenizer counts 1.3-1.47x the 4.6 tokenizer); this is the default of a
``ModelInfo`` without one."""


def estimate_margin(info: ModelInfo) -> float | None:
    """The margin a model's local counts are multiplied by: None for exact tokenizers."""
    if info.exact_tokenizer:
        return None
    return info.text_margin or CLAUDE_SAFETY_MARGIN


CACHE_MAX_ENTRIES = 50_000
"""Strings whose counts each per-encoding cache keeps."""
CACHE_MAX_CHARS = 32 * 1024 * 1024
"""Total characters of the strings a cache keeps alive (it holds references to them)."""
CACHE_MAX_STRING = 1024 * 1024
"""Strings longer than this are encoded every time: encoding dominates, and keeping one
alive would cost more memory than the cache is worth."""


class PromptTooLong(Exception):
    """Raised out of a count made under ``counting_limit(limit, whole_prompt=True)`` as soon
    as the prompt is known to be over ``limit`` tokens; ``at_least`` is a lower bound."""

    def __init__(self, at_least: int) -> None:
        super().__init__(f"at least {at_least} tokens")
        self.at_least = at_least


_EARLY_EXIT_CHARS = 1024 * 1024
"""A prompt is counted whole (its refusal names its exact size) until this many
characters were encoded for it; past that, counting stops once it is over the limit."""


@dataclass
class _Limit:
    limit: int
    whole_prompt: bool
    counted: int = 0  # tokens of the strings encoded so far (cache misses) in this count
    chars: int = 0  # their characters: a small prompt is always counted whole


_limit: ContextVar[_Limit | None] = ContextVar("guardrail_counting_limit", default=None)


class counting_limit:  # named as the function it replaces: ``with counting_limit(...):``
    """Bound the work of the counts made in this block (this thread or task).

    Strings of :data:`~guardrail.counting.bounded.BOUND_MIN_CHARS` characters or more
    that are known to be over ``limit`` tokens are not encoded whole
    (:func:`~guardrail.counting.bounded.bounded_count`). With ``whole_prompt=True`` the
    block counts one prompt whose total may not pass ``limit``: :class:`PromptTooLong` is
    raised as soon as the strings encoded so far pass it (once 1 MB of text was encoded:
    a smaller prompt is counted whole, so its refusal names its exact size). Otherwise
    (trimming, where each message is judged on its own) a string over ``limit`` counts as
    a lower bound above ``limit``, and is not cached. Cached strings cost nothing, so they
    are not added up.

    A class rather than a ``@contextmanager`` generator: the planner enters one on every
    call, and the generator's machinery cost more than the ContextVar itself.
    """

    __slots__ = ("_bound", "_token")

    def __init__(self, limit: int, *, whole_prompt: bool) -> None:
        self._bound = _Limit(limit, whole_prompt)

    def __enter__(self) -> None:
        self._token = _limit.set(self._bound)

    def __exit__(self, *exc_info: object) -> None:
        _limit.reset(self._token)


class TextCache(dict[str, int]):
    """``cache[text]`` is the token count of ``text``: a hit is one C-level dict lookup.

    A miss encodes in ``__missing__`` and stores the count. Bounded by entries and by total
    characters; when full, the oldest eighth is dropped (insertion order). Not an LRU: moving
    an entry on every hit would cost more than the lookup itself. Inserts and evictions take
    a lock; lookups need none (a dict read is atomic), so concurrent counting is safe.
    """

    __slots__ = (
        "_chars",
        "_encode",
        "_encoding",
        "_lock",
        "_margin",
        "max_chars",
        "max_entries",
    )

    def __init__(
        self,
        encode: Callable[[str], Sequence[int]],
        margin: float | None = None,
        max_entries: int = CACHE_MAX_ENTRIES,
        max_chars: int = CACHE_MAX_CHARS,
        encoding: str = "",
    ) -> None:
        super().__init__()
        self._encode = encode
        self._encoding = encoding
        self._margin = margin
        self._lock = threading.Lock()
        self._chars = 0
        self.max_entries = max_entries
        self.max_chars = max_chars

    def __missing__(self, text: str) -> int:
        if not isinstance(text, str):
            # Reached only from the fast path with a non-str value: makes it fall back.
            raise TypeError(f"expected a string, got {type(text).__name__}")
        size = len(text)
        limit = _limit.get()
        if limit is None or size < BOUND_MIN_CHARS:
            n = len(self._encode(text))
            if self._margin is not None:
                n = math.ceil(n * self._margin)
        else:
            room = limit.limit - limit.counted if limit.whole_prompt else limit.limit
            n, exact = bounded_count(text, self._encode, self._encoding, self._margin, room)
            if not exact:  # a lower bound above the limit: never cached
                if limit.whole_prompt:
                    raise PromptTooLong(limit.counted + n)
                return n
        if size <= CACHE_MAX_STRING:
            with self._lock:
                if text not in self:
                    if len(self) >= self.max_entries or self._chars + size > self.max_chars:
                        self._evict(size)
                    self[text] = n
                    self._chars += size
        if limit is not None and limit.whole_prompt:
            limit.counted += n
            limit.chars += size
            if limit.counted > limit.limit and limit.chars >= _EARLY_EXIT_CHARS:
                raise PromptTooLong(limit.counted)
        return n

    def _evict(self, incoming: int) -> None:
        # Called with the lock held. Drop the oldest eighth, more if the characters demand.
        drop = max(1, len(self) // 8)
        for key in list(islice(iter(self), drop)):
            self._chars -= len(key)
            del self[key]
        while self and self._chars + incoming > self.max_chars:
            key = next(iter(self))
            self._chars -= len(key)
            del self[key]

    def clear(self) -> None:
        with self._lock:
            super().clear()
            self._chars = 0


_caches_lock = threading.Lock()
_caches: dict[str, TextCache] = {}


def new_cache(encoding: str, margin: float | None = None) -> TextCache:
    """A string-count cache for ``encoding`` (``"claude"``: o200k_base times ``margin``,
    :data:`CLAUDE_SAFETY_MARGIN` by default)."""
    if encoding == "claude":
        enc = tiktoken.get_encoding(FALLBACK_ENCODING)
        return TextCache(
            enc.encode_ordinary, margin or CLAUDE_SAFETY_MARGIN, encoding=FALLBACK_ENCODING
        )
    # encode_ordinary: special-token text such as "<|endoftext|>" is ordinary user text.
    return TextCache(tiktoken.get_encoding(encoding).encode_ordinary, encoding=encoding)


def shared_cache(encoding: str, margin: float | None = None) -> TextCache:
    """The cache shared by every counter of ``encoding`` (and, for estimates, ``margin``)."""
    key = encoding if encoding != "claude" else f"claude*{margin or CLAUDE_SAFETY_MARGIN}"
    cache = _caches.get(key)
    if cache is None:
        with _caches_lock:
            cache = _caches.get(key)
            if cache is None:
                cache = _caches[key] = new_cache(encoding, margin)
    return cache


def clear_text_caches() -> None:
    """Empty every per-encoding cache."""
    with _caches_lock:
        for cache in _caches.values():
            cache.clear()
        _caches.clear()
