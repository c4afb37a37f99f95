"""``quick_init``: a frozen dataclass built by writing its ``__dict__``, and nothing else
changed."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from guardrail._frozen import quick_init
from guardrail.catalog.pricing import TokenUsage
from guardrail.engine.adapter import RequestView
from guardrail.engine.plan import Plan
from guardrail.errors import ConfigurationError
from guardrail.stores.base import Reservation, ReservationRequest, ScopeLimits, Settlement


def make(decorate: bool) -> type:
    @dataclasses.dataclass(frozen=True)
    class Record:
        a: int
        b: str = "b"
        c: list[int] = dataclasses.field(default_factory=list)
        d: int = dataclasses.field(default=4, kw_only=True)

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("a must not be negative")

    return quick_init(Record) if decorate else Record


QUICK, PLAIN = make(True), make(False)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((1, "x"), {}), ((1, "x", [2]), {"d": 5}), ((), {"a": 3, "c": [1]})],
)
def test_it_builds_what_the_dataclass_builds(args: tuple, kwargs: dict) -> None:
    quick, plain = QUICK(*args, **kwargs), PLAIN(*args, **kwargs)
    assert vars(quick) == vars(plain) and list(vars(quick)) == list(vars(plain))
    assert repr(quick).split("(", 1)[1] == repr(plain).split("(", 1)[1]
    assert quick == QUICK(*args, **kwargs) and quick != dataclasses.replace(quick, a=9)


def test_a_default_factory_makes_a_new_value_each_time() -> None:
    first, second = QUICK(1), QUICK(1)
    assert first.c == [] and first.c is not second.c


def test_it_stays_frozen_and_runs_post_init() -> None:
    record = QUICK(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.a = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="negative"):
        QUICK(-1)
    assert hash(QUICK(1, c=())) == hash(PLAIN(1, c=()))  # type: ignore[arg-type]


def test_it_takes_the_same_arguments() -> None:
    quick, plain = inspect.signature(QUICK), inspect.signature(PLAIN)
    assert list(quick.parameters) == list(plain.parameters)
    assert [p.kind for p in quick.parameters.values()] == [
        p.kind for p in plain.parameters.values()
    ]
    with pytest.raises(TypeError):
        QUICK(1, "x", [], 4)  # d is keyword-only
    with pytest.raises(TypeError):
        QUICK()  # a is required


def test_it_refuses_what_it_does_not_reproduce() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Hidden:
        a: int
        b: int = dataclasses.field(default=0, init=False)

    @dataclasses.dataclass
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Clash:
        _set: int

    for cls in (Slotted, Hidden, Mutable, Clash):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)


@pytest.mark.parametrize(
    "cls", [Plan, RequestView, ReservationRequest, Reservation, Settlement, TokenUsage]
)
def test_the_records_of_every_call_use_it(cls: type) -> None:
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    assert "_set" in cls.__init__.__code__.co_varnames  # the quick one


def test_a_reservation_request_still_checks_its_scopes() -> None:
    with pytest.raises(ConfigurationError, match="more than once"):
        ReservationRequest("r", (ScopeLimits("t"), ScopeLimits("t")), 1, 1, 60.0)
