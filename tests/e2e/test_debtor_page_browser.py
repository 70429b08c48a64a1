"""The debtor's page in a real headless Chromium at a phone's size (390 x 844), against
the app served on loopback, on SQLite: a debtor opens a short link, sees what they owe
now in their language, takes a 3-instalment plan and reads the agreement; an expired
link shows no data. Screenshots go to var/screenshots/ (debtor-page-zh-CN.png,
debtor-page-en-US.png, debtor-plan-taken.png, debtor-agreement.png,
debtor-link-expired.png)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.sandbox.asgi_server import serve_in_thread
from dispatcher.services.links import mint
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.db import ensure_schema, make_engine
from dispatcher.store.tables import plans_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime
from tests.e2e.conftest import CHROMIUM_FLAGS, chromium_executable
from tests.integration.test_webhooks import CN_EMAIL, CN_PHONE, US_PHONE, add_message, imported

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def served(tmp_path: Path, config: Config) -> Iterator[tuple[str, Engine, FakeClock, dict[str, str]]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'page.db'}")
    ensure_schema(engine)
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI))
    now = clock.now()
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("cn-1", "cn", CN_PHONE, CN_EMAIL),
                                 imported("us-1", "us", US_PHONE, "alex@example.com")], now)
        repo.record_payment(conn, "cn-1", Decimal("270.00"), "test", now)
    tokens = {}
    for case_id, phone, locale in (("cn-1", CN_PHONE, "zh-CN"), ("us-1", US_PHONE, "en-US")):
        message_id = add_message(engine, case_id, "sms", to=phone, locale=locale)
        with engine.begin() as conn:
            tokens[case_id] = mint(conn, message_id, case_id, now, now + dt.timedelta(days=14))
    with engine.begin() as conn:
        tokens["old"] = mint(conn, message_id, "us-1", now - dt.timedelta(days=20), now - dt.timedelta(days=6))
    settings = Settings(public_url="http://127.0.0.1", signing_key="browser-key")
    app = create_app(Runtime(settings, clock, config=config, engine=engine,
                             templates=TemplateSet(ROOT / "templates", config)).web())
    try:
        with serve_in_thread(app, name="debtor-web") as port:
            yield f"http://127.0.0.1:{port}", engine, clock, tokens
    finally:
        app.collaborators.receipts.close()
        engine.dispose()


@pytest.fixture
async def phone_page() -> AsyncIterator[Any]:
    executable = chromium_executable()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            context = await browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                                                has_touch=True)
            context.set_default_timeout(10_000)
            yield await context.new_page()
        finally:
            await browser.close()


async def _fits_the_phone(page: Any) -> None:
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide: it scrolls sideways on a phone"


async def test_a_debtor_takes_a_three_instalment_plan_on_a_phone(
        served: tuple[str, Engine, FakeClock, dict[str, str]], phone_page: Any) -> None:
    base, engine, _clock, tokens = served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = phone_page
    await page.goto(f"{base}/p/{tokens['cn-1']}")
    assert await page.get_attribute("html", "lang") == "zh-CN"
    assert (await page.inner_text("#outstanding")).strip() == "¥10,000.00"  # after the 270.00 payment
    assert "逾期罚息" in await page.inner_text("#penalty")
    await _fits_the_phone(page)
    await page.screenshot(path=str(SCREENSHOTS / "debtor-page-zh-CN.png"), full_page=True)

    await page.click("#plans summary")
    offer = page.locator("#offer-three_months")
    assert "分3期" in await offer.inner_text() and "分期还款协议" in await offer.inner_text()
    await _fits_the_phone(page)
    await offer.locator("button").click()
    await page.wait_for_selector("#plan-in-force")
    assert "分期还款计划已生效" in await page.inner_text("[role=status]")
    rows = await page.locator("#plan-in-force tr").count()
    assert rows == 3
    await _fits_the_phone(page)
    await page.screenshot(path=str(SCREENSHOTS / "debtor-plan-taken.png"), full_page=True)
    with engine.connect() as conn:
        plan = conn.execute(select(plans_t)).one()
    assert (plan.case_id, plan.offer, plan.status) == ("cn-1", "three_months", "active")

    await page.click("#plan-in-force a")
    await page.wait_for_selector("#agreement-text")
    assert "第1期" in await page.inner_text("#agreement-text")
    await _fits_the_phone(page)
    await page.screenshot(path=str(SCREENSHOTS / "debtor-agreement.png"), full_page=True)


async def test_the_page_in_english_and_an_expired_link_without_data(
        served: tuple[str, Engine, FakeClock, dict[str, str]], phone_page: Any) -> None:
    base, _engine, _clock, tokens = served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = phone_page
    await page.goto(f"{base}/p/{tokens['us-1']}")
    assert await page.get_attribute("html", "lang") == "en-US"
    assert (await page.inner_text("#outstanding")).strip() == "$10,270.00"
    assert "Late charges" in await page.inner_text("#penalty")
    await page.click("#promise summary")
    await _fits_the_phone(page)
    await page.screenshot(path=str(SCREENSHOTS / "debtor-page-en-US.png"), full_page=True)

    response = await page.goto(f"{base}/p/{tokens['old']}")
    assert response is not None and response.status == 410
    text = await page.inner_text("body")
    assert "expired" in text and "已过期" in text and "+1 800 555 0100" in text
    assert "10,270" not in text and "us-1" not in text
    await _fits_the_phone(page)
    await page.screenshot(path=str(SCREENSHOTS / "debtor-link-expired.png"), full_page=True)
