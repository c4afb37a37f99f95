"""The dashboard as one HTML page: inline CSS, an inline SVG chart, no script, nothing
loaded from anywhere (it works offline and under ``Content-Security-Policy: default-src
'none'``). It reloads itself every 30 seconds. Every figure comes from :mod:`.data`; every
text from a record is escaped."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from html import escape

from guardrail.dashboard.data import Dashboard, TenantRow

__all__ = ["CONTENT_SECURITY_POLICY", "render"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
)
_WIDTH, _HEIGHT, _LEFT, _RIGHT, _BOTTOM, _TOP = 900, 240, 72, 28, 28, 12

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;align-items:baseline;gap:16px}
header h1{font-size:18px;margin:0}header span{opacity:.7;font-size:12px}
main{padding:16px 24px;max-width:1200px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.card{background:#fff;border-radius:8px;padding:12px 16px;min-width:160px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card b{display:block;font-size:22px}.card small{color:#5b6475}
section{background:#fff;border-radius:8px;padding:12px 16px;margin-bottom:16px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef2;white-space:nowrap}
th{font-weight:600;color:#5b6475;font-size:12px}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.meter{width:120px;height:8px;background:#eceef2;border-radius:4px;display:inline-block;
vertical-align:middle;margin-right:6px;overflow:hidden}
.meter i{display:block;height:100%;background:#2f855a}
.meter i.warn{background:#d69e2e}.meter i.over{background:#c53030}
.empty{color:#5b6475}
svg{max-width:900px;display:block}svg text{font-size:11px;fill:#5b6475}
svg .grid{stroke:#eceef2}svg .line{fill:none;stroke:#3b5bdb;stroke-width:2}
svg .point{fill:#3b5bdb}
"""


def usd(amount: Decimal | None) -> str:
    """Money for a person, rounded for display only (the ledger keeps every digit): cents
    from a dollar up, six decimals below (a call often costs a fraction of a cent)."""
    if amount is None:
        return "-"
    if amount == 0:
        return "$0"
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    shown = amount.quantize(Decimal("0.000001"))
    return f"${format(shown.normalize(), 'f')}" if shown else "<$0.000001"


def _meter(spent: Decimal, cap: Decimal | None) -> str:
    if not cap:
        return f"{usd(spent)} <span class=empty>no cap</span>"
    share = float(spent / cap)
    level = "over" if share >= 1 else "warn" if share >= 0.8 else ""
    width = min(100.0, share * 100)
    return (
        f'<span class=meter title="{share:.0%} of {usd(cap)}"><i class="{level}" '
        f'style="width:{width:.1f}%"></i></span>{usd(spent)} / {usd(cap)} '
        f"<small>({share:.0%})</small>"
    )


def _tenants(d: Dashboard) -> str:
    if not d.tenants:
        return "<p class=empty>No spend this month yet.</p>"
    held = d.live
    head = (
        "<tr><th>tenant</th><th>today</th><th>this month</th>"
        + ("<th class=n>held now</th>" if held else "")
        + "<th class=n>calls today</th></tr>"
    )
    body = "".join(_tenant_row(t, held) for t in d.tenants)
    more = f"<p class=empty>and {d.more_tenants} more</p>" if d.more_tenants else ""
    return f"<table id=tenants>{head}{body}</table>{more}"


def _tenant_row(t: TenantRow, held: bool) -> str:
    cells = [
        f"<td class=scope>{escape(t.scope)}</td>",
        f'<td class=today data-usd="{t.today_usd}">{_meter(t.today_usd, t.daily_cap_usd)}</td>',
        f'<td class=month data-usd="{t.month_usd}">{_meter(t.month_usd, t.monthly_cap_usd)}</td>',
    ]
    if held:
        cells.append(f"<td class=n>{usd(t.held_usd)}</td>")
    cells.append(f"<td class=n>{t.requests_today:,}</td>")
    return f'<tr data-tenant="{escape(t.scope)}">{"".join(cells)}</tr>'


def _nice_ceiling(value: Decimal) -> Decimal:
    """A round top for the chart's axis: 1, 2 or 5 times a power of ten, at least value."""
    if value <= 0:
        return Decimal("0.01")
    exponent = value.adjusted()
    for step in (1, 2, 5, 10):
        top = Decimal(step).scaleb(exponent)
        if top >= value:
            return top
    return Decimal(10).scaleb(exponent)  # pragma: no cover - 10 always fits


def chart(series: Sequence[tuple[object, Decimal]]) -> str:
    """Spend per day as an SVG line with one point per day (each with a tooltip)."""
    top = _nice_ceiling(max((v for _, v in series), default=Decimal(0)))
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _BOTTOM - _TOP
    step = plot_w / max(1, len(series) - 1)

    def y(v: Decimal) -> float:
        return _TOP + plot_h * (1 - float(v / top))

    parts = [
        f'<svg id=spend-chart viewBox="0 0 {_WIDTH} {_HEIGHT}" width="100%" '
        f'role="img" aria-label="spend per day">'
    ]
    for n in range(5):
        level = top * Decimal(n) / 4
        py = y(level)
        parts.append(
            f'<line class=grid x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{py:.1f}" y2="{py:.1f}"/>'
        )
        parts.append(
            f'<text x="{_LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{usd(level)}</text>'
        )
    points = [(_LEFT + i * step, y(v), day, v) for i, (day, v) in enumerate(series)]
    if points:
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
        parts.append(f'<polyline class=line points="{path}"/>')
    label_every = max(1, len(points) // 6)
    for i, (px, py, day, v) in enumerate(points):
        parts.append(
            f'<circle class=point cx="{px:.1f}" cy="{py:.1f}" r="3" data-day="{day}" '
            f'data-usd="{v}"><title>{day}: {usd(v)}</title></circle>'
        )
        if i % label_every == 0 or i == len(points) - 1:
            parts.append(
                f'<text x="{px:.1f}" y="{_HEIGHT - 8}" text-anchor="middle">{str(day)[5:]}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _table(table_id: str, headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    if not rows:
        return f"<p class=empty id={table_id}>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table id={table_id}><tr>{head}</tr>{body}</table>"


def _when(ts: float, tz: tzinfo | None) -> str:
    """A time in the dashboard's zone (the store's), as the header gives it."""
    return datetime.fromtimestamp(ts, tz or UTC).strftime("%Y-%m-%d %H:%M:%S %Z")


def render(d: Dashboard, *, title: str = "guardrail") -> str:
    """The whole page."""
    tz = d.generated_at.tzinfo
    models = [
        [
            escape(r.key[0]),
            usd(r.cost_usd),
            f"{r.input_tokens:,}",
            f"{r.output_tokens:,}",
            f"{r.requests:,}",
        ]
        for r in d.top_models
    ]
    refusals = [
        [
            _when(r["ts"], tz),
            escape(str(r["tenant"])),
            escape(str(r["model"])),
            escape(str(r["limit"])),
            escape(_figure(r)),
        ]
        for r in d.refusals
    ]
    alerts = [
        [
            _when(a["ts"], tz),
            escape(str(a["rule"])),
            escape(str(a["scope"])),
            escape(str(a["text"])),
        ]
        for a in d.alerts
    ]
    source = "live from the store" if d.live else "from the ledger"
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8>
<meta name=viewport content="width=device-width,initial-scale=1">
<meta http-equiv=refresh content=30>
<title>{escape(title)} dashboard</title><style>{_CSS}</style></head>
<body><header><h1>{escape(title)}</h1><span>{d.generated_at:%Y-%m-%d %H:%M:%S %Z}; today's
figures {source}</span></header><main>
<div class=cards>
<div class=card id=card-today><small>spent today</small><b>{usd(d.today_usd)}</b></div>
<div class=card id=card-month><small>this month</small><b>{usd(d.month_usd)}</b></div>
<div class=card id=card-calls><small>calls today</small><b>{d.calls_today:,}</b></div>
<div class=card id=card-refusals><small>latest refusals</small><b>{len(d.refusals)}</b></div>
</div>
<section><h2>Tenants against their caps</h2>{_tenants(d)}</section>
<section><h2>Spend per day, last {len(d.series)} days</h2>{chart(d.series)}</section>
<section><h2>Top models this month</h2>{
        _table(
            "models",
            ["model", "cost", "input tokens", "output tokens", "calls"],
            models,
            "No calls this month yet.",
        )
    }</section>
<section><h2>Recent refusals</h2>{
        _table(
            "refusals",
            ["when", "tenant", "model", "limit", "asked / cap"],
            refusals,
            "No refusals.",
        )
    }</section>
<section><h2>Recent alerts</h2>{
        _table("alerts", ["when", "rule", "scope", "alert"], alerts, "No alerts.")
    }</section>
</main></body></html>
"""


def _figure(refusal: dict[str, object]) -> str:
    requested, cap, unit = refusal.get("requested"), refusal.get("cap"), refusal.get("unit")
    if requested is None:
        return ""
    return f"{requested} / {cap} {unit or ''}".strip()
