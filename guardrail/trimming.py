"""Sliding-window history trimming that never orphans a tool result.

Rules, in order:

1. System and developer messages always stay, where they are.
2. The latest turn stays: the last ``user`` message and everything after it (an agent
   loop's assistant tool calls and their results).
3. Older history goes oldest-first. An assistant message with ``tool_calls`` (or a legacy
   ``function_call``) and the ``tool`` (``function``) messages answering it form one unit:
   kept or dropped together.
4. What is kept is a contiguous, most-recent window: once a unit does not fit, nothing
   older is kept either (no gaps that change the conversation's meaning).
5. If even rules 1 and 2 cannot fit, :class:`ContextWindowExceeded` is raised: we never
   send a prompt without the user's question.

Per-message token counts come from the counter's cache, so trimming a long conversation
every turn costs a dictionary lookup per message, not a re-encode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from guardrail.errors import ContextWindowExceeded, InvalidRequestError
from guardrail.tokens import TokenCounter, counter_for

__all__ = ["Summarizer", "TrimResult", "fit_messages", "trim_messages"]

Message = Mapping[str, Any]
Summarizer = Callable[[list[Message]], "str | Message"]
"""Turns dropped messages into one summary (a string, or a whole message)."""

_PINNED_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True)
class TrimResult:
    messages: list[Message]
    prompt_tokens: int
    dropped: list[Message] = field(default_factory=list)
    summary: Message | None = None

    @property
    def dropped_count(self) -> int:
        return len(self.dropped)


def field_of(message: Any, name: str) -> Any:
    """A message field, whether the message is a dict or an SDK object (a
    ``ChatCompletionMessage`` appended to the history straight from a response)."""
    if isinstance(message, Mapping):
        return message.get(name)
    return getattr(message, name, None)


_RESULT_ROLES = ("tool", "function")


def continues_unit(head: Any, message: Any) -> bool:
    """Whether ``message`` belongs to the unit that ``head`` opened: tool (and legacy
    function) results stay with the assistant call right before them, and a run of results
    whose call is gone stays together. Shared with :mod:`guardrail.memory`."""
    if field_of(message, "role") not in _RESULT_ROLES:
        return False
    role = field_of(head, "role")
    return role in _RESULT_ROLES or (
        role == "assistant"
        and bool(field_of(head, "tool_calls") or field_of(head, "function_call"))
    )


def _units(
    messages: Sequence[Message], start: int, stop: int, *, skip_pinned: bool = True
) -> list[tuple[int, int]]:
    """Split ``messages[start:stop]`` into [begin, end) units; tool calls keep their results.

    System and developer messages are not part of any unit (rule 1 keeps them) unless
    ``skip_pinned`` is False, when they are units of their own like any other message.
    """
    units: list[tuple[int, int]] = []
    i = start
    while i < stop:
        msg = messages[i]
        if skip_pinned and field_of(msg, "role") in _PINNED_ROLES:
            i += 1
            continue
        end = i + 1
        while end < stop and continues_unit(msg, messages[end]):
            end += 1
        units.append((i, end))
        i = end
    return units


def _latest_turn_start(messages: Sequence[Message]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if field_of(messages[i], "role") == "user":
            return i
    # No user message: keep the last non-pinned unit as "the turn".
    for i in range(len(messages) - 1, -1, -1):
        if field_of(messages[i], "role") not in _PINNED_ROLES:
            return i
    return len(messages)


def _summary_message(summary: str | Message) -> Message:
    if isinstance(summary, str):
        return {"role": "system", "content": f"Summary of the earlier conversation: {summary}"}
    if isinstance(summary, Mapping) and "role" in summary:
        return summary
    raise InvalidRequestError("summarizer must return a str or a message dict with a role")


def fit_messages(
    messages: Sequence[Message],
    counter: TokenCounter,
    max_tokens: int,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    max_history_messages: int | None = None,
    summarizer: Summarizer | None = None,
    model_name: str = "",
) -> TrimResult:
    """Keep the most recent history that fits ``max_tokens`` (the whole prompt's budget)."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise InvalidRequestError("messages must be a list of message dicts")
    for index, msg in enumerate(messages):
        if not isinstance(msg, Mapping) and not hasattr(msg, "role"):
            raise InvalidRequestError(f"messages[{index}] must be a dict, got {type(msg).__name__}")
    sizes = [counter.message(m) for m in messages]
    fixed = counter.reply_priming + (counter.tools(tools) if tools else 0)
    turn = _latest_turn_start(messages)
    keep = [field_of(m, "role") in _PINNED_ROLES or i >= turn for i, m in enumerate(messages)]
    required = fixed + sum(s for s, k in zip(sizes, keep, strict=True) if k)
    if required > max_tokens:
        raise ContextWindowExceeded(
            model=model_name or "?",
            prompt_tokens=required,
            reserved_output_tokens=0,
            limit=max_tokens,
            limit_name="the prompt budget",
            detail="system messages and the latest turn alone do not fit; nothing was sent",
        )
    units = _units(messages, 0, turn)
    budget = max_tokens - required
    kept_messages = 0
    for begin, end in reversed(units):
        cost = sum(sizes[begin:end])
        count = end - begin
        if cost > budget or (
            max_history_messages is not None and kept_messages + count > max_history_messages
        ):
            break
        budget -= cost
        kept_messages += count
        for i in range(begin, end):
            keep[i] = True
    total = max_tokens - budget
    kept = [m for m, k in zip(messages, keep, strict=True) if k]
    dropped = [m for m, k in zip(messages, keep, strict=True) if not k]
    if not dropped or summarizer is None:
        return TrimResult(kept, total, dropped)
    return _with_summary(messages, keep, sizes, total, max_tokens, counter, dropped, summarizer)


def _with_summary(
    messages: Sequence[Message],
    keep: list[bool],
    sizes: list[int],
    total: int,
    max_tokens: int,
    counter: TokenCounter,
    dropped: list[Message],
    summarizer: Summarizer,
) -> TrimResult:
    """Insert one summary of the dropped turns after the leading system messages,
    dropping more of the oldest kept history if the summary needs the room."""
    summary = _summary_message(summarizer(list(dropped)))
    summary_tokens = counter.message(summary)
    keep = list(keep)
    pinned_or_turn = [field_of(m, "role") in _PINNED_ROLES for m in messages]
    turn = _latest_turn_start(messages)
    units = [u for u in _units(messages, 0, turn) if keep[u[0]]]
    for begin, end in units:  # oldest kept first
        if total + summary_tokens <= max_tokens:
            break
        for i in range(begin, end):
            keep[i] = False
            total -= sizes[i]
    if total + summary_tokens > max_tokens:
        # The summary itself does not fit next to the required messages: go without it.
        kept = [m for m, k in zip(messages, keep, strict=True) if k]
        return TrimResult(kept, total, [m for m, k in zip(messages, keep, strict=True) if not k])
    insert_at = 0
    while insert_at < len(messages) and pinned_or_turn[insert_at]:
        insert_at += 1
    out: list[Message] = []
    for i, (m, k) in enumerate(zip(messages, keep, strict=True)):
        if i == insert_at:
            out.append(summary)
        if k:
            out.append(m)
    if insert_at >= len(messages):
        out.append(summary)
    all_dropped = [m for m, k in zip(messages, keep, strict=True) if not k]
    return TrimResult(out, total + summary_tokens, all_dropped, summary)


def trim_messages(
    messages: Sequence[Message],
    model: str,
    max_tokens: int,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    summarizer: Summarizer | None = None,
    max_history_messages: int | None = None,
) -> list[Message]:
    """The most recent window of ``messages`` whose prompt (with ``tools`` and reply priming)
    fits ``max_tokens``, by the rules in this module's docstring.

    Raises :class:`ContextWindowExceeded` when system messages plus the latest turn
    cannot fit on their own. Use :func:`fit_messages` to also learn what was dropped.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise InvalidRequestError(f"max_tokens must be a positive int, got {max_tokens!r}")
    result = fit_messages(
        messages,
        counter_for(model),
        max_tokens,
        tools=tools,
        summarizer=summarizer,
        max_history_messages=max_history_messages,
        model_name=model,
    )
    return list(result.messages)
