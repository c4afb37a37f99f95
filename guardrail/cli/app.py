"""The ``guardrail`` command group and :func:`main`: how errors become exit statuses.

Exit status: 0 on success; 1 when a file, a database or a store cannot be read or
written, or a call fails; 2 for a usage error (an unknown option or value, or an unknown
model with ``--strict``). Errors are one line on stderr, ``guardrail: error: ...``
(a usage error is preceded by the command's usage line).
"""

from __future__ import annotations

import contextlib
import os
import sys

import click

from guardrail.cli.count import count, models
from guardrail.cli.ledger import ledger
from guardrail.cli.render import PROG, CliError
from guardrail.cli.serve import dashboard, serve
from guardrail.cli.usage import usage
from guardrail.errors import GuardrailError

__all__ = ["cli", "main"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("guardrail-limits")
    except PackageNotFoundError:  # run from a source tree
        return str(getattr(sys.modules.get("guardrail"), "__version__", "unknown"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name=PROG, message="%(prog)s %(version)s")
def cli() -> None:
    """Hard limits around LLM calls: token counts, windows, prices, usage and budgets."""


for command in (count, models, serve, dashboard, usage, ledger):
    cli.add_command(command)


def _usage_error(exc: click.UsageError) -> int:
    if exc.ctx is not None:
        line = exc.ctx.get_usage().splitlines()[0]
        print(
            "usage:" + line[len("Usage:") :] if line.startswith("Usage:") else line, file=sys.stderr
        )
    print(f"{PROG}: error: {exc.format_message()}", file=sys.stderr)
    return 2


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())  # drivers' messages span lines


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if not args:  # click prints the help and exits 0 or 2 by version: always a usage error
            with click.Context(cli, info_name=PROG) as ctx:
                raise click.UsageError("a command is required (see --help)", ctx)
        status = cli.main(args=args, prog_name=PROG, standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status if isinstance(status, int) else 0
    except click.UsageError as exc:
        return _usage_error(exc)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:  # a file option that cannot be opened, ...
        print(f"{PROG}: error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        return exc.exit_code
    except click.Abort:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `guardrail models | head`: the reader has all it wants
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except CliError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.status
    except (GuardrailError, OSError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
