"""Trimming a conversation by whole turns, for the API shapes whose tool calls and results
are not Chat Completions messages (Anthropic's ``tool_use``/``tool_result`` blocks, the
Responses API's ``function_call``/``function_call_output`` items).

A turn starts where ``opens_turn`` says (a user message that is not only tool results), so
a call is never separated from its result and the kept window starts with the user. The
latest turn always stays: when it cannot fit, :class:`~guardrail.ContextWindowExceeded` is
raised rather than sending a prompt without the question. Leading ``pinned`` items (a
system or developer prompt) are always kept, at the front.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from guardrail.errors import ContextWindowExceeded
from guardrail.prompt.trimming import Summarizer, TrimResult

__all__ = ["fit_turns"]


def fit_turns(
    messages: Sequence[Any],
    sizes: Sequence[int],
    *,
    opens_turn: Callable[[Any], bool],
    fixed: int,
    max_tokens: int,
    max_history_messages: int | None,
    summarizer: Summarizer | None,
    summary_message: Callable[[str | Mapping[str, Any]], tuple[Mapping[str, Any], int]],
    model_name: str,
    pinned: Callable[[Any], bool] | None = None,
) -> TrimResult:
    """The most recent whole turns of ``messages`` that fit ``max_tokens`` with ``fixed``
    tokens (system prompt, tools, overhead). ``sizes[i]`` is the tokens of ``messages[i]``;
    ``summary_message`` turns what the summarizer returned into a message and its tokens."""
    head = 0
    while pinned is not None and head < len(messages) and pinned(messages[head]):
        head += 1
    fixed += sum(sizes[:head])
    starts = [i for i in range(head, len(messages)) if opens_turn(messages[i])] or [head]
    if starts[0] != head:
        starts.insert(0, head)
    turns = list(zip(starts, [*starts[1:], len(messages)], strict=True))
    latest = turns[-1][0]
    required = fixed + sum(sizes[latest:])
    if required > max_tokens:
        raise ContextWindowExceeded(
            model=model_name or "?",
            prompt_tokens=required,
            reserved_output_tokens=0,
            limit=max_tokens,
            limit_name="the prompt budget",
            detail="the system prompt, tools and the latest turn alone do not fit; "
            "nothing was sent",
        )
    budget, kept_count, keep_from = max_tokens - required, len(messages) - latest, latest
    for begin, end in reversed(turns[:-1]):
        cost = sum(sizes[begin:end])
        if cost > budget or (
            max_history_messages is not None and kept_count + end - begin > max_history_messages
        ):
            break
        budget, kept_count, keep_from = budget - cost, kept_count + end - begin, begin
    front = list(messages[:head])
    kept, dropped = front + list(messages[keep_from:]), list(messages[head:keep_from])
    total = max_tokens - budget
    if not dropped or summarizer is None:
        return TrimResult(kept, total, dropped)
    summary, summary_tokens = summary_message(summarizer(dropped))
    kept_turns = [t for t in turns if t[0] >= keep_from]
    while total + summary_tokens > max_tokens and len(kept_turns) > 1:
        begin, end = kept_turns.pop(0)  # make room: drop the oldest kept turn
        total -= sum(sizes[begin:end])
        keep_from = end
    kept, dropped = list(messages[keep_from:]), list(messages[head:keep_from])
    if total + summary_tokens > max_tokens:
        return TrimResult(front + kept, total, dropped)
    return TrimResult([*front, summary, *kept], total + summary_tokens, dropped, summary)
