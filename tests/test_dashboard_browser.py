"""The dashboard in a real browser: Debian's chromium, driven by Selenium through Debian's
chromedriver (the versions match: both come from one source package). After a few guarded
calls through the gateway, the page shows the tenants and their figures, the chart has its
data points, and a screenshot is saved as a test artifact (``GUARDRAIL_TEST_ARTIFACTS``,
default ``.artifacts/`` in the repository)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests._dashboard import BASIC, dashboard_gateway
from tests._gateway import ADMIN_KEY
from tests.conftest import CHROMEDRIVER, CHROMIUM

pytestmark = pytest.mark.browser
ARTIFACTS = Path(
    os.environ.get("GUARDRAIL_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / ".artifacts")
)


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GR_TEST_OPENAI_KEY", "sk-upstream")
    monkeypatch.setenv("GR_TEST_ADMIN_KEY", ADMIN_KEY)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_dashboard_in_chromium(server, tmp_path, browser) -> None:
    from selenium.webdriver.common.by import By

    with dashboard_gateway(server, tmp_path) as (base, app):
        # Without the key the gateway answers 401 and a browser asks for Basic credentials
        # (test_dashboard.py checks that); here the driver sends them itself.
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": BASIC}}
        )
        browser.get(f"{base}/dashboard")
        assert browser.title == "guardrail dashboard"

        store = app.state.store
        rows = {
            row.get_attribute("data-tenant"): row
            for row in browser.find_elements(By.CSS_SELECTOR, "#tenants tr[data-tenant]")
        }
        assert {"team-a", "org-1"} <= set(rows)
        for scope in ("team-a", "org-1"):
            today = rows[scope].find_element(By.CSS_SELECTOR, "td.today")
            assert Decimal(today.get_attribute("data-usd")) == store.usage(scope).spent_usd > 0
            assert rows[scope].find_element(By.CSS_SELECTOR, "td.scope").text == scope
            assert rows[scope].find_elements(By.CSS_SELECTOR, "td.n")[-1].text == "3"

        points = browser.find_elements(By.CSS_SELECTOR, "#spend-chart circle.point")
        assert len(points) == 30
        spent = [Decimal(p.get_attribute("data-usd")) for p in points]
        assert spent[-1] == store.usage("team-a").spent_usd and sum(spent[:-1]) == 0
        top, rest = float(points[-1].get_attribute("cy")), float(points[0].get_attribute("cy"))
        assert top < rest  # today's point is drawn above the empty days
        assert points[-1].is_displayed()

        refusals = browser.find_element(By.ID, "refusals").text
        assert "team-b" in refusals and "daily_spend_usd" in refusals
        assert "refusal" in browser.find_element(By.ID, "alerts").text

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
