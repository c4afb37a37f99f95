"""``python -m guardrail``: the command line (see :mod:`guardrail.cli`)."""

from guardrail.cli import main

raise SystemExit(main())
