"""Guarded SDK clients as real SDK clients: dynamic subclasses of the SDK's own classes.

``guard.wrap(client)`` returns a copy of the client whose class is a subclass of the
client's class (so ``isinstance(guarded, openai.OpenAI)`` holds, and every attribute a
framework reads is the SDK's), in which the resources that make paid calls are subclasses
of the SDK's resources with those methods replaced. The SDK builds its resources lazily
(``cached_property``) and its ``with_raw_response`` / ``with_streaming_response`` views and
``stream()`` helpers on top of them, so replacing a method at its resource covers every
route to it. ``copy`` / ``with_options`` build ``self.__class__(...)``: the copy is guarded
too, and the guard's state is carried over.

Some clients set a resource in their ``__init__`` instead (``AnthropicBedrock`` and
``AnthropicVertex``: ``self.messages = Messages(self)``): the guarded class has a data
descriptor of that name, which guards the instance's own resource when it is read (not
when it is set: the plain copy a guarded call is sent on is built under the guarded class,
and must keep the SDK's resources). :func:`guard_instance` then checks that every resource
of the tree the client has is guarded, and refuses a client built some other way (a
resource behind a plain ``property``, ``__getattr__``): no client is half guarded.

A :class:`Node` says, for one resource, which methods to replace (with what) and which
child resources to guard in turn. Subclasses are made once per (SDK class, node).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from guardrail.errors import ConfigurationError

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
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": __name__,
        "_guardrail_node": node,
        **extra,
    }
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
        child_path = f"{path}.{name}".lstrip(".")
        if isinstance(prop, functools.cached_property):
            namespace[name] = _guarded_child(prop, child, child_path)
        elif prop is None:  # set by the SDK's __init__, or absent from this release
            namespace[name] = _InstanceChild(name, child, child_path)
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
        return _guarded(build(self), node, path)

    child.__name__ = build.__name__
    child.__doc__ = build.__doc__
    return functools.cached_property(child)  # type() calls its __set_name__


def _guarded(resource: Any, node: Node, path: str) -> Any:
    """``resource`` with its class swapped for the guarded subclass (once)."""
    cls = type(resource)
    if resource is not None and getattr(cls, "_guardrail_node", None) is not node:
        resource.__class__ = guarded_class(cls, node, path)
    return resource  # None: a resource a client does not have (AnthropicFoundry's batches)


class _InstanceChild:
    """A child resource the SDK client sets in its ``__init__`` (``self.messages =
    Messages(self)``) rather than building it in a ``cached_property``: kept in the
    instance's ``__dict__`` as the SDK set it, and guarded when read."""

    __slots__ = ("name", "node", "path")

    def __init__(self, name: str, node: Node, path: str) -> None:
        self.name, self.node, self.path = name, node, path

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        try:
            resource = vars(instance)[self.name]
        except KeyError:
            raise AttributeError(
                f"{type(instance).__name__!r} object has no attribute {self.name!r}"
            ) from None
        return _guarded(resource, self.node, self.path)

    def __set__(self, instance: Any, value: Any) -> None:
        vars(instance)[self.name] = value

    def __delete__(self, instance: Any) -> None:
        vars(instance).pop(self.name, None)


def _unguarded(resource: Any, node: Node, path: str) -> tuple[str, Any] | None:
    """The first resource of ``node``'s tree under ``resource`` that exists and is not
    guarded (its path and the resource), None when all are."""
    for name, child in node.children.items():
        child_path = f"{path}.{name}".lstrip(".")
        try:
            found = getattr(resource, name)
        except AttributeError:  # an SDK release without it
            continue
        if found is None:
            continue
        if getattr(type(found), "_guardrail_node", None) is not child:
            return child_path, found
        deeper = _unguarded(found, child, child_path)
        if deeper is not None:
            return deeper
    return None


def guard_instance(instance: Any, cls: type, state_attr: str, state: Any) -> Any:
    """``instance`` (a fresh copy of an SDK client) as an instance of ``cls``, with
    ``state`` kept under ``state_attr``; :class:`~guardrail.errors.ConfigurationError`
    when one of its resources is not one guardrail can guard."""
    name = type(instance).__name__
    instance.__class__ = cls
    setattr(instance, state_attr, state)
    missed = _unguarded(instance, cls._guardrail_node, "")  # type: ignore[attr-defined]
    if missed is not None:
        path, resource = missed
        raise ConfigurationError(
            f"cannot guard a {name}: its {path} ({type(resource).__name__}) is neither built "
            "by a cached_property nor set by the client's __init__, so guardrail cannot "
            "replace its paid methods (and will not hand back a client half guarded); "
            "report the SDK release"
        )
    return instance


def resource_at(client: Any, path: str) -> Any:
    """The resource at a dotted ``path`` of ``client`` (``"beta.chat.completions"``)."""
    for name in path.split("."):
        client = getattr(client, name)
    return client
