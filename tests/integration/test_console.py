"""The collectors' console over the real ASGI app, on SQLite and PostgreSQL: sign-in with
name and password, sessions and CSRF, the case page, one-off messages through the gate,
holds. (Attacks on sign-in and sessions: test_console_security.py.)"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.credentials import light_passwords
from dispatcher.domain import CaseStatus
from dispatcher.roles import Role
from dispatcher.services.people import People
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.tables import holds_t, messages_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.web.auth import SESSION_COOKIE
from dispatcher.wiring import Runtime
from tests.integration.test_collector_api import imported

ROOT = Path(__file__).resolve().parents[2]
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
PASSWORD = "correct horse battery staple"


@dataclass
class Console:
    client: httpx.AsyncClient
    clock: FakeClock
    people: People

    def add(self, name: str, *roles: Role, password: str = PASSWORD) -> None:
        self.people.add_user(name, frozenset(roles or (Role.COLLECTOR,)), "test-admin")
        self.people.set_password(name, password, "test-admin")


@pytest.fixture
async def console(engine: Engine, config: Config) -> AsyncIterator[Console]:
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1"), imported("P1", CaseStatus.PAID)], clock.now())
    settings = Settings(public_url="https://d.example", signing_key="console-key")
    app = create_app(Runtime(settings, clock, config=config, engine=engine, passwords=light_passwords(),
                             templates=TemplateSet(ROOT / "templates", config)).web())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://d.example") as c:
        world = Console(c, clock, app.collaborators.people)
        for name in ("agent7", "lead.li"):
            world.add(name, Role.COLLECTOR)
        yield world
    await app.collaborators.receipts.aclose()


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page carries no CSRF token"
    return match.group(1)


async def post_sign_in(c: httpx.AsyncClient, user: str, password: str, next: str = "/ui/cases/A1") -> httpx.Response:
    """Open the sign-in page (its nonce cookie and CSRF token), then send the form."""
    page = await c.get("/ui/login", params={"next": next})
    return await c.post("/ui/login", data={"user": user, "password": password, "next": next,
                                           "csrf": csrf_of(page.text)})


async def sign_in(c: httpx.AsyncClient, user: str = "agent7", password: str = PASSWORD) -> None:
    r = await post_sign_in(c, user, password)
    assert r.status_code == 303 and r.headers["location"] == "/ui/cases/A1", r.text
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(f"{SESSION_COOKIE}="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" in cookie and "Path=/ui" in cookie


async def test_pages_need_a_session_and_the_right_password(console: Console) -> None:
    c = console.client
    r = await c.get("/ui/cases/A1")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/cases/A1"
    r = await post_sign_in(c, "agent7", "wrong password!")
    assert r.status_code == 401 and "do not match" in r.text
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    r = await post_sign_in(c, "", PASSWORD)
    assert r.status_code == 400
    # an open redirect is not possible: only our own pages are followed after sign-in
    r = await post_sign_in(c, "agent7", PASSWORD, next="//evil.example/x")
    assert r.headers["location"] == "/ui/queue"  # a collector's start page
    c.cookies.clear()
    c.cookies.set(SESSION_COOKIE, "forged-session-secret", domain="d.example", path="/ui")
    assert (await c.get("/ui/cases/A1")).status_code == 303


async def test_the_session_expires_by_the_clock(console: Console) -> None:
    c, clock = console.client, console.clock
    await sign_in(c)
    assert (await c.get("/ui/cases/A1")).status_code == 200
    clock.advance(hours=11)
    assert (await c.get("/ui/cases/A1")).status_code == 200
    clock.advance(hours=1)
    assert (await c.get("/ui/cases/A1")).status_code == 303


async def test_case_page_shows_decisions_messages_and_the_forms(console: Console) -> None:
    c = console.client
    await sign_in(c)
    page = (await c.get("/ui/cases/A1")).text
    assert 'id="case-id">A1<' in page and "dpd30" in page and "王伟" in page
    assert "<code>due</code>" in page  # the decision of each channel, with its reason code
    assert "+86***" in page or "****" in page  # contact points are masked
    assert "sms/dpd30/" in page  # approved templates to choose from
    assert "wang@example.com" not in page and "+8613812345678" not in page


async def test_case_page_states_the_outstanding_amount_and_local_days_past_due(
        console: Console, engine: Engine) -> None:
    c, clock = console.client, console.clock
    await sign_in(c)
    with engine.begin() as conn:
        repo.record_payment(conn, "A1", Decimal("1000.00"), "cashier", clock.now())
    clock.set(dt.datetime(2026, 12, 7, 0, 30, tzinfo=SHANGHAI))  # still the 6th in UTC
    page = (await c.get("/ui/cases/A1")).text
    assert 'id="outstanding">9325.00<' in page and 'id="paid-total">1000.00<' in page
    assert 'id="days-past-due">30<' in page and "Days past due (Asia/Shanghai)" in page


async def test_one_off_through_the_gate_and_its_refusal(console: Console,
                                                        engine: Engine) -> None:
    c, clock = console.client, console.clock
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
    assert "(defer, outside_hours): it goes out at 2026-12-07 09:00 +08:00" in page  # the debtor's time, to the minute

    # a closed case refuses with its reason code
    csrf_p = csrf_of((await c.get("/ui/cases/P1")).text)
    r = await c.post("/ui/cases/P1/messages", data={"channel": "sms", "template": "", "csrf": csrf_p})
    page = (await c.get(r.headers["location"])).text
    assert "Refused: case_closed" in page


async def test_forms_without_the_csrf_token_change_nothing(console: Console,
                                                           engine: Engine) -> None:
    c = console.client
    await sign_in(c)
    for path, data in [("/ui/cases/A1/messages", {"channel": "sms"}), ("/ui/cases/A1/holds", {"reason": "legal_hold"}),
                       ("/ui/cases/A1/holds/release", {})]:
        r = await c.post(path, data={**data, "csrf": "forged"})
        assert r.status_code == 403 and "expired" in r.text
    with engine.connect() as conn:
        assert conn.execute(select(messages_t)).first() is None
        assert conn.execute(select(holds_t)).first() is None


async def test_holds_placed_and_released_from_the_page(console: Console) -> None:
    c = console.client
    await sign_in(c, "lead.li")
    csrf = csrf_of((await c.get("/ui/cases/A1")).text)
    r = await c.post("/ui/cases/A1/holds", data={"reason": "collector_hold", "until": "2026-12-20",
                                                 "note": "called back", "csrf": csrf})
    page = (await c.get(r.headers["location"])).text
    # the date is the debtor's (A1 is in Shanghai): the hold ends at 00:00 there (SPEC 11)
    assert "Hold collector_hold placed." in page and "2026-12-20 00:00 +08:00" in page and "lead.li" in page
    assert "<code>collector_hold</code>" in page  # every channel's decision says why it waits
    r = await c.post("/ui/cases/A1/holds", data={"reason": "payment_claimed", "csrf": csrf})
    assert "Choose a hold reason" in (await c.get(r.headers["location"])).text
    r = await c.post("/ui/cases/A1/holds", data={"reason": "legal_hold", "until": "2026-01-01", "csrf": csrf})
    assert "in the future" in (await c.get(r.headers["location"])).text
    # releasing asks first: the first POST changes nothing
    r = await c.post("/ui/cases/A1/holds/release", data={"reason": "collector_hold", "csrf": csrf})
    assert r.status_code == 200 and 'id="confirm-release"' in r.text and "collector_hold" in r.text
    assert "<code>collector_hold</code>" in (await c.get("/ui/cases/A1")).text
    r = await c.post("/ui/cases/A1/holds/release", data={"reason": "collector_hold", "csrf": csrf, "confirm": "yes"})
    page = (await c.get(r.headers["location"])).text
    assert "Released 1 hold(s)." in page and 'id="no-holds"' in page


async def test_a_collector_cannot_release_legal_or_cease_communication_holds(console: Console,
                                                                           engine: Engine) -> None:
    c = console.client
    await sign_in(c, "lead.li")
    csrf = csrf_of((await c.get("/ui/cases/A1")).text)
    for reason in ("legal_hold", "cease_communication", "collector_hold"):
        await c.post("/ui/cases/A1/holds", data={"reason": reason, "csrf": csrf})
    r = await c.post("/ui/cases/A1/holds/release", data={"reason": "legal_hold", "csrf": csrf})
    assert "Only compliance may release a legal_hold hold." in (await c.get(r.headers["location"])).text
    r = await c.post("/ui/cases/A1/holds/release", data={"reason": "", "csrf": csrf, "confirm": "yes"})  # all
    assert "Released 1 hold(s)." in (await c.get(r.headers["location"])).text
    with engine.connect() as conn:
        held = set(conn.execute(select(holds_t.c.reason).where(holds_t.c.released_at.is_(None))).scalars())
    assert held == {"legal_hold", "cease_communication"}
    console.add("合规张", Role.COMPLIANCE)
    await sign_in(c, "合规张")
    csrf = csrf_of((await c.get("/ui/cases/A1")).text)
    r = await c.post("/ui/cases/A1/holds/release", data={"reason": "", "csrf": csrf, "confirm": "yes"})
    assert "Released 2 hold(s)." in (await c.get(r.headers["location"])).text


async def test_find_a_case(console: Console) -> None:
    c = console.client
    await sign_in(c)
    r = await c.get("/ui/cases", params={"case_id": "A1"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/cases/A1"
    r = await c.get("/ui/cases", params={"case_id": "NOPE"})
    assert r.status_code == 404 and "No case NOPE" in r.text
    assert (await c.get("/ui/cases/NOPE")).status_code == 404


async def test_the_console_needs_no_api_token(console: Console) -> None:
    """Users sign in with passwords: DISPATCHER_API_TOKEN (bootstrap, API only) is not needed."""
    await sign_in(console.client)
    assert (await console.client.get("/ui/cases/A1")).status_code == 200
