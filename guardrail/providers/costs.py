"""``guardrail.usage_cost``: the cost of an SDK response's usage, read as the guard settles
it. An Anthropic usage goes through the Anthropic adapter's own reader (its US-only
inference premium, ``usage.inference_geo``, and the sampling passes ``usage.iterations``
adds), so the helper and the ledger agree on the same response; any other usage through
:func:`guardrail.catalog.pricing.usage_cost`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from guardrail.catalog import pricing
from guardrail.catalog.models import ModelInfo, model_info
from guardrail.catalog.pricing import TokenUsage
from guardrail.engine.adapter import PartialUsage
from guardrail.errors import InvalidRequestError, describe
from guardrail.providers.anthropic.usage import read_usage

__all__ = ["usage_cost"]


def usage_cost(model: str | ModelInfo, usage: TokenUsage | Any) -> Decimal:
    """USD cost of an SDK response's ``usage`` (or a :class:`TokenUsage`): a Chat
    Completions, Responses or embeddings usage (object or dict), or an Anthropic one."""
    info = model if isinstance(model, ModelInfo) else model_info(model)
    if isinstance(usage, TokenUsage) or info.provider != "anthropic":
        return pricing.usage_cost(info, usage)
    read = read_usage(usage)
    if read is None or isinstance(read, PartialUsage):
        raise InvalidRequestError(
            f"malformed anthropic usage {describe(usage)}: input_tokens and output_tokens "
            "must be non-negative ints"
        )
    return pricing.usage_cost(info, read)
