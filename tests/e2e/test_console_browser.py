"""The collectors' console in a real headless Chromium (Playwright driving the system's
Chromium) against the app served by uvicorn on loopback, on SQLite.

A collector signs in with name and password (a Chinese name too), opens a case, reads
why each channel waits or sends, sends a one-off SMS through the gate, places and
releases a hold. Screenshots go to var/screenshots/ (named in the README). The page in
Chromium is the `page` fixture of tests/e2e/conftest.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.credentials import light_passwords
from dispatcher.roles import Role
from dispatcher.sandbox.asgi_server import serve_in_thread
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.db import ensure_schema, make_engine
from dispatcher.store.tables import holds_t, messages_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime
from tests.integration.test_collector_api import imported

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
SCREENSHOTS = ROOT / "var" / "screenshots"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


@pytest.fixture
def served(tmp_path: Path, config: Config) -> Iterator[tuple[str, Engine, FakeClock]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'console.db'}")
    ensure_schema(engine)
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1")], clock.now())
    settings = Settings(public_url="http://127.0.0.1", signing_key="browser-key")
    app = create_app(Runtime(settings, clock, config=config, engine=engine, passwords=light_passwords(),
                             templates=TemplateSet(ROOT / "templates", config)).web())
    people = app.collaborators.people
    for name, role in [("agent7", Role.COLLECTOR), ("lead.li", Role.COLLECTOR), ("王小明", Role.COLLECTOR),
                       ("writer", Role.AUTHOR)]:
        people.add_user(name, frozenset({role}), "test-admin")
        people.set_password(name, PASSWORD, "test-admin")
    try:
        with serve_in_thread(app, name="console-web") as port:
            yield f"http://127.0.0.1:{port}", engine, clock
    finally:
        app.collaborators.receipts.close()
        engine.dispose()


async def sign_in(page: Any, base: str, user: str, lands_on: str) -> None:
    """Sign in from the sign-in page (asked to go to `lands_on` next, unless it is the
    start page the console picks) and wait until the console shows `lands_on`."""
    target = "" if lands_on == "/ui/home" else f"?next={lands_on}"
    await page.goto(f"{base}/ui/login{target}")
    await page.fill("#user", user)
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_url(f"{base}{lands_on}")


async def test_a_collector_signs_in_reads_the_case_and_sends_a_one_off(
        served: tuple[str, Engine, FakeClock], page: Any) -> None:
    base, engine, _clock = served
    await page.goto(f"{base}/ui/cases/A1")
    assert page.url.startswith(f"{base}/ui/login")  # no session: the sign-in page, then back here
    await page.fill("#user", "agent7")
    await page.fill("#password", "not the password")
    await page.click("#sign-in")
    assert "do not match" in await page.inner_text("#error")
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_url(f"{base}/ui/cases/A1")
    assert await page.inner_text("#who") == "agent7"
    assert await page.inner_text("#case-id") == "A1"
    assert await page.inner_text("#case-stage") == "dpd30"
    sms_row = page.locator('#decisions tr[data-channel="sms"]')
    assert "send" in await sms_row.inner_text() and "due" in await sms_row.inner_text()

    await page.select_option("#channel", "sms")
    await page.click("#preview")  # the exact text first, then send
    await page.wait_for_selector("#preview-text")
    await page.click("#send")
    await page.wait_for_selector("#result")
    assert "queued (send, due): it goes out now" in await page.inner_text("#result")
    with engine.connect() as conn:
        row = conn.execute(select(messages_t).where(messages_t.c.kind == "one_off")).one()
    assert (row.case_id, row.channel, row.status, row.created_by) == ("A1", "sms", "queued", "agent7")
    assert str(row.id) in await page.locator(f'#messages tr[data-id="{row.id}"]').inner_text()


async def test_a_hold_from_the_page_stops_every_channel_until_released(
        served: tuple[str, Engine, FakeClock], page: Any) -> None:
    base, engine, _clock = served
    await sign_in(page, base, "lead.li", "/ui/cases/A1")

    await page.select_option("#hold-reason", "collector_hold")
    await page.fill("#hold-until", "2026-12-20")
    await page.fill("#hold-note", "customer asked to call back")
    await page.click("#hold")
    await page.wait_for_selector("#result")
    assert await page.inner_text("#result") == "Hold collector_hold placed."
    for channel in ("sms", "email"):  # the channels of stage dpd30
        row = await page.locator(f'#decisions tr[data-channel="{channel}"]').inner_text()
        assert "skip" in row and "collector_hold" in row
    holds = await page.inner_text("#holds")
    assert "2026-12-20 00:00 +08:00" in holds and "lead.li" in holds  # the debtor's day (Shanghai)

    # a one-off is refused while the hold is in force, with its reason code
    await page.click("#preview")
    assert "collector_hold" in await page.inner_text("#preview-reason")
    await page.click("#send")
    await page.wait_for_selector("#result")
    assert (await page.inner_text("#result")).startswith("Refused: collector_hold")

    await page.click('#holds button:has-text("Release")')
    await page.click("#confirm-release")  # releasing asks first
    await page.wait_for_selector("#no-holds")
    assert await page.inner_text("#result") == "Released 1 hold(s)."
    with engine.connect() as conn:
        hold = conn.execute(select(holds_t)).one()
        one_offs = conn.execute(select(messages_t)).all()
    assert (hold.reason, hold.placed_by, hold.released_by) == ("collector_hold", "lead.li", "lead.li")
    assert one_offs == []


async def test_why_the_dispatcher_waits_is_told_in_the_debtors_time(
        served: tuple[str, Engine, FakeClock], page: Any) -> None:
    """The "why" column's instants are the debtor's (Shanghai, with the offset), as every
    other time on the page, never the UTC instants of the decision's text."""
    base, _engine, clock = served
    await sign_in(page, base, "lead.li", "/ui/cases/A1")
    await page.select_option("#hold-reason", "collector_hold")
    await page.fill("#hold-until", "2026-12-20")
    await page.click("#hold")
    await page.wait_for_selector("#result")
    why = await page.inner_text('#decisions tr[data-channel="sms"] td.why')
    assert "collector_hold hold active until 2026-12-20 00:00 +08:00" in why
    assert "+00:00" not in why and "T16:00" not in why
    # the instant is a <time> like the others: the reader's own time on hover
    held = page.locator('#decisions tr[data-channel="sms"] td.why time')
    assert await held.get_attribute("datetime") == "2026-12-19T16:00:00+00:00"
    assert (await held.get_attribute("title")).startswith("Asia/Shanghai")
    await page.screenshot(path=str(SCREENSHOTS / "console-case-why-debtors-time.png"), full_page=True)

    # before the window opens: the next legal moment in the debtor's time, with its offset
    await page.click('#holds button:has-text("Release")')
    await page.click("#confirm-release")
    await page.wait_for_selector("#no-holds")
    clock.set(dt.datetime(2026, 12, 7, 7, 0, tzinfo=SHANGHAI))
    await page.goto(f"{base}/ui/cases/A1")
    why = await page.inner_text('#decisions tr[data-channel="sms"] td.why')
    assert "07:00 +08:00 is outside the contact hours" in why
    assert "next legal moment Mon 2026-12-07 09:00 +08:00" in why
    await page.click("#preview")  # the one-off's preview words it the same way
    assert "next legal moment Mon 2026-12-07 09:00 +08:00" in await page.inner_text("#preview-detail")
    await page.click("#send")
    await page.wait_for_selector("#result")
    assert "it goes out at 2026-12-07 09:00 +08:00, the next legal moment" in await page.inner_text("#result")


async def test_a_collector_with_a_chinese_name_signs_in_and_works_under_that_name(
        served: tuple[str, Engine, FakeClock], page: Any) -> None:
    base, engine, _clock = served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.goto(f"{base}/ui/cases/A1")
    await page.fill("#user", "王小明")
    await page.fill("#password", PASSWORD)
    await page.screenshot(path=str(SCREENSHOTS / "console-sign-in.png"), full_page=True)
    await page.click("#sign-in")
    await page.wait_for_url(f"{base}/ui/cases/A1")
    assert await page.inner_text("#who") == "王小明"
    assert await page.inner_text("#roles") == "(collector)"
    assert await page.inner_text("#case-id") == "A1"
    await page.fill("#hold-note", "客户要求下周回电")
    await page.click("#hold")
    await page.wait_for_selector("#result")
    assert "王小明" in await page.inner_text("#holds")
    await page.screenshot(path=str(SCREENSHOTS / "console-case-collector-zh.png"), full_page=True)
    with engine.connect() as conn:
        hold = conn.execute(select(holds_t)).one()
    assert (hold.placed_by, hold.note) == ("王小明", "客户要求下周回电")

    # sign out: the session is gone, the case page asks to sign in again
    await page.click("#sign-out")
    await page.wait_for_url(f"{base}/ui/login")
    await page.goto(f"{base}/ui/cases/A1")
    assert page.url.startswith(f"{base}/ui/login")


async def test_an_author_does_not_get_the_collectors_pages(served: tuple[str, Engine, FakeClock], page: Any) -> None:
    base, _engine, _clock = served
    await sign_in(page, base, "writer", "/ui/home")
    assert await page.inner_text("#home-roles") == "author"
    await page.screenshot(path=str(SCREENSHOTS / "console-home-author.png"), full_page=True)
    response = await page.goto(f"{base}/ui/cases/A1")
    assert response is not None and response.status == 403
    assert "lacks the permission cases.read" in await page.inner_text("main")


async def test_the_api_docs_render_offline(served: tuple[str, Engine, FakeClock], page: Any) -> None:
    base, _engine, _clock = served
    await page.goto(f"{base}/docs")
    await page.wait_for_selector(".swagger-ui .info .title")
    assert "dispatcher" in await page.inner_text(".swagger-ui .info .title")
    await page.wait_for_selector('[data-path="/api/cases/{case_id}/messages"]')
    await page.screenshot(path=str(SCREENSHOTS / "api-docs.png"), full_page=True)
