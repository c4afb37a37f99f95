"""Image sizes read from headers, and OpenAI's / Anthropic's image token formulas.

The images are built byte by byte here (no Pillow): real headers with the dimensions
where each format keeps them. Expected token counts are worked out from the published
formulas in the comments next to them.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from guardrail.catalog.models import model_info
from guardrail.counting import images
from guardrail.counting.images import (
    image_size,
    image_size_from_bytes,
    image_tokens,
    patch_tokens,
    tile_tokens,
    tokens_for_size,
    worst_case_tokens,
)
from guardrail.counting.messages import TokenCounter
from guardrail.errors import InvalidRequestError

GPT_4O: dict[str, Any] = {"kind": "tile", "base": 85, "tile": 170}
GPT_4O_MINI: dict[str, Any] = {"kind": "tile", "base": 2833, "tile": 5667}
MINI_PATCH: dict[str, Any] = {"kind": "patch", "multiplier": "1.62", "cap": 1536}
NANO_PATCH: dict[str, Any] = {"kind": "patch", "multiplier": "2.46", "cap": 1536}


# ----------------------------------------------------------------------------- builders


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, *, pixels: bool = False) -> bytes:
    """A PNG: signature, IHDR, (for small images real RGB pixel rows), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = b""
    if pixels:
        rows = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
        body = _chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + body + _chunk(b"IEND", b"")


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def jpeg(width: int, height: int, *, sof: int = 0xC0, exif_bytes: int = 0) -> bytes:
    """A baseline (or progressive, sof=0xC2) JPEG header, optionally with a big APP1."""
    out = b"\xff\xd8" + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    remaining = exif_bytes
    while remaining > 0:  # a segment holds at most 65533 payload bytes
        size = min(remaining, 65533)
        out += _segment(0xE1, b"Exif\x00\x00" + b"\x00" * (size - 6))
        remaining -= size
    out += _segment(0xDB, b"\x00" + bytes(range(64)))  # one quantisation table
    components = b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    out += _segment(sof, struct.pack(">BHHB", 8, height, width, 3) + components)
    out += _segment(0xDA, b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00") + b"\x00" * 16
    return out + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    """A GIF89a with a 2-colour table, one 1x1 image and the trailer."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + image + b"\x3b"


def _riff(chunk: bytes, data: bytes) -> bytes:
    body = b"WEBP" + chunk + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) & 1)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_lossy(width: int, height: int) -> bytes:
    # VP8 key frame: 3-byte frame tag, start code 9d 01 2a, 14-bit width and height.
    frame = b"\x30\x01\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"\x00" * 10
    return _riff(b"VP8 ", frame)


def webp_lossless(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    return _riff(b"VP8L", b"\x2f" + struct.pack("<I", bits) + b"\x00" * 8)


def webp_extended(width: int, height: int) -> bytes:
    data = b"\x10\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    data += (height - 1).to_bytes(3, "little")
    return _riff(b"VP8X", data)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


# ----------------------------------------------------------------------------- sizes

FORMATS: dict[str, Callable[[int, int], bytes]] = {
    "png": png,
    "jpeg": jpeg,
    "jpeg-progressive": lambda w, h: jpeg(w, h, sof=0xC2),
    "gif": gif,
    "webp-vp8": webp_lossy,
    "webp-vp8l": webp_lossless,
    "webp-vp8x": webp_extended,
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("size", [(1, 1), (300, 200), (1024, 1024), (2048, 4096), (16383, 77)])
def test_size_of_each_format(fmt: str, size: tuple[int, int]) -> None:
    data = FORMATS[fmt](*size)
    assert image_size_from_bytes(data) == size
    assert image_size(data_url(data)) == size


def test_real_png_with_pixels() -> None:
    data = png(3, 2, pixels=True)
    assert zlib.decompress(data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8])
    assert image_size(data_url(data)) == (3, 2)


def test_jpeg_frame_far_past_the_first_64k_is_found_without_decoding_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 200 KB of EXIF in front of the frame header, then 3 MB of scan data.
    data = jpeg(4000, 3000, exif_bytes=200_000) + b"\x00" * 3_000_000
    url = data_url(data, "image/jpeg")
    decoded: list[int] = []
    real = base64.b64decode

    def counting(s: str | bytes, *args: object, **kwargs: object) -> bytes:
        out = real(s, *args, **kwargs)  # type: ignore[arg-type]
        decoded.append(len(out))
        return out

    monkeypatch.setattr(base64, "b64decode", counting)  # the module images uses
    assert image_size(url) == (4000, 3000)
    # Segment headers only: a handful of reads of a few bytes each.
    assert sum(decoded) < 1024, decoded


def test_mime_wrapped_and_urlsafe_base64() -> None:
    data = png(640, 480)
    wrapped = base64.encodebytes(data).decode()  # lines of 76 characters
    assert "\n" in wrapped
    assert image_size("data:image/png;base64," + wrapped) == (640, 480)
    urlsafe = base64.urlsafe_b64encode(webp_lossless(123, 456)).decode()
    assert image_size("data:image/webp;base64," + urlsafe) == (123, 456)


def test_percent_encoded_data_url() -> None:
    from urllib.parse import quote_from_bytes

    url = "data:image/gif," + quote_from_bytes(gif(33, 44))
    assert image_size(url) == (33, 44)


def test_unknown_and_corrupt_data_have_no_size() -> None:
    assert image_size("https://example.com/cat.png") is None
    assert image_size(data_url(b"not an image at all")) is None
    assert image_size(data_url(png(10, 10)[:20])) is None  # truncated IHDR
    assert image_size(data_url(b"\xff\xd8\xff\xe0\x00")) is None  # truncated JPEG
    assert image_size(data_url(png(0, 10))) is None


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,!!!!not-base64!!!!",
        "data:image/png;base64,iVBORw0KGgo=AAAA@@@",
        "data:image/png;base64" + "A" * 2000,  # no comma
    ],
)
def test_invalid_data_url_raises(url: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        image_size(url)
    assert str(exc.value)


# ----------------------------------------------------------------------------- formulas


def test_tile_formula_matches_openai_examples() -> None:
    # 1024x1024: fits 2048; shortest side 1024 -> 768x768; 2x2 tiles: 85 + 4*170.
    assert tile_tokens(1024, 1024, 85, 170) == 765
    # 2048x4096 -> 1024x2048 -> 768x1536: 2x3 tiles: 85 + 6*170.
    assert tile_tokens(2048, 4096, 85, 170) == 1105
    # 4096x8192 -> 1024x2048 -> 768x1536: the same 6 tiles.
    assert tile_tokens(4096, 8192, 85, 170) == 1105
    # Small images are never scaled up: 512x512 is one tile, 513x500 two, 513x513 four.
    assert tile_tokens(512, 512, 85, 170) == 255
    assert tile_tokens(513, 500, 85, 170) == 425
    assert tile_tokens(513, 513, 85, 170) == 765
    # The largest possible grid: 768x2048 stays as is, 2x4 tiles.
    assert tile_tokens(768, 2048, 85, 170) == 85 + 8 * 170


def test_patch_formula_matches_openai_examples() -> None:
    # 1024x1024: 32x32 patches = 1024, under the 1536 cap.
    assert patch_tokens(1024, 1024, "1", 1536) == 1024
    # 1800x2400: 57*75 = 4275 patches > 1536. r = sqrt(32^2*1536/(1800*2400)) = 0.6034;
    # 1800r/32 = 33.94 -> 33, 2400r/32 = 45.25 -> 45; r *= 33/33.94 -> 1056x1408 px,
    # 33*44 = 1452 patches.
    assert patch_tokens(1800, 2400, "1", 1536) == 1452
    # Multipliers round up: 1024 * 1.62 = 1658.88 -> 1659; 1452 * 2.46 = 3571.92 -> 3572.
    assert patch_tokens(1024, 1024, "1.62", 1536) == 1659
    assert patch_tokens(1800, 2400, "2.46", 1536) == 3572
    # Never above the cap, whatever the shape.
    for w, h in [(20000, 20000), (20000, 31), (31, 20000), (4096, 4097)]:
        assert patch_tokens(w, h, "1", 1536) <= 1536


@pytest.mark.parametrize(
    ("detail", "rule", "expected"),
    [
        ("low", GPT_4O, 85),
        ("high", GPT_4O, 85 + 8 * 170),
        ("auto", GPT_4O, 85 + 8 * 170),  # "auto" is counted as "high"
        (None, GPT_4O, 85 + 8 * 170),
        ("low", GPT_4O_MINI, 2833),
        ("high", GPT_4O_MINI, 2833 + 8 * 5667),
        ("low", MINI_PATCH, 2489),  # detail does not change the patch rule: ceil(1536*1.62)
        ("high", MINI_PATCH, 2489),
        ("high", NANO_PATCH, 3779),  # ceil(1536 * 2.46) = ceil(3778.56)
        (None, images.ANTHROPIC_IMAGE_RULE, 1568),
        (None, images.ANTHROPIC_HIGH_RES_IMAGE_RULE, 4784),
    ],
)
def test_remote_urls_count_the_worst_case(
    detail: str | None, rule: dict[str, Any], expected: int
) -> None:
    assert image_tokens("https://example.com/a.png", detail, rule) == expected
    assert worst_case_tokens(detail, rule) == expected


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize(
    ("size", "detail", "rule", "expected"),
    [
        ((1024, 1024), "high", GPT_4O, 765),
        ((1024, 1024), "auto", GPT_4O, 765),
        ((1024, 1024), "low", GPT_4O, 85),
        ((2048, 4096), "high", GPT_4O, 1105),
        ((4096, 8192), "high", GPT_4O, 1105),
        ((1024, 1024), "high", GPT_4O_MINI, 2833 + 4 * 5667),
        ((1024, 1024), "high", MINI_PATCH, 1659),
        ((1800, 2400), "low", MINI_PATCH, math.ceil(1452 * 1.62)),
        # Anthropic: ceil(1000/28)^2 = 36^2 = 1296; 2000x1500 is scaled down to a 1270 px
        # long edge (46 patches) and a 952.5 px short side: 34 patches rounded down (1564),
        # 35 rounded up (1610): the bound is the tier's cap, 1568.
        ((1000, 1000), None, images.ANTHROPIC_IMAGE_RULE, 1296),
        ((2000, 1500), None, images.ANTHROPIC_IMAGE_RULE, 1568),
    ],
)
def test_data_urls_of_each_format_and_rule(
    fmt: str, size: tuple[int, int], detail: str | None, rule: dict[str, Any], expected: int
) -> None:
    url = data_url(FORMATS[fmt](*size))
    assert image_tokens(url, detail, rule) == expected


def test_unreadable_image_counts_worst_case_and_invalid_base64_raises() -> None:
    assert image_tokens(data_url(b"garbage" * 10), "high", GPT_4O) == 1445
    assert image_tokens(data_url(b"garbage" * 10), "low", GPT_4O) == 85
    with pytest.raises(InvalidRequestError):
        image_tokens("data:image/png;base64,%%%%", "high", GPT_4O)


def test_tokens_for_size_with_the_catalog_rules() -> None:
    assert tokens_for_size(1024, 1024, "high", model_info("gpt-4o").image_rule) == 765
    assert tokens_for_size(1024, 1024, "high", model_info("gpt-4.1-mini").image_rule) == 1659
    assert tokens_for_size(1024, 1024, "high", model_info("gpt-4.1-nano").image_rule) == 2520
    assert tokens_for_size(1024, 1024, "low", model_info("gpt-5").image_rule) == 70
    assert tokens_for_size(1024, 1024, "high", model_info("o4-mini").image_rule) == 1762


@pytest.mark.parametrize(
    ("model", "detail", "expected"),
    [
        ("gpt-4o", "high", 765),
        ("gpt-4o", "low", 85),
        ("gpt-4o-mini", "high", 2833 + 4 * 5667),
        ("gpt-4.1-mini", "high", 1659),
        ("gpt-5-nano", "auto", 2520),  # 1024 patches * 2.46 = 2519.04 -> 2520
    ],
)
def test_images_inside_messages(model: str, detail: str, expected: int) -> None:
    counter = TokenCounter(model)
    url = data_url(png(1024, 1024))
    msg = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": url, "detail": detail}},
        ],
    }
    text = counter.text("user") + counter.text("What is in this picture?")
    assert counter.message(msg) == 3 + text + expected


def test_remote_image_in_a_message_is_the_worst_case() -> None:
    counter = TokenCounter("gpt-4o")
    msg = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}}],
    }
    assert counter.message(msg) == 3 + counter.text("user") + 1445


def test_claude_images_use_the_patch_rule() -> None:
    counter = TokenCounter("claude-sonnet-4")
    part = {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(png(1000, 1000)).decode(),
        },
    }
    assert counter.message({"role": "user", "content": [part]}) == 3 + counter.text("user") + 1296
    remote = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    assert counter.message({"role": "user", "content": [remote]}) == 3 + counter.text("user") + 1568
