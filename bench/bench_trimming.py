"""Trimming a growing conversation to a token budget, every turn, four ways.

A 200-turn chat (a system message, then per turn one user and one assistant message of
50 to 300 tokens each, fixed seed). Every turn, before the assistant answers, the whole
history plus the new user message is trimmed to fit 8,000 prompt tokens, as a chat
application that keeps the full history does. Contenders, run turn by turn in rotation in
the same process so that machine noise hits them alike:

* **guardrail**: ``guardrail.trim_messages(history, "gpt-4o", 8000)``; its token caches
  are emptied at the start of each run, so every message is encoded once, when it is new;
* **LangChain**: ``langchain_core.messages.trim_messages(..., max_tokens=8000,
  strategy="last", include_system=True, token_counter=<exact tiktoken counter>)``; the
  counter applies OpenAI's cookbook rules (3 tokens per message + role + content, 3 for
  the reply priming) with ``o200k_base`` and no cache, like LangChain's documented
  tiktoken counter; each OpenAI dict is converted once with ``convert_to_messages``;
* **LiteLLM**: ``litellm.utils.trim_messages(history, model="gpt-4o", max_tokens=8000)``;
* **naive**: encode every message with tiktoken every turn, drop the oldest non-system
  message until the prompt fits.

Every result is checked: at most 8,000 prompt tokens by guardrail's count, system
message and latest user message kept. Run:

    TIKTOKEN_CACHE_DIR=/work/shared/tiktoken-cache python bench/bench_trimming.py

LiteLLM and LangChain are optional (``bench/requirements.txt``); a missing one is reported
and skipped. The chat is run three times and medians are reported, except for LiteLLM,
which would take a minute or more per run: it is timed in the first run only, on every
other turn (100 of the 200, the odd ones), and its total is the mean per turn times 200.
``--quick`` runs 40 turns once.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("TIKTOKEN_CACHE_DIR", "/work/shared/tiktoken-cache")
# LiteLLM points tiktoken at its own bundled files unless given a cache directory, and
# downloads its price map at import unless told not to.
os.environ.setdefault("CUSTOM_TIKTOKEN_CACHE_DIR", os.environ["TIKTOKEN_CACHE_DIR"])
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import tiktoken

import guardrail
from guardrail.counting.messages import clear_caches

MODEL = "gpt-4o"
ENCODING = "o200k_base"
BUDGET = 8_000
SEED = 20261123
TURNS = 200
_VOCABULARY = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part "
    "budget token limit request model tenant reserve settle window prompt message retry "
    "context invoice customer shipment refund order account password server latency error "
    "database migration schema index query cache eviction thread lock queue deploy rollback "
    "itinerary reconciliation spreadsheet quarterly forecast compliance onboarding warranty "
    "Paris Berlin Tokyo Lagos Lima 2024 2025 42 3.14 100 % $ ( ) , . ; : ? !"
)
WORDS = [*_VOCABULARY.split(), "\n"]


# -- the conversation ----------------------------------------------------------------------


def make_text(rng: random.Random, enc: tiktoken.Encoding, tokens: int) -> str:
    """About ``tokens`` tokens of prose-like text (cut on a token boundary)."""
    words: list[str] = []
    while len(words) < tokens * 1.3:
        sentence = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
        sentence[0] = sentence[0].capitalize()
        words.extend([*sentence, "."])
    ids = enc.encode_ordinary(" ".join(words))
    return enc.decode(ids[:tokens]).strip()


def make_conversation(seed: int, turns: int) -> tuple[dict[str, str], list[tuple[dict, dict]]]:
    enc = tiktoken.get_encoding(ENCODING)
    rng = random.Random(seed)
    system = {
        "role": "system",
        "content": "You are the support assistant of a travel company. " + make_text(rng, enc, 60),
    }
    pairs = []
    for _ in range(turns):
        user = {"role": "user", "content": make_text(rng, enc, rng.randint(50, 300))}
        reply = {"role": "assistant", "content": make_text(rng, enc, rng.randint(50, 300))}
        pairs.append((user, reply))
    return system, pairs


# -- the contenders ------------------------------------------------------------------------

Trim = Callable[[list[dict[str, Any]]], list[Any]]


@dataclass
class Contender:
    name: str
    trim: Trim
    to_dicts: Callable[[list[Any]], list[dict[str, Any]]] = lambda out: out
    setup: Callable[[], None] = lambda: None
    add: Callable[[dict[str, Any]], None] = lambda message: None
    times: list[tuple[int, float]] = field(default_factory=list)  # (turn, seconds)
    trims: bool = True  # False: a reference figure, not a trimmer (its output is not checked)
    first_run_only: bool = False  # too slow to repeat within the time limit
    every: int = 1  # timed on every ``every``-th turn only (too slow for all of them)


def guardrail_contender() -> Contender:
    def trim(history: list[dict[str, Any]]) -> list[Any]:
        return guardrail.trim_messages(history, MODEL, BUDGET)

    return Contender("guardrail", trim, setup=clear_caches)


def naive_contender(enc: tiktoken.Encoding) -> Contender:
    encode = enc.encode_ordinary

    def trim(history: list[dict[str, Any]]) -> list[Any]:
        # Recount everything, every turn: the cookbook's rules with plain tiktoken.
        sizes = [3 + len(encode(m["role"])) + len(encode(m["content"])) for m in history]
        total = sum(sizes) + 3
        keep = list(range(len(history)))
        last = len(history) - 1
        i = 0
        while total > BUDGET and i < len(keep):
            j = keep[i]
            if history[j]["role"] == "system" or j == last:
                i += 1
                continue
            total -= sizes[j]
            del keep[i]
        return [history[j] for j in keep]

    return Contender("naive recount-and-drop", trim)


def floor_contender(enc: tiktoken.Encoding) -> Contender:
    """Not a trimmer: tiktoken on just the text that is new this turn (the user message
    and the previous reply). Any trimmer that counts exactly must encode that much."""
    encode = enc.encode_ordinary

    def trim(history: list[dict[str, Any]]) -> list[Any]:
        for m in history[-2:]:
            encode(m["role"])
            encode(m["content"])
        return history

    return Contender("floor: encode new text only", trim, trims=False)


def langchain_contender(enc: tiktoken.Encoding) -> Contender | str:
    try:
        from langchain_core.messages import BaseMessage, convert_to_messages, trim_messages
    except ImportError as exc:
        return f"not installed ({exc})"
    encode = enc.encode_ordinary
    roles = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}

    def count(messages: Sequence[BaseMessage]) -> int:
        # OpenAI's cookbook with tiktoken, no cache: what LangChain's docs suggest.
        total = 3
        for m in messages:
            content = m.content if isinstance(m.content, str) else str(m.content)
            total += 3 + len(encode(roles.get(m.type, m.type))) + len(encode(content))
        return total

    converted: list[BaseMessage] = []
    originals: dict[int, dict[str, Any]] = {}

    def setup() -> None:
        converted.clear()
        originals.clear()

    def add(message: dict[str, Any]) -> None:
        (lc,) = convert_to_messages([message])  # each dict converted once
        converted.append(lc)
        originals[id(lc)] = message

    def trim(history: list[dict[str, Any]]) -> list[Any]:
        assert len(converted) == len(history)
        return trim_messages(
            converted,
            max_tokens=BUDGET,
            token_counter=count,
            strategy="last",
            include_system=True,
        )

    def to_dicts(out: list[Any]) -> list[dict[str, Any]]:
        return [originals[id(m)] for m in out]

    return Contender("LangChain trim_messages", trim, to_dicts, setup, add)


def litellm_contender() -> Contender | str:
    try:
        from litellm.utils import trim_messages
    except ImportError as exc:
        return f"not installed ({exc})"
    except Exception as exc:  # an install that cannot import at all
        return f"failed to import ({type(exc).__name__}: {exc})"

    def trim(history: list[dict[str, Any]]) -> list[Any]:
        out: list[Any] = trim_messages(history, model=MODEL, max_tokens=BUDGET)
        return out

    return Contender("LiteLLM trim_messages", trim, first_run_only=True, every=2)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Check:
    max_tokens: int = 0
    over_budget: int = 0
    lost_system: int = 0
    lost_question: int = 0
    shortened: int = 0
    kept: list[int] = field(default_factory=list)


def run(
    contenders: list[Contender],
    system: dict[str, str],
    pairs: list[tuple[dict, dict]],
    checks: dict[str, Check],
) -> None:
    for c in contenders:
        c.setup()
        c.times = []
        c.add(system)
    history: list[dict[str, Any]] = [system]
    originals = {id(system)}
    clock = time.perf_counter
    gc.collect()
    for turn, (user, reply) in enumerate(pairs):
        history.append(user)
        originals.add(id(user))
        for c in contenders:
            c.add(user)
        outputs = {}
        order = contenders[turn % len(contenders) :] + contenders[: turn % len(contenders)]
        for c in order:
            if turn % c.every != c.every - 1:
                continue
            t0 = clock()
            out = c.trim(history)
            c.times.append((turn, clock() - t0))
            outputs[c.name] = out
        for c in contenders:  # checks, untimed
            if not c.trims or c.name not in outputs:
                continue
            out = c.to_dicts(outputs[c.name])
            check = checks[c.name]
            tokens = guardrail.count_messages(out, MODEL)
            check.max_tokens = max(check.max_tokens, tokens)
            check.over_budget += tokens > BUDGET
            check.lost_system += not any(m.get("role") == "system" for m in out)
            check.lost_question += not (out and out[-1].get("content") == user["content"])
            check.shortened += any(id(m) not in originals for m in out)
            check.kept.append(len(out))
        history.append(reply)
        originals.add(id(reply))
        for c in contenders:
            c.add(reply)


def fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:,.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:,.2f} ms"
    return f"{seconds * 1e6:,.1f} µs"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 turns, one run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the whole chat")
    args = parser.parse_args()
    turns = 40 if args.quick else TURNS
    repeats = 1 if args.quick else args.repeats
    started = time.perf_counter()

    enc = tiktoken.get_encoding(ENCODING)
    contenders = [guardrail_contender(), naive_contender(enc), floor_contender(enc)]
    missing: dict[str, str] = {}
    for name, make in (
        ("LangChain", lambda: langchain_contender(enc)),
        ("LiteLLM", litellm_contender),
    ):
        made = make()
        if isinstance(made, str):
            missing[name] = made
        else:
            contenders.append(made)

    versions = [f"python {platform.python_version()}", f"{os.cpu_count()} cores"]
    versions.append(f"tiktoken {tiktoken.__version__}")
    for dist in ("guardrail-limits", "langchain-core", "litellm"):
        try:
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
        except Exception:
            pass
    print(" · ".join(versions))
    for name, why in missing.items():
        print(f"{name}: {why}; skipped")

    system, pairs = make_conversation(SEED, turns)
    sizes = [guardrail.count_messages([m], MODEL) - 6 for p in pairs for m in p]
    history_tokens = guardrail.count_messages([system, *[m for p in pairs for m in p]], MODEL)
    print(
        f"{turns} turns, {2 * turns} messages of {min(sizes)}-{max(sizes)} tokens "
        f"(mean {statistics.mean(sizes):.0f}); the whole history is {history_tokens:,} "
        f"tokens; budget {BUDGET:,}"
    )

    checks = {c.name: Check() for c in contenders}
    totals: dict[str, list[float]] = {c.name: [] for c in contenders}
    late: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(repeats):
        running = [c for c in contenders if r == 0 or not c.first_run_only]
        run(running, system, pairs, checks)
        for c in running:
            # Mean per timed turn x turns: the plain sum when every turn was timed.
            totals[c.name].append(statistics.mean(t for _, t in c.times) * turns)
            late[c.name].append(statistics.mean(t for n, t in c.times if n >= turns - 20))

    base = statistics.median(totals["guardrail"])
    naive = statistics.median(totals["naive recount-and-drop"])
    base_late = statistics.median(late["guardrail"])
    naive_late = statistics.median(late["naive recount-and-drop"])
    rows = []
    for c in contenders:
        total = statistics.median(totals[c.name])
        last = statistics.median(late[c.name])
        check = checks[c.name]
        rows.append(
            [
                c.name,
                fmt(total),
                fmt(total / turns),
                fmt(last),
                f"{total / base:,.2f}x",
                f"{total / naive:,.3f}x",
                f"{last / naive_late:,.3f}x",
                f"{check.max_tokens:,}" if c.trims else "-",
                f"{statistics.mean(check.kept):.1f}" if c.trims else "-",
                ("yes" if not (check.lost_system or check.lost_question) else "NO")
                if c.trims
                else "-",
                str(check.shortened) if c.trims else "-",
            ]
        )
    print()
    print(
        f"medians of {repeats} run(s) (LiteLLM: first run, every other turn, total = mean x "
        f"{turns}); "
        f"'last 20' = mean per turn over the last 20 turns (history of {2 * turns - 39}-"
        f"{2 * turns} messages)"
    )
    print(
        table(
            [
                "contender",
                "total",
                "per turn",
                "per turn, last 20",
                "÷ guardrail",
                "÷ naive",
                "÷ naive, last 20",
                "max prompt",
                "mean kept",
                "system+question kept",
                "turns with cut text",
            ],
            rows,
        )
    )
    speedup = naive / base
    floor = statistics.median(totals["floor: encode new text only"])
    floor_late = statistics.median(late["floor: encode new text only"])
    print(
        f"goal: guardrail at least 100x faster than the naive loop: {speedup:,.1f}x in total, "
        f"{naive_late / base_late:,.1f}x per turn over the last 20 turns -> "
        f"{'met' if speedup >= 100 else 'NOT met'}"
    )
    print(
        f"ceiling for any exact trimmer (naive ÷ floor): {naive / floor:,.0f}x in total, "
        f"{naive_late / floor_late:,.0f}x over the last 20 turns; guardrail beyond the floor: "
        f"{fmt((base - floor) / turns)} per turn, {fmt(base_late - floor_late)} over the last 20"
    )
    bad = [n for n, ch in checks.items() if ch.over_budget]
    print(
        "all prompts within the budget (guardrail's count)"
        if not bad
        else "OVER BUDGET: " + ", ".join(f"{n} ({checks[n].over_budget} turns)" for n in bad)
    )
    print(f"total time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
