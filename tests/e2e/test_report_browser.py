"""The report's HTML page and the console's dashboard in a real headless Chromium, on the
hand-built history of `test_report_known_answers`: the page renders offline (every
request other than the page itself is refused, and none is made), its charts are
drawn, and screenshots are saved under var/screenshots/."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.credentials import light_passwords
from dispatcher.reports import build_report
from dispatcher.reports.html import report_html
from dispatcher.roles import Role
from dispatcher.sandbox.asgi_server import serve_in_thread
from dispatcher.settings import Settings
from dispatcher.store.db import ensure_schema, make_engine
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime
from tests.integration.test_report_known_answers import NOW, build_history

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
PASSWORD = "correct horse battery staple"
TOKEN = "report-browser-token"


@pytest.fixture
def history(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'report.db'}")
    ensure_schema(engine)
    build_history(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def page_viewport() -> dict[str, int]:
    """Room for the dashboard's charts (the `page` fixture is in tests/e2e/conftest.py)."""
    return {"width": 1280, "height": 900}


async def test_the_html_report_renders_offline_with_its_charts(
        history: Engine, config: Config, tmp_path: Path, page: Any) -> None:
    report = build_report(history, config, NOW, since=dt.date(2026, 11, 1), until=dt.date(2026, 11, 30))
    path = tmp_path / "report.html"
    path.write_text(report_html(report), encoding="utf-8")
    requested: list[str] = []

    async def refuse(route: Any) -> None:
        requested.append(route.request.url)
        await route.abort()

    await page.route("http*://**", refuse)
    await page.goto(path.as_uri())
    assert requested == []  # nothing fetched: styles and charts are in the page
    charts = page.locator("svg[role=img]")
    titles = [await charts.nth(i).get_attribute("aria-label") for i in range(await charts.count())]
    assert "Messages sent and effective contacts per week" in titles
    assert "Amount recovered per week (CNY)" in titles and "Amount recovered per week (USD)" in titles
    assert "Funnel per stage (cases)" in titles
    assert any(t and t.startswith("dpd30 · sms · en-US: conversion, 95% CI (p = 0.0285, significant)") for t in titles)
    # the charts have real extent: drawn by the browser, not empty boxes
    box = await charts.first.bounding_box()
    assert box is not None and box["width"] > 400 and box["height"] > 200
    # the variant comparison: the leader's interval is drawn from its Wilson bounds
    interval = page.locator("svg[aria-label^='dpd30 · sms · en-US'] circle title")
    assert "40.0% [21.9%, 61.3%]" in await interval.first.inner_html()
    stages = await page.inner_text("table")
    assert "3,300.00" in stages and "1,100.00" in stages and "25.0%" in stages
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)
    assert (SCREENSHOTS / "report.png").stat().st_size > 20_000


@pytest.fixture
def served(history: Engine, config: Config) -> Iterator[str]:
    clock = FakeClock(NOW)
    settings = Settings(public_url="http://127.0.0.1", api_token=TOKEN, signing_key="report-key")
    app = create_app(Runtime(settings, clock, config=config, engine=history, passwords=light_passwords(),
                             templates=TemplateSet(ROOT / "templates", config)).web())
    people = app.collaborators.people
    for name, role in (("ops.wang", Role.OPS), ("collector.li", Role.COLLECTOR)):
        people.add_user(name, frozenset({role}), "test")
        people.set_password(name, PASSWORD, "test")
    try:
        with serve_in_thread(app, name="report-web") as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        app.collaborators.receipts.close()


async def test_the_dashboard_is_not_for_collectors(served: str, page: Any) -> None:
    await page.goto(f"{served}/ui/login")
    await page.fill("#user", "collector.li")
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_load_state()
    assert await page.locator("#nav-reports").count() == 0  # no link to it
    response = await page.goto(f"{served}/ui/reports")
    assert response is not None and response.status == 403
    assert "3,300.00" not in await page.content()


async def test_the_console_dashboard_behind_sign_in(served: str, page: Any) -> None:
    await page.goto(f"{served}/ui/reports?since=2026-11-01&until=2026-11-30")
    assert page.url.startswith(f"{served}/ui/login")  # not signed in: sign in first
    await page.fill("#user", "ops.wang")
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_url(f"{served}/ui/reports?since=2026-11-01&until=2026-11-30")
    assert await page.inner_text("#who") == "ops.wang"
    dashboard = page.locator("#dashboard")
    assert await dashboard.locator("svg[role=img]").count() >= 5
    assert "3,300.00" in await dashboard.inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "console-reports.png"), full_page=True)

    await page.fill("#since", "2026-12-31")
    await page.click("#show")
    await page.wait_for_selector("#error")
    assert "2026-12-31 is after --until 2026-11-30" in await page.inner_text("#error")
    await page.fill("#since", "31/12/2026")
    await page.click("#show")
    await page.wait_for_selector("#error")
    assert "YYYY-MM-DD" in await page.inner_text("#error")
