"""Frozen dataclasses that are cheap to build: every guarded call builds several.

A frozen dataclass's generated ``__init__`` sets each field with ``object.__setattr__``, a
call through a slot wrapper per field (about 100 ns each; a ``Plan`` has 28 fields). The
instance's ``__dict__`` can be written directly instead, in a third of the time: nothing
else changes (the class is still frozen after ``__init__``, and equality, hashing,
``repr``, ``dataclasses.replace`` and ``fields`` are the dataclass's own). The standard
library has no switch for it (attrs' frozen classes make the same calls).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, TypeVar

__all__ = ["quick_init"]

T = TypeVar("T")


class _Factory:
    def __repr__(self) -> str:
        return "<factory>"  # as dataclasses shows it in the signature


_FACTORY = _Factory()  # stands for a field's default_factory in the signature
_RESERVED = frozenset(("self", "_set", "_FACTORY", "_factories"))  # the generated code's


def quick_init(cls: type[T]) -> type[T]:
    """Give the frozen dataclass ``cls`` an ``__init__`` with the same parameters, defaults
    and ``__post_init__`` call that writes its ``__dict__``. Refuses what it does not
    reproduce (``init=False`` fields, ``InitVar``s, slots, a hand-written ``__init__``)."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or not params.init or "__slots__" in vars(cls):
        raise TypeError(f"quick_init takes a frozen dataclass without slots, not {cls!r}")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    takes = list(inspect.signature(cls.__init__).parameters)[1:]
    names = [f.name for f in fields]
    if any(not f.init for f in fields) or takes != names or _RESERVED.intersection(names):
        raise TypeError(f"quick_init cannot reproduce the __init__ of {cls.__name__}")
    positional = [f for f in fields if not f.kw_only]
    keyword = [f for f in fields if f.kw_only]
    signature = ", ".join(f.name for f in positional)
    if keyword:
        signature += ", *, " + ", ".join(f.name for f in keyword)
    body = []
    factories: dict[str, Any] = {}
    for f in fields:
        if f.default_factory is not dataclasses.MISSING:
            factories[f.name] = f.default_factory
            value = f"_factories[{f.name!r}]() if {f.name} is _FACTORY else {f.name}"
        else:
            value = f.name
        body.append(f"    _set[{f.name!r}] = {value}")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {signature}):\n    _set = self.__dict__\n" + "\n".join(body)
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY, "_factories": factories}
    exec(source, namespace)  # the way dataclasses builds its own __init__
    init = namespace["__init__"]

    def default(f: dataclasses.Field[Any]) -> Any:
        return _FACTORY if f.default_factory is not dataclasses.MISSING else f.default

    def has_default(f: dataclasses.Field[Any]) -> bool:
        return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING

    init.__defaults__ = tuple(default(f) for f in positional if has_default(f)) or None
    init.__kwdefaults__ = {f.name: default(f) for f in keyword if has_default(f)} or None
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
