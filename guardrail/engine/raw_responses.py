"""Raw SDK responses (``with_raw_response`` / ``with_streaming_response``) around guarded
calls: their parse awaited once for the sans-I/O engine, and a raw stream handed over."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["PARSED", "hand_over", "parse_async_raw", "parsed_raw", "parses_async"]


def hand_over(guarded: Any) -> Any:
    """Give the caller what it asked for: the guarded stream, or the raw response whose
    ``parse()`` now returns the guarded stream (``with_raw_response.create(stream=True)``).

    A raw response may be read as bytes instead (``iter_lines()``, ``read()``: what a
    proxy relaying the SSE does), which the guard cannot see: until ``parse()`` is called
    the tally is marked unread, so closing the raw response (the end of a
    ``with_streaming_response`` block) or dropping it settles the call at its whole
    reserved output."""
    raw = guarded._raw
    if raw is None:
        return guarded
    guarded._raw = None  # no cycle: dropping the raw response drops (and settles) the stream
    tally = guarded.tally
    tally.unread = True
    close: Any = getattr(raw, "close", None)  # with_raw_response's has none: dropping settles
    if inspect.iscoroutinefunction(type(raw).parse):

        async def parse_async(*args: Any, **kwargs: Any) -> Any:
            tally.unread = False
            return guarded

        async def aclose() -> None:
            try:
                await guarded.close()
            finally:
                await close()

        raw.parse = parse_async  # instance attributes shadow the methods
        if close is not None:
            raw.close = aclose
    else:

        def parse(*args: Any, **kwargs: Any) -> Any:
            tally.unread = False
            return guarded

        def sync_close() -> None:
            try:
                guarded.close()
            finally:
                close()

        raw.parse = parse
        if close is not None:
            raw.close = sync_close
    return raw


PARSED = "_guardrail_parsed"
"""Where an async raw response keeps what its (awaited) ``parse()`` returned."""


_async_parse: dict[type, bool] = {}  # response class -> whether its parse() is async


def parses_async(response: Any) -> bool:
    """Whether ``response`` is an async raw response (its ``parse()`` is awaited)."""
    kind = type(response)
    is_async = _async_parse.get(kind)
    if is_async is None:  # once per class: inspect's check costs more than the call
        parse = getattr(kind, "parse", None)
        is_async = parse is not None and inspect.iscoroutinefunction(parse)
        if len(_async_parse) < 256:  # the SDK's response classes are few
            _async_parse[kind] = is_async
    return is_async


async def parse_async_raw(response: Any) -> Any:
    """Await an async raw response's ``parse()`` once (the SDK caches it), so the sans-I/O
    engine can read its usage, and the stream can be wrapped, without awaiting."""
    if parses_async(response):
        setattr(response, PARSED, await response.parse())
    return response


def parsed_raw(response: Any) -> Any:
    """What a raw response parses to: the value awaited earlier, or a sync ``parse()``."""
    if PARSED in vars(response):
        return vars(response)[PARSED]
    return response.parse()
