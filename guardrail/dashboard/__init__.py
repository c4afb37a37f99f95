"""The dashboard: one server-rendered HTML page of the tenants' spend against their caps,
spend over time (an inline SVG chart: no script, nothing fetched from anywhere), the top
models, and the latest refusals and alerts.

Owns: gathering the figures from the ledger and, when given, the live store
(:mod:`.data`), the page (:mod:`.page`), and the standalone app (:mod:`.app`). The
gateway serves the same page at ``/dashboard``.
May import: ledger, stores, errors.
"""

from guardrail.dashboard.data import Dashboard, TenantRow, collect
from guardrail.dashboard.page import render

__all__ = ["Dashboard", "TenantRow", "collect", "render"]
