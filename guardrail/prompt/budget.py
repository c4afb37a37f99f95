"""Token budgets for prompts: share a model's window between the parts of a prompt.

A prompt is made of **fixed** parts, counted as they are (system prompt, few-shot examples,
tool definitions, reply priming), and **variable** parts that can be cut (retrieved
context, conversation history, the user's input). :func:`allocate` and
:class:`TokenBudget` decide how many tokens each variable part gets:

1. ``reserve_output`` tokens are kept for the reply: the prompt may use
   ``context_window - reserve_output`` (the *limit*).
2. Fixed parts are subtracted; what is left is *available* to the variable parts.
3. ``headroom`` (a fraction of what is available, or a number of tokens) is set aside and
   never handed out; it gives way only to the parts' minimums.
4. Every part first gets its ``min_tokens`` (at most its demand).
5. The rest goes to parts by ``priority``, highest first. Parts of one priority share by
   their ``share`` (weights: 3 and 5 mean 3/8 and 5/8), and a part never gets more than it
   asks for: what one part does not need flows to the others of its priority (weighted
   water-filling), then to the next priority down.

So ``shares={"context": 0.3, "history": 0.5}`` with ``headroom=0.2`` gives context 30% and
history 50% of the available tokens when both are long, and all of it to history when
there is no context. The result says what each part asked for, got, and lost.

:class:`PromptBuilder` builds OpenAI-style messages on top: it allocates, renders each
part into its grant (documents packed with :func:`~guardrail.pack_documents`, history as
a sliding window of whole tool-call units, the user input cut with
:func:`~guardrail.truncate_text`), hands what a part left unused to the parts that were
cut, and returns messages whose ``count_messages`` (message overhead and reply priming
included) is at most ``context_window - reserve_output``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from guardrail.catalog.models import ModelInfo
from guardrail.counting.messages import TokenCounter, counter_for, field_of
from guardrail.errors import ConfigurationError, ContextWindowExceeded, InvalidRequestError
from guardrail.prompt.packing import (
    DEFAULT_MIN_TOKENS_FOR_PARTIAL,
    Document,
    DocumentLike,
    Order,
    PackResult,
    _pack,
    as_document,
)
from guardrail.prompt.trimming import Message, _units
from guardrail.prompt.truncation import STRATEGIES, Strategy, _truncate

__all__ = [
    "Allocation",
    "BudgetPart",
    "PartAllocation",
    "PartReport",
    "Prompt",
    "PromptBuilder",
    "TokenBudget",
    "allocate",
]


def _non_negative_int(label: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{label} must be an int >= 0, got {value!r}")
    return value


def _positive_weight(label: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{label} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class BudgetPart:
    """A variable part of a prompt: ``demand`` is what it would use whole."""

    name: str
    demand: int
    share: float = 1.0
    """Weight among the parts of the same priority (relative, not a percentage)."""
    priority: int = 0
    """Higher priorities are served in full before lower ones get anything."""
    min_tokens: int = 0
    """Granted before any sharing (capped at ``demand``); minimums that cannot all be
    met are an error."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"a budget part needs a name, got {self.name!r}")
        _non_negative_int(f"{self.name}: demand", self.demand)
        _non_negative_int(f"{self.name}: min_tokens", self.min_tokens)
        _positive_weight(f"{self.name}: share", self.share)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ConfigurationError(f"{self.name}: priority must be an int")


@dataclass(frozen=True)
class PartAllocation:
    """What one variable part asked for and got."""

    name: str
    requested: int
    granted: int

    @property
    def cut(self) -> int:
        """Tokens the part asked for and did not get."""
        return self.requested - self.granted


@dataclass(frozen=True)
class Allocation:
    """How a prompt budget was shared.

    ``limit`` is what the whole prompt may use (window minus ``reserve_output``);
    ``fixed`` the fixed parts' tokens; ``available`` what was left for the variable parts;
    ``headroom`` the part of it kept free; ``parts`` the variable parts, in input order.
    Always ``sum(fixed) + headroom + granted <= limit``.
    """

    limit: int
    available: int
    headroom: int
    parts: Mapping[str, PartAllocation]
    reserve_output: int = 0
    fixed: Mapping[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> PartAllocation:
        return self.parts[name]

    @property
    def granted(self) -> int:
        return sum(p.granted for p in self.parts.values())

    @property
    def unused(self) -> int:
        """Tokens available to the parts that none of them needed (headroom excluded)."""
        return self.available - self.headroom - self.granted


def _water_fill(pool: int, wants: dict[str, int], weights: dict[str, float]) -> dict[str, int]:
    """Share ``pool`` by ``weights``, nobody above its ``wants``: satisfied parts leave,
    and their unneeded share is re-split among the rest. Integer grants; the rounding
    remainder goes to the largest fractional shares (ties: input order)."""
    grants = dict.fromkeys(wants, 0)
    active = [n for n in wants if wants[n] > 0]
    while active and pool > 0:
        total = sum(weights[n] for n in active)
        fair = {n: pool * weights[n] / total for n in active}
        done = [n for n in active if wants[n] <= fair[n]]
        if done:
            for n in done:
                grants[n] = wants[n]
                pool -= wants[n]
            active = [n for n in active if n not in done]
            continue
        floors = {n: min(wants[n], math.floor(fair[n])) for n in active}
        left = pool - sum(floors.values())
        by_fraction = sorted(active, key=lambda n: floors[n] - fair[n])  # stable
        for n in by_fraction:
            extra = 1 if left > 0 and floors[n] < wants[n] else 0
            grants[n] = floors[n] + extra
            left -= extra
        break
    return grants


def allocate(
    available: int, parts: Sequence[BudgetPart], *, headroom: float | int = 0
) -> Allocation:
    """Share ``available`` tokens between ``parts`` by the rules in the module docstring.

    ``headroom`` is a fraction of ``available`` (a float in ``[0, 1)``) or a number of
    tokens (an int) to keep free. Raises :class:`~guardrail.errors.InvalidRequestError`
    when the parts' minimums do not fit ``available``.
    """
    _non_negative_int("available", available)
    seen: set[str] = set()
    for part in parts:
        if not isinstance(part, BudgetPart):
            raise InvalidRequestError(f"parts must be BudgetPart objects, got {part!r}")
        if part.name in seen:
            raise InvalidRequestError(f"two budget parts are named {part.name!r}")
        seen.add(part.name)
    mins = {p.name: min(p.min_tokens, p.demand) for p in parts}
    required = sum(mins.values())
    if required > available:
        raise InvalidRequestError(
            f"the parts' minimums ({required} tokens) exceed the {available} available"
        )
    kept_free = min(_headroom_tokens(headroom, available), available - required)
    pool = available - kept_free - required
    grants = dict(mins)
    for priority in sorted({p.priority for p in parts}, reverse=True):
        level = [p for p in parts if p.priority == priority]
        wants = {p.name: p.demand - mins[p.name] for p in level}
        extra = _water_fill(pool, wants, {p.name: p.share for p in level})
        for name, tokens in extra.items():
            grants[name] += tokens
            pool -= tokens
    return Allocation(
        limit=available,
        available=available,
        headroom=kept_free,
        parts={p.name: PartAllocation(p.name, p.demand, grants[p.name]) for p in parts},
    )


def _headroom_tokens(headroom: float | int, available: int) -> int:
    if isinstance(headroom, bool) or not isinstance(headroom, (int, float)):
        raise ConfigurationError(f"headroom must be a float fraction or int tokens: {headroom!r}")
    if isinstance(headroom, int):
        if headroom < 0:
            raise ConfigurationError(f"headroom must be >= 0 tokens, got {headroom}")
        return min(headroom, available)
    if not 0 <= headroom < 1:
        raise ConfigurationError(f"a headroom fraction must be in [0, 1), got {headroom}")
    return math.ceil(available * headroom)


class TokenBudget:
    """A model's prompt budget: its context window minus a fixed output reserve.

    ``context_window`` overrides the catalog's window (a policy cap, a cheaper
    deployment); ``headroom`` is kept free of variable parts (see :func:`allocate`).
    """

    def __init__(
        self,
        model: str | ModelInfo,
        *,
        reserve_output: int,
        context_window: int | None = None,
        headroom: float | int = 0,
    ) -> None:
        self.counter: TokenCounter = counter_for(model)
        self.info: ModelInfo = self.counter.info
        window = self.info.context_window if context_window is None else context_window
        if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
            raise ConfigurationError(f"context_window must be a positive int, got {window!r}")
        if isinstance(reserve_output, bool) or not isinstance(reserve_output, int):
            raise ConfigurationError(f"reserve_output must be an int, got {reserve_output!r}")
        if not 0 <= reserve_output < window:
            raise ConfigurationError(
                f"reserve_output ({reserve_output}) must be >= 0 and below the context "
                f"window ({window})"
            )
        _headroom_tokens(headroom, 0)  # validates
        self.context_window = window
        self.reserve_output = reserve_output
        self.headroom = headroom

    @property
    def limit(self) -> int:
        """Tokens the whole prompt may use."""
        return self.context_window - self.reserve_output

    def __repr__(self) -> str:
        return (
            f"TokenBudget(model={self.info.name!r}, context_window={self.context_window}, "
            f"reserve_output={self.reserve_output}, headroom={self.headroom!r})"
        )

    def allocate(
        self, parts: Sequence[BudgetPart], *, fixed: Mapping[str, int] | None = None
    ) -> Allocation:
        """Share what the ``fixed`` parts (name -> tokens) leave of :attr:`limit`.

        Raises :class:`~guardrail.errors.ContextWindowExceeded` when the fixed parts and
        the variable parts' minimums do not fit.
        """
        fixed = dict(fixed or {})
        for name, tokens in fixed.items():
            _non_negative_int(f"fixed part {name!r}", tokens)
        fixed_total = sum(fixed.values())
        required = fixed_total + sum(min(p.min_tokens, p.demand) for p in parts)
        if required > self.limit:
            raise ContextWindowExceeded(
                model=self.info.name,
                prompt_tokens=required,
                reserved_output_tokens=self.reserve_output,
                limit=self.context_window,
                limit_name="the context window",
                detail="the fixed parts and the required minimums alone do not fit",
            )
        result = allocate(self.limit - fixed_total, parts, headroom=self.headroom)
        return replace(result, limit=self.limit, reserve_output=self.reserve_output, fixed=fixed)


# --------------------------------------------------------------------------- builder


@dataclass(frozen=True)
class PartReport:
    """One part of a built prompt: tokens asked for, granted, used, and what was cut.

    ``dropped`` holds the dropped history messages or documents; ``truncated`` says a
    text was cut (the user input, or the last document packed).
    """

    name: str
    requested: int
    granted: int
    used: int
    dropped: list[Any] = field(default_factory=list)
    truncated: bool = False

    @property
    def cut(self) -> int:
        """Tokens of this part that are not in the prompt."""
        return self.requested - self.used


@dataclass(frozen=True)
class Prompt:
    """Messages that fit, and how the budget was spent.

    ``prompt_tokens`` is ``count_messages(messages, model, tools=tools)``: message
    overhead and reply priming included; it is at most ``limit``. ``allocation`` is the
    first-pass plan; ``parts`` what each part was finally granted (plan plus what others
    left unused), used, and lost. ``context`` is the packing of the documents, if any.
    """

    messages: list[Message]
    prompt_tokens: int
    limit: int
    allocation: Allocation
    parts: dict[str, PartReport]
    context: PackResult | None = None

    @property
    def room(self) -> int:
        """Prompt tokens still free under the limit."""
        return self.limit - self.prompt_tokens


DEFAULT_SHARES: Mapping[str, float] = MappingProxyType(
    {"context": 0.3, "history": 0.5, "user": 0.2}
)
DEFAULT_PRIORITIES: Mapping[str, int] = MappingProxyType({"user": 1})
_PARTS = ("context", "history", "user")


class PromptBuilder:
    """Builds prompts that fit: system prompt, examples, retrieved context, history, user.

    Configure once, then call :meth:`build` per request::

        builder = PromptBuilder("gpt-4o", reserve_output=1_000, headroom=0.2,
                                shares={"context": 0.3, "history": 0.5})
        prompt = builder.build(system=SYSTEM, context=docs, history=past, user=question)
        client.chat.completions.create(model="gpt-4o", messages=prompt.messages,
                                       max_tokens=1_000)

    Messages come out as ``[system, *examples, *history, context, user]``. The variable
    parts share what the fixed ones leave by ``shares`` and ``priorities`` (defaults: the
    user input first, then context and history 3:5). Within its grant:

    * **context**: documents packed best-first (:func:`~guardrail.pack_documents`) into one
      message, ``context_template`` with ``{context}`` replaced, role ``context_role``;
    * **history**: the most recent whole units (an assistant tool call stays with its
      results, :mod:`guardrail.prompt.trimming`'s rule), contiguous. Without a ``user`` input, the
      history's latest turn (from its last user message) is required;
    * **user**: cut with ``user_truncation`` when it does not fit whole, unless
      ``truncate_user=False``, when a user input that does not fit is an error.

    A part that leaves part of its grant unused (a history unit or a document that did not
    fit) gives it back to the parts that were cut, in a second pass.
    """

    def __init__(
        self,
        model: str | ModelInfo,
        *,
        reserve_output: int,
        context_window: int | None = None,
        headroom: float | int = 0,
        shares: Mapping[str, float] | None = None,
        priorities: Mapping[str, int] | None = None,
        system_role: str = "system",
        context_role: str = "system",
        context_template: str = "Use the following context to answer.\n\n{context}",
        separator: str = "\n\n",
        min_tokens_for_partial: int = DEFAULT_MIN_TOKENS_FOR_PARTIAL,
        context_order: Order = "score",
        user_truncation: Strategy = "middle",
        truncate_user: bool = True,
    ) -> None:
        self.budget = TokenBudget(
            model, reserve_output=reserve_output, context_window=context_window, headroom=headroom
        )
        self.counter = self.budget.counter
        self.shares = dict(DEFAULT_SHARES)
        self.priorities = dict.fromkeys(_PARTS, 0) | dict(DEFAULT_PRIORITIES)
        for label, given in (("shares", shares), ("priorities", priorities)):
            unknown = set(given or {}) - set(_PARTS)
            if unknown:
                raise ConfigurationError(
                    f"{label}: unknown part(s) {sorted(unknown)}; the parts are {list(_PARTS)}"
                )
        for name, share in (shares or {}).items():
            self.shares[name] = _positive_weight(f"shares[{name!r}]", share)
        for name, priority in (priorities or {}).items():
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise ConfigurationError(f"priorities[{name!r}] must be an int")
            self.priorities[name] = priority
        if not isinstance(separator, str):
            raise ConfigurationError("separator must be a str")
        if not isinstance(context_template, str) or "{context}" not in context_template:
            raise ConfigurationError("context_template must contain '{context}'")
        if context_order not in ("score", "original"):
            raise ConfigurationError("context_order must be 'score' or 'original'")
        if user_truncation not in STRATEGIES:
            raise ConfigurationError(f"user_truncation must be one of {STRATEGIES}")
        if (
            isinstance(min_tokens_for_partial, bool)
            or not isinstance(min_tokens_for_partial, int)
            or min_tokens_for_partial < 1
        ):
            raise ConfigurationError("min_tokens_for_partial must be an int >= 1")
        self.system_role = system_role
        self.context_role = context_role
        self.context_template = context_template
        self.separator = separator
        self.min_tokens_for_partial = min_tokens_for_partial
        self.context_order: Order = context_order
        self.user_truncation: Strategy = user_truncation
        self.truncate_user = truncate_user

    @property
    def limit(self) -> int:
        return self.budget.limit

    def build(
        self,
        *,
        system: str | None = None,
        examples: Sequence[Message] = (),
        context: Iterable[DocumentLike] = (),
        history: Sequence[Message] = (),
        user: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Prompt:
        """Messages for one request that fit ``context_window - reserve_output``.

        ``examples`` are few-shot messages kept whole; ``context`` documents (see
        :data:`~guardrail.prompt.packing.DocumentLike`); ``history`` earlier messages, oldest
        first; ``tools`` are counted as a fixed part (pass the same ``tools`` to the API).
        Raises :class:`~guardrail.errors.ContextWindowExceeded` when the fixed parts (and
        the required user input or latest turn) do not fit.
        """
        counter = self.counter
        if system is not None and not isinstance(system, str):
            raise InvalidRequestError("system must be a str")
        if user is not None and not isinstance(user, str):
            raise InvalidRequestError("user must be a str (put content parts in history)")
        head: list[Message] = []
        fixed: dict[str, int] = {}
        if system:
            head.append({"role": self.system_role, "content": system})
            fixed["system"] = counter.message(head[0])
        examples = list(examples)
        if examples:
            head.extend(examples)
            fixed["examples"] = sum(counter.message(m) for m in examples)
        if tools:
            fixed["tools"] = counter.tools(tools)
        fixed["reply_priming"] = counter.reply_priming

        docs = [as_document(d, i) for i, d in enumerate(context)]
        history = list(history)
        parts = _Parts(self, docs, history, user)
        requests = [
            BudgetPart(
                name,
                parts.demand[name],
                share=self.shares[name],
                priority=self.priorities[name],
                min_tokens=parts.minimum[name],
            )
            for name in _PARTS
        ]
        allocation = self.budget.allocate(requests, fixed=fixed)
        for name in _PARTS:
            parts.render(name, allocation[name].granted)
        # Second pass: what a part could not use (a history unit or a document that did not
        # fit whole) is offered, all of it, to each part that was cut in turn (by priority,
        # then share); each takes what it can use and passes the rest on.
        spare = sum(allocation[n].granted - parts.out[n].used for n in _PARTS)
        order = sorted(_PARTS, key=lambda n: (-self.priorities[n], -self.shares[n]))
        for name in order:
            before = parts.out[name]
            if spare <= 0 or before.used >= parts.demand[name]:
                continue
            after = parts.render(name, min(parts.demand[name], before.used + spare))
            if after.used < before.used:  # not monotone (rare): keep the first rendering
                parts.out[name] = after = before
            spare -= after.used - before.used
        out = parts.out
        if user is not None and not out["user"].messages:
            raise ContextWindowExceeded(
                model=self.budget.info.name,
                prompt_tokens=self.limit - out["user"].granted + parts.demand["user"],
                reserved_output_tokens=self.budget.reserve_output,
                limit=self.budget.context_window,
                limit_name="the context window",
                detail="no room is left for the user input",
            )
        messages = [*head, *out["history"].messages, *out["context"].messages]
        messages.extend(out["user"].messages)
        prompt_tokens = counter.messages(messages, tools)
        if prompt_tokens > self.limit:  # cannot happen: each part is counted as rendered
            raise ContextWindowExceeded(
                model=self.budget.info.name,
                prompt_tokens=prompt_tokens,
                reserved_output_tokens=self.budget.reserve_output,
                limit=self.budget.context_window,
                limit_name="the context window",
                detail="the built prompt does not fit (a guardrail bug: please report it)",
            )
        reports = {
            name: PartReport(
                name,
                parts.demand[name],
                out[name].granted,
                out[name].used,
                out[name].dropped,
                out[name].truncated,
            )
            for name in _PARTS
        }
        return Prompt(
            messages, prompt_tokens, self.limit, allocation, reports, out["context"].packed
        )


@dataclass
class _Rendered:
    """One part rendered into a grant."""

    granted: int = 0
    used: int = 0
    messages: list[Message] = field(default_factory=list)
    dropped: list[Any] = field(default_factory=list)
    truncated: bool = False
    packed: PackResult | None = None


class _Parts:
    """The variable parts of one build: demands, minimums and renderings."""

    def __init__(
        self, builder: PromptBuilder, docs: list[Document], history: list[Message], user: str | None
    ) -> None:
        self.b = builder
        counter = builder.counter
        self.docs = docs
        self.history = history
        self.user = user
        self.demand: dict[str, int] = {}
        self.minimum: dict[str, int] = dict.fromkeys(_PARTS, 0)
        self.out: dict[str, _Rendered] = {name: _Rendered() for name in _PARTS}
        # context: one message with every document in it
        self.context_overhead = counter.message(self._context_message(""))
        # Asked for by the sum of its parts (not by counting every document joined, which
        # would encode the whole corpus on each build): joins merge as often as not, and
        # packing counts what it keeps exactly.
        self.demand["context"] = 0
        if docs:
            self.demand["context"] = (
                self.context_overhead
                + sum(counter.text(d.text) for d in docs)
                + counter.text(builder.separator) * (len(docs) - 1)
            )
        # history: whole units, the most recent ones
        self.sizes = [counter.message(m) for m in history]
        self.units = _units(history, 0, len(history), skip_pinned=False)
        self.demand["history"] = sum(self.sizes)
        if user is None and history:
            turn = next(
                (b for b, _ in reversed(self.units) if field_of(history[b], "role") == "user"),
                self.units[-1][0],
            )
            self.minimum["history"] = sum(self.sizes[turn:])
        # user
        self.user_overhead = counter.message({"role": "user", "content": ""})
        if user is None:
            self.demand["user"] = 0
        else:
            self.demand["user"] = counter.message({"role": "user", "content": user})
            self.minimum["user"] = self.demand["user"] if not builder.truncate_user else 0

    def _context_message(self, text: str) -> Message:
        return {
            "role": self.b.context_role,
            "content": self.b.context_template.replace("{context}", text),
        }

    def _pack(self, budget: int) -> PackResult:
        b = self.b
        return _pack(
            self.docs,
            budget,
            b.counter,
            separator=b.separator,
            min_partial=b.min_tokens_for_partial,
            order=b.context_order,
            truncation="sentence",
            marker=None,
            render=None,
        )

    def render(self, name: str, grant: int) -> _Rendered:
        if name == "context":
            out = self._render_context(grant)
        elif name == "history":
            out = self._render_history(grant)
        else:
            out = self._render_user(grant)
        self.out[name] = out
        return out

    def _render_context(self, grant: int) -> _Rendered:
        budget = grant - self.context_overhead
        while self.docs and budget > 0:
            packed = self._pack(budget)
            if not packed.included:
                break
            message = self._context_message(packed.text)
            used = self.b.counter.message(message)
            if used <= grant:
                truncated = packed.truncated is not None
                return _Rendered(grant, used, [message], packed.dropped, truncated, packed)
            budget -= used - grant  # the template and the text did not add up exactly
        return _Rendered(grant, 0, [], list(self.docs))

    def _render_history(self, grant: int) -> _Rendered:
        start, spent = len(self.history), 0
        for begin, end in reversed(self.units):
            cost = sum(self.sizes[begin:end])
            if spent + cost > grant:
                break
            spent += cost
            start = begin
        return _Rendered(grant, spent, self.history[start:], self.history[:start])

    def _render_user(self, grant: int) -> _Rendered:
        user = self.user
        if user is None:
            return _Rendered(grant)
        b = self.b
        budget = grant - self.user_overhead
        if budget < 0 or (budget == 0 and user):
            return _Rendered(grant)  # no room: build() says so if the second pass finds none
        while True:
            text, _ = _truncate(user, budget, b.counter, b.user_truncation, None)
            message: Message = {"role": "user", "content": text}
            used = b.counter.message(message)
            if used <= grant:
                return _Rendered(grant, used, [message], truncated=text != user)
            budget -= used - grant
