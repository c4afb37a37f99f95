"""Conversation memory: a chat history that stays inside a token budget.

:class:`ConversationMemory` keeps the messages of one conversation so that
``count_messages(memory.messages(), model) <= max_tokens`` always holds (message overhead
and reply priming included; add your tool definitions' tokens to the budget yourself):

* **pinned** messages (a system prompt, a user profile) come first and are never dropped;
* the rest is a **sliding window over whole turns**: a turn starts at a user message and
  runs to the next one (the assistant's reply, its tool calls and their results). When a
  new message does not fit, the oldest turns go first. Only when the newest turn alone is
  too big do its own oldest parts go, by the units of :mod:`guardrail.prompt.trimming` (an
  assistant tool call stays with its results), keeping the turn's user message and its
  newest unit;
* a message that cannot fit even then raises
  :class:`~guardrail.errors.ContextWindowExceeded` and the memory is left unchanged;
* **expiry**: with ``max_age``, a turn whose last message is older than that is dropped
  (the newest turn too: a conversation idle for longer starts afresh). Time comes from an
  injectable ``clock`` (:class:`guardrail.ManualClock` in tests);
* **summaries**: with a ``summarizer``, turns dropped for room (not expired ones) are
  folded into one summary message, placed after the pinned messages. The summarizer gets
  the previous summary (if any) followed by the dropped messages, and returns a string or
  a message. ``summary_max_tokens`` is kept for it out of the budget; a longer summary is
  cut at a sentence boundary;
* **cheap counting**: each message is counted once, when it is added; the memory keeps
  running totals, so adding a turn costs that turn, never a recount of the history.

:class:`RedisConversationMemory` shares one conversation's window between processes.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from importlib import resources
from typing import Any

from guardrail._clock import Clock, system_clock
from guardrail.catalog.models import ModelInfo
from guardrail.counting.messages import TokenCounter, counter_for, field_of
from guardrail.errors import ConfigurationError, ContextWindowExceeded, InvalidRequestError
from guardrail.errors import describe as shown
from guardrail.prompt.trimming import (
    Message,
    Summarizer,
    _summary_message,
    continues_unit,
)
from guardrail.prompt.truncation import _truncate

__all__ = ["ConversationMemory", "RedisConversationMemory"]


def _check_budget(max_tokens: object) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ConfigurationError(f"max_tokens must be a positive int, got {shown(max_tokens)}")
    return max_tokens


def _check_message(message: object) -> None:
    if field_of(message, "role") is None:
        raise InvalidRequestError(f"a message needs a 'role': {shown(message)}")


def _starts_turn(message: Any) -> bool:
    return bool(field_of(message, "role") == "user")


class _Unit:
    """Messages kept or dropped together (a message, or a tool call and its results)."""

    __slots__ = ("messages", "time", "tokens", "turn")

    def __init__(self, message: Message, tokens: int, now: float) -> None:
        self.messages = [message]
        self.tokens = tokens
        self.time = now  # when its last message was added
        self.turn = _starts_turn(message)  # opens a turn


class ConversationMemory:
    """A token-limited conversation buffer (see the module docstring). Thread-safe.

    ``max_tokens`` bounds ``count_messages(memory.messages(), model)``. ``pinned`` messages
    are kept first and never dropped. ``max_age`` (seconds or a ``timedelta``) expires
    idle turns by ``clock``. ``summarizer`` folds turns dropped for room into one summary
    message of at most ``summary_max_tokens`` (default: a quarter of ``max_tokens``).
    """

    def __init__(
        self,
        model: str | ModelInfo,
        max_tokens: int,
        *,
        pinned: Iterable[Message] = (),
        max_age: float | timedelta | None = None,
        clock: Clock = system_clock,
        summarizer: Summarizer | None = None,
        summary_max_tokens: int | None = None,
    ) -> None:
        self._counter: TokenCounter = counter_for(model)
        self.model = self._counter.model
        self.max_tokens = _check_budget(max_tokens)
        if isinstance(max_age, timedelta):
            max_age = max_age.total_seconds()
        if max_age is not None and (
            isinstance(max_age, bool)
            or not isinstance(max_age, (int, float))
            or not max_age > 0
            or math.isinf(max_age)
        ):
            raise ConfigurationError(f"max_age must be a number of seconds > 0: {shown(max_age)}")
        self.max_age: float | None = None if max_age is None else float(max_age)
        self._clock = clock
        self._summarizer = summarizer
        if summary_max_tokens is None:
            summary_max_tokens = max_tokens // 4 if summarizer is not None else 0
        elif summarizer is None:
            raise ConfigurationError("summary_max_tokens needs a summarizer")
        if summarizer is not None:
            _check_budget(summary_max_tokens)
        self.summary_max_tokens = summary_max_tokens
        self._lock = threading.RLock()
        self._units: deque[_Unit] = deque()
        self._unreported: list[Message] = []
        self._window = 0  # tokens of the messages in _units
        self._summary: Message | None = None
        self._summary_tokens = 0
        self._pinned: list[Message] = []
        self._pinned_tokens = 0
        if isinstance(pinned, (str, bytes, Mapping)) or not isinstance(pinned, Iterable):
            raise InvalidRequestError(f"pinned must be a list, got {type(pinned).__name__}")
        for message in pinned:
            self.pin(message)

    # ------------------------------------------------------------------ reading

    def messages(self) -> list[Message]:
        """Pinned messages, the summary (if any), then the window, oldest first."""
        with self._lock:
            self._expire(self._clock())
            out = list(self._pinned)
            if self._summary is not None:
                out.append(self._summary)
            for unit in self._units:
                out.extend(unit.messages)
            return out

    @property
    def tokens(self) -> int:
        """``count_messages(self.messages(), model)``, from running totals."""
        with self._lock:
            self._expire(self._clock())
            return self._total()

    @property
    def summary(self) -> Message | None:
        return self._summary

    @property
    def pinned(self) -> list[Message]:
        return list(self._pinned)

    def __len__(self) -> int:
        """Messages :meth:`messages` returns."""
        with self._lock:
            self._expire(self._clock())
            return (
                len(self._pinned)
                + (self._summary is not None)
                + sum(len(u.messages) for u in self._units)
            )

    def __repr__(self) -> str:
        return (
            f"ConversationMemory(model={self.model!r}, max_tokens={self.max_tokens}, "
            f"tokens={self._total()}, turns={sum(u.turn for u in self._units)})"
        )

    def _total(self) -> int:
        return (
            self._counter.reply_priming + self._pinned_tokens + self._summary_tokens + self._window
        )

    @property
    def _limit(self) -> int:
        """Tokens the window may hold."""
        reserve = self.summary_max_tokens if self._summarizer is not None else 0
        return self.max_tokens - self._counter.reply_priming - self._pinned_tokens - reserve

    # ------------------------------------------------------------------ writing

    def add(self, message: Message) -> list[Message]:
        """Append one message; returns the messages dropped to make room (or expired).

        Raises :class:`~guardrail.errors.ContextWindowExceeded` when the message cannot fit
        even after dropping everything that may go; nothing is dropped for it then (turns
        that had expired by then are gone, and the next ``add``/``expire`` returns them).
        """
        _check_message(message)
        tokens = self._counter.message(message)
        with self._lock:
            now = self._clock()
            dropped = self._expire(now)
            units = self._units
            joins = bool(units) and continues_unit(units[-1].messages[0], message)
            excess = self._window + tokens - self._limit
            plan = self._plan(excess, tokens, joins, _starts_turn(message))
            if plan is None:
                self._unreported = dropped  # expired anyway (time moved); told next call
                raise self._too_big(tokens, "the message does not fit next to the newest turn")
            if joins:
                units[-1].messages.append(message)
                units[-1].tokens += tokens
                units[-1].time = now
            else:
                units.append(_Unit(message, tokens, now))
            self._window += tokens
            evicted = self._apply(plan)
            self._fold(evicted)
            return dropped + evicted

    def extend(self, messages: Iterable[Message]) -> list[Message]:
        """:meth:`add` each message in turn; returns everything dropped."""
        dropped: list[Message] = []
        for message in messages:
            dropped.extend(self.add(message))
        return dropped

    def pin(self, message: Message) -> list[Message]:
        """Add a message that is never dropped (after the pinned ones so far); returns what
        was dropped from the window to make room for it."""
        _check_message(message)
        tokens = self._counter.message(message)
        with self._lock:
            self._pinned_tokens += tokens
            plan = self._plan(self._window - self._limit, 0, False, False)
            if plan is None or self._limit < 0:
                self._pinned_tokens -= tokens
                raise self._too_big(tokens, "pinned messages must fit the budget")
            self._pinned.append(message)
            evicted = self._apply(plan)
            self._fold(evicted)
            return evicted

    def clear(self) -> None:
        """Forget the window and the summary (pinned messages stay)."""
        with self._lock:
            self._units.clear()
            self._window = 0
            self._summary, self._summary_tokens = None, 0

    def expire(self) -> list[Message]:
        """Drop the turns older than ``max_age`` now; returns them (done on every call
        anyway)."""
        with self._lock:
            return self._expire(self._clock())

    # ------------------------------------------------------------------ internals

    def _too_big(self, tokens: int, detail: str) -> ContextWindowExceeded:
        return ContextWindowExceeded(
            model=self.model,
            prompt_tokens=self._total() + tokens,
            reserved_output_tokens=0,
            limit=self.max_tokens,
            limit_name="the conversation memory's budget",
            detail=detail,
        )

    def _expire(self, now: float) -> list[Message]:
        # Turns expired by a call that then raised are reported by the next call.
        unreported, self._unreported = self._unreported, []
        if self.max_age is None or not self._units:
            return unreported
        cutoff = now - self.max_age
        units, dropped = self._units, unreported
        while units:
            end = 1
            while end < len(units) and not units[end].turn:
                end += 1
            if units[end - 1].time >= cutoff:
                break
            for _ in range(end):
                unit = units.popleft()
                self._window -= unit.tokens
                dropped.extend(unit.messages)
        return dropped

    def _plan(
        self, excess: int, tokens: int, joins: bool, opens_turn: bool
    ) -> tuple[int, list[int]] | None:
        """Which units to drop to free ``excess`` tokens once a message of ``tokens`` is
        added (joining the last unit, or as a new unit opening a turn or not): how many
        whole oldest turns, then which units of the newest turn. None: impossible."""
        if excess <= 0:
            return 0, []
        units = self._units
        size = len(units) + (0 if joins or not tokens else 1)

        def cost(i: int) -> int:
            if i == len(units):
                return tokens
            return units[i].tokens + (tokens if joins and i == len(units) - 1 else 0)

        def opens(i: int) -> bool:
            return opens_turn if i == len(units) else units[i].turn

        freed = cut = 0
        while freed < excess:
            end = cut + 1
            group = cost(cut)
            while end < size and not opens(end):
                group += cost(end)
                end += 1
            if end >= size:
                break  # the newest turn: not dropped whole
            freed += group
            cut = end
        inner: list[int] = []
        # Inside the newest turn: its oldest units, keeping the user message and the newest.
        i = cut + 1 if opens(cut) else cut
        while freed < excess and i < size - 1:
            freed += cost(i)
            inner.append(i - cut)
            i += 1
        return (cut, inner) if freed >= excess else None

    def _apply(self, plan: tuple[int, list[int]]) -> list[Message]:
        cut, inner = plan
        units, dropped = self._units, []
        for _ in range(cut):
            unit = units.popleft()
            self._window -= unit.tokens
            dropped.extend(unit.messages)
        for offset, i in enumerate(inner):
            unit = units[i - offset]
            del units[i - offset]
            self._window -= unit.tokens
            dropped.extend(unit.messages)
        return dropped

    def _fold(self, dropped: list[Message]) -> None:
        """Fold messages dropped for room into the summary."""
        if not dropped or self._summarizer is None:
            return
        previous = [self._summary] if self._summary is not None else []
        self._summary, self._summary_tokens = self._fitted(
            _summary_message(self._summarizer([*previous, *dropped]))
        )

    def _fitted(self, summary: Message) -> tuple[Message | None, int]:
        """The summary cut to ``summary_max_tokens`` (at a sentence end), or None when it
        cannot be cut (its content is not a string)."""
        tokens = self._counter.message(summary)
        room = self.summary_max_tokens
        if tokens <= room:
            return summary, tokens
        content = field_of(summary, "content")
        if not isinstance(content, str):
            return None, 0
        overhead = self._counter.message({**summary, "content": ""})
        cut, _ = _truncate(content, max(0, room - overhead), self._counter, "sentence", None)
        summary = {**summary, "content": cut}
        tokens = self._counter.message(summary)
        return (summary, tokens) if tokens <= room else (None, 0)


# --------------------------------------------------------------------------- Redis


def _lua(name: str) -> str:
    folder = resources.files("guardrail.prompt") / "lua"
    return folder.joinpath(name).read_text(encoding="utf-8")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisConversationMemory:
    """A conversation window in Redis, shared by every worker serving the conversation.

    The window is one Redis list of JSON messages plus a running token total; one Lua
    script appends and evicts atomically, so concurrent workers never exceed the budget
    or drop a message twice. Keys are ``{prefix}{{conversation_id}}:window`` and
    ``...:tokens`` (one hash tag: Redis Cluster keeps them on one node).

    What it does: the same budget rule as :class:`ConversationMemory`
    (``count_messages(messages()) <= max_tokens``), whole-turn eviction oldest first,
    tool calls kept with their results (they are in the same turn), pinned messages,
    and a ``ttl`` (seconds) after which an idle conversation expires as a whole.

    What it does not do: pinned messages live in the process (give every worker the same
    ones), not in Redis; no summarizer; no per-turn ``max_age`` (the ``ttl`` expires the
    whole conversation); when the newest turn alone does not fit, the message is refused
    (:class:`~guardrail.errors.ContextWindowExceeded`) rather than cutting inside the
    turn. Messages must be JSON-serializable dicts.
    """

    SCRIPT = "memory_append.lua"

    def __init__(
        self,
        client: Any,
        conversation_id: str,
        model: str | ModelInfo,
        max_tokens: int,
        *,
        pinned: Sequence[Message] = (),
        ttl: float | timedelta | None = None,
        prefix: str = "guardrail:memory:",
    ) -> None:
        if not isinstance(conversation_id, str) or not conversation_id:
            raise ConfigurationError("conversation_id must be a non-empty str")
        if "{" in conversation_id or "}" in conversation_id:
            raise ConfigurationError("conversation_id must not contain '{' or '}'")
        self._redis = client
        self._counter: TokenCounter = counter_for(model)
        self.model = self._counter.model
        self.max_tokens = _check_budget(max_tokens)
        if isinstance(ttl, timedelta):
            ttl = ttl.total_seconds()
        if ttl is not None and (isinstance(ttl, bool) or not ttl > 0):
            raise ConfigurationError(f"ttl must be a positive number of seconds, got {shown(ttl)}")
        self._ttl_ms = 0 if ttl is None else max(1, round(ttl * 1000))
        base = f"{prefix}{{{conversation_id}}}"
        self.keys = (f"{base}:window", f"{base}:tokens")
        self._pinned = list(pinned)
        for message in self._pinned:
            _check_message(message)
        self._pinned_tokens = sum(self._counter.message(m) for m in self._pinned)
        self._limit = self.max_tokens - self._counter.reply_priming - self._pinned_tokens
        if self._limit < 0:
            raise ContextWindowExceeded(
                model=self.model,
                prompt_tokens=self._pinned_tokens + self._counter.reply_priming,
                reserved_output_tokens=0,
                limit=self.max_tokens,
                limit_name="the conversation memory's budget",
                detail="pinned messages must fit the budget",
            )
        self._script = client.register_script(_lua(self.SCRIPT))

    def add(self, message: Message) -> list[Message]:
        """Append one message; returns the messages evicted to make room."""
        return self.extend([message])

    def extend(self, messages: Iterable[Message]) -> list[Message]:
        """Append messages atomically (all or none); returns the messages evicted."""
        entries: list[str] = []
        added = 0
        for message in messages:
            if not isinstance(message, Mapping) or "role" not in message:
                raise InvalidRequestError("RedisConversationMemory stores dicts with a 'role'")
            tokens = self._counter.message(message)
            added += tokens
            data = json.dumps(dict(message), ensure_ascii=False, separators=(",", ":"))
            entries.append(f"{tokens}\t{int(_starts_turn(message))}\t{data}")
        if not entries:
            return []
        reply = self._script(keys=list(self.keys), args=[self._limit, self._ttl_ms, *entries])
        if int(reply[0]) != 1:
            raise ContextWindowExceeded(
                model=self.model,
                prompt_tokens=int(reply[1]) + self._pinned_tokens + self._counter.reply_priming,
                reserved_output_tokens=0,
                limit=self.max_tokens,
                limit_name="the conversation memory's budget",
                detail="the newest turn does not fit (nothing was added)",
            )
        return [_decode_entry(e) for e in reply[3:]]

    def messages(self) -> list[Message]:
        """Pinned messages, then the shared window, oldest first."""
        entries = self._redis.lrange(self.keys[0], 0, -1)
        return [*self._pinned, *(_decode_entry(e) for e in entries)]

    @property
    def tokens(self) -> int:
        """``count_messages(self.messages(), model)``, from the running total."""
        window = self._redis.get(self.keys[1])
        return (
            self._counter.reply_priming
            + self._pinned_tokens
            + (int(_text(window)) if window is not None else 0)
        )

    def clear(self) -> None:
        """Delete the conversation's window."""
        self._redis.delete(*self.keys)


def _decode_entry(entry: bytes | str) -> Message:
    message: Message = json.loads(_text(entry).split("\t", 2)[2])
    return message
