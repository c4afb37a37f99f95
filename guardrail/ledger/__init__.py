"""The usage ledger: every UsageRecord in a database, for audits, reports and rebuilds.

Owns: the schema and its migrations (:mod:`.schema`), the writer sink (:mod:`.writer`),
reports (:mod:`.reports`) and restoring a store's spend from the ledger (:mod:`.rebuild`).
May import: observe (the records), stores (money units, the Store protocol), errors.
"""

from guardrail.ledger.database import Database, DatabaseError, connect
from guardrail.ledger.rebuild import Gap, RebuildResult, rebuild
from guardrail.ledger.reports import ReportRow, recent_refusals, report, spend_by_day, top_models
from guardrail.ledger.schema import SCHEMA_VERSION, migrate, version
from guardrail.ledger.writer import LedgerSink

__all__ = [
    "SCHEMA_VERSION",
    "Database",
    "DatabaseError",
    "Gap",
    "LedgerSink",
    "RebuildResult",
    "ReportRow",
    "connect",
    "migrate",
    "rebuild",
    "recent_refusals",
    "report",
    "spend_by_day",
    "top_models",
    "version",
]
