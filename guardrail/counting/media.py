"""Images and audio in chat messages: OpenAI's vision rules (:mod:`.images`) for
``image_url`` parts and Anthropic-shaped image blocks, and audio by its duration."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from guardrail.counting.images import (
    Base64Reader,
    image_size_from_base64,
    image_tokens,
    tokens_for_size,
    worst_case_tokens,
)
from guardrail.errors import InvalidRequestError

__all__ = ["AUDIO_TOKENS_PER_SECOND", "anthropic_image_tokens", "audio_tokens", "image_url_tokens"]

AUDIO_TOKENS_PER_SECOND = 10
"""Input audio: one token per 100 ms (OpenAI's Realtime figure for user audio; the Chat
Completions docs give none)."""
_ASSUMED_AUDIO_BYTES_PER_SECOND = 2000  # 16 kbit/s: low for speech codecs, so it errs high


def _type(value: object) -> str:
    return type(value).__name__


def image_url_tokens(value: object, where: str, rule: Mapping[str, Any]) -> int:
    detail: object = None
    if isinstance(value, Mapping):
        url = value.get("url")
        detail = value.get("detail")
    else:
        url = value  # some clients send the URL string directly
    if not isinstance(url, str):
        raise InvalidRequestError(f"{where}.url must be a string, got {_type(url)}")
    if detail is not None and not isinstance(detail, str):
        raise InvalidRequestError(f"{where}.detail must be a string, got {_type(detail)}")
    try:
        return image_tokens(url, detail, rule)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"{where}: {exc}") from None


def anthropic_image_tokens(source: Mapping[str, Any], where: str, rule: Mapping[str, Any]) -> int:
    rule = rule
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        try:
            size = image_size_from_base64(source["data"])
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{where}: {exc}") from None
        if size is not None:
            return tokens_for_size(size[0], size[1], None, rule)
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        return image_tokens(source["url"], None, rule)
    return worst_case_tokens(None, rule)


def audio_tokens(value: object, where: str) -> int:
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"{where} must be a dict, got {_type(value)}")
    data, fmt = value.get("data"), value.get("format")
    if not isinstance(data, str):
        raise InvalidRequestError(f"{where}.data must be a base64 string, got {_type(data)}")
    if fmt is not None and not isinstance(fmt, str):
        raise InvalidRequestError(f"{where}.format must be a string, got {_type(fmt)}")
    try:
        seconds = _audio_seconds(Base64Reader(data))
    except ValueError as exc:  # binascii.Error is a ValueError
        raise InvalidRequestError(f"{where}.data is not valid base64: {exc}") from None
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)


# MPEG audio layer III bitrates (kbit/s) by bitrate index: MPEG-1, then MPEG-2/2.5.
_MP3_KBPS = (
    (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0),
    (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0),
)


def _audio_seconds(reader: Base64Reader) -> float:
    """Duration of base64 audio: from a WAV header, the first MP3 frame, or a low bitrate."""
    head = reader.read(0, 64)
    size = reader.size
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        pos = 12
        byte_rate = 0
        for _ in range(1024):  # bounded: a crafted file of empty chunks stops here
            if pos + 8 > min(size, 1 << 20):
                break
            chunk = reader.read(pos, 16)
            if len(chunk) < 8:
                break
            cid, length = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if cid == b"fmt " and len(chunk) >= 16:
                byte_rate = int.from_bytes(reader.read(pos + 16, 4), "little")
            elif cid == b"data" and byte_rate > 0:
                length = min(length, size - pos - 8)
                return length / byte_rate
            pos += 8 + length + (length & 1)
    elif head[:3] == b"ID3" or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xfa"):
        pos = 0
        if head[:3] == b"ID3" and len(head) >= 10:
            pos = 10 + ((head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9])
        frame = reader.read(pos, 4)
        if len(frame) == 4 and frame[0] == 0xFF and frame[1] & 0xE0 == 0xE0:
            mpeg1 = (frame[1] >> 3) & 0x3 == 0x3
            kbps = _MP3_KBPS[0 if mpeg1 else 1][frame[2] >> 4]
            if kbps:
                return (size - pos) * 8 / (kbps * 1000)
    return size / _ASSUMED_AUDIO_BYTES_PER_SECOND
