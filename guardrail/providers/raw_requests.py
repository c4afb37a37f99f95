"""The last line of a guarded client: every request that reaches its own ``request``.

Guarded calls are sent on a plain copy of the client, so what reaches the guarded client's
``request`` is everything else: free endpoints, the unmetered ones (already checked by
their method), the SDK's low-level ``client.post(...)`` / ``client.request(...)``, a
resource built by hand around the guarded client, and endpoints a newer SDK release added.
Reads and deletes pass; a write passes when its path is one the provider does not bill
(a provider's :data:`FreeWrites`); any other write is a call guardrail cannot meter, refused
while a limit applies (:func:`~guardrail.providers.clients.check_unmetered`). Deny by
default: an endpoint guardrail does not know is not let through silently.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["FreeWrites", "request_hook", "vetted"]

_PASS = frozenset(("get", "head", "options", "delete"))
_vetted: contextvars.ContextVar[bool] = contextvars.ContextVar("guardrail_vetted", default=False)


def _matcher(patterns: Sequence[str]) -> Callable[[str], object]:
    parts = []
    for pattern in patterns:
        rest = pattern.endswith("/**")
        body = re.escape(pattern[:-3] if rest else pattern).replace(r"\*", "[^/]+")
        parts.append(body + ("(?:/.*)?" if rest else ""))
    return re.compile("(?:" + "|".join(parts) + ")").fullmatch if parts else (lambda path: None)


class FreeWrites:
    """Path patterns of the writes a provider does not bill: ``*`` is one path segment,
    a trailing ``/**`` any rest (``"/uploads/*/parts"``, ``"/organization/**"``);
    ``paid`` names the paths a free pattern's ``*`` would match but that are billed
    (``"/threads/runs"`` beside ``"/threads/*"``)."""

    def __init__(self, patterns: Sequence[str], paid: Sequence[str] = ()) -> None:
        self._free, self._paid = _matcher(patterns), _matcher(paid)

    def __contains__(self, path: str) -> bool:
        return self._free(path) is not None and self._paid(path) is None


@contextlib.contextmanager
def vetted() -> Iterator[None]:
    """Within: requests were checked by the method that sends them (an unmetered one)."""
    token = _vetted.set(True)
    try:
        yield
    finally:
        _vetted.reset(token)


def _path(url: object) -> str:
    """The path of a request's URL (relative, as the SDK's methods give it, or absolute)."""
    text = str(url).split("?", 1)[0].split("#", 1)[0]
    if "://" in text:
        text = "/" + text.split("://", 1)[1].partition("/")[2]
    return "/" + text.strip("/")


def _plain(path: str) -> bool:
    """Whether the path means what it says: no ``.`` / ``..`` segment (the HTTP client
    resolves them, so ``/files/../chat/completions`` is sent as ``/chat/completions``) and
    no encoded slash, dot or backslash."""
    lowered = path.lower()
    if "%2f" in lowered or "%2e" in lowered or "%5c" in lowered or "\\" in path:
        return False
    return not any(part in (".", "..") for part in path.split("/"))


def _shape(path: str) -> str:
    """The path with its ids left out, for the once-per-process log (``/threads/*/runs``)."""
    return "/".join(
        "*" if any(c.isdigit() for c in part) and part != "v1" else part for part in path.split("/")
    )


def request_hook(
    base_request: Callable[..., Any],
    is_async: bool,
    free: FreeWrites,
    check: Callable[[Any, str, Mapping[str, Any]], None],
) -> Callable[..., Any]:
    """A guarded client's ``request``: ``check(client, what, body)`` (which raises to refuse)
    for a write that is neither free nor vetted, then the SDK's own ``base_request``."""

    def screen(self: Any, options: Any) -> None:
        method = str(getattr(options, "method", "post")).lower()
        if method in _PASS or _vetted.get():
            return
        path = _path(getattr(options, "url", ""))
        if path in free and _plain(path):
            return
        body = getattr(options, "json_data", None)
        check(self, f"{method.upper()} {_shape(path)}", body if isinstance(body, Mapping) else {})

    if is_async:

        async def arequest(self: Any, cast_to: Any, options: Any, *args: Any, **kw: Any) -> Any:
            screen(self, options)
            return await base_request(self, cast_to, options, *args, **kw)

        return arequest

    def request(self: Any, cast_to: Any, options: Any, *args: Any, **kw: Any) -> Any:
        screen(self, options)
        return base_request(self, cast_to, options, *args, **kw)

    return request
