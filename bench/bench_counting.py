"""Benchmark: prompt-token counting, cold and as a growing conversation.

For conversations of 10, 100, 1,000 and 5,000 messages (50 to 300 tokens each, text drawn
from a fixed vocabulary with a fixed seed) it measures:

* **cold**: counting the whole conversation with empty caches;
* **steady state**: a conversation that grows by one user and one assistant message per
  turn and is re-counted whole every turn (what a chat application does), per turn;
* **new only**: tiktoken encoding just the two new messages of a turn, the floor for any
  counter that must look at new text;

for guardrail (``count_messages``), ``litellm.token_counter`` and LangChain's exact count
(``ChatOpenAI.get_num_tokens_from_messages``; ``count_tokens_approximately`` is not exact,
so it is not used). LiteLLM and LangChain are optional (``bench/requirements.txt``); they
pin ``openai<3`` while guardrail needs ``openai>=3.50``, so they usually live in a separate
virtualenv: pass its interpreter with ``--third-party-python`` and they run there, on the
same generated conversations, in a child process. Without them the script says
"not installed" and still measures guardrail.

Run (see bench/RESULTS.md for the figures)::

    TIKTOKEN_CACHE_DIR=... python bench/bench_counting.py [--third-party-python PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

SEED = 20240917
NEW_PER_TURN = 2
# Third-party counters re-encode the whole history each turn, so a turn costs them as much
# as a cold count: a few turns measure that as well as 200 do.
THIRD_PARTY_BUDGET_S = 8.0

_VOCABULARY = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part "
    "budget token limit request model tenant reserve settle window prompt message retry "
    "context invoice customer shipment refund order account password server latency error "
    "database migration schema index query cache eviction thread lock queue deploy rollback "
    "Paris Berlin Tokyo Lagos Lima 2024 2025 42 3.14 100 % $ ( ) , . ; : ? !"
)
_WORDS = [*_VOCABULARY.split(), "\n"]


def make_text(rng: random.Random, tokens: int) -> str:
    """Roughly ``tokens`` tokens of English-like text (the vocabulary is ~1 token a word)."""
    return " ".join(rng.choice(_WORDS) for _ in range(tokens))


def make_conversation(n: int, rng: random.Random) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": make_text(rng, rng.randint(50, 300))}]
    for i in range(n - 1):
        role = "user" if i % 2 == 0 else "assistant"
        msgs.append({"role": role, "content": make_text(rng, rng.randint(50, 300))})
    return msgs


def workload(n: int, turns: int) -> tuple[list[dict[str, str]], list[list[dict[str, str]]]]:
    """The conversation of ``n`` messages and the messages each turn appends."""
    rng = random.Random(SEED + n)
    base = make_conversation(n, rng)
    new = [
        [
            {"role": "user", "content": make_text(rng, rng.randint(50, 300))},
            {"role": "assistant", "content": make_text(rng, rng.randint(50, 300))},
        ]
        for _ in range(turns)
    ]
    return base, new


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_cold(fn: Callable[[], object], setup: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        setup()
        gc.collect()
        times.append(timed(fn)[0])
    return min(times)


def steady(
    count: Callable[[list[Any]], object],
    base: list[Any],
    new: list[list[Any]],
    budget_s: float | None = None,
) -> tuple[float, int]:
    """Mean seconds per turn of re-counting a growing history, and the turns measured."""
    history = list(base)
    count(history)  # the conversation has been counted before: start warm
    gc.collect()
    spent, turns = 0.0, 0
    for appended in new:
        history.extend(appended)
        start = time.perf_counter()
        count(history)
        spent += time.perf_counter() - start
        turns += 1
        if budget_s is not None and spent > budget_s:
            break
    return spent / turns, turns


# --------------------------------------------------------------------------- third parties


def third_party(sizes: list[int], turns: int, model: str) -> dict[str, Any]:
    """Cold and steady-state timings of LiteLLM and LangChain, where they are installed."""
    out: dict[str, Any] = {"python": sys.executable, "litellm": None, "langchain": None}
    try:
        import litellm

        out["litellm"] = {"version": getattr(litellm, "__version__", None) or _version("litellm")}
    except ImportError as exc:
        out["litellm_error"] = f"not installed ({exc.name})"
    try:
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
        from langchain_openai import ChatOpenAI

        chat = ChatOpenAI(model=model, api_key="sk-benchmark-no-network")  # type: ignore[arg-type]
        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        out["langchain"] = {"version": _version("langchain-openai")}
    except ImportError as exc:
        out["langchain_error"] = f"not installed ({exc.name})"
    for n in sizes:
        base, new = workload(n, turns)
        if out["litellm"] is not None:

            def lt(msgs: list[Any]) -> object:
                return litellm.token_counter(model=model, messages=msgs)

            cold = best_cold(lambda b=base: lt(b), lambda: None, 3 if n <= 1000 else 1)
            per_turn, measured = steady(lt, base, new, THIRD_PARTY_BUDGET_S)
            out["litellm"][str(n)] = {
                "cold": cold,
                "turn": per_turn,
                "turns": measured,
                "count": lt(base),
            }
        if out["langchain"] is not None:

            def convert(msgs: list[dict[str, str]]) -> list[Any]:
                return [kinds[m["role"]](content=m["content"]) for m in msgs]

            lc_base, lc_new = convert(base), [convert(pair) for pair in new]

            def lc(msgs: list[Any]) -> object:
                return chat.get_num_tokens_from_messages(msgs)

            cold = best_cold(lambda b=lc_base: lc(b), lambda: None, 3 if n <= 1000 else 1)
            per_turn, measured = steady(lc, lc_base, lc_new, THIRD_PARTY_BUDGET_S)
            out["langchain"][str(n)] = {
                "cold": cold,
                "turn": per_turn,
                "turns": measured,
                "count": lc(lc_base),
            }
    return out


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def third_party_in_child(python: str, sizes: list[int], turns: int, model: str) -> dict[str, Any]:
    cmd = [python, __file__, "--worker", "--sizes", ",".join(map(str, sizes))]
    cmd += ["--turns", str(turns), "--model", model]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": f"{python} failed: {proc.stderr.strip()[-500:]}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- guardrail


def guardrail_figures(sizes: list[int], turns: int, model: str) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import tiktoken

    from guardrail.catalog.models import model_info
    from guardrail.counting.messages import clear_caches, count_messages

    encode = tiktoken.get_encoding(model_info(model).encoding).encode_ordinary
    out: dict[str, Any] = {}
    for n in sizes:
        base, new = workload(n, turns)
        tokens = [len(encode(m["content"])) for m in base]

        def encode_all(msgs: list[dict[str, str]] = base) -> int:
            return sum(len(encode(m["content"])) for m in msgs)

        cold = best_cold(
            lambda b=base: count_messages(b, model), clear_caches, 5 if n <= 1000 else 3
        )
        tiktoken_cold = best_cold(encode_all, lambda: None, 5 if n <= 1000 else 3)
        clear_caches()
        per_turn, _ = steady(lambda msgs: count_messages(msgs, model), base, new)
        # The floor: encode only what is new in each turn.
        gc.collect()
        floor = 0.0
        for appended in new:
            start = time.perf_counter()
            for m in appended:
                len(encode(m["content"]))
            floor += time.perf_counter() - start
        out[str(n)] = {
            "cold": cold,
            "tiktoken_cold": tiktoken_cold,
            "turn": per_turn,
            "new_only": floor / len(new),
            "count": count_messages(base, model),
            "mean_tokens": statistics.mean(tokens),
            "min_tokens": min(tokens),
            "max_tokens": max(tokens),
        }
    return out


# --------------------------------------------------------------------------- report


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:,.1f}x"


def report(
    sizes: list[int], turns: int, model: str, ours: dict[str, Any], theirs: dict[str, Any]
) -> None:
    lt, lc = theirs.get("litellm"), theirs.get("langchain")
    print(f"model {model}; {NEW_PER_TURN} new messages per turn; {turns} turns; seed {SEED}")
    print(f"python {sys.version.split()[0]}; third parties: {theirs.get('python', '-')}")
    print(
        "litellm:",
        f"{lt['version']}" if lt else theirs.get("litellm_error", theirs.get("error", "-")),
        "| langchain-openai:",
        f"{lc['version']}" if lc else theirs.get("langchain_error", theirs.get("error", "-")),
    )
    print()
    head = (
        "messages",
        "tokens/msg",
        "guardrail cold",
        "tiktoken cold",
        "guardrail /turn",
        "new only /turn",
        "turn / new",
    )
    print(" | ".join(head))
    for n in sizes:
        o = ours[str(n)]
        print(
            " | ".join(
                (
                    f"{n:,}",
                    f"{o['mean_tokens']:.0f} ({o['min_tokens']}-{o['max_tokens']})",
                    fmt(o["cold"]),
                    fmt(o["tiktoken_cold"]),
                    fmt(o["turn"]),
                    fmt(o["new_only"]),
                    ratio(o["turn"], o["new_only"]),
                )
            )
        )
    print()
    head = (
        "messages",
        "litellm cold",
        "litellm /turn",
        "langchain cold",
        "langchain /turn",
        "litellm÷guardrail /turn",
        "langchain÷guardrail /turn",
        "litellm÷guardrail cold",
        "langchain÷guardrail cold",
        "counts (ours/litellm/langchain)",
    )
    print(" | ".join(head))
    for n in sizes:
        o = ours[str(n)]
        a = lt.get(str(n)) if lt else None
        b = lc.get(str(n)) if lc else None
        print(
            " | ".join(
                (
                    f"{n:,}",
                    fmt(a["cold"]) if a else "not installed",
                    f"{fmt(a['turn'])} ({a['turns']} turns)" if a else "not installed",
                    fmt(b["cold"]) if b else "not installed",
                    f"{fmt(b['turn'])} ({b['turns']} turns)" if b else "not installed",
                    ratio(a["turn"], o["turn"]) if a else "-",
                    ratio(b["turn"], o["turn"]) if b else "-",
                    ratio(a["cold"], o["cold"]) if a else "-",
                    ratio(b["cold"], o["cold"]) if b else "-",
                    f"{o['count']}/{a['count'] if a else '-'}/{b['count'] if b else '-'}",
                )
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument(
        "--third-party-python",
        default=os.environ.get("GUARDRAIL_BENCH_THIRD_PARTY_PYTHON"),
        help="interpreter of a virtualenv with bench/requirements.txt installed",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.worker:
        print(json.dumps(third_party(sizes, args.turns, args.model)))
        return
    ours = guardrail_figures(sizes, args.turns, args.model)
    if args.third_party_python:
        theirs = third_party_in_child(args.third_party_python, sizes, args.turns, args.model)
    else:
        theirs = third_party(sizes, args.turns, args.model)
    report(sizes, args.turns, args.model, ours, theirs)
    if args.json:
        print(json.dumps({"guardrail": ours, "third_party": theirs}))


if __name__ == "__main__":
    main()
