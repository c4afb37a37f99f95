"""The ``guardrail`` command line: click for the commands, rich for tables and progress.

::

    guardrail count [FILE ...] [--model M ...] [--json] [--strict] [--[no-]progress]
    guardrail models [--provider openai|anthropic] [--json]
    guardrail serve --config gateway.toml [--host H] [--port P] [--workers N]
    guardrail usage --ledger URL [--tenant T] [--since D] [--until D] [--by tenant|model|day]
                    [--format table|csv|json] [--records] [--output FILE]
    guardrail dashboard --ledger URL [--store URL] [--host H] [--port P]
    guardrail ledger migrate --ledger URL
    guardrail ledger rebuild --ledger URL --store URL [--day D] [--dry-run] [--json]
    guardrail --version

Each command is one module: :mod:`.count` (count, models), :mod:`.usage`, :mod:`.ledger`,
:mod:`.serve` (serve, dashboard); :mod:`.app` turns errors into exit statuses.
"""

from guardrail.cli.app import cli, main
from guardrail.cli.render import usd

__all__ = ["cli", "main", "usd"]
