"""Token counts of strings, cached per encoding: a conversation re-sends its whole history
every turn, so a string seen before costs one dict lookup, not a re-encode."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from itertools import islice

import tiktoken

from guardrail.catalog.models import FALLBACK_ENCODING, ModelInfo

__all__ = [
    "CACHE_MAX_CHARS",
    "CACHE_MAX_ENTRIES",
    "CACHE_MAX_STRING",
    "CLAUDE_SAFETY_MARGIN",
    "TextCache",
    "clear_text_caches",
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


class TextCache(dict[str, int]):
    """``cache[text]`` is the token count of ``text``: a hit is one C-level dict lookup.

    A miss encodes in ``__missing__`` and stores the count. Bounded by entries and by total
    characters; when full, the oldest eighth is dropped (insertion order). Not an LRU: moving
    an entry on every hit would cost more than the lookup itself. Inserts and evictions take
    a lock; lookups need none (a dict read is atomic), so concurrent counting is safe.
    """

    __slots__ = ("_chars", "_encode", "_lock", "_margin", "max_chars", "max_entries")

    def __init__(
        self,
        encode: Callable[[str], Sequence[int]],
        margin: float | None = None,
        max_entries: int = CACHE_MAX_ENTRIES,
        max_chars: int = CACHE_MAX_CHARS,
    ) -> None:
        super().__init__()
        self._encode = encode
        self._margin = margin
        self._lock = threading.Lock()
        self._chars = 0
        self.max_entries = max_entries
        self.max_chars = max_chars

    def __missing__(self, text: str) -> int:
        if not isinstance(text, str):
            # Reached only from the fast path with a non-str value: makes it fall back.
            raise TypeError(f"expected a string, got {type(text).__name__}")
        n = len(self._encode(text))
        if self._margin is not None:
            n = math.ceil(n * self._margin)
        size = len(text)
        if size <= CACHE_MAX_STRING:
            with self._lock:
                if text not in self:
                    if len(self) >= self.max_entries or self._chars + size > self.max_chars:
                        self._evict(size)
                    self[text] = n
                    self._chars += size
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
        return TextCache(enc.encode_ordinary, margin or CLAUDE_SAFETY_MARGIN)
    # encode_ordinary: special-token text such as "<|endoftext|>" is ordinary user text.
    return TextCache(tiktoken.get_encoding(encoding).encode_ordinary)


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
