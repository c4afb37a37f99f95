"""Documents in Chat Completions ``file`` parts: what guardrail reserves for them.

OpenAI reads a PDF server-side and puts **both its extracted text and an image of each
page** into the model's context (OpenAI's "File inputs" guide), so a PDF cannot be
counted exactly here. It is reserved at an upper bound per page instead, never at a guess:

* the page image at the model's worst case for a high-detail image (OpenAI's published
  vision formula: 1,445 tokens on gpt-4o, :func:`~guardrail.counting.images.worst_case_tokens`);
* plus :data:`PDF_TEXT_TOKENS_PER_PAGE` (3,000) tokens of text: OpenAI publishes no
  per-page figure; Anthropic documents 1,500-3,000 text tokens per page for the same
  processing, and guardrail takes the top of that range.

The page count is read from the PDF (its ``/Type /Page`` objects, or the page tree's
``/Count``). A ``file_id`` (a file uploaded with the Files API) or a PDF whose pages
cannot be seen (pages inside compressed object streams, or data that is not a PDF) is
*uncountable*: :func:`uncountable_parts` finds them, and the engine reserves them as the
policy says (``Policy.file_id_tokens``: a stated figure, the rest of the context window,
or a refusal). Usage above a reservation is flagged on the usage record either way.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any

from guardrail.counting.images import worst_case_tokens
from guardrail.errors import InvalidRequestError

__all__ = [
    "PDF_TEXT_TOKENS_PER_PAGE",
    "file_part_tokens",
    "pdf_page_tokens",
    "pdf_pages",
    "uncountable_parts",
]

PDF_TEXT_TOKENS_PER_PAGE = 3_000
"""Text tokens reserved per PDF page (the top of Anthropic's documented 1,500-3,000)."""

_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_PAGE_COUNT = re.compile(rb"/Type\s*/Pages\b[^>]{0,512}?/Count\s+(\d{1,7})|/Count\s+(\d{1,7})")
_MAX_SCAN = 64 * 1024 * 1024  # bytes of a PDF read for its page objects


def pdf_page_tokens(rule: Mapping[str, Any]) -> int:
    """The most one PDF page can cost under a model's image ``rule``: its text allowance
    and its page image at the worst case for high detail."""
    return PDF_TEXT_TOKENS_PER_PAGE + worst_case_tokens("high", rule)


def _pdf_bytes(data: str) -> bytes | None:
    """The bytes of ``file_data`` (a ``data:application/pdf;base64,`` URL or bare base64);
    None when it is not a PDF."""
    if data[:5].lower() == "data:":
        comma = data.find(",", 0, 256)
        if comma < 0:
            raise InvalidRequestError("file_data has no ',' after its data: header")
        data = data[comma + 1 :]
    try:
        raw = base64.b64decode(data[: _MAX_SCAN * 4 // 3], validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"file_data is not valid base64: {exc}") from None
    return raw if raw[:1024].lstrip().startswith(b"%PDF") else None


def pdf_pages(raw: bytes) -> int | None:
    """Pages of a PDF: its page objects, else the largest page-tree ``/Count``; None when
    neither can be seen (compressed object streams)."""
    pages = len(_PAGE_OBJECT.findall(raw))
    if pages:
        return pages
    counts = [int(a or b) for a, b in _PAGE_COUNT.findall(raw)]
    return max(counts) if counts and max(counts) > 0 else None


def file_part_tokens(file: Mapping[str, Any], rule: Mapping[str, Any]) -> int:
    """What a ``file`` part's document is reserved at, when it can be bounded: pages times
    :func:`pdf_page_tokens`; 0 for a part that is uncountable (see the module docstring)."""
    data = file.get("file_data")
    if not isinstance(data, str):
        return 0
    raw = _pdf_bytes(data)
    pages = pdf_pages(raw) if raw is not None else None
    return 0 if pages is None else pages * pdf_page_tokens(rule)


def uncountable_parts(messages: Sequence[Any]) -> list[str]:
    """Where the ``file`` parts are that cannot be bounded: a ``file_id``, or ``file_data``
    whose pages cannot be seen. Their places (``messages[i].content[k]``), for the error or
    the reservation."""
    found: list[str] = []
    for i, message in enumerate(messages):
        content = (
            message.get("content")
            if type(message) is dict or isinstance(message, Mapping)  # dict: no ABC check
            else None
        )
        if not isinstance(content, (list, tuple)):
            continue
        for k, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "file":
                continue
            file = part.get("file")
            if not isinstance(file, Mapping):
                continue
            data = file.get("file_data")
            if isinstance(data, str):
                raw = _pdf_bytes(data)
                if raw is not None and pdf_pages(raw) is not None:
                    continue
            found.append(f"messages[{i}].content[{k}]")
    return found
