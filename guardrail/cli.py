"""The ``guardrail`` command line.

::

    guardrail count [FILE ...] [--model M ...] [--json] [--strict] [--[no-]progress]
    guardrail models [--provider openai|anthropic] [--json]
    guardrail --version

``count`` reads each FILE (standard input when there is none, or for ``-``) as UTF-8 text
and prints its tokens, the share of the model's context window and the input cost. Give
``--model`` several times to compare models side by side; the first is the reference the
others' differences are measured from.

``count --json`` prints ``{"models": [...], "files": [{"path", "tokens", "window_share",
"input_cost_usd", "by_model": [...]}], "total": {...}}``: the top-level figures are the first
model's, ``by_model`` has every model with ``delta_tokens`` and ``delta_input_cost_usd``
against the first; money is a decimal string (or null where no price is known).

Exit status: 0 on success; 1 when a file cannot be read or counted; 2 for a usage error
(an unknown flag or value, or an unknown model with ``--strict``). Errors are one line on
stderr, ``guardrail: error: ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO

from guardrail.catalog.models import FALLBACK_ENCODING, ModelInfo, list_models, model_info
from guardrail.catalog.pricing import estimate_cost, prices_per_million
from guardrail.errors import GuardrailError, PriceUnavailable, UnknownModelError

__all__ = ["main"]

PROG = "guardrail"
DEFAULT_MODEL = "gpt-4o"
STDIN = "-"
# A progress meter is worth drawing past these (and only when stderr is a terminal).
PROGRESS_MIN_FILES = 20
PROGRESS_MIN_BYTES = 5 * 1024 * 1024


class CliError(Exception):
    """An error reported as one line on stderr; ``status`` is the exit code."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- formatting


def usd(amount: Decimal | None) -> str:
    """Every digit of a Decimal, in fixed point (never ``2.5E-7``, never through a float)."""
    if amount is None:
        return "-"
    text = format(amount.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _signed_usd(amount: Decimal | None) -> str:
    if amount is None:
        return "-"
    return ("-$" if amount < 0 else "+$") + usd(abs(amount))


def _table(rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Align ``rows`` (the first is the header); ``align`` has '<' or '>' per column."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(w) if a == "<" else cell.rjust(w)
            for cell, w, a in zip(row, widths, align, strict=True)
        ).rstrip()
        for row in rows
    ]


# --------------------------------------------------------------------------- models


def _resolve_model(name: str, *, strict: bool) -> ModelInfo:
    """The model's catalog entry; an unknown one warns (once: names are deduplicated)."""
    try:
        return model_info(name, strict=True)
    except UnknownModelError:
        if strict:
            raise CliError(
                f"unknown model {name!r} (see `guardrail models`; drop --strict to count "
                f"it with {FALLBACK_ENCODING})",
                status=2,
            ) from None
    with warnings.catch_warnings():  # said below, once, in the command's own words
        warnings.simplefilter("ignore")
        info = model_info(name)
    print(
        f"{PROG}: warning: unknown model {name!r}: counting with {info.encoding}, "
        f"assuming a {info.context_window:,}-token window; no price",
        file=sys.stderr,
    )
    return info


def _cmd_models(args: argparse.Namespace, out: TextIO) -> int:
    infos = [i for i in list_models() if args.provider in (None, i.provider)]
    entries = []
    for info in infos:
        price_in, price_out = prices_per_million(info)
        entries.append((info, price_in, price_out))
    if args.json:
        doc = [
            {
                "model": info.name,
                "provider": info.provider,
                "family": info.family,
                "encoding": info.encoding,
                "encoding_assumed": info.encoding_assumed,
                "exact_tokenizer": info.exact_tokenizer,
                "context_window": info.context_window,
                "max_output_tokens": info.max_output_tokens,
                "input_usd_per_mtok": None if price_in is None else usd(price_in),
                "output_usd_per_mtok": None if price_out is None else usd(price_out),
            }
            for info, price_in, price_out in entries
        ]
        print(json.dumps(doc, indent=2), file=out)
        return 0
    rows = [["model", "provider", "encoding", "context", "max output", "in $/M", "out $/M"]]
    for info, price_in, price_out in entries:
        encoding = info.encoding + ("*" if info.encoding_assumed else "")
        rows.append(
            [
                info.name,
                info.provider,
                encoding,
                f"{info.context_window:,}",
                f"{info.max_output_tokens:,}",
                usd(price_in),
                usd(price_out),
            ]
        )
    for line in _table(rows, align="<<<>>>>"):
        print(line, file=out)
    print("\nPrices: USD per million tokens (base tier); '-' = no price data.", file=out)
    if any(info.encoding_assumed for info in infos):
        print("* encoding assumed: tiktoken does not know this model yet.", file=out)
    if any(not info.exact_tokenizer for info in infos):
        print("claude: no local tokenizer is published; local counts are estimates.", file=out)
    return 0


# --------------------------------------------------------------------------- count


@dataclass(frozen=True)
class Measure:
    """One text measured against one model."""

    tokens: int
    window_share: float
    input_cost: Decimal | None


def _measure(info: ModelInfo, tokens: int) -> Measure:
    try:
        cost: Decimal | None = estimate_cost(info, tokens, 0)
    except PriceUnavailable:
        cost = None
    return Measure(tokens, tokens / info.context_window, cost)


def _count_text(text: str, info: ModelInfo) -> int:
    from guardrail.counting.messages import count_text  # imported here: it loads tiktoken's tables

    return count_text(text, info.name)


def _check_sources(paths: Sequence[str]) -> int:
    """Fail before counting anything when a path is missing or a directory; total bytes."""
    if list(paths).count(STDIN) > 1:
        raise CliError("standard input ('-') can be read only once", status=2)
    total = 0
    for path in paths:
        if path == STDIN:
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise CliError(f"{path}: no such file") from None
        except OSError as exc:
            raise CliError(f"{path}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(st.st_mode):
            raise CliError(f"{path}: is a directory")
        total += st.st_size
    return total


def _read(path: str) -> tuple[str, int]:
    """The whole file as text, and its size in bytes.

    Whole, not in chunks: a chunk boundary can split a token (or a UTF-8 character), so
    chunked counts are not exact. Files are read one at a time, so memory holds one file.
    """
    try:
        if path == STDIN:
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8"), len(data)
    except UnicodeDecodeError as exc:
        raise CliError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


class _Progress:
    """A one-line progress meter on stderr.

    Hand-written rather than tqdm: it is a dozen lines for one command, and tqdm would
    become a runtime dependency of every program that imports guardrail (none of our
    dependencies pulls it in).
    """

    def __init__(self, files: int, total_bytes: int, stream: TextIO) -> None:
        self.files, self.total_bytes, self.stream = files, total_bytes, stream
        self.done_files = self.done_bytes = 0
        self.last_draw = 0.0

    def advance(self, nbytes: int) -> None:
        self.done_files += 1
        self.done_bytes += nbytes
        now = time.monotonic()
        if now - self.last_draw >= 0.1 or self.done_files == self.files:
            self.last_draw = now
            mb, total_mb = self.done_bytes / 1e6, max(self.total_bytes, self.done_bytes) / 1e6
            self.stream.write(
                f"\rcounting: {self.done_files}/{self.files} files, {mb:.1f}/{total_mb:.1f} MB"
            )
            self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r\x1b[K")
        self.stream.flush()


def _cmd_count(args: argparse.Namespace, out: TextIO) -> int:
    names = list(dict.fromkeys(args.model or [DEFAULT_MODEL]))
    infos = [_resolve_model(n, strict=args.strict) for n in names]
    paths: list[str] = args.files or [STDIN]
    total_bytes = _check_sources(paths)
    show_progress = args.progress
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    progress = None
    if show_progress and (len(paths) > PROGRESS_MIN_FILES or total_bytes > PROGRESS_MIN_BYTES):
        progress = _Progress(len(paths), total_bytes, sys.stderr)

    per_file: list[list[int]] = []  # tokens, by file then by model
    try:
        for path in paths:
            text, nbytes = _read(path)
            # Models sharing a tiktoken encoding count plain text identically: count once.
            by_encoding: dict[str, int] = {}
            row = []
            for info in infos:
                key = info.encoding if info.exact_tokenizer else f"model:{info.name}"
                if key not in by_encoding:
                    by_encoding[key] = _count_text(text, info)
                row.append(by_encoding[key])
            per_file.append(row)
            del text
            if progress is not None:
                progress.advance(nbytes)
    finally:
        if progress is not None:
            progress.close()

    files = [[_measure(info, n) for info, n in zip(infos, row, strict=True)] for row in per_file]
    # The total is one prompt made of every file: its cost is priced on the summed tokens
    # (tiered prices make that differ from the sum of the files' costs).
    totals = [_measure(info, sum(row[i] for row in per_file)) for i, info in enumerate(infos)]
    if args.json:
        print(json.dumps(_count_json(infos, paths, files, totals), indent=2), file=out)
    else:
        for line in _count_text_report(infos, paths, files, totals):
            print(line, file=out)
    return 0


def _delta(m: Measure, ref: Measure) -> tuple[int, Decimal | None]:
    if m.input_cost is None or ref.input_cost is None:
        return m.tokens - ref.tokens, None
    return m.tokens - ref.tokens, m.input_cost - ref.input_cost


def _measures_json(infos: list[ModelInfo], measures: list[Measure]) -> dict[str, Any]:
    by_model = []
    for info, m in zip(infos, measures, strict=True):
        d_tokens, d_cost = _delta(m, measures[0])
        by_model.append(
            {
                "model": info.name,
                "tokens": m.tokens,
                "window_share": m.window_share,
                "input_cost_usd": None if m.input_cost is None else usd(m.input_cost),
                "delta_tokens": d_tokens,
                "delta_input_cost_usd": None if d_cost is None else usd(d_cost),
            }
        )
    first = by_model[0]
    return {
        "tokens": first["tokens"],
        "window_share": first["window_share"],
        "input_cost_usd": first["input_cost_usd"],
        "by_model": by_model,
    }


def _count_json(
    infos: list[ModelInfo], paths: list[str], files: list[list[Measure]], totals: list[Measure]
) -> dict[str, Any]:
    return {
        "models": [
            {
                "model": info.name,
                "provider": info.provider,
                "encoding": info.encoding,
                "exact_tokenizer": info.exact_tokenizer,
                "known": info.known,
                "context_window": info.context_window,
            }
            for info in infos
        ],
        "files": [
            {"path": path, **_measures_json(infos, measures)}
            for path, measures in zip(paths, files, strict=True)
        ],
        "total": _measures_json(infos, totals),
    }


def _count_text_report(
    infos: list[ModelInfo], paths: list[str], files: list[list[Measure]], totals: list[Measure]
) -> list[str]:
    several = len(infos) > 1
    header: list[str] = []
    for i, info in enumerate(infos):
        prefix = f"{info.name} " if several else ""
        header += [f"{prefix}tokens", "window", "input $"]
        if i:
            header += ["Δ tokens", "Δ input $"]
    header.append("file")

    def cells(measures: list[Measure], label: str) -> list[str]:
        row: list[str] = []
        for i, (info, m) in enumerate(zip(infos, measures, strict=True)):
            tilde = "" if info.exact_tokenizer else "~"
            cost = "-" if m.input_cost is None else "$" + usd(m.input_cost)
            row += [f"{tilde}{m.tokens:,}", f"{m.window_share:.2%}", cost]
            if i:
                # A difference involving an estimate is an estimate too.
                approx = "" if info.exact_tokenizer and infos[0].exact_tokenizer else "~"
                d_tokens, d_cost = _delta(m, measures[0])
                d_usd = _signed_usd(d_cost)
                row += [f"{approx}{d_tokens:+,}", d_usd if d_cost is None else approx + d_usd]
        return [*row, label]

    rows = [header]
    rows += [cells(m, "<stdin>" if p == STDIN else p) for p, m in zip(paths, files, strict=True)]
    if len(paths) > 1:
        rows.append(cells(totals, "total"))
    lines = _table(rows, align=">" * (len(header) - 1) + "<")
    for info in infos:
        if not info.exact_tokenizer:
            lines.append(f"~ {info.name}: estimate (Anthropic publishes no local tokenizer)")
    return lines


# --------------------------------------------------------------------------- parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("guardrail-limits")
    except PackageNotFoundError:  # run from a source tree
        return str(getattr(sys.modules.get("guardrail"), "__version__", "unknown"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Hard limits around LLM calls: token counts, windows, prices."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    count = sub.add_parser(
        "count",
        help="count the tokens of files (or stdin) and price them as input",
        description="Count the tokens of UTF-8 text files (stdin when none, or '-') and show "
        "each file's share of the model's context window and its input cost. Each file is "
        "read whole (counting in chunks is not exact across chunk boundaries), one file at "
        "a time. The total is priced as one prompt made of all the files.",
    )
    count.add_argument("files", nargs="*", metavar="FILE", help="files to count; '-' is stdin")
    count.add_argument(
        "-m",
        "--model",
        action="append",
        metavar="MODEL",
        help=f"model to count and price for (default {DEFAULT_MODEL}); repeat to compare "
        "models side by side against the first",
    )
    count.add_argument("--json", action="store_true", help="print one JSON document")
    count.add_argument(
        "--strict", action="store_true", help="an unknown model is an error, not a warning"
    )
    count.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress meter on stderr (default: when stderr is a terminal and there are "
        f"more than {PROGRESS_MIN_FILES} files or {PROGRESS_MIN_BYTES // 2**20} MiB)",
    )
    count.set_defaults(handler=_cmd_count)

    models = sub.add_parser("models", help="list the model catalog with windows and prices")
    models.add_argument("--provider", choices=["openai", "anthropic"], help="only this provider")
    models.add_argument("--json", action="store_true", help="print one JSON document")
    models.set_defaults(handler=_cmd_models)

    serve = sub.add_parser("serve", help="run the gateway (needs the [server] extra)")
    serve.add_argument("--config", required=True, metavar="FILE", help="the gateway's TOML config")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(handler=_cmd_serve)
    return parser


def _cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from guardrail.server.serve import serve

    serve(args.config, host=args.host, port=args.port, workers=args.workers)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        status: int = args.handler(args, sys.stdout)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:  # `guardrail models | head`: the reader has all it wants
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.status
    except (GuardrailError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
