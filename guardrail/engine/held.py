"""What a call holds of its prompt beyond the count: the parts guardrail cannot read
(``Policy.file_id_tokens``) and the passes a server-side tool loop may add
(``Policy.server_pass_tokens``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from guardrail.catalog.models import ModelInfo
from guardrail.engine.adapter import ProviderAdapter, RequestView
from guardrail.errors import InvalidRequestError
from guardrail.policy import Policy

__all__ = ["held_prompt", "pass_tokens", "uncountable"]


def uncountable(adapter: ProviderAdapter, view: RequestView, messages: Sequence[Any]) -> list[str]:
    find = getattr(adapter, "uncountable", None)
    return [] if find is None else list(find(view, messages))


def pass_tokens(info: ModelInfo, policy: Policy) -> int:
    """What each further pass of a server-side tool loop is held at (``server_pass_tokens``)."""
    figure = policy.server_pass_tokens
    return info.context_window if figure == "window" else min(figure, info.context_window)


def held_prompt(
    prompt: int,
    uncounted: list[str],
    info: ModelInfo,
    policy: Policy,
    reserved_output: int,
) -> int:
    """The prompt tokens to reserve: the count, plus what ``Policy.file_id_tokens`` says
    for the parts that could not be counted."""
    if not uncounted:
        return prompt
    rule = policy.file_id_tokens
    if rule == "refuse":
        raise InvalidRequestError(
            f"{uncounted[0]} is content guardrail cannot read (a file_id, a PDF whose "
            "pages cannot be seen, or a stored prompt), and Policy(file_id_tokens='refuse') "
            "refuses those; nothing was sent"
        )
    if rule == "window":
        # The provider bills no prompt past its window less the output bound sent.
        return max(prompt, info.context_window - reserved_output)
    return prompt + rule * len(uncounted)
