"""Closing a guarded stream from another task (or thread) while the caller waits for its
next chunk (a chat UI's Stop button): the running generator cannot be closed, so the
stream under it is, as the SDK's own ``close()`` does; the waiting read then ends and the
call is settled (found by a review: ``close()`` raised "asynchronous generator is already
running" and left the provider generating). A sync read blocked on the socket ends, as on
the bare SDK, once the provider sends again."""

from __future__ import annotations

import asyncio
import threading
import time

import openai

import guardrail
from guardrail import Guard, Policy
from tests._sdk_http import http_library

# What a read on a stream closed under it raises: openai 3 wraps it, older releases do not.
READ_ENDED = (openai.APIConnectionError, http_library(openai).TransportError)

HELLO = [{"role": "user", "content": "Hello there"}]


async def test_async_stop_button_closes_and_settles_the_stream(server) -> None:
    hold = server.enqueue_hold(after_chunks=2)  # two chunks, then the provider "thinks"
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(loop_limit=None), sinks=[records.append])
    client = guard.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    two_seen = asyncio.Event()

    async def consume() -> int:
        got = 0
        try:
            async for _ in stream:
                got += 1
                if got == 2:
                    two_seen.set()  # the next read waits on the held provider
        except READ_ENDED:
            pass  # the stop ended the read
        return got

    consumer = asyncio.create_task(consume())
    try:
        await two_seen.wait()  # the consumer is now suspended inside the stream's read
        await stream.close()  # the user pressed Stop (raised RuntimeError before)
        await asyncio.wait_for(consumer, 10)
        assert records and records[-1].outcome in ("stream_closed", "stream_error")
        assert guard.usage("default").reserved_usd == 0
    finally:
        hold.release()
        if not consumer.done():
            await asyncio.wait_for(consumer, 10)


def test_sync_stop_from_another_thread_closes_and_settles_the_stream(server) -> None:
    hold = server.enqueue_hold(after_chunks=2)
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(loop_limit=None), sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    stream = client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    two_seen, done = threading.Event(), threading.Event()
    seen: list[int] = []

    def consume() -> None:
        try:
            for _ in stream:
                seen.append(1)
                if len(seen) == 2:
                    two_seen.set()
        except READ_ENDED:
            pass  # the closed stream's read failed, as on the bare SDK
        finally:
            done.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        assert two_seen.wait(10)
        hold.wait_held()  # the provider holds
        # Wait (on a condition, not a race) until the consumer is blocked in the read.
        deadline = time.monotonic() + 10
        while not stream._chunks.gi_running and time.monotonic() < deadline:
            threading.Event().wait(0.001)
        assert stream._chunks.gi_running
        stream.close()  # raised "generator already executing" before
    finally:
        hold.release()  # the provider goes on: the read on the closed stream ends
    assert done.wait(10), "the consumer was not stopped"
    thread.join(10)
    assert len(seen) == 2  # nothing was read past the close
    assert records and records[-1].outcome in ("stream_closed", "stream_error")
    assert guard.usage("default").reserved_usd == 0
