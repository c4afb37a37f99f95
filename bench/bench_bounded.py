"""Benchmark: bounded work before any limit applies (hostile prompts).

Each case is a guarded ``chat.completions.create`` through the real OpenAI SDK against the
loopback fake server, timed from the call to its refusal (nothing is sent), or a count:

* a 10 MB prompt of ``"x"`` on gpt-4o (refused: it cannot fit the window);
* a 10 MB prompt of English-like text on gpt-4o, and on gpt-4.1 (a 1M-token window);
* counting a 15 MB JPEG data URL that is ``FF D8`` and then ``FF`` bytes (the worst case);
* a request whose model name is 100 KB long.

    python bench/bench_bounded.py [--runs 5]

Figures are the median and the worst of ``--runs`` runs, each with cold caches.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import openai

import guardrail
from guardrail.testing import FakeOpenAIServer


def timed(runs: int, call: Callable[[], Any]) -> tuple[float, float, str]:
    times: list[float] = []
    outcome = ""
    for _ in range(runs):
        guardrail.counting.clear_caches()
        started = time.perf_counter()
        try:
            call()
            outcome = "ok"
        except guardrail.GuardrailError as exc:
            outcome = type(exc).__name__
        times.append(time.perf_counter() - started)
    return statistics.median(times), max(times), outcome


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    x = "x" * 10_000_000
    words = ("the quick brown fox jumps over the lazy dog and keeps running " * 160_000)[
        :10_000_000
    ]
    jpeg = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8" + b"\xff" * 15_000_000).decode()
    with FakeOpenAIServer() as server:
        guard = guardrail.Guard(guardrail.Policy(loop_limit=None))
        client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
        create = client.chat.completions.create

        def ask(content: Any, model: str = "gpt-4o") -> Callable[[], Any]:
            return lambda: create(
                model=model, messages=[{"role": "user", "content": content}], max_tokens=10
            )

        image = [{"type": "image_url", "image_url": {"url": jpeg, "detail": "high"}}]
        cases = [
            ("10 MB of 'x', gpt-4o", ask(x)),
            ("10 MB of text, gpt-4o", ask(words)),
            ("10 MB of text, gpt-4.1 (1M window)", ask(words, "gpt-4.1")),
            (
                "15 MB crafted JPEG: count_messages",
                lambda: guardrail.count_messages([{"role": "user", "content": image}], "gpt-4o"),
            ),
            ("model name of 100 KB", ask("hi", "m" * 100_000)),
        ]
        ask("warm up: load the encodings and the SDK")()
        print("| case | median | worst | outcome |")
        print("|---|---:|---:|---|")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, call in cases:
                median, worst, outcome = timed(args.runs, call)
                print(f"| {name} | {median * 1e3:,.1f} ms | {worst * 1e3:,.1f} ms | {outcome} |")


if __name__ == "__main__":
    main()
