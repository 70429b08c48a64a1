"""The collectors' console over the real ASGI app, on SQLite and PostgreSQL: sign-in,
sessions and CSRF, the case page, one-off messages through the gate, holds."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.domain import CaseStatus
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.tables import holds_t, messages_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.web.console import COOKIE, ConsoleSessions
from dispatcher.wiring import Runtime
from tests.integration.test_collector_api import imported

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "console-token-for-tests"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


@pytest.fixture
async def console(engine: Engine, config: Config) -> AsyncIterator[tuple[httpx.AsyncClient, FakeClock]]:
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1"), imported("P1", CaseStatus.PAID)], clock.now())
    settings = Settings(public_url="https://d.example", api_token=TOKEN, signing_key="console-key")
    app = create_app(Runtime(settings, clock, config=config, engine=engine,
                             templates=TemplateSet(ROOT / "templates", config)).web())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://d.example") as c:
        yield c, clock
    await app.collaborators.receipts.aclose()


async def sign_in(c: httpx.AsyncClient, user: str = "agent7") -> None:
    r = await c.post("/ui/login", data={"user": user, "token": TOKEN, "next": "/ui/cases/A1"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/cases/A1"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" in cookie and "Path=/ui" in cookie


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page carries no CSRF token"
    return match.group(1)


async def test_pages_need_a_session_and_the_right_token(console: tuple[httpx.AsyncClient, FakeClock]) -> None:
    c, _ = console
    r = await c.get("/ui/cases/A1")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/cases/A1"
    r = await c.post("/ui/login", data={"user": "agent7", "token": "wrong", "next": "/ui/cases/A1"})
    assert r.status_code == 401 and "not right" in r.text and COOKIE not in r.headers.get("set-cookie", "")
    r = await c.post("/ui/login", data={"user": "bad name!", "token": TOKEN})
    assert r.status_code == 400
    # an open redirect is not possible: only our own pages are followed after sign-in
    r = await c.post("/ui/login", data={"user": "agent7", "token": TOKEN, "next": "//evil.example/x"})
    assert r.headers["location"] == "/ui/cases"
    c.cookies.clear()
    c.cookies.set(COOKIE, "agent7|ffffffffff.forged", domain="d.example", path="/ui")
    assert (await c.get("/ui/cases/A1")).status_code == 303


async def test_the_session_expires_by_the_clock(console: tuple[httpx.AsyncClient, FakeClock]) -> None:
    c, clock = console
    await sign_in(c)
    assert (await c.get("/ui/cases/A1")).status_code == 200
    clock.advance(hours=13)
    assert (await c.get("/ui/cases/A1")).status_code == 303
    sessions = ConsoleSessions("console-key")
    cookie = sessions.issue("agent7", clock.now())
    assert sessions.user(cookie, clock.now()) == "agent7"
    assert sessions.user(cookie, clock.now() + dt.timedelta(hours=12)) is None
    assert ConsoleSessions("another-key").user(cookie, clock.now()) is None


async def test_case_page_shows_decisions_messages_and_the_forms(console: tuple[httpx.AsyncClient, FakeClock]) -> None:
    c, _ = console
    await sign_in(c)
    page = (await c.get("/ui/cases/A1")).text
    assert 'id="case-id">A1<' in page and "dpd30" in page and "王伟" in page
    assert "<code>due</code>" in page  # the decision of each channel, with its reason code
    assert "+86***" in page or "****" in page  # contact points are masked
    assert "sms/dpd30/" in page  # approved templates to choose from
    assert "wang@example.com" not in page and "+8613812345678" not in page


async def test_case_page_states_the_outstanding_amount_and_local_days_past_due(
        console: tuple[httpx.AsyncClient, FakeClock], engine: Engine) -> None:
    c, clock = console
    await sign_in(c)
    with engine.begin() as conn:
        repo.record_payment(conn, "A1", Decimal("1000.00"), "cashier", clock.now())
    clock.set(dt.datetime(2026, 12, 7, 0, 30, tzinfo=SHANGHAI))  # still the 6th in UTC
    page = (await c.get("/ui/cases/A1")).text
    assert 'id="outstanding">9325.00<' in page and 'id="paid-total">1000.00<' in page
    assert 'id="days-past-due">30<' in page and "days past due (Asia/Shanghai)" in page


async def test_one_off_through_the_gate_and_its_refusal(console: tuple[httpx.AsyncClient, FakeClock],
                                                        engine: Engine) -> None:
    c, clock = console
    await sign_in(c)
    csrf = csrf_of((await c.get("/ui/cases/A1")).text)
    r = await c.post("/ui/cases/A1/messages", data={"channel": "sms", "template": "", "csrf": csrf})
    assert r.status_code == 303
    page = (await c.get(r.headers["location"])).text
    assert re.search(r"Message \d+ queued \(send, due\): it goes out now", page)
    with engine.connect() as conn:
        row = conn.execute(select(messages_t).where(messages_t.c.kind == "one_off")).one()
    assert (row.case_id, row.channel, row.status, row.created_by) == ("A1", "sms", "queued", "agent7")

    # outside the window: queued for the next legal moment
    clock.set(dt.datetime(2026, 12, 7, 8, 0, tzinfo=SHANGHAI))
    r = await c.post("/ui/cases/A1/messages", data={"channel": "email", "template": "", "csrf": csrf})
    page = (await c.get(r.headers["location"])).text
    assert "(defer, outside_hours): it goes out at 2026-12-07T09:00:00+08:00" in page

    # a closed case refuses with its reason code
    csrf_p = csrf_of((await c.get("/ui/cases/P1")).text)
    r = await c.post("/ui/cases/P1/messages", data={"channel": "sms", "template": "", "csrf": csrf_p})
    page = (await c.get(r.headers["location"])).text
    assert "Refused: case_closed" in page


async def test_forms_without_the_csrf_token_change_nothing(console: tuple[httpx.AsyncClient, FakeClock],
                                                           engine: Engine) -> None:
    c, _ = console
    await sign_in(c)
    for path, data in [("/ui/cases/A1/messages", {"channel": "sms"}), ("/ui/cases/A1/holds", {"reason": "legal_hold"}),
                       ("/ui/cases/A1/holds/release", {})]:
        r = await c.post(path, data={**data, "csrf": "forged"})
        assert r.status_code == 403 and "expired" in r.text
    with engine.connect() as conn:
        assert conn.execute(select(messages_t)).first() is None
        assert conn.execute(select(holds_t)).first() is None


async def test_holds_placed_and_released_from_the_page(console: tuple[httpx.AsyncClient, FakeClock]) -> None:
    c, _ = console
    await sign_in(c, "lead.li")
    csrf = csrf_of((await c.get("/ui/cases/A1")).text)
    r = await c.post("/ui/cases/A1/holds", data={"reason": "collector_hold", "until": "2026-12-20",
                                                 "note": "called back", "csrf": csrf})
    page = (await c.get(r.headers["location"])).text
    # the date is the debtor's (A1 is in Shanghai): the hold ends at 00:00 there (SPEC 11)
    assert "Hold collector_hold placed." in page and "2026-12-20T00:00:00+08:00" in page and "lead.li" in page
    assert "<code>collector_hold</code>" in page  # every channel's decision says why it waits
    r = await c.post("/ui/cases/A1/holds", data={"reason": "payment_claimed", "csrf": csrf})
    assert "Choose a hold reason" in (await c.get(r.headers["location"])).text
    r = await c.post("/ui/cases/A1/holds", data={"reason": "legal_hold", "until": "2026-01-01", "csrf": csrf})
    assert "in the future" in (await c.get(r.headers["location"])).text
    r = await c.post("/ui/cases/A1/holds/release", data={"reason": "collector_hold", "csrf": csrf})
    page = (await c.get(r.headers["location"])).text
    assert "Released 1 hold(s)." in page and 'id="no-holds"' in page


async def test_find_a_case(console: tuple[httpx.AsyncClient, FakeClock]) -> None:
    c, _ = console
    await sign_in(c)
    r = await c.get("/ui/cases", params={"case_id": "A1"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/cases/A1"
    r = await c.get("/ui/cases", params={"case_id": "NOPE"})
    assert r.status_code == 404 and "No case NOPE" in r.text
    assert (await c.get("/ui/cases/NOPE")).status_code == 404


async def test_disabled_without_a_token(engine: Engine, config: Config) -> None:
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI))
    app = create_app(Runtime(Settings(signing_key="k"), clock, config=config, engine=engine).web())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        r = await c.get("/ui/login")
        assert r.status_code == 503 and "DISPATCHER_API_TOKEN" in r.text
    await app.collaborators.receipts.aclose()
