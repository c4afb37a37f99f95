"""Prompts that are sure to fit.

:class:`PromptBuilder` builds OpenAI-style messages on top of the allocation
(:mod:`guardrail.prompt.allocation`): it allocates, renders each
part into its grant (documents packed with :func:`~guardrail.pack_documents`, history as
a sliding window of whole tool-call units, the user input cut with
:func:`~guardrail.truncate_text`), hands what a part left unused to the parts that were
cut, and returns messages whose ``count_messages`` (message overhead and reply priming
included) is at most ``context_window - reserve_output``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from guardrail.catalog.models import ModelInfo
from guardrail.counting.messages import field_of
from guardrail.errors import (
    ConfigurationError,
    ContextWindowExceeded,
    InvalidRequestError,
    describe,
)
from guardrail.prompt.allocation import (
    Allocation,
    BudgetPart,
    TokenBudget,
    _positive_weight,
)
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

__all__ = ["PartReport", "Prompt", "PromptBuilder"]


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
                raise ConfigurationError(f"priorities[{describe(name)}] must be an int")
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
        for name, value in (("examples", examples), ("context", context), ("history", history)):
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
                raise InvalidRequestError(f"{name} must be a list, got {type(value).__name__}")
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
