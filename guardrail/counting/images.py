"""Image token counts of content parts, and image sizes read from headers.

The rules themselves (OpenAI's tile and patch rules, Anthropic's 28px patches) are in
:mod:`guardrail.counting.vision`; ``guardrail/catalog/data/models.json`` says which model
uses which, and docs/catalog.md where each figure comes from. This module finds the size
an image part has and hands it to its rule.

Where guardrail cannot know the size it counts the **worst case** for the detail level, so
that a prompt is never under-counted:

* remote ``http(s)://`` URLs (guardrail never fetches them);
* ``data:`` URLs whose bytes are not a PNG, JPEG, GIF or WebP header guardrail can read.

``detail`` is counted as the rule says (:func:`~guardrail.counting.vision.resolve_detail`):
``"auto"`` as ``"high"`` on tile models (OpenAI does not publish how it chooses), as the
model's documented default on patch models (``"original"`` on gpt-5.5 and later); a detail
a model does not know as its costliest.

A ``data:`` URL whose payload is not base64 at all raises
:class:`~guardrail.errors.InvalidRequestError` when its size matters (not for a ``"low"``
tile image, whose header is never read): the API would reject it with a 400, and it is
better to say so before anything is sent. Only the bytes the header needs are decoded (a
few dozen for PNG/GIF/WebP; JPEG jumps from segment to segment), never a whole 20 MB image.
Sizes are not cached: reading a header costs a few microseconds, less than hashing a
multi-megabyte URL would.
"""

from __future__ import annotations

import base64
import binascii
import struct
import urllib.parse
from collections.abc import Mapping
from typing import Any, Protocol

from guardrail.counting.vision import (
    patch_tokens,
    size_free_tokens,
    tile_tokens,
    tokens_for_size,
    worst_case_tokens,
)
from guardrail.errors import InvalidRequestError

__all__ = [
    "ANTHROPIC_HIGH_RES_IMAGE_RULE",
    "ANTHROPIC_IMAGE_RULE",
    "Base64Reader",
    "image_size",
    "image_size_from_base64",
    "image_size_from_bytes",
    "image_tokens",
    "patch_tokens",
    "tile_tokens",
    "tokens_for_size",
    "worst_case_tokens",
]

ANTHROPIC_IMAGE_RULE: Mapping[str, Any] = {
    "kind": "claude",
    "max_edge": 1568,
    "max_tokens": 1568,
}
"""Anthropic's standard tier: 28px patches, long edge at most 1568px, at most 1568 tokens."""
ANTHROPIC_HIGH_RES_IMAGE_RULE: Mapping[str, Any] = {
    "kind": "claude",
    "max_edge": 2576,
    "max_tokens": 4784,
}
"""Anthropic's high-resolution tier (Opus 4.7 and later): 2576px, at most 4784 tokens. The
rule of a Claude model the catalog has no tier for: the larger tier errs high."""

# Most JPEG headers (EXIF, ICC profile) fit here; past it the reader jumps segment by segment.
_MAX_HEADER_SCAN = 16 * 1024 * 1024
# Segments and fill-byte runs read before giving up on a JPEG header (real files have a
# few dozen segments before the frame): a crafted "FF D8" + 15 MB of FF is read in
# bounded time and counted as the worst case, like any unreadable image.
_MAX_JPEG_STEPS = 1024


def image_tokens(url: str, detail: str | None, rule: Mapping[str, Any]) -> int:
    """Tokens of one ``image_url`` content part under ``rule``.

    ``data:`` URLs are measured from their header (PNG, JPEG, GIF, WebP). Remote URLs and
    unreadable images count as the worst case for the detail level (see the module
    docstring); a ``data:`` URL that is not valid base64 raises
    :class:`~guardrail.errors.InvalidRequestError`.
    """
    known = size_free_tokens(detail, rule)
    if known is not None:
        return known  # size does not matter: skip reading the header
    size = image_size(url)
    if size is None:
        return worst_case_tokens(detail, rule)
    return tokens_for_size(size[0], size[1], detail, rule)


# --------------------------------------------------------------------------- reading sizes


class Base64Reader:
    """Random access to the bytes of a base64 text without decoding all of it.

    Byte ``i`` lives in base64 quad ``i // 3``, so reading ``n`` bytes at ``offset`` decodes
    only the quads that cover them.
    """

    __slots__ = ("_end", "_start", "_text", "size")

    def __init__(self, text: str, start: int = 0, end: int | None = None) -> None:
        self._text = text
        self._start = start
        self._end = len(text) if end is None else end
        length = self._end - self._start
        padding = 0
        if length and text[self._end - 1] == "=":
            padding = 2 if length > 1 and text[self._end - 2] == "=" else 1
        self.size = max(0, length * 3 // 4 - padding)
        """The number of decoded bytes (exact for well-formed base64)."""

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset``; fewer at the end. Raises ``binascii.Error``."""
        if offset >= self.size or n <= 0:
            return b""
        first = offset // 3
        last = min(-(-(offset + n) // 3), -(-(self._end - self._start) // 4))
        chunk = self._text[self._start + first * 4 : self._start + last * 4]
        if len(chunk) % 4:
            chunk += "=" * (-len(chunk) % 4)
        try:
            data = base64.b64decode(chunk, validate=True)
        except (binascii.Error, ValueError):
            # Some encoders emit the URL-safe alphabet.
            data = base64.b64decode(chunk.replace("-", "+").replace("_", "/"), validate=True)
        skip = offset - first * 3
        return data[skip : skip + n]


class _BytesReader:
    __slots__ = ("_data", "size")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    def read(self, offset: int, n: int) -> bytes:
        return self._data[offset : offset + n]


class _Reader(Protocol):
    size: int

    def read(self, offset: int, n: int) -> bytes: ...


def image_size(url: str) -> tuple[int, int] | None:
    """``(width, height)`` of a ``data:`` image URL, or None when it cannot be known.

    None for remote URLs and for payloads that are not a readable PNG, JPEG, GIF or WebP.
    Raises :class:`~guardrail.errors.InvalidRequestError` for a ``data:`` URL without a
    comma or with a payload that is not base64.
    """
    if url[:5].lower() != "data:":
        return None
    comma = url.find(",", 0, 1024)
    if comma < 0:
        raise InvalidRequestError("image data URL has no ',' separating its header from its data")
    header = url[5:comma].lower()
    if header.endswith(";base64"):
        return image_size_from_base64(url, comma + 1)
    # Percent-encoded (non-base64) data URL: rare for images; decode a bounded prefix.
    prefix = urllib.parse.unquote_to_bytes(url[comma + 1 : comma + 1 + 3 * 65536])
    return _size(_BytesReader(prefix))


def image_size_from_base64(text: str, start: int = 0) -> tuple[int, int] | None:
    """``(width, height)`` of the base64 image in ``text[start:]`` (None if unreadable)."""
    try:
        return _size(Base64Reader(text, start))
    except (binascii.Error, ValueError) as exc:
        error = exc
    # MIME-style base64 wrapped in lines: offsets no longer map to quads, so drop the
    # whitespace (one copy, only for this rare form) and read again.
    if any(c in text[start : start + 4096] for c in " \t\r\n"):
        compact = "".join(text[start:].split())
        try:
            return _size(Base64Reader(compact))
        except (binascii.Error, ValueError) as exc:
            error = exc
    raise InvalidRequestError(f"image data is not valid base64: {error}")


def image_size_from_bytes(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a PNG, JPEG, GIF or WebP image, or None if unreadable."""
    return _size(_BytesReader(data))


def _size(reader: _Reader) -> tuple[int, int] | None:
    head = reader.read(0, 32)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) >= 24 and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return _valid(w, h)
        return None
    if head[:6] in (b"GIF87a", b"GIF89a"):
        if len(head) >= 10:
            w, h = struct.unpack("<HH", head[6:10])
            return _valid(w, h)
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(reader)
    return None


def _valid(w: int, h: int) -> tuple[int, int] | None:
    return (w, h) if w > 0 and h > 0 else None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    if len(head) < 30:
        return None
    chunk = head[12:16]
    if chunk == b"VP8 ":
        # Lossy: frame tag (3 bytes), start code 9d 01 2a, then 14-bit width and height.
        if head[23:26] != b"\x9d\x01\x2a":
            return None
        w, h = struct.unpack("<HH", head[26:30])
        return _valid(w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L":
        # Lossless: signature 0x2f, then width-1 and height-1 in 14 bits each.
        if head[20] != 0x2F:
            return None
        bits = int.from_bytes(head[21:25], "little")
        return _valid((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        # Extended: flags (1), reserved (3), canvas width-1 and height-1 in 24 bits each.
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return _valid(w, h)
    return None


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD9)))


def _jpeg_size(reader: _Reader) -> tuple[int, int] | None:
    pos = 2
    limit = min(reader.size, _MAX_HEADER_SCAN)
    for _ in range(_MAX_JPEG_STEPS):  # bounded time: a crafted file gets the worst case
        if pos + 4 > limit:
            return None
        seg = reader.read(pos, 10)
        if len(seg) < 4 or seg[0] != 0xFF:
            return None
        marker = seg[1]
        if marker == 0xFF:  # fill bytes: skip the whole run at once
            run = reader.read(pos + 1, 64)
            fill = len(run) - len(run.lstrip(b"\xff"))
            pos += max(1, fill)
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame
            return None
        length = int.from_bytes(seg[2:4], "big")
        if length < 2:
            return None
        if marker in _SOF:
            if len(seg) < 9:
                return None
            h, w = struct.unpack(">HH", seg[5:9])
            return _valid(w, h)
        pos += 2 + length
    return None
