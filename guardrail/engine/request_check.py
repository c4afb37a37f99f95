"""Checks a request must pass before anything is reserved or sent: what the SDK could not
serialise, or the API is sure to reject, is refused here with an
:class:`~guardrail.errors.InvalidRequestError` naming the field.

The SDKs serialise a request with ``json.dumps`` after the guard has reserved its cost:
a value JSON cannot hold (``float('nan')``, ``Decimal``, ``bytes``, a lone surrogate, a
structure nested past the recursion limit) then fails inside the SDK, as a ``TypeError``
or a ``ValueError`` the caller did not expect from a guarded call. :func:`check_json`
walks the request first, in bounded time and depth, and says which field is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from itertools import filterfalse
from operator import itemgetter
from typing import Any

from guardrail.errors import InvalidRequestError, describe

__all__ = [
    "MAX_JSON_DEPTH",
    "as_sent",
    "check_body",
    "check_json",
    "check_names",
    "check_number",
    "check_roles",
    "check_stream",
    "check_texts",
    "from_body",
    "plain_messages",
    "skipped",
]

MAX_JSON_DEPTH = 64
"""The nesting named in the error for a value too deep to serialise (``json.dumps``
overflows past about 1,000 levels; messages and tool schemas are held to this limit by
the counting rules already)."""

_NOT_JSON = "{where} is a {kind}, which JSON cannot carry (the SDK would fail to send it)"


def as_sent(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """A request's fields as the provider gets them: the SDKs merge ``extra_body`` into the
    JSON body last, so a field there (one this SDK release has no parameter for, such as a
    newer model's ``reasoning_effort`` or Claude's ``speed``) is read as sent."""
    extra = kwargs.get("extra_body")
    if not isinstance(extra, Mapping) or not extra:
        return kwargs
    return {**kwargs, **extra}


def from_body(kwargs: Mapping[str, Any], name: str) -> Any:
    """One field of :func:`as_sent`, without building the merged mapping (for the
    adapter methods that get the caller's kwargs, not the request as sent)."""
    extra = kwargs.get("extra_body")
    if isinstance(extra, Mapping) and name in extra:
        return extra[name]
    return kwargs.get(name)


def skipped(value: Any) -> bool:
    """None and the SDKs' NOT_GIVEN / omit sentinels: nothing is sent for them."""
    return value is None or type(value).__name__ in ("NotGiven", "Omit")


def _bad_string(text: str, where: str) -> InvalidRequestError:
    for i, char in enumerate(text):
        if "\ud800" <= char <= "\udfff":
            return InvalidRequestError(
                f"{where} has a lone surrogate {char!r} at position {i}: it is not valid "
                "UTF-8, so it cannot be sent"
            )
    return InvalidRequestError(f"{where} is not valid UTF-8")  # pragma: no cover


def _check_strings(strings: list[str], where: list[str]) -> None:
    """Each string must be encodable as UTF-8: ASCII is checked in C, the rest encoded."""
    for index in filterfalse(lambda i: strings[i].isascii(), range(len(strings))):
        try:
            strings[index].encode("utf-8")
        except UnicodeEncodeError:
            raise _bad_string(strings[index], where[index]) from None


def check_texts(texts: list[str], where: str) -> None:
    """Each of ``texts`` (named ``where[i]``) is valid UTF-8: one C-level ASCII pass over
    the list, and only the non-ASCII strings encoded (an embeddings ``input`` of many
    long strings is not serialised again to find out)."""
    if not all(map(str.isascii, texts)):
        _check_strings(texts, [f"{where}[{i}]" for i in range(len(texts))])


def _json_default(item: Any) -> Any:
    if hasattr(item, "model_dump"):  # an SDK object: the SDK serialises it itself
        return None
    if skipped(item):
        return None
    raise TypeError(type(item).__name__)


def check_json(value: Any, where: str) -> None:
    """Raise :class:`InvalidRequestError` if ``value`` is not what the SDK can send as
    JSON: only str (valid UTF-8), int, finite float, bool, None, lists, tuples and
    str-keyed mappings, at most :data:`MAX_JSON_DEPTH` deep. SDK objects (pydantic
    models, ``response.choices[0].message``) are the SDK's own to serialise.

    The check is ``json.dumps`` itself (in C, as the SDK will run it) followed by a UTF-8
    check of its output; only when it fails is the value walked again to name the field.
    A plain str, int, bool or finite float (``model``, ``user``...) is checked directly:
    ``json.dumps`` builds an encoder per call, and would tell no more.
    """
    kind = type(value)
    if kind is str:
        if not value.isascii():  # json.dumps keeps the text; only UTF-8 can fail
            _check_strings([value], [where])
        return
    if kind is int or kind is bool or (kind is float and math.isfinite(value)):
        return
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=_json_default)
        if not text.isascii():
            text.encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
        _explain(value, where)
        raise InvalidRequestError(f"{where} cannot be sent as JSON: {exc}") from None


def _explain(value: Any, where: str) -> None:
    """Walk ``value`` (iteratively, so a deep value cannot overflow the stack) and raise
    for the first field that JSON cannot carry, or that is nested past the limit."""
    strings: list[str] = []
    places: list[str] = []
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, at, depth = stack.pop()
        if isinstance(item, str):
            strings.append(item)
            places.append(at)
            continue
        if item is None or isinstance(item, (bool, int)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidRequestError(f"{at} is {item!r}: JSON has no NaN or infinity")
            continue
        is_map, is_list = isinstance(item, Mapping), isinstance(item, (list, tuple))
        if (is_map or is_list) and depth >= MAX_JSON_DEPTH:
            raise InvalidRequestError(f"{at} is nested more than {MAX_JSON_DEPTH} levels deep")
        if is_map:
            for key, inner in item.items():
                if isinstance(key, str):
                    strings.append(key)
                    places.append(f"a key of {at}")
                elif not isinstance(key, (int, float, bool)) and key is not None:
                    raise InvalidRequestError(f"{at} has a key {describe(key)} that is not a str")
                stack.append((inner, f"{at}.{key}" if len(at) < 200 else at, depth + 1))
        elif is_list:
            for i, inner in enumerate(item):
                stack.append((inner, f"{at}[{i}]" if len(at) < 200 else at, depth + 1))
        elif not (skipped(item) or hasattr(item, "model_dump")):
            raise InvalidRequestError(_NOT_JSON.format(where=at, kind=type(item).__name__))
    _check_strings(strings, places)


def check_stream(kwargs: Mapping[str, Any]) -> bool:
    """``stream`` must be a bool when given (the API rejects anything else)."""
    stream = kwargs.get("stream")
    if skipped(stream):
        return False
    if type(stream) is not bool:
        raise InvalidRequestError(f"stream must be True or False, got {describe(stream)}")
    return stream


def check_number(
    kwargs: Mapping[str, Any], name: str, low: float | None = None, high: float | None = None
) -> None:
    """A numeric sampling parameter (``temperature``, ``top_p``...): a finite int or float,
    within ``[low, high]`` when given."""
    value = kwargs.get(name)
    if skipped(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"{name} must be a number, got {describe(value)}")
    if not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}")
    if low is not None and high is not None and not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low:g} and {high:g}, got {value!r}")


_ROLE = itemgetter("role")
_CONTENT = itemgetter("content")


def plain_messages(messages: Any, roles: frozenset[str]) -> bool:
    """Whether ``messages`` is a list of ``{"role": <one of roles>, "content": <valid
    UTF-8 str>}`` dicts, checked with C-level passes over the list (the common case costs
    tens of nanoseconds per message). False means "check it the long way"."""
    if type(messages) is not list or not messages:
        return False
    try:
        if set(map(type, messages)) != {dict} or sum(map(len, messages)) != 2 * len(messages):
            return False
        contents = list(map(_CONTENT, messages))
        found = set(map(_ROLE, messages))
    except (KeyError, TypeError):
        return False
    if set(map(type, contents)) != {str} or not found <= roles:
        return False
    if not all(map(str.isascii, contents)):
        _check_strings(contents, [f"messages[{i}].content" for i in range(len(contents))])
    return True


def check_roles(messages: Any, roles: frozenset[str], api: str) -> None:
    """Every message's ``role`` is one the API knows (it rejects any other with a 400)."""
    for i, message in enumerate(messages):
        role = (
            message.get("role") if isinstance(message, Mapping) else getattr(message, "role", None)
        )
        if role is None and not isinstance(message, Mapping):
            continue  # not a message at all: counting says what is wrong with it
        if not isinstance(role, str) or role not in roles:
            raise InvalidRequestError(
                f"messages[{i}].role is {describe(role)}: {api} takes only "
                + ", ".join(sorted(roles))
            )


_TRANSPORT = frozenset(("extra_headers", "extra_query", "timeout"))
"""SDK options that are not part of the JSON body (``extra_body`` is, and is checked)."""


def check_names(kwargs: Mapping[str, Any], allowed: frozenset[str] | None, api: str) -> None:
    """Every parameter is one the SDK method takes: else the SDK raises a TypeError after
    the reservation. Only for a call through an SDK method (``allowed`` is its signature;
    None when it takes ``**kwargs``): the gateway forwards JSON fields it does not know."""
    if allowed is None or allowed.issuperset(kwargs):
        return
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        raise InvalidRequestError(
            f"{api} takes no parameter {describe(unknown[0])} (this SDK release does not "
            "know it; pass it in extra_body to send it anyway)"
        )


def check_body(kwargs: Mapping[str, Any], *, skip: str = "") -> None:
    """Every body field is sendable JSON: its name valid UTF-8 (a gateway body's keys are
    whatever the client sent) and its value per :func:`check_json`. ``skip`` names a
    parameter its adapter checks itself (the messages on their fast path, the embeddings
    ``input``)."""
    for name, value in kwargs.items():
        if type(name) is str and not name.isascii():
            _check_strings([name], ["a field name of the request"])
        if name not in _TRANSPORT and name != skip and not skipped(value):
            check_json(value, name)
