"""The templates API over the real ASGI app on SQLite and PostgreSQL (SPEC 15), with a
token of each role: 401 without a token, 403 for a collector, `same_author` and
`not_compliance` refusals, 422 `lint_failed`, 200 for another compliance user, after
which the next tick sends the new text with its version stored on the message;
rollback; rejection; the OpenAPI document at /openapi.json."""

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
from dispatcher.domain import Case
from dispatcher.roles import Role
from dispatcher.services.planner import run_planner
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.tables import events_t, messages_t
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime

BOOTSTRAP_TOKEN = "api-token-for-templates"
SMS = "sms/dpd30/v1"
BASE = f"/api/templates/{SMS}/versions"


@dataclass
class Api:
    client: httpx.AsyncClient
    runtime: Runtime
    tokens: dict[str, dict[str, str]]


@pytest.fixture
async def api(engine: Engine, config: Config, tmp_path: Path) -> AsyncIterator[Api]:
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))))  # Monday in NY
    case = Case(case_id="US1", name="Ann Lee", jurisdiction="us", locale="en-US", currency="USD",
                principal=Decimal("1000.00"), interest=Decimal("10.00"), penalty=Decimal("25.00"),
                fees=Decimal("0.00"), amount_due=Decimal("1035.00"), due_date=dt.date(2026, 11, 4),
                phone="+12125550123", email="ann@example.com", penalty_rate_daily=Decimal("0.0005"))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [repo.ImportedCase(case=case, zones=("America/New_York",), sms_consent=True,
                                                   email_consent=True, voice_consent=True)], clock.now())
    settings = Settings(public_url="https://d.example", api_token=BOOTSTRAP_TOKEN, signing_key="k",
                        transport="file", spool_dir=tmp_path / "spool")
    runtime = Runtime(settings, clock, config=config, engine=engine, passwords=light_passwords())
    app = create_app(runtime.web())
    people = runtime.people
    tokens = {"bootstrap": {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}}
    for name, role in (("alice", Role.AUTHOR), ("bob", Role.AUTHOR), ("carol", Role.COMPLIANCE),
                       ("olga", Role.OPS), ("eve", Role.COLLECTOR), ("adam", Role.ADMIN)):
        people.add_user(name, frozenset({role}), "test-admin")
        tokens[name] = {"Authorization": f"Bearer {people.create_token(name, 30, 'test-admin').token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield Api(c, runtime, tokens)
    await app.collaborators.receipts.aclose()


def approved_text(api: Api) -> str:
    approved = api.runtime.template_versions.approved(SMS, "en-US")
    assert approved is not None
    return approved.content


async def send_due(api: Api) -> None:
    channels = api.runtime.channels()
    try:
        await api.runtime.sender(channels).send_due()
    finally:
        for adapter in channels.values():
            await adapter.aclose()


async def test_who_may_read_draft_and_approve(api: Api) -> None:
    c, t = api.client, api.tokens
    assert (await c.get("/api/templates")).status_code == 401
    assert (await c.get("/api/templates", headers={"Authorization": "Bearer nope"})).status_code == 401
    for name in ("eve", "adam"):  # collectors and administrators do not see templates
        assert (await c.get("/api/templates", headers=t[name])).status_code == 403
        r = await c.post(f"{BASE}/1/approve", json={}, headers=t[name])
        assert r.status_code == 403 and "templates.read" in r.json()["error"]
    listing = await c.get("/api/templates", headers=t["olga"])
    assert listing.status_code == 200
    rows = {(x["template_id"], x["locale"]): x for x in listing.json()["templates"]}
    assert rows[(SMS, "en-US")]["state"] == "approved" and rows[(SMS, "en-US")]["approved_by"] == "compliance-team"
    # ops and compliance read, but only authors save drafts
    for name in ("olga", "carol", "eve"):
        r = await c.post(BASE, json={"locale": "en-US", "content": "x"}, headers=t[name])
        assert r.status_code == 403, name
    history = await c.get(BASE, headers=t["carol"])
    assert history.status_code == 200 and {v["state"] for v in history.json()["versions"]} == {"approved"}
    assert (await c.get("/api/templates/sms/dpd30/v99/versions", headers=t["carol"])).status_code == 404


async def test_four_eyes_then_the_next_tick_sends_the_new_text_pinned(api: Api, engine: Engine) -> None:
    c, t = api.client, api.tokens
    new_text = approved_text(api).rstrip("\n") + " Thank you.\n"
    r = await c.post(BASE, json={"locale": "en-US", "content": new_text}, headers=t["alice"])
    assert r.status_code == 201, r.text
    assert r.json()["problems"] == [] and r.json()["state"] == "draft"
    version = r.json()["version"]
    listing = (await c.get("/api/templates", headers=t["alice"])).json()["templates"]
    row = next(x for x in listing if (x["template_id"], x["locale"]) == (SMS, "en-US"))
    assert (row["state"], row["draft_version"], row["draft_author"]) == ("awaiting approval", version, "alice")

    own = await c.post(f"{BASE}/{version}/approve", json={"note": "mine"}, headers=t["alice"])
    assert own.status_code == 403 and own.json()["reason"] == "same_author"
    other_author = await c.post(f"{BASE}/{version}/approve", json={}, headers=t["bob"])
    assert other_author.status_code == 403 and other_author.json()["reason"] == "not_compliance"
    bootstrap = await c.post(f"{BASE}/{version}/approve", json={}, headers=t["bootstrap"])
    assert bootstrap.status_code == 403 and bootstrap.json()["reason"] == "unknown_user"

    ok = await c.post(f"{BASE}/{version}/approve", json={"note": "clearer"}, headers=t["carol"])
    assert ok.status_code == 200, ok.text
    assert (ok.json()["state"], ok.json()["approved_by"], ok.json()["note"]) == ("approved", "carol", "clearer")
    with engine.connect() as conn:
        actors = conn.execute(select(events_t.c.kind, events_t.c.actor).where(
            events_t.c.kind.in_(["template_saved", "template_approved"])).order_by(events_t.c.id)).all()
    assert [tuple(a) for a in actors] == [("template_saved", "alice"), ("template_approved", "carol")]

    # a one-off of this template, sent by the next pass: the new text, pinned to its version
    queued = await c.post("/api/cases/US1/messages", json={"channel": "sms", "template": SMS}, headers=t["eve"])
    assert queued.status_code == 202 and queued.json()["action"] == "send", queued.text
    await send_due(api)
    with engine.connect() as conn:
        sent = conn.execute(select(messages_t.c.body, messages_t.c.template_id, messages_t.c.template_version,
                                   messages_t.c.status).where(messages_t.c.id == queued.json()["message_id"])).one()
    assert sent.status == "sent" and sent.template_id == SMS
    assert sent.body.endswith("Thank you.") and sent.template_version == version
    # the scheduled pass pins its messages too, each to an approved version of its template
    runtime = api.runtime
    run_planner(runtime.engine, runtime.gate, runtime.templates.approved_catalog(), runtime.clock.now())
    await send_due(api)
    with engine.connect() as conn:
        rows = conn.execute(select(messages_t.c.template_id, messages_t.c.template_version)
                            .where(messages_t.c.status == "sent")).all()
    assert len(rows) > 1
    for row in rows:
        stored = runtime.template_versions.get(row.template_version)
        assert stored is not None and stored.state == "approved" and stored.template_id == row.template_id


async def test_lint_failure_rollback_and_rejection(api: Api) -> None:
    c, t = api.client, api.tokens
    first = api.runtime.template_versions.approved(SMS, "en-US")
    zh = api.runtime.template_versions.approved(SMS, "zh-CN")
    assert first is not None and zh is not None
    bad = await c.post(BASE, json={"locale": "en-US", "content": approved_text(api) + " Or the police come."},
                       headers=t["alice"])
    assert bad.status_code == 201
    problems = bad.json()["problems"]
    assert any("forbidden phrase 'police'" in p["message"] and p["line"] >= 1 for p in problems)
    refused = await c.post(f"{BASE}/{bad.json()['version']}/approve", json={}, headers=t["carol"])
    assert refused.status_code == 422 and refused.json()["reason"] == "lint_failed"
    assert refused.json()["problems"] == problems

    no_note = await c.post(f"{BASE}/{bad.json()['version']}/reject", json={}, headers=t["carol"])
    assert no_note.status_code == 400 and "note" in no_note.json()["error"]
    rejected = await c.post(f"{BASE}/{bad.json()['version']}/reject", json={"note": "no threats"},
                            headers=t["carol"])
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    assert rejected.json()["rejected_by"] == "carol"
    again = await c.post(f"{BASE}/{bad.json()['version']}/approve", json={}, headers=t["carol"])
    assert again.status_code == 409

    good = await c.post(BASE, json={"locale": "en-US", "content": approved_text(api) + " Thanks."},
                        headers=t["bob"])
    new = good.json()["version"]
    assert (await c.post(f"{BASE}/{new}/approve", json={}, headers=t["carol"])).status_code == 200
    # rollback: the earlier version approved again; the zh-CN version never moved
    back = await c.post(f"{BASE}/{first.version}/approve", json={"note": "rollback"}, headers=t["carol"])
    assert back.status_code == 200 and back.json()["state"] == "approved"
    versions = {v["version"]: v for v in (await c.get(BASE, headers=t["carol"])).json()["versions"]}
    assert versions[new]["state"] == "retired" and versions[first.version]["approved_by"] == "carol"
    assert versions[zh.version]["approved_by"] == zh.approved_by == "compliance-team"
    assert (await c.post(f"{BASE}/999999/approve", json={}, headers=t["carol"])).status_code == 404
    malformed = await c.post(BASE, json={"locale": "en-US"}, headers=t["alice"])
    assert malformed.status_code == 400
    assert (await c.post(BASE, json={"locale": "fr-FR", "content": "x"}, headers=t["alice"])).status_code == 400


async def test_the_api_is_documented(api: Api) -> None:
    doc = (await api.client.get("/openapi.json")).json()
    paths = doc["paths"]
    base = "/api/templates/{channel}/{stage}/{variant}/versions"
    assert {"/api/templates", base, base + "/{version}/approve", base + "/{version}/reject"} <= set(paths)
    assert paths[base]["post"]["responses"]["201"]
    assert {"NewVersionIn", "NewVersionOut", "RefusalOut", "VersionOut"} <= set(doc["components"]["schemas"])
    assert "422" in paths[base + "/{version}/approve"]["post"]["responses"]
