"""The dashboard without a browser: who may see it, what it shows (equal to the store),
that it loads nothing from anywhere, and that hostile text is escaped."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from guardrail import MemoryStore
from guardrail.dashboard import Dashboard, TenantRow, collect, render
from guardrail.dashboard.app import DashboardSource, dashboard_app, presented_key
from guardrail.dashboard.page import chart
from guardrail.ledger import LedgerSink, connect
from tests._dashboard import BASIC, dashboard_gateway
from tests._gateway import ADMIN_KEY, TENANT_KEY, config_for, get, running, serving
from tests._ledger import TODAY, calls


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GR_TEST_OPENAI_KEY", "sk-upstream")
    monkeypatch.setenv("GR_TEST_ADMIN_KEY", ADMIN_KEY)


def _cells(html: str, tenant: str) -> dict[str, Decimal]:
    row = re.search(rf'<tr data-tenant="{re.escape(tenant)}">(.*?)</tr>', html)
    assert row, f"no row for {tenant}"
    return {
        name: Decimal(value)
        for name, value in re.findall(r'<td class=(today|month) data-usd="([^"]+)"', row.group(1))
    }


def test_the_gateway_serves_the_dashboard_to_the_admin_only(server, tmp_path) -> None:
    with dashboard_gateway(server, tmp_path) as (base, app):
        status, headers, _ = get(f"{base}/dashboard")
        assert status == 401 and headers["www-authenticate"].startswith("Basic")
        status, _, _ = get(f"{base}/dashboard", {"authorization": f"Bearer {TENANT_KEY}"})
        assert status == 401
        status, headers, html = get(f"{base}/dashboard", {"authorization": BASIC})
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert headers["content-security-policy"].startswith("default-src 'none'")
        status, _, _ = get(f"{base}/dashboard", {"authorization": f"Bearer {ADMIN_KEY}"})
        assert status == 200
        store = app.state.store
        for scope in ("team-a", "org-1"):
            usage = store.usage(scope)
            assert _cells(html, scope) == {"today": usage.spent_usd, "month": usage.month_spent_usd}
        assert "team-b" in re.search(r"<table id=refusals>.*?</table>", html, re.S).group(0)
        assert "refusal" in re.search(r"<table id=alerts>.*?</table>", html, re.S).group(0)
        assert not re.search(r"(src|href)=", html)  # nothing to load: it works offline


def test_without_a_ledger_there_is_no_dashboard(server) -> None:
    with running(config_for(server.base_url)) as (base, _):
        status, _, text = get(f"{base}/dashboard", {"authorization": BASIC})
        assert status == 404 and "[ledger]" in text


def test_the_ledger_config_is_checked(server) -> None:
    from guardrail.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"ledger\.url"):
        config_for(server.base_url, ledger={"url": "mysql://x"})
    with pytest.raises(ConfigurationError, match=r"ledger\.colour: unknown key"):
        config_for(server.base_url, ledger={"url": "sqlite:///x.db", "colour": "red"})


def test_the_figures_equal_the_store_and_the_caps(server, clock, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    sink = LedgerSink(url, spool_path=tmp_path / "s.jsonl", flush_seconds=0.01)
    store = MemoryStore(clock=clock)
    calls(server, store, sink)
    assert sink.flush()
    sink.close()
    db = connect(url)
    for live in (None, store):
        board = collect(db, live, now=clock())
        assert board.day == TODAY and board.live is (live is not None)
        rows = {t.scope: t for t in board.tenants}
        assert set(rows) == {"acme", "alice", "bob", "carol", "dave"}  # dave: refused, capped
        assert rows["acme"].today_usd == store.usage("acme").spent_usd
        assert rows["acme"].daily_cap_usd == Decimal("1")
        assert rows["dave"].today_usd == 0 and rows["dave"].daily_cap_usd == Decimal("0.0000001")
        assert board.today_usd == store.usage("_global").spent_usd == board.month_usd
        assert board.calls_today == 4 and len(board.series) == 30
        assert board.series[-1] == (TODAY, board.today_usd)
        assert [r["tenant"] for r in board.refusals] == ["dave"]
    db.close()


def test_hostile_text_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    board = Dashboard(
        generated_at=datetime(2026, 11, 23, tzinfo=UTC),
        day=date(2026, 11, 23),
        tenants=(TenantRow(evil, Decimal("1"), Decimal("2"), 3, Decimal("4"), None),),
        more_tenants=0,
        series=((date(2026, 11, 23), Decimal("1")),),
        top_models=(),
        refusals=({"ts": 0.0, "tenant": evil, "model": evil, "limit": evil},),
        alerts=({"ts": 0.0, "rule": evil, "scope": evil, "text": evil},),
        live=False,
        today_usd=Decimal("1"),
        month_usd=Decimal("2"),
        calls_today=3,
    )
    html = render(board, title=evil)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_the_chart_has_a_point_per_day() -> None:
    days = [(date(2026, 11, d), Decimal(d) / 100) for d in range(1, 31)]
    svg = chart(days)
    points = re.findall(r'<circle class=point [^>]*data-day="([^"]+)" data-usd="([^"]+)"', svg)
    assert [(date.fromisoformat(d), Decimal(v)) for d, v in points] == days
    ys = [float(y) for y in re.findall(r'<circle class=point cx="[^"]+" cy="([^"]+)"', svg)]
    assert ys == sorted(ys, reverse=True)  # more spend is higher up


def test_the_standalone_app(server, clock, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    sink = LedgerSink(url, spool_path=tmp_path / "s.jsonl", flush_seconds=0.01)
    calls(server, MemoryStore(clock=clock), sink)
    assert sink.flush()
    sink.close()
    with serving(dashboard_app(DashboardSource(url), admin_key="k")) as base:
        assert get(base)[0] == 401
        status, _, html = get(base, {"authorization": "Bearer k"})
        assert status == 200 and "<svg id=spend-chart" in html
    with serving(dashboard_app(DashboardSource(f"sqlite:///{tmp_path}"))) as base:
        status, _, text = get(f"{base}/dashboard")
        assert status == 503 and "ledger" in text  # a folder is no database: said, not a 500


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Bearer k1", "k1"),
        ("Basic " + __import__("base64").b64encode(b"admin:k2").decode(), "k2"),
        ("Basic " + __import__("base64").b64encode(b"k3:").decode(), "k3"),
        ("Basic !!!", None),
        ("Digest x", None),
    ],
)
def test_presented_keys(header: str, key: str | None) -> None:
    assert presented_key({"authorization": header}) == key


def test_the_keyless_standalone_dashboard_answers_only_its_own_names(tmp_path) -> None:
    source = DashboardSource(f"sqlite:///{tmp_path / 'l.db'}")
    with serving(dashboard_app(source)) as base:
        assert get(base)[0] == 200
        status, _, _ = get(base, {"host": "attacker.example"})  # a DNS-rebinding page
        assert status == 400


def test_the_gateway_runs_its_store_and_ledger_in_one_time_zone(server) -> None:
    from guardrail.errors import ConfigurationError
    from guardrail.server.app import store_for

    config = config_for(server.base_url, timezone="America/Los_Angeles")
    assert str(store_for(config).windows.tz) == "America/Los_Angeles"
    with pytest.raises(ConfigurationError, match=r"ledger\.timezone"):
        config_for(server.base_url, ledger={"url": "sqlite:///x.db", "timezone": "UTC"})
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        config_for(server.base_url, timezone="Mars/Base")
