"""The collectors' HTTP API: timeline and one-off messages through the compliance gate,
on SQLite and PostgreSQL, over the real ASGI app."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.domain import Case, CaseStatus
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.tables import messages_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "api-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def imported(case_id: str, status: CaseStatus = CaseStatus.ACTIVE) -> repo.ImportedCase:
    case = Case(case_id=case_id, name="王伟", jurisdiction="cn", locale="zh-CN", currency="CNY",
                principal=Decimal("10000.00"), interest=Decimal("100.00"), penalty=Decimal("225.00"),
                fees=Decimal("0.00"), amount_due=Decimal("10325.00"), due_date=dt.date(2026, 11, 7),
                phone="+8613812345678", email="wang@example.com", penalty_rate_daily=Decimal("0.0005"),
                status=status)
    return repo.ImportedCase(case=case, zones=("Asia/Shanghai",), sms_consent=True, email_consent=True,
                             voice_consent=True)


@pytest.fixture
async def client(engine: Engine, config: Config) -> AsyncIterator[tuple[httpx.AsyncClient, FakeClock]]:
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1"), imported("P1", CaseStatus.PAID)], clock.now())
    settings = Settings(public_url="https://d.example", api_token=TOKEN, signing_key="k")
    app = create_app(Runtime(settings, clock, config=config, engine=engine,
                             templates=TemplateSet(ROOT / "templates", config)).web())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c, clock
    await app.collaborators.receipts.aclose()


async def test_one_off_is_queued_through_the_gate(client: tuple[httpx.AsyncClient, FakeClock],
                                                  engine: Engine) -> None:
    c, clock = client
    r = await c.post("/api/cases/A1/messages", json={"channel": "sms", "by": "agent7"}, headers=AUTH)
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["action"], body["reason"], body["not_before"]) == ("send", "due", None)
    assert body["template"].startswith("sms/dpd30/")
    with engine.connect() as conn:
        row = conn.execute(select(messages_t).where(messages_t.c.id == body["message_id"])).one()
    assert (row.kind, row.status, row.created_by) == ("one_off", "queued", "agent7")

    clock.set(dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    r = await c.post("/api/cases/A1/messages", json={"channel": "email", "by": "agent7"}, headers=AUTH)
    assert r.status_code == 202
    assert (r.json()["action"], r.json()["not_before"]) == ("defer", "2026-12-07T09:00:00+08:00")


async def test_refusals_and_errors(client: tuple[httpx.AsyncClient, FakeClock], engine: Engine) -> None:
    c, _ = client
    r = await c.post("/api/cases/P1/messages", json={"channel": "sms", "by": "agent7"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["refused"] == "case_closed"
    assert (
        await c.post("/api/cases/NOPE/messages", json={"channel": "sms", "by": "x"}, headers=AUTH)
    ).status_code == 404
    assert (await c.post("/api/cases/A1/messages", json={"channel": "fax", "by": "x"}, headers=AUTH)).status_code == 400
    assert (await c.post("/api/cases/A1/messages", content=b"{not json", headers=AUTH)).status_code == 400
    assert (await c.post("/api/cases/A1/messages", json={"channel": "sms", "by": "x"})).status_code == 401
    assert (await c.get("/api/cases/A1", headers={"Authorization": "Bearer wrong"})).status_code == 401
    with engine.connect() as conn:
        assert conn.execute(select(messages_t)).first() is None  # nothing was queued by any of these


async def test_timeline(client: tuple[httpx.AsyncClient, FakeClock]) -> None:
    c, _ = client
    await c.post("/api/cases/A1/messages", json={"channel": "sms", "by": "agent7"}, headers=AUTH)
    r = await c.get("/api/cases/A1", headers=AUTH)
    assert r.status_code == 200
    timeline = r.json()
    assert timeline["case_id"] == "A1" and timeline["status"] == "active"
    assert [m["channel"] for m in timeline["messages"]] == ["sms"]
    assert {"at", "kind"} <= set(timeline["events"][0])
    assert (await c.get("/api/cases/NOPE", headers=AUTH)).status_code == 404


async def test_the_api_states_the_outstanding_amount_and_days_past_due_in_the_debtors_day(
        client: tuple[httpx.AsyncClient, FakeClock], engine: Engine) -> None:
    c, clock = client
    with engine.begin() as conn:
        repo.record_payment(conn, "A1", Decimal("325.55"), "cashier", clock.now())
    timeline = (await c.get("/api/cases/A1", headers=AUTH)).json()
    assert (timeline["amount_due"], timeline["paid_total"], timeline["outstanding"]) == ("10325.00", "325.55",
                                                                                        "9999.45")
    # 00:30 on Mon 7 Dec in Shanghai is still the 6th in UTC (DPD 29 there): DPD follows
    # the debtor's calendar, 30 days after the due date 2026-11-07
    clock.set(dt.datetime(2026, 12, 7, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    timeline = (await c.get("/api/cases/A1", headers=AUTH)).json()
    assert (timeline["days_past_due"], timeline["zone"]) == (30, "Asia/Shanghai")


async def test_metrics_show_an_estimated_calendar_year(client: tuple[httpx.AsyncClient, FakeClock]) -> None:
    c, clock = client
    text = (await c.get("/metrics")).text
    assert 'dispatcher_calendar_estimated{profile="cn",year="2026"} 0' in text
    clock.set(dt.datetime(2027, 1, 4, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    r = await c.post("/api/cases/A1/messages", json={"channel": "sms", "by": "agent7"}, headers=AUTH)
    assert r.status_code == 202  # decided in 2027, on the estimated calendar
    text = (await c.get("/metrics")).text
    assert 'dispatcher_calendar_estimated{profile="cn",year="2027"} 1' in text
    assert "# TYPE dispatcher_calendar_estimated gauge" in text
