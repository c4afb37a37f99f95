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

:class:`~guardrail.prompt.builder.PromptBuilder` builds messages on top of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from guardrail.catalog.models import ModelInfo
from guardrail.counting.messages import TokenCounter, counter_for
from guardrail.errors import (
    ConfigurationError,
    ContextWindowExceeded,
    InvalidRequestError,
    describe,
)

__all__ = [
    "Allocation",
    "BudgetPart",
    "PartAllocation",
    "TokenBudget",
    "allocate",
]


def _non_negative_int(label: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{label} must be an int >= 0, got {describe(value)}")
    return value


def _positive_weight(label: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{label} must be a finite number > 0, got {describe(value)}")
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
            raise ConfigurationError(f"a budget part needs a name, got {describe(self.name)}")
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
    if not isinstance(parts, (list, tuple)):
        raise InvalidRequestError(f"parts must be a list of BudgetParts, got {describe(parts)}")
    seen: set[str] = set()
    for part in parts:
        if not isinstance(part, BudgetPart):
            raise InvalidRequestError(f"parts must be BudgetPart objects, got {describe(part)}")
        if part.name in seen:
            raise InvalidRequestError(f"two budget parts are named {describe(part.name)}")
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
        raise ConfigurationError(
            f"headroom must be a float fraction or int tokens: {describe(headroom)}"
        )
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
            raise ConfigurationError(
                f"context_window must be a positive int, got {describe(window)}"
            )
        if isinstance(reserve_output, bool) or not isinstance(reserve_output, int):
            raise ConfigurationError(
                f"reserve_output must be an int, got {describe(reserve_output)}"
            )
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
        """Tokens the whole prompt may use: the window less the output reserve, and at most
        the model's input cap (``ModelInfo.max_input_tokens``) for the catalog's window."""
        limit = self.context_window - self.reserve_output
        if (
            self.info.max_input_tokens is not None
            and self.context_window == self.info.context_window
        ):
            limit = min(limit, self.info.max_input_tokens)
        return limit

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
