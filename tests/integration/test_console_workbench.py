"""The console as a collectors' workbench, over the real ASGI app on SQLite and
PostgreSQL: the UI's language (zh-CN, en-US: Accept-Language, then the user's choice,
kept on their account), names in any script, the one-off menus offering only the
templates that exist for the case's stage and locale, the preview of the exact text,
revealing a phone number (collectors only, audited), the task queue (overdue first,
claim, done with a note) and the payment, promise and note forms."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.credentials import light_passwords
from dispatcher.roles import InvalidName, Role, normalise_name
from dispatcher.services.people import People
from dispatcher.services.receipts import Receipts
from dispatcher.services.tasks import TaskKind, open_task
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.tables import events_t, holds_t, messages_t, tasks_t, users_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime
from tests.integration.test_collector_api import imported
from tests.integration.test_console import PASSWORD, csrf_of, post_sign_in

ROOT = Path(__file__).resolve().parents[2]
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
BASE = "https://d.example"


@dataclass
class Desk:
    app: object
    clock: FakeClock
    people: People
    receipts: Receipts
    engine: Engine

    def browser(self, **headers: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE,  # type: ignore[arg-type]
                                 headers=headers)


@pytest.fixture
async def desk(engine: Engine, config: Config) -> AsyncIterator[Desk]:
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1"), imported("B2")], clock.now())
    app = create_app(Runtime(Settings(public_url=BASE, signing_key="k"), clock, config=config, engine=engine,
                             passwords=light_passwords(), templates=TemplateSet(ROOT / "templates", config)).web())
    people = app.collaborators.people
    for name, role in [("张伟", Role.COLLECTOR), ("agent7", Role.COLLECTOR), ("comp.li", Role.COMPLIANCE)]:
        people.add_user(name, frozenset({role}), "test-admin")
        people.set_password(name, PASSWORD, "test-admin")
    yield Desk(app, clock, people, app.collaborators.receipts, engine)
    await app.collaborators.receipts.aclose()


@contextlib.asynccontextmanager
async def signed_in(desk: Desk, name: str = "张伟", **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    async with desk.browser(**headers) as c:
        r = await post_sign_in(c, name, PASSWORD)
        assert r.status_code == 303, r.text
        yield c


def events(engine: Engine, kind: str) -> list[tuple[str | None, str | None, str]]:
    with engine.connect() as conn:
        return [(r.case_id, r.actor, r.data) for r in conn.execute(
            select(events_t).where(events_t.c.kind == kind).order_by(events_t.c.id))]


# ------------------------------------------------------------------ language


async def test_the_language_follows_the_browser_then_the_users_choice(desk: Desk) -> None:
    async with desk.browser(**{"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}) as c:
        login = await c.get("/ui/login")
        assert '<html lang="zh-CN">' in login.text and "登录" in login.text and "Sign in" not in login.text
    async with desk.browser(**{"Accept-Language": "fr-FR, en;q=0.3"}) as c:
        assert '<html lang="en-US">' in (await c.get("/ui/login")).text
    async with desk.browser() as c:  # no header: English
        assert "Your name" in (await c.get("/ui/login")).text

    async with signed_in(desk, "agent7") as c:  # no Accept-Language
        page = await c.get("/ui/cases/A1")
        assert '<html lang="en-US">' in page.text and "Outstanding" in page.text
        r = await c.post("/ui/locale", data={"locale": "zh-CN", "csrf": csrf_of(page.text), "next": "/ui/cases/A1"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/cases/A1"
        c.cookies.delete("dispatcher_locale")  # the account keeps it, not just this browser
        page = await c.get("/ui/cases/A1", headers={"Accept-Language": "en-US"})
        assert '<html lang="zh-CN">' in page.text and "未还金额" in page.text and "逾期天数" in page.text
        assert page.headers["content-language"] == "zh-CN"
        with desk.engine.connect() as conn:
            assert conn.execute(select(users_t.c.locale).where(users_t.c.name == "agent7")).scalar() == "zh-CN"
        # a banner made in Python is translated too
        r = await c.post("/ui/cases/A1/notes", data={"text": "客户说下周还款", "csrf": csrf_of(page.text)})
        assert "已添加备注。" in (await c.get(r.headers["location"])).text
        await c.post("/ui/locale", data={"locale": "en-US", "csrf": csrf_of(page.text)})
        assert '<html lang="en-US">' in (await c.get("/ui/cases/A1")).text
        # an unknown language changes nothing
        await c.post("/ui/locale", data={"locale": "xx", "csrf": csrf_of(page.text)})
        assert '<html lang="en-US">' in (await c.get("/ui/cases/A1")).text


async def test_the_sign_in_pages_switcher_becomes_the_users_language(desk: Desk) -> None:
    async with desk.browser() as c:
        page = await c.get("/ui/login", params={"lang": "zh-CN", "next": "/ui/cases/A1"})
        assert "登录" in page.text and 'href="/ui/login?lang=en-US' in page.text
        r = await c.post("/ui/login", data={"user": "张伟", "password": PASSWORD, "next": "/ui/cases/A1",
                                            "csrf": csrf_of(page.text)})
        assert r.status_code == 303
    with desk.engine.connect() as conn:
        assert conn.execute(select(users_t.c.locale).where(users_t.c.name == "张伟")).scalar() == "zh-CN"


def test_every_console_text_is_translated_and_the_compiled_catalogues_are_current() -> None:
    """The .mo files shipped are compiled from the .po files as they are, and every
    message of the extracted catalogue has its Chinese translation."""
    from io import BytesIO

    from babel.messages.mofile import read_mo, write_mo
    from babel.messages.pofile import read_po

    locale_dir = ROOT / "dispatcher" / "web" / "locale"
    with open(locale_dir / "messages.pot", "rb") as f:
        wanted = {m.id for m in read_po(f) if m.id}
    for lang in ("zh_CN", "en_US"):
        with open(locale_dir / lang / "LC_MESSAGES" / "messages.po", "rb") as f:
            po = read_po(f, locale=lang)
        assert {m.id for m in po if m.id} >= wanted, f"{lang}: run make messages"
        if lang == "zh_CN":
            assert not [m.id for m in po if m.id and not m.string], "untranslated Chinese messages"
        compiled = BytesIO()
        write_mo(compiled, po)
        with open(locale_dir / lang / "LC_MESSAGES" / "messages.mo", "rb") as f:
            shipped = read_mo(f)
        assert {m.id: m.string for m in shipped if m.id} == {m.id: m.string for m in read_mo(BytesIO(
            compiled.getvalue())) if m.id}, f"{lang}: messages.mo is stale; run make messages"


# ------------------------------------------------------------------ names


async def test_a_collector_with_a_chinese_name_works_under_that_name(desk: Desk) -> None:
    async with signed_in(desk, "张伟") as c:
        page = (await c.get("/ui/cases/A1")).text
        assert 'id="who">张伟<' in page
        r = await c.post("/ui/cases/A1/notes", data={"text": "客户承诺周五还款", "csrf": csrf_of(page)})
        page = (await c.get(r.headers["location"])).text
        assert "客户承诺周五还款" in page
    assert events(desk.engine, "note_added")[0][:2] == ("A1", "张伟")
    # any script, NFC; control characters are refused
    assert normalise_name("Zoe\u0308") == "Zoë" and normalise_name(" 李  小龙 ") == "李 小龙"
    for bad in ("张\u0007伟", "ana\u200bmaria", "evil\u202egpj"):
        with pytest.raises(InvalidName):
            normalise_name(bad)


# ------------------------------------------------------------------ the case page


async def test_the_case_page_says_who_what_is_owed_and_the_debtors_time(desk: Desk) -> None:
    desk.clock.set(dt.datetime(2026, 12, 7, 2, 5, 6, 789000, tzinfo=dt.UTC))
    async with signed_in(desk) as c:
        page = (await c.get("/ui/cases/A1")).text
        # events and holds made now carry the clock's microseconds; the page shows minutes
        await c.post("/ui/cases/A1/holds", data={"reason": "collector_hold", "until": "2026-12-20",
                                                 "csrf": csrf_of(page)})
        desk.receipts.inbound_sms("SM-free-3", "+8613812345678", "下周再说")
        page = (await c.get("/ui/cases/A1")).text
    assert 'id="debtor-name">王伟<' in page and 'id="outstanding">10325.00<' in page
    assert 'id="days-past-due">30<' in page and 'id="header-stage">dpd30<' in page
    # the debtor's time now, to the minute, with the offset; the instant for the reader's own
    assert re.search(r'id="debtor-time"><time datetime="2026-12-07T02:05:06\+00:00"[^>]*>2026-12-07 10:05 \+08:00<',
                     page)
    assert not re.search(r"\d\d:\d\d:\d\d\.\d", page), "no microseconds anywhere"
    events_table = page.split('id="events"')[1]
    assert "until=2026-12-20 00:00 +08:00" in events_table and "2026-12-07 10:05 +08:00" in events_table


async def test_the_one_off_menus_offer_only_what_exists_for_the_stage_and_locale(desk: Desk) -> None:
    async with signed_in(desk) as c:
        page = (await c.get("/ui/cases/A1")).text
    channels = re.findall(r'<select id="channel" name="channel">(.*?)</select>', page, flags=re.S)[0]
    # stage dpd30 has SMS and e-mail templates, no voice ones
    assert re.findall(r'<option value="(\w+)"', channels) == ["sms", "email"]
    groups = dict(re.findall(r'<optgroup label="(\w+)" data-channel="\w+">(.*?)</optgroup>', page, flags=re.S))
    assert set(groups) == {"sms", "email"}
    assert re.findall(r'value="([^"]+)"', groups["sms"]) == ["sms/dpd30/v1", "sms/dpd30/v2", "sms/dpd30/v3"]
    assert all(t.startswith("email/dpd30/") for t in re.findall(r'value="([^"]+)"', groups["email"]))
    assert "voice/" not in page.split('id="one-off"')[1].split("</form>")[0]


async def test_a_one_off_is_previewed_with_its_exact_text_then_sent_and_its_text_shown(desk: Desk) -> None:
    async with signed_in(desk) as c:
        preview = await c.get("/ui/cases/A1/preview", params={"channel": "sms", "template": "sms/dpd30/v2"})
        assert preview.status_code == 200
        text = re.search(r'<div class="reply" id="preview-text"><div class="body">(.*?)</div>', preview.text,
                         flags=re.S)
        assert text and "王伟" not in text.group(1)  # this template does not name the debtor
        assert "应还¥10,325.00" in text.group(1) and "×30天" in text.group(1)
        assert re.search(r"/p/x{16} ", text.group(1))  # a stand-in link of the real one's length
        assert 'id="preview-action">send<' in preview.text
        # an SMS template asked for on the e-mail channel is refused, with its reason
        wrong = await c.get("/ui/cases/A1/preview", params={"channel": "email", "template": "sms/dpd30/v2"})
        assert "no_approved_template" in wrong.text and 'id="preview-text"' not in wrong.text
        r = await c.post("/ui/cases/A1/messages", data={"channel": "sms", "template": "sms/dpd30/v2",
                                                        "csrf": csrf_of(preview.text)})
        page = (await c.get(r.headers["location"])).text
    with desk.engine.connect() as conn:
        row = conn.execute(select(messages_t).where(messages_t.c.kind == "one_off")).one()
    assert (row.status, row.template_id, row.body, row.created_by) == ("queued", "sms/dpd30/v2", None, "张伟")
    shown = page.split(f'<tr data-id="{row.id}">')[1].split("</tr>")[0]
    assert "not sent yet" in shown and "×30天" in shown and "应还¥10,325.00" in shown  # the queued one's text


async def test_free_text_replies_are_shown_apart_from_status_events(desk: Desk) -> None:
    desk.receipts.inbound_sms("SM-free-1", "+8613812345678", "我失业了，可以下个月还吗？")
    async with signed_in(desk) as c:
        page = (await c.get("/ui/cases/A1")).text
    replies = page.split('id="replies-section"')[1].split("</section>")[0]
    assert "我失业了，可以下个月还吗？" in replies and "free_text" in replies
    assert "read_reply" in page.split('id="case-tasks"')[1]  # and a task to read it


async def test_a_collector_may_reveal_a_phone_number_once_and_it_is_audited(desk: Desk) -> None:
    async with signed_in(desk) as c:
        page = (await c.get("/ui/cases/A1")).text
        assert "+8613812345678" not in page and 'id="reveal-sms"' in page
        assert 'id="reveal-email"' not in page  # only phone numbers
        r = await c.post("/ui/cases/A1/contacts/reveal", data={"channel": "sms", "csrf": csrf_of(page)})
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        assert 'id="address-sms">+8613812345678<' in r.text
        assert "wang@example.com" not in r.text and r.text.count("+8613812345678") == 1
        # shown once: the next page is masked again
        assert "+8613812345678" not in (await c.get("/ui/cases/A1")).text
    assert [(case, actor) for case, actor, _ in events(desk.engine, "contact_revealed")] == [("A1", "张伟")]
    assert '"by": "张伟"' in events(desk.engine, "contact_revealed")[0][2]

    # compliance reads everything but sees no full number, and may not reveal one
    async with signed_in(desk, "comp.li") as c:
        page = (await c.get("/ui/cases/A1")).text
        assert 'id="reveal-sms"' not in page and "+8613812345678" not in page
        r = await c.post("/ui/cases/A1/contacts/reveal", data={"channel": "sms", "csrf": csrf_of(page)})
        assert r.status_code == 403 and "+8613812345678" not in r.text
    assert len(events(desk.engine, "contact_revealed")) == 1


async def test_payment_promise_and_note_from_the_case_page(desk: Desk) -> None:
    async with signed_in(desk) as c:
        csrf = csrf_of((await c.get("/ui/cases/A1")).text)
        r = await c.post("/ui/cases/A1/payments", data={"amount": "325.00", "csrf": csrf})
        page = (await c.get(r.headers["location"])).text
        assert "Payment of 325.00 recorded; outstanding now 10000.00." in page and 'id="outstanding">10000.00<' in page
        r = await c.post("/ui/cases/A1/payments", data={"amount": "-5", "csrf": csrf})
        assert "must be positive" in (await c.get(r.headers["location"])).text
        # a promise date is a day in the debtor's zone: the hold ends at 00:00 there
        r = await c.post("/ui/cases/A1/promises", data={"date": "2026-12-10", "csrf": csrf})
        page = (await c.get(r.headers["location"])).text
        assert "Promise to pay by 2026-12-10 recorded" in page and "2026-12-11 00:00 +08:00" in page
        r = await c.post("/ui/cases/A1/promises", data={"date": "2027-06-01", "csrf": csrf})
        assert "a promise date is from" in (await c.get(r.headers["location"])).text
        r = await c.post("/ui/cases/A1/notes", data={"text": "Called: lost job, will pay on the 10th", "csrf": csrf})
        page = (await c.get(r.headers["location"])).text
        assert "Note added." in page and "Called: lost job, will pay on the 10th" in page
    with desk.engine.connect() as conn:
        hold = conn.execute(select(holds_t).where(holds_t.c.reason == "promise_to_pay")).one()
    assert hold.placed_by == "张伟"
    assert [a for _, a, _ in events(desk.engine, "payment_recorded")] == ["张伟"]


async def test_releasing_a_hold_asks_first(desk: Desk) -> None:
    async with signed_in(desk) as c:
        csrf = csrf_of((await c.get("/ui/cases/A1")).text)
        await c.post("/ui/cases/A1/holds", data={"reason": "collector_hold", "csrf": csrf})
        ask = await c.post("/ui/cases/A1/holds/release", data={"reason": "collector_hold", "csrf": csrf})
        assert ask.status_code == 200 and 'id="confirm-release"' in ask.text
        assert 'name="confirm" value="yes"' in ask.text
        assert "<code>collector_hold</code>" in (await c.get("/ui/cases/A1")).text
        r = await c.post("/ui/cases/A1/holds/release", data={"reason": "collector_hold", "csrf": csrf,
                                                             "confirm": "yes"})
        assert "Released 1 hold(s)." in (await c.get(r.headers["location"])).text


# ------------------------------------------------------------------ the queue


async def test_the_queue_shows_overdue_first_and_tasks_are_claimed_and_done(desk: Desk) -> None:
    now = desk.clock.now()
    with desk.engine.begin() as conn:
        old = open_task(conn, None, "B2", TaskKind.CALL_BACK, now - dt.timedelta(days=5), source="t:old",
                        detail="call back please")
        new = open_task(conn, None, "A1", TaskKind.READ_REPLY, now, source="t:new", detail="a question")
        oldest_due = open_task(conn, None, "A1", TaskKind.REVIEW_DISPUTE, now - dt.timedelta(days=9), source="t:x",
                               detail="says it is not theirs")
        conn.execute(update(tasks_t).where(tasks_t.c.id == new).values(due_at=now + dt.timedelta(hours=4)))
    async with signed_in(desk) as c:
        r = await post_sign_in(c, "张伟", PASSWORD, next="")
        assert r.headers["location"] == "/ui/queue"  # a collector's start page
        page = (await c.get("/ui/queue")).text
        order = [int(x) for x in re.findall(r'<tr data-task="(\d+)"', page)]
        assert order == [oldest_due, old, new]  # overdue first, by due time
        assert page.count('<span class="tag skip">overdue</span>') == 2 and 'id="overdue-count">2 overdue' in page
        assert "王*" in page and "王伟" not in page  # masked names in the queue
        only = (await c.get("/ui/queue", params={"kind": "call_back"})).text
        assert [int(x) for x in re.findall(r'<tr data-task="(\d+)"', only)] == [old]

        csrf = csrf_of(page)
        r = await c.post(f"/ui/tasks/{old}/claim", data={"csrf": csrf, "next": "/ui/queue?kind=call_back"})
        assert r.headers["location"] == f"/ui/queue?kind=call_back&claimed={old}"
        assert f"Task {old} is yours now." in (await c.get(r.headers["location"])).text
        mine = (await c.get("/ui/queue", params={"state": "mine"})).text
        assert [int(x) for x in re.findall(r'<tr data-task="(\d+)"', mine)] == [old]
        # another collector cannot claim it again
        async with signed_in(desk, "agent7") as other:
            o_csrf = csrf_of((await other.get("/ui/queue")).text)
            r = await other.post(f"/ui/tasks/{old}/claim", data={"csrf": o_csrf})
            assert "claimed by 张伟" in (await other.get(r.headers["location"])).text
        # done needs a note; it is kept on the case's timeline
        r = await c.post(f"/ui/tasks/{old}/done", data={"csrf": csrf, "note": "  ", "next": "/ui/cases/B2"})
        assert "closed with a note" in (await c.get(r.headers["location"])).text
        r = await c.post(f"/ui/tasks/{old}/done", data={"csrf": csrf, "note": "called back, pays Friday",
                                                        "next": "/ui/cases/B2"})
        page = (await c.get(r.headers["location"])).text
        assert f"Task {old} done." in page and "called back, pays Friday" in page
    with desk.engine.connect() as conn:
        task = conn.execute(select(tasks_t).where(tasks_t.c.id == old)).one()
    assert (task.state, task.assignee, task.done_by, task.note) == ("done", "张伟", "张伟", "called back, pays Friday")
    assert [a for _, a, _ in events(desk.engine, "task_claimed")] == ["张伟"]


async def test_search_finds_by_last_four_digits_and_name_masked(desk: Desk) -> None:
    async with signed_in(desk) as c:
        page = await c.get("/ui/cases", params={"q": "5678"})
        assert page.status_code == 200
        assert re.findall(r'<a href="/ui/cases/(\w+)">', page.text) == ["A1", "B2"]
        assert "+8613812345678" not in page.text and "王伟" not in page.text
        r = await c.get("/ui/cases", params={"q": "a1"})  # an id prefix, any case
        assert re.findall(r'<a href="/ui/cases/(\w+)">', r.text) == ["A1"]
        r = await c.get("/ui/cases", params={"q": "A1"})  # an exact id opens the case
        assert r.status_code == 303 and r.headers["location"] == "/ui/cases/A1"
        r = await c.get("/ui/cases", params={"q": "nobody"})
        assert r.status_code == 404 and 'id="no-results"' in r.text


async def test_control_characters_in_any_form_are_refused_with_a_message(desk: Desk) -> None:
    """PostgreSQL cannot store NUL: every form says what is wrong, never a 500."""
    with desk.engine.begin() as conn:
        task = open_task(conn, None, "A1", TaskKind.READ_REPLY, desk.clock.now(), source="t:nul", detail="?")
    async with desk.browser() as c:
        r = await post_sign_in(c, "张\x00伟", PASSWORD)
        assert r.status_code in (400, 401)
    async with signed_in(desk) as c:
        csrf = csrf_of((await c.get("/ui/cases/A1")).text)
        for path, data in [("/ui/cases/A1/holds", {"reason": "collector_hold", "note": "a\x00b"}),
                           ("/ui/cases/A1/notes", {"text": "a\x00b"}),
                           ("/ui/cases/A1/promises", {"date": "2026-12-1\x000"}),
                           ("/ui/cases/A1/payments", {"amount": "1\x000"}),
                           (f"/ui/tasks/{task}/done", {"note": "a\x00b", "next": "/ui/cases/A1"})]:
            r = await c.post(path, data={**data, "csrf": csrf})
            assert r.status_code == 303, (path, r.status_code)
            assert "control characters" in (await c.get(r.headers["location"])).text or path.endswith(
                ("promises", "payments")), path
        r = await c.get("/ui/cases", params={"q": "a\x00b"})
        assert r.status_code == 400 and "control characters" in r.text
        r = await c.get("/ui/cases/A1/preview", params={"channel": "sms", "template": "sms/dpd30/v1\x00"})
        assert r.status_code == 200 and "no_approved_template" in r.text
    with desk.engine.connect() as conn:
        assert conn.execute(select(holds_t)).first() is None
        assert conn.execute(select(tasks_t.c.state).where(tasks_t.c.id == task)).scalar() == "open"
