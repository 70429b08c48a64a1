"""The workbench API on SQLite and PostgreSQL, over the real ASGI app: search by each key
(masked answers), every case action with its role checks (401, 403) and its event with
`by`, the task queue, and `Idempotency-Key` (replay, 422, 409, expiry on the clock)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.credentials import light_passwords
from dispatcher.domain import Case
from dispatcher.roles import Role
from dispatcher.services.people import People
from dispatcher.services.tasks import TaskKind, Tasks
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.tables import events_t, holds_t, messages_t, payments_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.web.idempotency import IdempotencyStore
from dispatcher.wiring import Runtime

ROOT = Path(__file__).resolve().parents[2]
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
NOW = dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI)  # Mon, inside the CN window


def imported(case_id: str, name: str, phone: str, email: str | None, jurisdiction: str = "cn") -> repo.ImportedCase:
    cn = jurisdiction == "cn"
    case = Case(case_id=case_id, name=name, jurisdiction=jurisdiction, locale="zh-CN" if cn else "en-US",
                currency="CNY" if cn else "USD", principal=Decimal("10000.00"), interest=Decimal("100.00"),
                penalty=Decimal("225.00"), fees=Decimal("0.00"), amount_due=Decimal("10325.00"),
                due_date=dt.date(2026, 11, 7), phone=phone, email=email, penalty_rate_daily=Decimal("0.0005"))
    zones = ("Asia/Shanghai",) if cn else ("America/Los_Angeles",)
    return repo.ImportedCase(case=case, zones=zones, sms_consent=True, email_consent=True, voice_consent=True)


@dataclass
class Api:
    client: httpx.AsyncClient
    clock: FakeClock
    people: People
    engine: Engine
    config: Config

    def token_of(self, name: str, *roles: Role) -> dict[str, str]:
        self.people.add_user(name, frozenset(roles), "test-admin")
        return {"Authorization": f"Bearer {self.people.create_token(name, 30, 'test-admin').token}"}

    def count(self, table: Any, *where: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())

    def events(self, kind: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(events_t).where(events_t.c.kind == kind).order_by(events_t.c.id)))


@pytest.fixture
async def api(engine: Engine, config: Config) -> AsyncIterator[Api]:
    clock = FakeClock(NOW)
    with engine.begin() as conn:
        repo.upsert_cases(conn, [
            imported("CN-1001", "张伟", "+8613800138001", "zhang.wei@example.com"),
            imported("CN-1002", "王芳", "+8613900139002", None),
            imported("cn-2001", "张小明", "+8613700137003", "xiaoming@example.cn"),
            imported("US-1", "Alex Morgan", "+13105550123", "alex.morgan@example.com", "us"),
        ], clock.now())
    settings = Settings(public_url="https://d.example", api_token="bootstrap-token", signing_key="k")
    app = create_app(Runtime(settings, clock, config=config, engine=engine, passwords=light_passwords(),
                             templates=TemplateSet(ROOT / "templates", config)).web())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield Api(c, clock, app.collaborators.people, engine, config)
    await app.collaborators.receipts.aclose()


# ---------------------------------------------------------------------------- search


async def search(api: Api, q: str, auth: dict[str, str], **params: Any) -> httpx.Response:
    return await api.client.get("/api/cases", params={"q": q, **params}, headers=auth)


async def test_search_by_each_key_with_masked_answers(api: Api) -> None:
    auth = api.token_of("agent7", Role.COLLECTOR)

    async def ids(q: str) -> list[str]:
        r = await search(api, q, auth)
        assert r.status_code == 200, r.text
        return [c["case_id"] for c in r.json()["cases"]]

    assert await ids("cn-1") == ["CN-1001", "CN-1002"]  # id prefix, case-insensitive
    assert await ids("CN-2") == ["cn-2001"]
    assert await ids("张") == ["CN-1001", "cn-2001"]  # a name substring in Chinese
    assert await ids("小明") == ["cn-2001"]
    assert await ids("morgan") == ["US-1"]  # any case
    assert await ids("8001") == ["CN-1001"]  # the last 4 digits of the phone
    assert await ids("0123") == ["US-1"]
    assert await ids("1380") == []  # digits inside the number are not its last 4
    assert await ids("alex.morgan") == ["US-1"]  # an e-mail's local part
    assert await ids("xiaoming@example.cn") == ["cn-2001"]
    assert await ids("nobody") == []

    r = await search(api, "8001", auth)
    (hit,) = r.json()["cases"]
    assert hit == {"case_id": "CN-1001", "name": "张**", "phone": "+86138****8001", "email": "z***@example.com",
                   "status": "active", "jurisdiction": "cn", "currency": "CNY", "outstanding": "10325.00",
                   "matched": ["phone_last4"]}
    everything = (await search(api, "张", auth)).text + (await search(api, "alex", auth)).text
    for secret in ("张伟", "张小明", "13800138001", "zhang.wei@", "Alex Morgan", "alex.morgan@"):
        assert secret not in everything
    assert len((await search(api, "c", auth, limit=1)).json()["cases"]) == 1


async def test_search_refusals(api: Api) -> None:
    auth = api.token_of("agent7", Role.COLLECTOR)
    assert (await search(api, "  ", auth)).status_code == 400
    assert (await search(api, "x" * 121, auth)).status_code == 400
    assert (await search(api, "张\x00", auth)).status_code == 400  # PostgreSQL cannot even compare a NUL
    assert (await search(api, "cn", {})).status_code == 401
    assert (await search(api, "cn", api.token_of("写手", Role.AUTHOR))).status_code == 403
    assert (await search(api, "cn", api.token_of("ops.li", Role.OPS))).status_code == 200  # read-only may search


# --------------------------------------------------------------------------- actions


async def test_payments(api: Api) -> None:
    c = api.client
    auth = api.token_of("王伟", Role.COLLECTOR)
    r = await c.post("/api/cases/CN-1001/payments", json={"amount": "325.00", "by": "someone-else"}, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json() | {"cancelled_message_ids": []} == {
        "case_id": "CN-1001", "amount": "325.00", "paid_total": "325.00", "outstanding": "10000.00",
        "status": "active", "closed": False, "cancelled_message_ids": []}
    r = await c.post("/api/cases/CN-1001/payments", json={"amount": 10000}, headers=auth)
    assert (r.json()["outstanding"], r.json()["closed"], r.json()["status"]) == ("0.00", True, "paid")
    assert [(e.case_id, e.actor) for e in api.events("payment_recorded")] == [("CN-1001", "王伟")] * 2
    for bad in ({"amount": "-1"}, {"amount": "1.005"}, {"amount": "abc"}, {}, {"amount": True}):
        assert (await c.post("/api/cases/CN-1002/payments", json=bad, headers=auth)).status_code == 400, bad
    assert (await c.post("/api/cases/NOPE/payments", json={"amount": "1"}, headers=auth)).status_code == 404
    assert (await c.post("/api/cases/CN-1002/payments", json={"amount": "1"})).status_code == 401
    for role in (Role.COMPLIANCE, Role.OPS, Role.AUTHOR, Role.ADMIN):
        other = api.token_of(f"user-{role.value}", role)
        r = await c.post("/api/cases/CN-1002/payments", json={"amount": "1"}, headers=other)
        assert r.status_code == 403 and "cases.write" in r.json()["error"]
    assert api.count(payments_t, payments_t.c.case_id == "CN-1002") == 0


async def test_holds_and_releases_with_compliance_only_for_legal_and_cease(api: Api) -> None:
    c = api.client
    agent = api.token_of("agent7", Role.COLLECTOR)
    compliance = api.token_of("合规张", Role.COMPLIANCE)
    r = await c.post("/api/cases/CN-1001/holds", json={"reason": "collector_hold", "until": "2026-12-20",
                                                       "note": "called, will call back"}, headers=agent)
    assert r.status_code == 201, r.text
    own = r.json()
    assert own["until"] == "2026-12-20T00:00:00+08:00"  # 00:00 of the date in Shanghai
    assert own["note"] == "called, will call back"
    r = await c.post("/api/cases/CN-1001/holds", json={"reason": "legal_hold"}, headers=agent)
    legal = r.json()
    assert r.status_code == 201 and legal["until"] is None
    for bad in ({"reason": "holiday"}, {"reason": "promise_to_pay"}, {"reason": "collector_hold", "until": "soon"},
                {"reason": "collector_hold", "until": "2026-12-01"}, {}, {"reason": 3}):
        assert (await c.post("/api/cases/CN-1001/holds", json=bad, headers=agent)).status_code == 400, bad

    release = "/api/cases/CN-1001/holds/{}/release"
    r = await c.post(release.format(legal["hold_id"]), headers=agent)
    assert r.status_code == 403 and "holds.release_protected" in r.json()["error"]
    r = await c.post(release.format(own["hold_id"]), headers=agent)
    assert r.status_code == 200 and r.json() == {"case_id": "CN-1001", "hold_id": own["hold_id"],
                                                 "reason": "collector_hold", "released": True}
    assert (await c.post(release.format(own["hold_id"]), headers=agent)).json()["released"] is False
    r = await c.post(release.format(legal["hold_id"]), headers=compliance)
    assert r.status_code == 200 and r.json()["released"] is True
    assert (await c.post(release.format(99999), headers=agent)).status_code == 404
    assert (await c.post(f"/api/cases/CN-1002/holds/{own['hold_id']}/release", headers=agent)).status_code == 404
    assert [(e.actor, json.loads(e.data)["reason"]) for e in api.events("hold_placed")] == [
        ("agent7", "collector_hold"), ("agent7", "legal_hold")]
    assert [(e.actor, json.loads(e.data)["reason"]) for e in api.events("hold_released")] == [
        ("agent7", "collector_hold"), ("合规张", "legal_hold")]
    ops = api.token_of("ops.li", Role.OPS)
    assert (await c.post("/api/cases/CN-1001/holds", json={"reason": "collector_hold"}, headers=ops)).status_code == 403


async def test_promises_are_days_in_the_debtors_zone_within_the_window(api: Api) -> None:
    c = api.client
    agent = api.token_of("agent7", Role.COLLECTOR)
    r = await c.post("/api/cases/CN-1001/promises", json={"date": "2026-12-10"}, headers=agent)
    assert r.status_code == 201, r.text
    assert r.json()["date"] == "2026-12-10" and r.json()["until"] == "2026-12-11T00:00:00+08:00"
    with api.engine.connect() as conn:
        hold = conn.execute(select(holds_t).where(holds_t.c.id == r.json()["hold_id"])).one()
    assert (hold.reason, hold.placed_by) == ("promise_to_pay", "agent7")
    # today (Shanghai) and past the 7-day window are refused, with the window in the answer
    for day in ("2026-12-07", "2026-12-15", "2026-12-01", "12/10", ""):
        r = await c.post("/api/cases/CN-1002/promises", json={"date": day}, headers=agent)
        assert r.status_code == 400, day
    r = await c.post("/api/cases/CN-1002/promises", json={"date": "2026-12-15"}, headers=agent)
    assert "2026-12-08 to 2026-12-14" in r.json()["error"]
    # the US case's day: 2026-12-06 18:00 in Los Angeles, so 2026-12-07 is already tomorrow there
    assert (await c.post("/api/cases/US-1/promises", json={"date": "2026-12-07"}, headers=agent)).status_code == 201


async def test_notes(api: Api) -> None:
    c = api.client
    agent = api.token_of("agent7", Role.COLLECTOR)
    r = await c.post("/api/cases/CN-1001/notes", json={"text": "失业，下月还款"}, headers=agent)
    assert r.status_code == 201 and r.json()["by"] == "agent7"
    event = api.events("note_added")[0]
    assert (event.case_id, event.actor, json.loads(event.data)["text"]) == ("CN-1001", "agent7", "失业，下月还款")
    assert (await c.post("/api/cases/CN-1001/notes", json={"text": " "}, headers=agent)).status_code == 400
    assert (await c.post("/api/cases/CN-1001/notes", json={"text": "a\x00b"}, headers=agent)).status_code == 400
    r = await c.post("/api/cases/CN-1001/notes", json={"text": "line 1\nline 2"}, headers=agent)
    assert r.status_code == 201
    assert (await c.post("/api/cases/CN-1001/notes", json=["x"], headers=agent)).status_code == 400
    assert (await c.post("/api/cases/NOPE/notes", json={"text": "x"}, headers=agent)).status_code == 404
    compliance = api.token_of("合规张", Role.COMPLIANCE)
    assert (await c.post("/api/cases/CN-1001/notes", json={"text": "x"}, headers=compliance)).status_code == 403


# ----------------------------------------------------------------------------- tasks


async def test_the_task_queue_claim_and_done(api: Api) -> None:
    c = api.client
    tasks = Tasks(api.engine, api.config, api.clock)
    call = tasks.open(None, "CN-1001", TaskKind.CALL_BACK, "asked for an agent", source="ivr:1")
    paid = tasks.open(None, "CN-1002", TaskKind.VERIFY_PAYMENT_CLAIM, "已还款", source="sms:SM1")
    agent = api.token_of("王伟", Role.COLLECTOR)
    other = api.token_of("agent7", Role.COLLECTOR)
    r = await c.get("/api/tasks", params={"state": "open"}, headers=agent)
    assert r.status_code == 200
    assert [(t["id"], t["kind"], t["overdue"]) for t in r.json()["tasks"]] == [
        (call, "call_back", False), (paid, "verify_payment_claim", False)]
    api.clock.advance(hours=5)  # the call back is overdue
    r = await c.get("/api/tasks", params={"kind": "call_back"}, headers=agent)
    assert [(t["id"], t["overdue"]) for t in r.json()["tasks"]] == [(call, True)]
    r = await c.get("/api/tasks", params={"case_id": "CN-1002"}, headers=agent)
    assert [t["id"] for t in r.json()["tasks"]] == [paid]
    assert (await c.get("/api/tasks", params={"state": "later"}, headers=agent)).status_code == 400
    assert (await c.get("/api/tasks", params={"kind": "tea"}, headers=agent)).status_code == 400

    r = await c.post(f"/api/tasks/{paid}/claim", headers=agent)
    assert r.status_code == 200 and (r.json()["state"], r.json()["assignee"]) == ("claimed", "王伟")
    assert (await c.post(f"/api/tasks/{paid}/claim", headers=other)).status_code == 409
    assert (await c.post(f"/api/tasks/{paid}/done", json={}, headers=agent)).status_code == 400
    r = await c.post(f"/api/tasks/{paid}/done", json={"note": "payment found in the bank feed"}, headers=agent)
    assert r.status_code == 200 and (r.json()["state"], r.json()["done_by"]) == ("done", "王伟")
    assert (await c.post(f"/api/tasks/{paid}/done", json={"note": "x"}, headers=agent)).status_code == 409
    assert (await c.post("/api/tasks/99999/claim", headers=agent)).status_code == 404
    r = await c.get("/api/tasks", params={"state": "done"}, headers=agent)
    assert [t["note"] for t in r.json()["tasks"]] == ["payment found in the bank feed"]
    for role in (Role.OPS, Role.COMPLIANCE, Role.AUTHOR):
        h = api.token_of(f"u-{role.value}", role)
        assert (await c.post(f"/api/tasks/{call}/claim", headers=h)).status_code == 403
    assert (await c.post(f"/api/tasks/{call}/claim")).status_code == 401
    assert [(e.case_id, e.actor) for e in api.events("task_claimed")] == [("CN-1002", "王伟")]
    assert [(e.case_id, e.actor) for e in api.events("task_done")] == [("CN-1002", "王伟")]


# ----------------------------------------------------------------------- idempotency


async def test_a_retry_with_the_same_key_and_body_gets_the_first_answer(api: Api) -> None:
    c = api.client
    auth = api.token_of("agent7", Role.COLLECTOR)
    key = {"Idempotency-Key": "pay-0001"}
    first = await c.post("/api/cases/CN-1001/payments", json={"amount": "100.00"}, headers=auth | key)
    again = await c.post("/api/cases/CN-1001/payments", json={"amount": "100.00"}, headers=auth | key)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert api.count(payments_t) == 1
    # the same key with another body, or on another path: 422, nothing done
    r = await c.post("/api/cases/CN-1001/payments", json={"amount": "200.00"}, headers=auth | key)
    assert r.status_code == 422 and "another request" in r.json()["error"]
    r = await c.post("/api/cases/CN-1002/payments", json={"amount": "100.00"}, headers=auth | key)
    assert r.status_code == 422
    assert api.count(payments_t) == 1
    # keys are per caller: another person's same key is theirs
    other = api.token_of("王伟", Role.COLLECTOR)
    r = await c.post("/api/cases/CN-1001/payments", json={"amount": "100.00"}, headers=other | key)
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers
    assert api.count(payments_t) == 2
    # a one-off message: one message however often it is retried
    one_off = {"Idempotency-Key": "msg-1"}
    answers = [await c.post("/api/cases/CN-1002/messages", json={"channel": "sms"}, headers=auth | one_off)
               for _ in range(3)]
    assert len({a.json()["message_id"] for a in answers}) == 1 and answers[0].status_code == 202
    assert api.count(messages_t) == 1
    # a refusal (400) is an answer too: replayed
    bad = {"Idempotency-Key": "bad-1"}
    assert (await c.post("/api/cases/CN-1001/notes", json={"text": ""}, headers=auth | bad)).status_code == 400
    assert (await c.post("/api/cases/CN-1001/notes", json={"text": ""}, headers=auth | bad)).headers[
        "idempotent-replayed"] == "true"


async def test_keys_expire_after_24_hours_and_some_answers_are_not_kept(api: Api) -> None:
    c = api.client
    auth = api.token_of("agent7", Role.COLLECTOR)
    key = {"Idempotency-Key": "note-1"}
    await c.post("/api/cases/CN-1001/notes", json={"text": "first"}, headers=auth | key)
    api.clock.advance(hours=23, minutes=59)
    r = await c.post("/api/cases/CN-1001/notes", json={"text": "first"}, headers=auth | key)
    assert r.headers.get("idempotent-replayed") == "true"
    api.clock.advance(minutes=2)  # 24 hours and a minute: the key is forgotten, the note written again
    r = await c.post("/api/cases/CN-1001/notes", json={"text": "first"}, headers=auth | key)
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers
    assert len(api.events("note_added")) == 2
    # 401 and 403 are not kept: the same key works once the caller may
    nobody = {"Idempotency-Key": "n-1"}
    assert (await c.post("/api/cases/CN-1001/notes", json={"text": "x"}, headers=nobody)).status_code == 401
    ops = api.token_of("ops.li", Role.OPS)
    assert (await c.post("/api/cases/CN-1001/notes", json={"text": "x"}, headers=ops | nobody)).status_code == 403
    assert (await c.post("/api/cases/CN-1001/notes", json={"text": "x"}, headers=auth | nobody)).status_code == 201
    for bad in ("", "x" * 256, "tab\there"):
        r = await c.post("/api/cases/CN-1001/notes", json={"text": "x"}, headers=auth | {"Idempotency-Key": bad})
        assert r.status_code == 400


async def test_a_retry_while_the_first_is_being_answered_is_409(api: Api) -> None:
    auth = api.token_of("agent7", Role.COLLECTOR)
    import hashlib

    from dispatcher.web.idempotency import _fingerprint

    caller = hashlib.sha256(auth["Authorization"].encode()).hexdigest()
    body = json.dumps({"text": "x"}).encode()
    store = IdempotencyStore(api.engine, api.clock)
    # the first request has taken the key and is still running
    assert store.begin(caller, "slow-1", "POST", "/api/cases/CN-1001/notes",
                       _fingerprint("POST", "/api/cases/CN-1001/notes?", body)) is None
    r = await api.client.post("/api/cases/CN-1001/notes", content=body,
                              headers=auth | {"Idempotency-Key": "slow-1", "Content-Type": "application/json"})
    assert r.status_code == 409 and r.headers["retry-after"] == "1"
    assert api.events("note_added") == []


def test_search_leaves_the_connection_as_it_found_it(engine: Engine) -> None:
    """On PostgreSQL the search turns sequential scans off for its own statement only."""
    from dispatcher.services.search import search_cases

    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("CN-1", "张伟", "+8613800138001", None)], NOW)
    with engine.connect() as conn:
        assert [h.case_id for h in search_cases(conn, "张", 5)] == ["CN-1"]
        if engine.dialect.name == "postgresql":
            assert conn.exec_driver_sql("SHOW enable_seqscan").scalar() == "on"


ACTIONS = [  # (path, body, the permission a collector has and the listed roles lack)
    ("/api/cases/CN-1001/payments", {"amount": "1.00"}, "cases.write", (Role.COMPLIANCE, Role.OPS, Role.AUTHOR)),
    ("/api/cases/CN-1001/holds", {"reason": "collector_hold"}, "holds.place", (Role.OPS, Role.AUTHOR, Role.ADMIN)),
    ("/api/cases/CN-1001/promises", {"date": "2026-12-10"}, "cases.write", (Role.COMPLIANCE, Role.OPS, Role.AUTHOR)),
    ("/api/cases/CN-1001/notes", {"text": "x"}, "cases.write", (Role.COMPLIANCE, Role.OPS, Role.ADMIN)),
    ("/api/cases/CN-1001/messages", {"channel": "sms"}, "cases.write", (Role.COMPLIANCE, Role.OPS, Role.AUTHOR)),
]


@pytest.mark.parametrize("path, body, permission, refused", ACTIONS, ids=[a[0].rsplit("/", 1)[1] for a in ACTIONS])
async def test_every_action_is_401_without_a_token_and_403_without_the_permission(
        api: Api, path: str, body: dict[str, Any], permission: str, refused: tuple[Role, ...]) -> None:
    c = api.client
    def state() -> tuple[int, ...]:
        return (api.count(events_t, events_t.c.case_id.is_not(None)), api.count(holds_t), api.count(payments_t),
                api.count(messages_t))

    before = state()
    for headers in ({}, {"Authorization": "Bearer nope"}):
        r = await c.post(path, json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    for role in refused:
        r = await c.post(path, json=body, headers=api.token_of(f"u-{role.value}", role))
        assert r.status_code == 403 and permission in r.json()["error"], role
    assert state() == before  # nothing on any case
    r = await c.post(path, json=body, headers=api.token_of("agent7", Role.COLLECTOR))
    assert r.status_code in (201, 202), r.text
    with api.engine.connect() as conn:
        actors = set(conn.execute(select(events_t.c.actor).where(
            events_t.c.case_id == "CN-1001")).scalars()) - {"import"}
    assert actors == {"agent7"}  # the action's events carry the token's user as by


async def test_concurrent_retries_with_one_key_make_one_payment(api: Api) -> None:
    import asyncio

    auth = api.token_of("agent7", Role.COLLECTOR) | {"Idempotency-Key": "burst-1"}
    answers = await asyncio.gather(*(api.client.post("/api/cases/CN-1001/payments", json={"amount": "10.00"},
                                                     headers=auth) for _ in range(6)))
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {201, 409} and 201 in statuses
    assert api.count(payments_t) == 1
    first = next(a for a in answers if a.status_code == 201 and "idempotent-replayed" not in a.headers)
    later = await api.client.post("/api/cases/CN-1001/payments", json={"amount": "10.00"}, headers=auth)
    assert later.content == first.content and later.headers["idempotent-replayed"] == "true"


async def test_the_retention_job_forgets_expired_keys(api: Api) -> None:
    from types import SimpleNamespace

    from dispatcher.services.daemon import DaemonJobs
    from dispatcher.store.tables import idempotency_keys_t

    auth = api.token_of("agent7", Role.COLLECTOR)
    await api.client.post("/api/cases/CN-1001/notes", json={"text": "a"}, headers=auth | {"Idempotency-Key": "k1"})
    api.clock.advance(hours=12)
    await api.client.post("/api/cases/CN-1001/notes", json={"text": "b"}, headers=auth | {"Idempotency-Key": "k2"})
    api.clock.advance(hours=13)  # k1 is 25 hours old, k2 13
    jobs = SimpleNamespace(engine=api.engine, clock=api.clock, config=api.config,
                           sender=SimpleNamespace(stopping=False))
    await DaemonJobs._retention(jobs)  # type: ignore[arg-type]
    with api.engine.connect() as conn:
        assert list(conn.execute(select(idempotency_keys_t.c.key)).scalars()) == ["k2"]
