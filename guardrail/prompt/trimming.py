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

Speed: when every message is a plain dict (the usual chat history), the window is found
walking back from the newest message only as far as the budget reaches, on cumulative
sums of the counter's per-message sizes: the cost grows with the kept window, not with
the history. Every message is still checked to be a dict with a string ``role``, but only
the messages looked at (pinned ones, the latest turn, the window and the first unit that
did not fit) are counted, so a malformed field in an older message that is dropped anyway
is not reported (any other input takes the general path, which counts every message).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, islice, repeat
from operator import add, itemgetter
from typing import Any, cast

from guardrail.counting.messages import TOKENS_PER_MESSAGE, TokenCounter, counter_for, field_of
from guardrail.errors import ContextWindowExceeded, InvalidRequestError, describe

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


_RESULT_ROLES = ("tool", "function")
_RESULT_ROLE_SET = frozenset(_RESULT_ROLES)
_CONTENT = itemgetter("content")
_DICT_GET = cast("Callable[[Any, str], Any]", dict.get)
_CHUNK = 64
"""Messages sized at a time by the fast path as it walks back (doubling as it goes)."""
# What sizing a chunk of messages at C level can raise when one is not a plain
# {"role": str, "content": str} dict: that chunk is then sized message by message.
_NOT_SIMPLE = (KeyError, TypeError, AttributeError, IndexError)


def continues_unit(head: Any, message: Any) -> bool:
    """Whether ``message`` belongs to the unit that ``head`` opened: tool (and legacy
    function) results stay with the assistant call right before them, and a run of results
    whose call is gone stays together. Shared with :mod:`guardrail.prompt.conversation`."""
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
    if type(messages) is not list and (
        not isinstance(messages, Sequence) or isinstance(messages, (str, bytes))
    ):
        raise InvalidRequestError("messages must be a list of message dicts")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise InvalidRequestError(f"max_tokens must be an int, got {describe(max_tokens)}")
    if max_history_messages is not None and (
        isinstance(max_history_messages, bool)
        or not isinstance(max_history_messages, int)
        or max_history_messages < 0
    ):
        raise InvalidRequestError(
            "max_history_messages must be None or an int >= 0, got "
            f"{describe(max_history_messages)}"
        )
    fixed = counter.reply_priming + (counter.tools(tools) if tools else 0)
    if summarizer is None and type(counter).message is TokenCounter.message:
        fast = _fit_plain(messages, counter, max_tokens, fixed, max_history_messages, model_name)
        if fast is not None:
            return fast
    for index, msg in enumerate(messages):
        if not isinstance(msg, Mapping) and not hasattr(msg, "role"):
            raise InvalidRequestError(f"messages[{index}] must be a dict, got {type(msg).__name__}")
    sizes = [counter.message(m) for m in messages]
    turn = _latest_turn_start(messages)
    keep = [field_of(m, "role") in _PINNED_ROLES or i >= turn for i, m in enumerate(messages)]
    required = fixed + sum(s for s, k in zip(sizes, keep, strict=True) if k)
    if required > max_tokens:
        raise _too_big(required, max_tokens, model_name)
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


def _too_big(required: int, max_tokens: int, model_name: str) -> ContextWindowExceeded:
    return ContextWindowExceeded(
        model=model_name or "?",
        prompt_tokens=required,
        reserved_output_tokens=0,
        limit=max_tokens,
        limit_name="the prompt budget",
        detail="system messages and the latest turn alone do not fit; nothing was sent",
    )


def _fit_plain(
    messages: Sequence[Message],
    counter: TokenCounter,
    max_tokens: int,
    fixed: int,
    max_history_messages: int | None,
    model_name: str,
) -> TrimResult | None:
    """:func:`fit_messages` without a summarizer when every message is a dict with a str
    role: the same result, walking back from the end only as far as the budget reaches.
    None when the input is anything else (the general path then handles it)."""
    if type(messages) is not list:
        if type(messages) is not tuple:
            return None
        messages = list(messages)
    n = len(messages)
    if not n:
        return None
    try:
        # One C-level pass: dict.get raises TypeError for anything but a dict, and reads
        # the role without calling a subclass's __missing__ (a defaultdict stays as is).
        roles: list[str] = list(map(_DICT_GET, messages, repeat("role", n)))
        later = set(islice(roles, 1, None))  # the roles after the first message
    except TypeError:  # not a dict, or an unhashable role
        return None
    first = roles[0]
    if type(first) is not str:  # also None: a message without a role
        return None
    for role in later:
        if type(role) is not str:
            return None
    kinds = later | {first}
    turn = n - 1
    while turn >= 0 and roles[turn] != "user":
        turn -= 1
    if turn < 0:
        turn = _latest_turn_start(messages)
    # Positions of the pinned messages before the turn, ascending. Usually just a system
    # message first, found without scanning the history.
    pinned: list[int] = [0] if first in _PINNED_ROLES and turn > 0 else []
    for role in later.intersection(_PINNED_ROLES):
        i = 0
        try:
            while True:
                i = roles.index(role, i + 1, turn)
                pinned.append(i)
        except ValueError:
            pass
    pinned.sort()
    has_results = not kinds.isdisjoint(_RESULT_ROLE_SET)

    # rcum[k] is the tokens of the last k messages; sizes known for messages[lo:].
    text = counter._text
    message_size = counter.message
    role_cost = {role: TOKENS_PER_MESSAGE + text(role) for role in kinds}
    rcum = [0]
    lo = n

    def extend(target: int, floor: int) -> None:
        """Size messages down to ``target`` at least (a doubling chunk, not below
        ``floor``), newest first, the counter's sizes."""
        nonlocal lo
        new_lo = max(floor, min(target, lo - max(_CHUNK, n - lo)))
        chunk = messages[new_lo:lo]
        chunk.reverse()
        sizes: list[int] | None = None
        # Every message has a role: 2 keys on average means each is {role, content}, or
        # one lacks "content" and the C-level map raises (as in TokenCounter.messages).
        if sum(map(len, chunk)) == 2 * len(chunk) and set(map(type, chunk)) == {dict}:
            chunk_roles = roles[new_lo:lo]
            chunk_roles.reverse()
            try:
                sizes = list(
                    map(
                        add,
                        map(role_cost.__getitem__, chunk_roles),
                        map(text, map(_CONTENT, chunk)),
                    )
                )
            except _NOT_SIMPLE:
                sizes = None
        if sizes is None:
            sizes = list(map(message_size, chunk))
        sums = accumulate(sizes, initial=rcum[-1])
        next(sums)
        rcum.extend(sums)
        lo = new_lo

    extend(max(0, turn - _CHUNK), 0)
    required = fixed + rcum[n - turn]
    for p in pinned:
        required += rcum[n - p] - rcum[n - p - 1] if p >= lo else message_size(messages[p])
    if required > max_tokens:
        raise _too_big(required, max_tokens, model_name)

    budget = max_tokens - required
    room = n if max_history_messages is None else max_history_messages
    end = turn  # the history still to walk is messages[:end]
    segment = len(pinned)  # pinned messages split the history into segments
    while True:
        start = pinned[segment - 1] + 1 if segment else 0
        if lo > end:
            extend(end, 0)
        if has_results:
            cut = end
            while cut > start:  # one unit per step, tool results with their call
                begin = cut - 1
                if roles[begin] in _RESULT_ROLE_SET:
                    while begin > start and roles[begin - 1] in _RESULT_ROLE_SET:
                        begin -= 1
                    if begin > start and roles[begin - 1] == "assistant":
                        head = messages[begin - 1]
                        if head.get("tool_calls") or head.get("function_call"):
                            begin -= 1
                if cut - begin > room:
                    break
                if begin < lo:
                    extend(begin, 0)
                cost = rcum[n - begin] - rcum[n - cut]
                if cost > budget:
                    break
                budget -= cost
                room -= cut - begin
                cut = begin
        else:  # one message per unit: the longest suffix of the segment that fits
            floor = max(start, end - room)
            limit = rcum[n - end] + budget
            while True:
                top = min(n - floor, len(rcum) - 1)
                k = bisect_right(rcum, limit, n - end, top + 1) - 1
                if k < top or top == n - floor:
                    break
                extend(lo - 1, floor)
            cut = n - k
            budget -= rcum[k] - rcum[n - end]
            room -= end - cut
        if cut > start or not segment:
            break
        segment -= 1
        end = start - 1

    total = max_tokens - budget
    before = bisect_left(pinned, cut)
    if not before:
        return TrimResult(messages[cut:], total, messages[:cut])
    kept = [messages[p] for p in pinned[:before]]
    kept += messages[cut:]
    dropped: list[Message] = []
    previous = 0
    for p in pinned[:before]:
        dropped += messages[previous:p]
        previous = p + 1
    dropped += messages[previous:cut]
    return TrimResult(kept, total, dropped)


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
        raise InvalidRequestError(f"max_tokens must be a positive int, got {describe(max_tokens)}")
    return fit_messages(
        messages,
        counter_for(model),
        max_tokens,
        tools=tools,
        summarizer=summarizer,
        max_history_messages=max_history_messages,
        model_name=model,
    ).messages  # a new list: fit_messages never returns the caller's
