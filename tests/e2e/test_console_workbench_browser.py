"""A collector's day in a real headless Chromium, on SQLite: 张伟 signs in with the
Chinese UI, lands on the task queue, claims the task a PAID reply (已还款) opened,
records the payment on the case and closes the task with a note; finds another case by
the last 4 digits of its phone, reads a one-off's exact text before sending it, and
takes a promise to pay. Every page fits a 1280 px screen and a 390 px phone (no
horizontal scrolling); screenshots of each, in both languages, go to var/screenshots/.
"""

from __future__ import annotations

import dataclasses
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
from dispatcher.store.tables import events_t, holds_t, messages_t, tasks_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime
from tests.e2e.test_console_browser import PASSWORD, SCREENSHOTS
from tests.integration.test_collector_api import imported

ROOT = Path(__file__).resolve().parents[2]
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


@pytest.fixture
def served(tmp_path: Path, config: Config) -> Iterator[tuple[str, Engine, FakeClock]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'workbench.db'}")
    ensure_schema(engine)
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI))
    b2 = imported("B2")
    b2 = dataclasses.replace(b2, case=dataclasses.replace(b2.case, name="李娜", phone="+8613900004321",
                                                           email="lina@example.com"))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1"), b2], clock.now())
    settings = Settings(public_url="http://127.0.0.1", signing_key="browser-key")
    app = create_app(Runtime(settings, clock, config=config, engine=engine, passwords=light_passwords(),
                             templates=TemplateSet(ROOT / "templates", config)).web())
    people = app.collaborators.people
    people.add_user("张伟", frozenset({Role.COLLECTOR}), "test-admin")
    people.set_password("张伟", PASSWORD, "test-admin")
    # the debtor of A1 answers a reminder: "paid already" — a task to verify the claim
    app.collaborators.receipts.inbound_sms("SM-paid-1", "+8613812345678", "已还款")
    app.collaborators.receipts.inbound_sms("SM-free-2", "+8613812345678", "我失业了，可以下个月还吗？")
    try:
        with serve_in_thread(app, name="workbench-web") as port:
            yield f"http://127.0.0.1:{port}", engine, clock
    finally:
        app.collaborators.receipts.close()
        engine.dispose()


async def new_page(browser: Any, locale: str, width: str = "desktop") -> Any:
    w, h = WIDTHS[width]
    context = await browser.new_context(locale=locale, viewport={"width": w, "height": h},
                                        timezone_id="Europe/Berlin")  # the collector is not where the debtor is
    context.set_default_timeout(10_000)
    return await context.new_page()


async def fits(page: Any, name: str) -> None:
    """No horizontal scrolling at this width; a full-page screenshot under var/screenshots/."""
    width = await page.evaluate("document.documentElement.scrollWidth")
    inner = await page.evaluate("window.innerWidth")
    assert width <= inner, f"{name}: the page is {width} px wide in a {inner} px window"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def sign_in(page: Any, base: str, name: str = "张伟") -> None:
    await page.goto(f"{base}/ui/login")
    await page.fill("#user", name)
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_url(f"{base}/ui/queue")


async def test_a_collectors_day_in_chinese(served: tuple[str, Engine, FakeClock], browser: Any) -> None:
    base, engine, _clock = served
    page = await new_page(browser, "zh-CN")
    await page.goto(f"{base}/ui/login")
    assert await page.inner_text("#sign-in") == "登录"  # the browser asks for Chinese
    await sign_in(page, base)
    assert await page.inner_text("#who") == "张伟"
    assert "任务队列" in await page.inner_text("h1")
    await fits(page, "workbench-queue-zh-1280")

    # the PAID claim: claim it from the queue, then work it on the case page
    row = page.locator('#tasks tr[data-kind="verify_payment_claim"]')
    assert "已还款" in await row.inner_text()
    task_id = int(await row.get_attribute("data-task"))
    await row.locator("button.claim").click()
    await page.wait_for_selector("#result")
    assert f"任务 {task_id} 已由你认领" in await page.inner_text("#result")
    await page.locator(f'#tasks tr[data-task="{task_id}"] a:has-text("去处理")').click()
    await page.wait_for_url(f"{base}/ui/cases/A1#task-{task_id}")
    assert await page.inner_text("#debtor-name") == "王伟"
    assert "我失业了，可以下个月还吗？" in await page.inner_text("#replies-section")  # the free text, in view
    assert "+08:00" in await page.inner_text("#debtor-time")
    # the collector's own time alongside (Berlin: 03:00 when it is 10:00 in Shanghai)
    mine = await page.get_attribute("#debtor-time time", "data-mine")
    assert mine is not None and mine.startswith("你:") and "03:00" in mine
    await fits(page, "workbench-case-zh-1280")

    await page.fill("#payment-amount", "10325.00")
    await page.click("#record-payment")
    await page.wait_for_selector("#result")
    assert "已记录还款 10325.00" in await page.inner_text("#result")
    # paid in full: the case closes, and its task with it (done by the system, saying
    # why), so there is nothing left for the collector to close
    assert await page.locator(f"#done-note-{task_id}").count() == 0
    with engine.connect() as conn:
        task = conn.execute(select(tasks_t).where(tasks_t.c.id == task_id)).one()
        payment = conn.execute(select(events_t).where(events_t.c.kind == "payment_recorded")).one()
    assert (task.state, task.done_by, task.note) == ("done", "system", "case closed: paid in full")
    assert payment.actor == "张伟"

    # another case, found by the last 4 digits of its phone
    await page.goto(f"{base}/ui/queue")
    await page.fill("#q", "4321")
    await page.click("#search")
    await page.wait_for_selector("#results")
    assert "李娜" not in await page.inner_text("#results")  # masked
    await fits(page, "workbench-search-zh-1280")
    await page.click('#results a:has-text("B2")')
    await page.wait_for_url(f"{base}/ui/cases/B2")

    # a one-off: only SMS and e-mail exist for stage dpd30; the text is read before it goes
    assert await page.eval_on_selector_all("#channel option", "os => os.map(o => o.value)") == ["sms", "email"]
    await page.select_option("#channel", "sms")
    await page.click("#preview")
    await page.wait_for_selector("#preview-text")
    preview = await page.inner_text("#preview-text")
    assert "¥10,325.00" in preview and "/p/xxxxxxxxxxxxxxxx" in preview
    await fits(page, "workbench-preview-zh-1280")
    await page.click("#send")
    await page.wait_for_selector("#result")
    with engine.connect() as conn:
        one_off = conn.execute(select(messages_t).where(messages_t.c.kind == "one_off")).one()
    assert (one_off.case_id, one_off.created_by) == ("B2", "张伟")
    queued = await page.inner_text(f'#messages tr[data-id="{one_off.id}"]')
    assert preview.split("http")[0] in queued  # the queued one-off shows the text that was previewed

    # a promise to pay, a day in the debtor's zone
    await page.fill("#promise-date", "2026-12-12")
    await page.click("#record-promise")
    await page.wait_for_selector("#result")
    assert "2026-12-12" in await page.inner_text("#result")
    assert "2026-12-13 00:00 +08:00" in await page.inner_text("#holds")
    with engine.connect() as conn:
        hold = conn.execute(select(holds_t).where(holds_t.c.reason == "promise_to_pay")).one()
    assert (hold.case_id, hold.placed_by) == ("B2", "张伟")

    # the phone number, revealed once and recorded
    await page.click("#reveal-sms")
    await page.wait_for_selector(".address.revealed")
    assert await page.inner_text("#address-sms") == "+8613900004321"
    await fits(page, "workbench-case-revealed-zh-1280")
    with engine.connect() as conn:
        revealed = conn.execute(select(events_t).where(events_t.c.kind == "contact_revealed")).one()
    assert (revealed.case_id, revealed.actor) == ("B2", "张伟")


@pytest.mark.parametrize("locale,lang", [("zh-CN", "zh"), ("en-US", "en")])
async def test_every_page_fits_a_desktop_and_a_phone(served: tuple[str, Engine, FakeClock], browser: Any,
                                                     locale: str, lang: str) -> None:
    base, _engine, _clock = served
    for width in WIDTHS:
        page = await new_page(browser, locale, width)
        await page.goto(f"{base}/ui/login")
        await fits(page, f"workbench-sign-in-{lang}-{WIDTHS[width][0]}")
        await sign_in(page, base)
        assert await page.get_attribute("html", "lang") == locale
        await fits(page, f"workbench-queue-{lang}-{WIDTHS[width][0]}")
        await page.goto(f"{base}/ui/cases/A1")
        await fits(page, f"workbench-case-{lang}-{WIDTHS[width][0]}")
        await page.goto(f"{base}/ui/cases/A1/preview?channel=email")
        await fits(page, f"workbench-preview-{lang}-{WIDTHS[width][0]}")
        await page.goto(f"{base}/ui/cases?q=5678")
        await fits(page, f"workbench-search-{lang}-{WIDTHS[width][0]}")
        await page.context.close()


async def test_the_switcher_changes_the_language_and_keeps_it(served: tuple[str, Engine, FakeClock],
                                                              browser: Any) -> None:
    base, _engine, _clock = served
    page = await new_page(browser, "en-US")
    await sign_in(page, base)
    assert await page.inner_text("#nav-queue") == "Queue"
    await page.click("#lang-zh-CN")
    await page.wait_for_selector("#nav-queue:has-text('任务队列')")
    assert page.url.endswith("/ui/queue")  # back where the switch was made
    await page.context.close()
    page = await new_page(browser, "en-US")  # another browser asking for English: the account's choice wins
    await sign_in(page, base)
    assert await page.inner_text("#nav-queue") == "任务队列"
