"""The guard's per-call work, counted rather than timed: Python bytecodes executed per call.

On a shared or virtual machine the timings of ``bench_async.py`` move by 10-30% from run to
run, more than the differences worth measuring in the guard's own work (a few per cent of
a call). Bytecodes executed are the same on every run, so a change to the guard's hot path
shows up exactly. This runs the real ``AsyncOpenAI`` over an in-process ``MockTransport``
(no socket: only the SDK's and the guard's work), the bare SDK and the same client guarded
on the memory store, and prints bytecodes per call and their ratio.

What it does not see: work in C (JSON decoding, pydantic-core, ``Decimal``, dict
operations) counts as one bytecode per call into it, and the CPU caches are not modelled
(interleaved with the SDK's work, the guard's code runs colder than in a tight loop). It
says how much the guard does, not how long it takes: ``bench_async.py`` measures that.

Run:  TIKTOKEN_CACHE_DIR=/work/shared/tiktoken-cache python bench/bench_work.py
      [--calls 30] [--endpoint chat responses embeddings]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

os.environ.setdefault("TIKTOKEN_CACHE_DIR", "/work/shared/tiktoken-cache")

import openai

import guardrail

PROMPT = "Summarise the quarterly report in one sentence, please."
MESSAGES = [
    {"role": "system", "content": "You are a terse analyst."},
    {"role": "user", "content": PROMPT},
]
REPLY = "The report says revenue grew."
# Usage as guardrail counts these prompts (a different figure would be an overrun, which
# logs a warning on every call and adds that work to the guarded figure).
BODIES: dict[str, dict[str, Any]] = {
    "chat": {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 29, "completion_tokens": 7, "total_tokens": 36},
    },
    "responses": {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "gpt-4o-mini",
        "status": "completed",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": REPLY, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 17,
            "output_tokens": 7,
            "total_tokens": 24,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    },
    "embeddings": {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1] * 8}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 11, "total_tokens": 11},
    },
}


def http_library() -> Any:
    """The HTTP library the installed openai SDK sends with (httpx2 from openai 3)."""
    base = importlib.import_module("openai._base_client")
    return getattr(base, "httpx2", None) or base.httpx


def call_for(endpoint: str, client: Any) -> Callable[[], Awaitable[Any]]:
    if endpoint == "responses":
        return lambda: client.responses.create(model="gpt-4o-mini", input=PROMPT)
    if endpoint == "embeddings":
        return lambda: client.embeddings.create(model="text-embedding-3-small", input=PROMPT)
    return lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


class Counter:
    """A tracer that counts every bytecode executed, in total and in guardrail's modules."""

    def __init__(self) -> None:
        self.total = 0
        self.guardrail = 0
        self._root = os.path.dirname(guardrail.__file__)

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            self.total += 1
            if frame.f_code.co_filename.startswith(self._root):
                self.guardrail += 1
        return self


async def per_call(call: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, float]:
    """(bytecodes per call, of them in guardrail's modules), after a warm-up."""
    for _ in range(20):  # caches, connections, the tokenizer
        await call()
    counter = Counter()
    sys.settrace(counter)
    try:
        for _ in range(calls):
            await call()
    finally:
        sys.settrace(None)
    return counter.total / calls, counter.guardrail / calls


def mock_clients(
    endpoint: str, headers: dict[str, str] | None = None
) -> tuple[Any, openai.AsyncOpenAI, guardrail.Guard, Any]:
    """(the HTTP client, the bare SDK on it, the guard, the guarded SDK): the real
    ``AsyncOpenAI`` over an in-process transport that answers every request with
    ``BODIES[endpoint]``, guarded on the memory store under a cap no call reaches."""
    httpx = http_library()
    body = json.dumps(BODIES[endpoint]).encode()
    answer = {"content-type": "application/json", **(headers or {})}

    def handler(request: Any) -> Any:
        return httpx.Response(200, content=body, headers=answer)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    bare = openai.AsyncOpenAI(
        api_key="x", base_url="http://fake/v1", http_client=http, max_retries=0
    )
    guard = guardrail.Guard(guardrail.Policy(daily_spend_usd=1_000_000, loop_limit=None))
    return http, bare, guard, guard.wrap(bare)


async def measure(endpoint: str, calls: int) -> list[str]:
    http, bare, _, guarded = mock_clients(endpoint)
    base, _ = await per_call(call_for(endpoint, bare), calls)
    total, own = await per_call(call_for(endpoint, guarded), calls)
    await http.aclose()
    return [
        endpoint,
        f"{base:,.0f}",
        f"{total:,.0f}",
        f"+{total - base:,.0f}",
        f"{own:,.0f}",
        f"{total / base:.3f}x",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument(
        "--endpoint",
        nargs="+",
        choices=("chat", "responses", "embeddings"),
        default=["chat", "responses", "embeddings"],
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print(
        f"openai {openai.__version__} · guardrail {guardrail.__version__} · "
        f"{args.calls} calls per figure, bytecodes executed per call (deterministic)"
    )
    headers = ["endpoint", "bare SDK", "guarded", "added", "in guardrail", "guarded vs bare"]
    rows = [asyncio.run(measure(endpoint, args.calls)) for endpoint in args.endpoint]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
