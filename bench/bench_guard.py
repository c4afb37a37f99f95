"""The added cost of a guarded call: guardrail's own work, against the call it guards.

Three measurements, in one run, on conversations built from a fixed vocabulary with a
fixed seed (40 to 120 words per message, about 50 to 130 tokens with gpt-4o's tokenizer):

1. **End to end.** The real ``openai`` SDK against :class:`guardrail.testing.FakeOpenAIServer`
   on a loopback port: an unguarded client (``OpenAI(base_url=..., max_retries=0)``) and the
   same client wrapped by ``Guard(policy).wrap(...)`` (memory store, warm caches), called in
   alternation so that drift on the machine hits both alike. Per-call medians; the
   difference is mostly HTTP noise, so it is reported but not the headline.
2. **In process.** guardrail's own work without HTTP: ``engine.prepare(...)`` plus the
   reserve / send / settle flow driven by the sync driver, with a stub ``Send`` that returns
   one ``ChatCompletion`` built once (with ``_request_id`` set, as the SDK sets it). This is
   the *added cost* figure, reported as a share of the unguarded call's median time.
3. **Growing conversation.** A chat that grows by one assistant and one user message per
   turn (strings the token cache has never seen) to 1,000 messages, one guarded in-process
   call per turn. Per-turn cost near 100, 500 and 1,000 messages, next to the floor of
   encoding just the two new messages with tiktoken, shows what the history itself costs.

Run:  TIKTOKEN_CACHE_DIR=/work/shared/tiktoken-cache python bench/bench_guard.py
      (``--quick`` for a smoke run, ``--profile`` to add a cProfile of the in-process call)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import random
import statistics
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

os.environ.setdefault("TIKTOKEN_CACHE_DIR", "/work/shared/tiktoken-cache")

import openai
import tiktoken
from openai.types.chat import ChatCompletion

import guardrail
from guardrail.counting.messages import clear_caches
from guardrail.engine.drivers import SyncDriver
from guardrail.providers.openai.chat import OpenAIAdapter
from guardrail.testing import FakeOpenAIServer

_ADAPTER = OpenAIAdapter()
MODEL = "gpt-4o"
SEED = 20261123
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "budget",
    "limit",
    "token",
    "model",
    "guard",
    "request",
    "reply",
    "window",
    "history",
    "tenant",
    "store",
    "price",
    "retry",
    "stream",
    "usage",
    "policy",
    "daily",
    "cost",
    "server",
    "client",
    "message",
    "system",
    "user",
    "assistant",
    "prompt",
    "count",
    "trim",
    "cache",
    "cheap",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
]
SYSTEM = {"role": "system", "content": "You are a concise, helpful assistant for a budgeting app."}


def make_messages(rng: random.Random, count: int, start_role: str = "user") -> list[dict[str, str]]:
    roles = ("user", "assistant") if start_role == "user" else ("assistant", "user")
    out = []
    for i in range(count):
        n = rng.randint(40, 120)
        text = " ".join(rng.choice(WORDS) for _ in range(n))
        out.append({"role": roles[i % 2], "content": f"({rng.getrandbits(32):08x}) {text}"})
    return out


def conversation(rng: random.Random, size: int) -> list[dict[str, str]]:
    """``size`` messages: the system message, then user/assistant turns ending on a user."""
    body = make_messages(rng, size - 1, start_role="user" if (size - 1) % 2 else "assistant")
    return [SYSTEM, *body]


def canned_completion() -> ChatCompletion:
    completion = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Noted: budget stays intact."},
                }
            ],
            "usage": {
                "prompt_tokens": 1_500,
                "completion_tokens": 7,
                "total_tokens": 1_507,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }
    )
    completion._request_id = "req_bench_0001"  # the SDK sets it from x-request-id
    return completion


def make_guard() -> guardrail.Guard:
    # A cap no benchmark reaches; loop detection off (the same prompt is sent many times).
    return guardrail.Guard(guardrail.Policy(daily_spend_usd=Decimal(1_000_000), loop_limit=None))


def in_process_call(guard: guardrail.Guard, response: ChatCompletion) -> Callable[[dict], Any]:
    """What ``client.chat.completions.create(**kwargs)`` does minus HTTP (see
    ``guardrail.providers.openai.client._GuardedCall.__call__``): prepare, then drive the flow."""
    engine, store, sleep = guard.engine, guard.store, guard.sleep

    def send(_kwargs: dict[str, Any]) -> ChatCompletion:
        return response

    def call(kwargs: dict[str, Any]) -> Any:
        plan = engine.prepare(_ADAPTER, kwargs, None)
        driver = SyncDriver(store, _ADAPTER, send, sleep)
        return driver.run(engine.flow(_ADAPTER, kwargs, plan), plan)

    return call


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    if us >= 10_000:
        return f"{us / 1000:,.1f} ms"
    if us >= 1000:
        return f"{us / 1000:,.2f} ms"
    return f"{us:,.1f} µs"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


# -- 1. end to end ---------------------------------------------------------------------


def end_to_end(
    server: FakeOpenAIServer, messages: list[dict[str, str]], pairs: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Medians (one per round) of the raw and the guarded call, called in alternation."""
    raw = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    guarded = make_guard().wrap(openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0))
    kwargs = {"model": MODEL, "messages": messages}
    for _ in range(max(5, pairs // 10)):  # warm: connections, caches, SDK code paths
        raw.chat.completions.create(**kwargs)
        guarded.chat.completions.create(**kwargs)
    raw_medians, guarded_medians = [], []
    clock = time.perf_counter
    for r in range(rounds):
        server.reset()
        gc.collect()
        a: list[float] = []
        b: list[float] = []
        for i in range(pairs):
            first, second = (raw, guarded) if (i + r) % 2 == 0 else (guarded, raw)
            t0 = clock()
            first.chat.completions.create(**kwargs)
            t1 = clock()
            second.chat.completions.create(**kwargs)
            t2 = clock()
            (a if first is raw else b).append(t1 - t0)
            (b if first is raw else a).append(t2 - t1)
        raw_medians.append(statistics.median(a))
        guarded_medians.append(statistics.median(b))
    server.reset()
    return raw_medians, guarded_medians


# -- 2. in process ---------------------------------------------------------------------


def in_process(messages: list[dict[str, str]], number: int, rounds: int) -> list[float]:
    """Per-call mean of ``number`` calls, once per round."""
    call = in_process_call(make_guard(), canned_completion())
    kwargs = {"model": MODEL, "messages": messages}
    for _ in range(max(50, number // 5)):
        call(kwargs)
    out = []
    clock = time.perf_counter
    for _ in range(rounds):
        gc.collect()
        t0 = clock()
        for _ in range(number):
            call(kwargs)
        out.append((clock() - t0) / number)
    return out


def in_process_after_http(
    server: FakeOpenAIServer, messages: list[dict[str, str]], calls: int
) -> float:
    """Median of the in-process guarded call timed right after an unguarded HTTP call:
    the guard's work with the CPU caches as a real call leaves them (colder than in a
    tight loop)."""
    raw = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    call = in_process_call(make_guard(), canned_completion())
    kwargs = {"model": MODEL, "messages": messages}
    for _ in range(5):
        raw.chat.completions.create(**kwargs)
        call(kwargs)
    times = []
    clock = time.perf_counter
    for _ in range(calls):
        raw.chat.completions.create(**kwargs)
        t0 = clock()
        call(kwargs)
        times.append(clock() - t0)
    server.reset()
    return statistics.median(times)


def profile_in_process(messages: list[dict[str, str]], number: int) -> str:
    call = in_process_call(make_guard(), canned_completion())
    kwargs = {"model": MODEL, "messages": messages}
    for _ in range(200):
        call(kwargs)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(number):
        call(kwargs)
    profiler.disable()
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(25)
    return buf.getvalue()


# -- 3. growing conversation -------------------------------------------------------------


def growing(final_size: int, checkpoints: tuple[int, ...], repeats: int, window: int):
    """Per-turn guarded cost and new-text floor near each checkpoint (medians)."""
    enc = tiktoken.encoding_for_model(MODEL)
    per_checkpoint: dict[int, tuple[list[float], list[float], list[float]]] = {
        c: ([], [], []) for c in checkpoints
    }
    clock = time.perf_counter
    for rep in range(repeats):
        rng = random.Random(SEED + 1000 + rep)
        history: list[dict[str, str]] = [SYSTEM, *make_messages(rng, 1)]
        turns = (final_size - len(history)) // 2
        new_pairs = [make_messages(rng, 2, start_role="assistant") for _ in range(turns)]
        clear_caches()  # every turn's two new messages are text the caches never saw
        call = in_process_call(make_guard(), canned_completion())
        call({"model": MODEL, "messages": history})  # first call: imports, counters
        gc.collect()
        for pair in new_pairs:
            history.extend(pair)
            kwargs = {"model": MODEL, "messages": history}
            t0 = clock()
            call(kwargs)
            t1 = clock()
            # The floor: tiktoken encoding just this turn's new text (not cached by tiktoken).
            for m in pair:
                enc.encode_ordinary(m["role"])
                enc.encode_ordinary(m["content"])
            t2 = clock()
            call(kwargs)  # the same prompt again: all text cached, the pure history cost
            t3 = clock()
            n = len(history)
            for c in checkpoints:
                if c - 2 * window < n <= c:
                    turn_s, new_s, warm_s = per_checkpoint[c]
                    turn_s.append(t1 - t0)
                    new_s.append(t2 - t1)
                    warm_s.append(t3 - t2)
    return {
        c: (statistics.median(t), statistics.median(nw), statistics.median(w))
        for c, (t, nw, w) in per_checkpoint.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process call")
    args = parser.parse_args()
    quick = args.quick

    started = time.perf_counter()
    print(
        f"python {platform.python_version()} · {os.cpu_count()} cores · openai "
        f"{openai.__version__} · tiktoken {tiktoken.__version__} · guardrail "
        f"{getattr(guardrail, '__version__', '?')} · {platform.platform()}"
    )
    rng = random.Random(SEED)
    sizes = (20, 1000)
    convs = {size: conversation(rng, size) for size in sizes}
    counter = guardrail.count_messages
    for size, msgs in convs.items():
        print(f"conversation of {size:>5} messages: {counter(msgs, MODEL):>7,} prompt tokens")

    # 2 first: it needs no server and its figure is the headline.
    ip_number = {20: 400 if quick else 4000, 1000: 100 if quick else 1000}
    ip_rounds = 3 if quick else 9
    inproc = {size: in_process(convs[size], ip_number[size], ip_rounds) for size in sizes}

    e2e_pairs = {20: 60 if quick else 500, 1000: 8 if quick else 40}
    e2e_rounds = 2 if quick else 3
    e2e: dict[int, tuple[list[float], list[float]]] = {}
    after_http: dict[int, float] = {}
    with FakeOpenAIServer() as server:
        for size in sizes:
            e2e[size] = end_to_end(server, convs[size], e2e_pairs[size], e2e_rounds)
            after_http[size] = in_process_after_http(server, convs[size], e2e_pairs[size])

    print()
    print("Guarded call overhead (medians; in-process = prepare + flow, stub Send, no HTTP)")
    rows = []
    for size in sizes:
        raw_m, guarded_m = e2e[size]
        raw, guarded = statistics.median(raw_m), statistics.median(guarded_m)
        ip = statistics.median(inproc[size])
        rows.append(
            [
                f"{size:,}",
                fmt_us(raw),
                fmt_us(guarded),
                f"{guarded / raw:.3f}x",
                f"{(guarded - raw) * 1e6:+,.0f} µs",
                fmt_us(ip),
                f"{ip / raw * 100:.2f}%",
                f"{min(inproc[size]) * 1e6:.1f}–{max(inproc[size]) * 1e6:.1f} µs",
                fmt_us(after_http[size]),
                f"{after_http[size] / raw * 100:.2f}%",
            ]
        )
    print(
        table(
            [
                "messages",
                "unguarded (HTTP)",
                "guarded (HTTP)",
                "guarded/unguarded",
                "difference",
                "in-process guard",
                "guard / unguarded",
                "in-process range",
                "in-process after HTTP",
                "its share",
            ],
            rows,
        )
    )
    for size in sizes:
        raw_m, guarded_m = e2e[size]
        print(
            f"  {size:>5} messages, per-round medians: unguarded "
            + ", ".join(fmt_us(x) for x in raw_m)
            + " | guarded "
            + ", ".join(fmt_us(x) for x in guarded_m)
        )
    raw20 = statistics.median(e2e[20][0])
    share20 = statistics.median(inproc[20]) / raw20 * 100
    cold20 = after_http[20] / raw20 * 100
    e2e20 = (statistics.median(e2e[20][1]) / raw20 - 1) * 100
    print(
        f"goal: guard under 5% of the unguarded call at 20 messages: in-process "
        f"{share20:.2f}% ({'met' if share20 < 5 else 'NOT met'}); in-process right after an "
        f"HTTP call {cold20:.2f}% ({'met' if cold20 < 5 else 'NOT met'}); end to end "
        f"{e2e20:+.1f}% ({'met' if e2e20 < 5 else 'NOT met'})"
    )

    checkpoints = (100, 500, 1000)
    window = 5  # turns per checkpoint: the 5 turns ending at 100, 500, 1000 messages
    grow = growing(1000, checkpoints, repeats=2 if quick else 5, window=window)
    print()
    print(
        "Growing conversation (+1 assistant, +1 user message per turn, both new text; "
        f"medians over {window} turns x repeats)"
    )
    rows = []
    base_warm = grow[checkpoints[0]][2]
    for c in checkpoints:
        turn, new, warm = grow[c]
        rows.append(
            [
                f"{c:,}",
                fmt_us(turn),
                fmt_us(new),
                fmt_us(turn - new),
                fmt_us(warm),
                f"{(warm - base_warm) / (c - checkpoints[0]) * 1e9:,.0f} ns"
                if c != checkpoints[0]
                else "-",
            ]
        )
    print(
        table(
            [
                "messages",
                "guarded turn",
                "encode new 2 (tiktoken)",
                "turn - new",
                "same prompt again",
                "per extra message",
            ],
            rows,
        )
    )

    if args.profile:
        print()
        print("cProfile, in-process guarded call, 20 messages (tottime):")
        print(profile_in_process(convs[20], 3000 if not quick else 500))
    print(f"total time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
