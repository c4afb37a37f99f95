"""Guarded SDK clients as real SDK clients: dynamic subclasses of the SDK's own classes.

``guard.wrap(client)`` returns a copy of the client whose class is a subclass of the
client's class (so ``isinstance(guarded, openai.OpenAI)`` holds, and every attribute a
framework reads is the SDK's), in which the resources that make paid calls are subclasses
of the SDK's resources with those methods replaced. The SDK builds its resources lazily
(``cached_property``) and its ``with_raw_response`` / ``with_streaming_response`` views and
``stream()`` helpers on top of them, so replacing a method at its resource covers every
route to it. ``copy`` / ``with_options`` build ``self.__class__(...)``: the copy is guarded
too, and the guard's state is carried over.

A :class:`Node` says, for one resource, which methods to replace (with what) and which
child resources to guard in turn. Subclasses are made once per (SDK class, node).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GuardedClientMarker", "Node", "guard_instance", "guarded_class", "resource_at"]

MethodFactory = Callable[[str, str, Callable[..., Any]], Callable[..., Any]]
"""``(resource path, method name, the SDK's method) -> the replacement method`` (an
``async def`` where the SDK's is one)."""


@dataclass(frozen=True, eq=False)
class Node:
    """What to replace in one resource: ``methods`` (name -> factory), ``children``
    (attribute name -> the node of that child resource)."""

    methods: Mapping[str, MethodFactory] = field(default_factory=dict)
    children: Mapping[str, Node] = field(default_factory=dict)


class GuardedClientMarker:
    """A base of every guarded client class (last in the bases, so that an SDK client's
    class can be swapped for its guarded subclass: the object layout stays the same)."""

    __slots__ = ()


_lock = threading.Lock()
_classes: dict[tuple[type, int], type] = {}


def guarded_class(base: type, node: Node, path: str = "", extra: Mapping[str, Any] = {}) -> type:
    """The subclass of ``base`` with ``node``'s methods replaced and its children guarded
    (made once per base and node). ``extra`` adds attributes (a client's ``copy``...)."""
    key = (base, id(node))
    found = _classes.get(key)
    if found is not None:
        return found
    namespace: dict[str, Any] = {"__slots__": (), "__module__": __name__, **extra}
    for name, factory in node.methods.items():
        original = getattr(base, name, None)
        if original is None:  # an SDK release without this method
            continue
        replacement = factory(path, name, original)
        functools.update_wrapper(replacement, original)
        vars(replacement).pop("__wrapped__", None)  # inspect must see the replacement
        namespace[name] = replacement
    for name, child in node.children.items():
        prop = getattr(base, name, None)
        if isinstance(prop, functools.cached_property):
            namespace[name] = _guarded_child(prop, child, f"{path}.{name}".lstrip("."))
    bases = (base, GuardedClientMarker) if extra else (base,)
    made = type(f"Guarded{base.__name__}", bases, namespace)
    with _lock:
        made = _classes.setdefault(key, made)
    return made


def _guarded_child(prop: functools.cached_property[Any], node: Node, path: str) -> Any:
    """A cached property that builds the SDK's child resource, then swaps its class for the
    guarded subclass."""
    build = prop.func

    def child(self: Any) -> Any:
        resource = build(self)
        resource.__class__ = guarded_class(type(resource), node, path)
        return resource

    child.__name__ = build.__name__
    child.__doc__ = build.__doc__
    return functools.cached_property(child)  # type() calls its __set_name__


def guard_instance(instance: Any, cls: type, state_attr: str, state: Any) -> Any:
    """``instance`` (a fresh copy of an SDK client) as an instance of ``cls``, with
    ``state`` kept under ``state_attr``."""
    instance.__class__ = cls
    setattr(instance, state_attr, state)
    return instance


def resource_at(client: Any, path: str) -> Any:
    """The resource at a dotted ``path`` of ``client`` (``"beta.chat.completions"``)."""
    for name in path.split("."):
        client = getattr(client, name)
    return client
