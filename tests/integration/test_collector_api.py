"""The collectors' HTTP API: timeline and one-off messages through the compliance gate,
on SQLite and PostgreSQL, over the real ASGI app; who may call it (SPEC 14): user tokens
and the bootstrap token, 401 and 403, expiry, revocation, disabled users."""

from __future__ import annotations

import datetime as dt
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
from dispatcher.domain import Case, CaseStatus
from dispatcher.roles import Role
from dispatcher.services.people import People
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.tables import events_t, messages_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP_TOKEN = "api-token-for-tests"
BOOTSTRAP = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}


def imported(case_id: str, status: CaseStatus = CaseStatus.ACTIVE) -> repo.ImportedCase:
    case = Case(case_id=case_id, name="王伟", jurisdiction="cn", locale="zh-CN", currency="CNY",
                principal=Decimal("10000.00"), interest=Decimal("100.00"), penalty=Decimal("225.00"),
                fees=Decimal("0.00"), amount_due=Decimal("10325.00"), due_date=dt.date(2026, 11, 7),
                phone="+8613812345678", email="wang@example.com", penalty_rate_daily=Decimal("0.0005"),
                status=status)
    return repo.ImportedCase(case=case, zones=("Asia/Shanghai",), sms_consent=True, email_consent=True,
                             voice_consent=True)


@dataclass
class Api:
    client: httpx.AsyncClient
    clock: FakeClock
    people: People

    def token_of(self, name: str, *roles: Role, days: int = 30) -> dict[str, str]:
        """A new user with `roles` and an API token: the Authorization header."""
        self.people.add_user(name, frozenset(roles), "test-admin")
        return {"Authorization": f"Bearer {self.people.create_token(name, days, 'test-admin').token}"}


@pytest.fixture
async def api(engine: Engine, config: Config) -> AsyncIterator[Api]:
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1"), imported("P1", CaseStatus.PAID)], clock.now())
    settings = Settings(public_url="https://d.example", api_token=BOOTSTRAP_TOKEN, signing_key="k")
    app = create_app(Runtime(settings, clock, config=config, engine=engine, passwords=light_passwords(),
                             templates=TemplateSet(ROOT / "templates", config)).web())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield Api(c, clock, app.collaborators.people)
    await app.collaborators.receipts.aclose()


async def test_one_off_is_queued_through_the_gate_as_the_tokens_user(api: Api, engine: Engine) -> None:
    c, clock = api.client, api.clock
    auth = api.token_of("agent7", Role.COLLECTOR)
    # a `by` in the body is ignored: the message is the token holder's
    r = await c.post("/api/cases/A1/messages", json={"channel": "sms", "by": "someone-else"}, headers=auth)
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["action"], body["reason"], body["not_before"]) == ("send", "due", None)
    assert body["template"].startswith("sms/dpd30/")
    with engine.connect() as conn:
        row = conn.execute(select(messages_t).where(messages_t.c.id == body["message_id"])).one()
        actors = set(conn.execute(select(events_t.c.actor).where(events_t.c.kind == "message_queued")).scalars())
    assert (row.kind, row.status, row.created_by) == ("one_off", "queued", "agent7")
    assert actors == {"agent7"}

    clock.set(dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    r = await c.post("/api/cases/A1/messages", json={"channel": "email"}, headers=auth)
    assert r.status_code == 202
    assert (r.json()["action"], r.json()["not_before"]) == ("defer", "2026-12-07T09:00:00+08:00")


async def test_the_bootstrap_token_works_and_is_audited_as_bootstrap(api: Api, engine: Engine) -> None:
    r = await api.client.post("/api/cases/A1/messages", json={"channel": "sms"}, headers=BOOTSTRAP)
    assert r.status_code == 202, r.text
    assert (await api.client.get("/api/cases/A1", headers=BOOTSTRAP)).status_code == 200
    with engine.connect() as conn:
        row = conn.execute(select(messages_t).where(messages_t.c.id == r.json()["message_id"])).one()
    assert row.created_by == "bootstrap"


async def test_refusals_and_errors(api: Api, engine: Engine) -> None:
    c = api.client
    auth = api.token_of("agent7", Role.COLLECTOR)
    r = await c.post("/api/cases/P1/messages", json={"channel": "sms"}, headers=auth)
    assert r.status_code == 422 and r.json()["refused"] == "case_closed"
    assert (await c.post("/api/cases/NOPE/messages", json={"channel": "sms"}, headers=auth)).status_code == 404
    assert (await c.post("/api/cases/A1/messages", json={"channel": "fax"}, headers=auth)).status_code == 400
    assert (await c.post("/api/cases/A1/messages", content=b"{not json", headers=auth)).status_code == 400
    with engine.connect() as conn:
        assert conn.execute(select(messages_t)).first() is None  # nothing was queued by any of these


async def test_no_valid_token_is_401(api: Api, engine: Engine) -> None:
    c = api.client
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YWdlbnQ3OnB3"},
                    {"Authorization": "Bearer "}, {"Authorization": BOOTSTRAP["Authorization"] + "x"}):
        r = await c.post("/api/cases/A1/messages", json={"channel": "sms"}, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer" and "error" in r.json()
        assert (await c.get("/api/cases/A1", headers=headers)).status_code == 401
    with engine.connect() as conn:
        assert conn.execute(select(messages_t)).first() is None


async def test_a_role_without_the_permission_is_403(api: Api, engine: Engine) -> None:
    c = api.client
    author = api.token_of("写手", Role.AUTHOR)
    ops = api.token_of("ops.li", Role.OPS)
    admin = api.token_of("root.admin", Role.ADMIN)
    compliance = api.token_of("合规张", Role.COMPLIANCE)
    for headers in (author, ops, admin, compliance):  # none of them sends one-offs
        r = await c.post("/api/cases/A1/messages", json={"channel": "sms"}, headers=headers)
        assert r.status_code == 403 and "cases.write" in r.json()["error"]
    # reading: ops and compliance may, the author and the admin may not
    assert [(await c.get("/api/cases/A1", headers=h)).status_code for h in (ops, compliance, author, admin)] == [
        200, 200, 403, 403]
    # metrics: ops (and compliance, who reads everything), not a collector
    collector = api.token_of("agent7", Role.COLLECTOR)
    assert [(await c.get("/metrics", headers=h)).status_code for h in (ops, compliance, collector)] == [200, 200, 403]
    with engine.connect() as conn:
        assert conn.execute(select(messages_t)).first() is None


async def test_expired_revoked_and_disabled_tokens_are_refused_at_once(api: Api) -> None:
    c, clock, people = api.client, api.clock, api.people
    auth = api.token_of("agent7", Role.COLLECTOR, days=1)
    assert (await c.get("/api/cases/A1", headers=auth)).status_code == 200
    clock.advance(hours=25)
    assert (await c.get("/api/cases/A1", headers=auth)).status_code == 401  # expired

    second = people.create_token("agent7", 30, "test-admin")
    header = {"Authorization": f"Bearer {second.token}"}
    assert (await c.get("/api/cases/A1", headers=header)).status_code == 200
    people.revoke_token(second.id, "test-admin")
    assert (await c.get("/api/cases/A1", headers=header)).status_code == 401  # revoked

    third = {"Authorization": f"Bearer {people.create_token('agent7', 30, 'test-admin').token}"}
    assert (await c.get("/api/cases/A1", headers=third)).status_code == 200
    people.disable_user("agent7", "test-admin")
    assert (await c.get("/api/cases/A1", headers=third)).status_code == 401  # disabled: the next request


async def test_timeline(api: Api) -> None:
    c = api.client
    auth = api.token_of("agent7", Role.COLLECTOR)
    await c.post("/api/cases/A1/messages", json={"channel": "sms"}, headers=auth)
    r = await c.get("/api/cases/A1", headers=auth)
    assert r.status_code == 200
    timeline = r.json()
    assert timeline["case_id"] == "A1" and timeline["status"] == "active"
    assert [m["channel"] for m in timeline["messages"]] == ["sms"]
    assert {"at", "kind"} <= set(timeline["events"][0])
    assert (await c.get("/api/cases/NOPE", headers=auth)).status_code == 404


async def test_the_api_is_documented_at_docs_without_a_cdn(api: Api) -> None:
    c = api.client
    spec = (await c.get("/openapi.json")).json()
    assert set(spec["paths"]) >= {"/api/cases/{case_id}", "/api/cases/{case_id}/messages"}
    assert not [p for p in spec["paths"] if p.startswith(("/ui", "/twilio", "/email", "/p/"))]  # pages, webhooks
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/api/cases/{case_id}"]["get"]["security"] == [{"HTTPBearer": []}]
    page = await c.get("/docs")
    assert page.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text  # works on a closed network
    js = await c.get("/docs/static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000


async def test_the_api_states_the_outstanding_amount_and_days_past_due_in_the_debtors_day(
        api: Api, engine: Engine) -> None:
    c, clock = api.client, api.clock
    auth = api.token_of("agent7", Role.COLLECTOR)
    with engine.begin() as conn:
        repo.record_payment(conn, "A1", Decimal("325.55"), "cashier", clock.now())
    timeline = (await c.get("/api/cases/A1", headers=auth)).json()
    assert (timeline["amount_due"], timeline["paid_total"], timeline["outstanding"]) == ("10325.00", "325.55",
                                                                                        "9999.45")
    # 00:30 on Mon 7 Dec in Shanghai is still the 6th in UTC (DPD 29 there): DPD follows
    # the debtor's calendar, 30 days after the due date 2026-11-07
    clock.set(dt.datetime(2026, 12, 7, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    timeline = (await c.get("/api/cases/A1", headers=auth)).json()
    assert (timeline["days_past_due"], timeline["zone"]) == (30, "Asia/Shanghai")


async def test_metrics_show_an_estimated_calendar_year(api: Api) -> None:
    c, clock = api.client, api.clock
    text = (await c.get("/metrics", headers=BOOTSTRAP)).text
    assert 'dispatcher_calendar_estimated{profile="cn",year="2026"} 0' in text
    clock.set(dt.datetime(2027, 1, 4, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    auth = api.token_of("agent7", Role.COLLECTOR)
    r = await c.post("/api/cases/A1/messages", json={"channel": "sms"}, headers=auth)
    assert r.status_code == 202  # decided in 2027, on the estimated calendar
    text = (await c.get("/metrics", headers=BOOTSTRAP)).text
    assert 'dispatcher_calendar_estimated{profile="cn",year="2027"} 1' in text
    assert "# TYPE dispatcher_calendar_estimated gauge" in text
