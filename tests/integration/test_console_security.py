"""Attacks on the console's sign-in and sessions (SPEC 14), over the real ASGI app on
SQLite and PostgreSQL: password guessing is rate limited per name and per client,
sign-in does not tell which names exist, a planted session is worthless (fixation),
every form needs its CSRF token, and disabling a user, changing their password or
signing out ends the session at once."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.credentials import Passwords, light_passwords
from dispatcher.roles import Role
from dispatcher.services.people import People
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.tables import events_t, holds_t, messages_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import WebApp, create_app
from dispatcher.web.auth import SESSION_COOKIE, SIGN_IN_COOKIE
from dispatcher.wiring import Runtime
from tests.integration.test_collector_api import imported
from tests.integration.test_console import PASSWORD, csrf_of, post_sign_in

ROOT = Path(__file__).resolve().parents[2]
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
BASE = "https://d.example"


class CountingPasswords(Passwords):
    """Light argon2 that counts verifications, and those made against the dummy hash."""

    def __init__(self) -> None:
        super().__init__(light_passwords()._hasher)
        self.verified = 0
        self.against_dummy = 0

    def verify(self, stored: str | None, password: str) -> bool:
        self.verified += 1
        self.against_dummy += stored is None
        return super().verify(stored, password)


@pytest.fixture
async def world(engine: Engine, config: Config) -> AsyncIterator[tuple[WebApp, FakeClock, CountingPasswords]]:
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1")], clock.now())
    passwords = CountingPasswords()
    app = create_app(Runtime(Settings(public_url=BASE, signing_key="k"), clock, config=config, engine=engine,
                             passwords=passwords, templates=TemplateSet(ROOT / "templates", config)).web())
    people = app.collaborators.people
    for name, roles in [("agent7", (Role.COLLECTOR,)), ("王小明", (Role.COLLECTOR,)), ("ops.li", (Role.OPS,)),
                        ("writer", (Role.AUTHOR,))]:
        people.add_user(name, frozenset(roles), "test-admin")
        people.set_password(name, PASSWORD, "test-admin")
    yield app, clock, passwords
    await app.collaborators.receipts.aclose()


def browser(app: WebApp, client_ip: str = "203.0.113.7") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(client_ip, 50000)), base_url=BASE)


def people_of(app: WebApp) -> People:
    return app.collaborators.people


async def test_guessing_one_name_pauses_its_sign_in_and_unknown_names_look_the_same(
        world: tuple[WebApp, FakeClock, CountingPasswords], engine: Engine) -> None:
    app, clock, passwords = world
    async with browser(app) as c:
        known = [await post_sign_in(c, "agent7", f"guess number {i}") for i in range(5)]
        unknown = [await post_sign_in(c, "nobody.here", f"guess number {i}") for i in range(5)]
        # the same answer whether or not the name exists, and the same argon2 work
        assert {r.status_code for r in known + unknown} == {401}
        assert {_error(r.text) for r in known + unknown} == {_error(known[0].text)}
        assert passwords.verified == 10 and passwords.against_dummy == 5
        # the sixth try for either name is refused without looking at the password: even the right one
        right = await post_sign_in(c, "agent7", PASSWORD)
        wrong_unknown = await post_sign_in(c, "nobody.here", PASSWORD)
        assert right.status_code == wrong_unknown.status_code == 429
        assert _error(right.text) == _error(wrong_unknown.text) and "Wait 15 minutes" in _error(right.text)
        assert SESSION_COOKIE not in right.headers.get("set-cookie", "")
        assert passwords.verified == 10
    # another name from the same client is not paused (per name) ...
    async with browser(app) as c:
        assert (await post_sign_in(c, "王小明", PASSWORD)).status_code == 303
    # ... and the paused name signs in again once the window has passed
    clock.advance(minutes=16)
    async with browser(app) as c:
        assert (await post_sign_in(c, "agent7", PASSWORD)).status_code == 303
    with engine.connect() as conn:
        refused = conn.execute(select(events_t.c.data).where(events_t.c.kind == "sign_in_refused")).scalars().all()
    assert sum('"rate_limited"' in d for d in refused) == 2 and sum('"bad_credentials"' in d for d in refused) == 10
    assert all(PASSWORD not in d and "guess" not in d for d in refused)  # never a password in the audit trail


async def test_one_client_guessing_many_names_is_paused(world: tuple[WebApp, FakeClock, CountingPasswords]) -> None:
    app, _clock, _ = world
    async with browser(app, "198.51.100.9") as c:
        for i in range(20):
            assert (await post_sign_in(c, f"name{i}", "not the password")).status_code == 401
        assert (await post_sign_in(c, "agent7", PASSWORD)).status_code == 429
    async with browser(app, "192.0.2.44") as c:  # another client is not affected
        assert (await post_sign_in(c, "agent7", PASSWORD)).status_code == 303


async def test_a_planted_session_is_worthless(world: tuple[WebApp, FakeClock, CountingPasswords],
                                              engine: Engine) -> None:
    """Session fixation: whatever cookie the browser had before signing in, the session
    after it is a new secret, and the old one (even a real session) no longer works."""
    app, _clock, _ = world
    async with browser(app) as attacker:
        assert (await post_sign_in(attacker, "ops.li", PASSWORD)).status_code == 303
        attackers_session = attacker.cookies[SESSION_COOKIE]
    async with browser(app) as victim:
        victim.cookies.set(SESSION_COOKIE, attackers_session, domain="d.example", path="/ui")
        r = await post_sign_in(victim, "agent7", PASSWORD)
        assert r.status_code == 303
        victims_session = victim.cookies[SESSION_COOKIE]
        assert victims_session != attackers_session and len(victims_session) >= 40
        assert "signed in as <strong id=\"who\">agent7" in (await victim.get("/ui/cases/A1")).text
    async with browser(app) as attacker:
        attacker.cookies.set(SESSION_COOKIE, attackers_session, domain="d.example", path="/ui")
        assert (await attacker.get("/ui/cases/A1")).status_code == 303  # the planted session was ended
        attacker.cookies.set(SESSION_COOKIE, "made-up", domain="d.example", path="/ui")
        assert (await attacker.get("/ui/cases/A1")).status_code == 303
    with engine.connect() as conn:
        ended = conn.execute(select(events_t.c.actor, events_t.c.data).where(events_t.c.kind == "signed_out")).one()
    assert ended.actor == "agent7" and '"session_of": "ops.li"' in ended.data  # whose session was ended, by whom
    # and two sign-ins never share a session
    sessions = set()
    for _ in range(3):
        async with browser(app) as c:
            await post_sign_in(c, "agent7", PASSWORD)
            sessions.add(c.cookies[SESSION_COOKIE])
    assert len(sessions) == 3


async def test_every_form_needs_its_csrf_token(world: tuple[WebApp, FakeClock, CountingPasswords],
                                               engine: Engine) -> None:
    app, _clock, _ = world
    async with browser(app) as c:
        # sign-in: no token, or a token of another browser's nonce
        login = await c.get("/ui/login")
        assert SIGN_IN_COOKIE in login.headers["set-cookie"]
        r = await c.post("/ui/login", data={"user": "agent7", "password": PASSWORD})
        assert r.status_code == 403 and SESSION_COOKIE not in r.headers.get("set-cookie", "")
        async with browser(app) as other:
            foreign = csrf_of((await other.get("/ui/login")).text)
        r = await c.post("/ui/login", data={"user": "agent7", "password": PASSWORD, "csrf": foreign})
        assert r.status_code == 403 and "expired" in r.text

        assert (await post_sign_in(c, "agent7", PASSWORD)).status_code == 303
        page = (await c.get("/ui/cases/A1")).text
        # every POST form on the page carries the token
        forms = re.findall(r'<form[^>]*method="post" action="([^"]+)"[^>]*>(.*?)</form>', page, flags=re.S)
        assert {action for action, _ in forms} == {"/ui/logout", "/ui/locale", "/ui/cases/A1/contacts/reveal",
                                                   "/ui/cases/A1/holds", "/ui/cases/A1/payments",
                                                   "/ui/cases/A1/promises", "/ui/cases/A1/notes"}
        assert all('name="csrf"' in body for _, body in forms)
        # a one-off is sent from its preview page, whose form carries the token too
        preview = (await c.get("/ui/cases/A1/preview", params={"channel": "sms"})).text
        sends = re.findall(r'<form[^>]*method="post" action="([^"]+)"[^>]*>(.*?)</form>', preview, flags=re.S)
        assert ("/ui/cases/A1/messages" in {a for a, _ in sends}) and all('name="csrf"' in b for _, b in sends)
        for path, data in [("/ui/cases/A1/messages", {"channel": "sms"}), ("/ui/cases/A1/holds",
                           {"reason": "legal_hold"}), ("/ui/cases/A1/holds/release", {}), ("/ui/logout", {}),
                           ("/ui/cases/A1/contacts/reveal", {"channel": "sms"}), ("/ui/locale", {"locale": "zh-CN"}),
                           ("/ui/cases/A1/payments", {"amount": "10"}),
                           ("/ui/cases/A1/promises", {"date": "2026-12-10"}),
                           ("/ui/cases/A1/notes", {"text": "x"}), ("/ui/tasks/1/claim", {}),
                           ("/ui/tasks/1/done", {"note": "x"})]:
            for token in (None, "forged", csrf_of(login.text)):
                fields = data if token is None else {**data, "csrf": token}
                r = await c.post(path, data=fields)
                assert r.status_code == 403 and "expired" in r.text, (path, token)
        assert (await c.get("/ui/cases/A1")).status_code == 200  # the refused sign-out signed nobody out
    with engine.connect() as conn:
        assert conn.execute(select(messages_t)).first() is None
        assert conn.execute(select(holds_t)).first() is None
        assert conn.execute(select(events_t).where(events_t.c.kind.in_(
            ["contact_revealed", "payment_recorded", "note_added", "task_claimed", "task_done"]))).first() is None


async def test_disabling_a_user_or_changing_the_password_ends_the_session_at_once(
        world: tuple[WebApp, FakeClock, CountingPasswords]) -> None:
    app, _clock, _ = world
    people = people_of(app)
    async with browser(app) as c:
        await post_sign_in(c, "王小明", PASSWORD)
        assert (await c.get("/ui/cases/A1")).status_code == 200
        people.set_password("王小明", "a brand new passphrase", "test-admin")
        assert (await c.get("/ui/cases/A1")).status_code == 303
        assert (await post_sign_in(c, "王小明", PASSWORD)).status_code == 401
        assert (await post_sign_in(c, "王小明", "a brand new passphrase")).status_code == 303
        csrf = csrf_of((await c.get("/ui/cases/A1")).text)
        people.disable_user("王小明", "test-admin")
        r = await c.post("/ui/cases/A1/holds", data={"reason": "collector_hold", "csrf": csrf})
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        # a disabled user cannot sign in, and hears the same as for a wrong password
        r = await post_sign_in(c, "王小明", "a brand new passphrase")
        assert r.status_code == 401 and "do not match" in r.text


async def test_signing_out_ends_the_session_on_the_server(world: tuple[WebApp, FakeClock, CountingPasswords],
                                                          engine: Engine) -> None:
    app, _clock, _ = world
    async with browser(app) as c:
        await post_sign_in(c, "agent7", PASSWORD)
        session = c.cookies[SESSION_COOKIE]
        csrf = csrf_of((await c.get("/ui/cases/A1")).text)
        r = await c.post("/ui/logout", data={"csrf": csrf})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    async with browser(app) as replay:  # a copy of the cookie taken before signing out
        replay.cookies.set(SESSION_COOKIE, session, domain="d.example", path="/ui")
        assert (await replay.get("/ui/cases/A1")).status_code == 303
    with engine.connect() as conn:
        kinds = conn.execute(select(events_t.c.kind, events_t.c.actor).where(events_t.c.case_id.is_(None))).all()
    assert ("signed_in", "agent7") in kinds and ("signed_out", "agent7") in kinds


async def test_roles_decide_what_the_console_shows_and_allows(world: tuple[WebApp, FakeClock, CountingPasswords],
                                                              engine: Engine) -> None:
    app, _clock, _ = world
    async with browser(app) as c:  # an author: no cases here
        r = await post_sign_in(c, "writer", PASSWORD, next="")
        assert r.headers["location"] == "/ui/home"
        home = (await c.get("/ui/home")).text
        assert "templates.draft" in home and "cases.read" not in home
        r = await c.get("/ui/cases/A1")
        assert r.status_code == 403 and "lacks the permission cases.read" in r.text
    async with browser(app) as c:  # ops: reads the case, may change nothing
        await post_sign_in(c, "ops.li", PASSWORD)
        page = (await c.get("/ui/cases/A1")).text
        assert 'id="case-id">A1<' in page and 'id="one-off"' not in page and 'id="place-hold"' not in page
        csrf = csrf_of(page)
        for path, data in [("/ui/cases/A1/messages", {"channel": "sms"}),
                           ("/ui/cases/A1/holds", {"reason": "legal_hold"})]:
            r = await c.post(path, data={**data, "csrf": csrf})
            assert r.status_code == 403 and "ops.li" in r.text
    with engine.connect() as conn:
        assert conn.execute(select(messages_t)).first() is None
        assert conn.execute(select(holds_t)).first() is None


async def test_names_in_any_script_are_one_person_whatever_their_form(
        world: tuple[WebApp, FakeClock, CountingPasswords], engine: Engine) -> None:
    app, _clock, _ = world
    people = people_of(app)
    people.add_user("Zoe\u0308 Ng", frozenset({Role.COLLECTOR}), "test-admin")  # decomposed ë
    people.set_password("zoë ng", PASSWORD, "test-admin")  # composed, other case
    async with browser(app) as c:
        assert (await post_sign_in(c, "ZOË  NG", PASSWORD)).status_code == 303
        csrf = csrf_of((await c.get("/ui/cases/A1")).text)
        await c.post("/ui/cases/A1/holds", data={"reason": "collector_hold", "csrf": csrf})
    async with browser(app) as c:
        assert (await post_sign_in(c, "王小明", PASSWORD)).status_code == 303
        csrf = csrf_of((await c.get("/ui/cases/A1")).text)
        await c.post("/ui/cases/A1/holds/release", data={"reason": "collector_hold", "csrf": csrf, "confirm": "yes"})
    with engine.connect() as conn:
        hold = conn.execute(select(holds_t)).one()
    assert (hold.placed_by, hold.released_by) == ("Zoë Ng", "王小明")  # stored NFC, as the user was added


def _error(page: str) -> str:
    match = re.search(r'id="error">([^<]*)<', page)
    assert match, "no error shown"
    return match.group(1)
