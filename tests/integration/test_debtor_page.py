"""The debtor's page behind a payment link, against the ASGI app and a real store
(SQLite and PostgreSQL through the shared `engine` fixture): the page in the case's
locale, each choice (pay, promise, plan, dispute) recorded on the case, CSRF refusal,
expired and unknown links showing no data, the rate limit, the agreement record, and the
plan check (broken, completed)."""

from __future__ import annotations

import datetime as dt
import html as html_lib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from test_console import Console, console, sign_in  # noqa: F401
from test_webhooks import CN_EMAIL, CN_PHONE, INTERNAL, KEY, US_PHONE, add_message, imported, make_app

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.domain import Reason
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.services.plan_check import check_plans
from dispatcher.store import repository as repo
from dispatcher.store.plans import create_plan, get_agreement
from dispatcher.store.snapshots import get_snapshot
from dispatcher.store.tables import events_t, holds_t, instalments_t, plans_t

SHIPPED_CONFIG = str(Path(__file__).resolve().parents[2] / "config" / "dispatcher.toml")


@dataclass
class Page:
    engine: Engine
    config: Config
    clock: FakeClock
    client: httpx.AsyncClient
    signer: LinkSigner
    cn_msg: int
    us_msg: int

    def token(self, message_id: int | None = None) -> str:
        return self.signer.payment_token(message_id or self.cn_msg, self.clock.now() + dt.timedelta(days=14))

    def events(self, kind: str) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(select(events_t).where(events_t.c.kind == kind).order_by(events_t.c.id)).all()

    async def open(self, token: str) -> tuple[httpx.Response, str]:
        r = await self.client.get(f"/p/{token}")
        match = re.search(r'name="csrf" value="([^"]+)"', r.text)
        return r, match.group(1) if match else ""


@pytest.fixture
async def page(engine: Engine, config: Config, fake_clock: FakeClock) -> AsyncIterator[Page]:
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("cn-1", "cn", CN_PHONE, CN_EMAIL),
                                 imported("us-1", "us", US_PHONE, "alex@example.com")], fake_clock.now())
    cn_msg = add_message(engine, "cn-1", "sms", to=CN_PHONE)
    us_msg = add_message(engine, "us-1", "sms", to=US_PHONE, locale="en-US")
    app = make_app(engine, config, fake_clock)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=INTERNAL) as client:
            yield Page(engine, config, fake_clock, client, LinkSigner(KEY), cn_msg, us_msg)
    finally:
        await app.collaborators.receipts.aclose()


async def test_page_in_the_cases_locale_with_outstanding_amount_and_penalty(page: Page) -> None:
    with page.engine.begin() as conn:
        repo.record_payment(conn, "cn-1", Decimal("270.00"), "test", page.clock.now())
    r, csrf = await page.open(page.token())
    assert r.status_code == 200 and csrf
    assert '<html lang="zh-CN">' in r.text and "调度银行" in r.text
    assert "¥10,000.00" in r.text  # outstanding now, not the imported 10,270.00
    assert "逾期罚息" in r.text  # the penalty explanation
    assert "95555" in r.text
    assert CN_PHONE not in r.text and CN_EMAIL not in r.text and "张伟" not in r.text
    assert r.headers["cache-control"] == "no-store"
    r, _ = await page.open(page.token(page.us_msg))
    assert '<html lang="en-US">' in r.text and "$10,270.00" in r.text and "Late charges" in r.text
    assert [e.case_id for e in page.events("link_clicked")] == ["cn-1", "us-1"]


async def test_pay_now_redirects_with_a_reference_and_logs_the_choice(page: Page) -> None:
    token = page.token()
    _, csrf = await page.open(token)
    r = await page.client.post(f"/p/{token}/pay", data={"csrf": csrf})
    assert r.status_code == 303
    location = urlsplit(r.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == page.config.organisation.payment_page
    assert parse_qs(location.query) == {"ref": ["cn-1"]}
    [choice] = page.events("self_service")
    assert (choice.case_id, choice.message_id, choice.actor) == ("cn-1", page.cn_msg, "page")
    assert json.loads(choice.data)["choice"] == "pay_now"


async def test_every_post_needs_the_csrf_token_bound_to_the_cookie(page: Page) -> None:
    token = page.token()
    _, csrf = await page.open(token)
    for path, data in (("pay", {}), ("promise", {"date": "2026-12-10"}), ("dispute", {"text": "not mine"})):
        assert (await page.client.post(f"/p/{token}/{path}", data=data)).status_code == 403
        assert (await page.client.post(f"/p/{token}/{path}", data={**data, "csrf": "0" * 64})).status_code == 403
    # the right token for another link is refused too (bound to the link's token)
    other = page.token(page.us_msg)
    assert (await page.client.post(f"/p/{other}/pay", data={"csrf": csrf})).status_code == 403
    # and without the cookie (another site's form)
    page.client.cookies.clear()
    assert (await page.client.post(f"/p/{token}/pay", data={"csrf": csrf})).status_code == 403
    assert page.events("self_service") == [] and page.events("hold_placed") == []


async def test_promise_to_pay_places_a_hold_until_the_debtors_date(page: Page) -> None:
    token = page.token()
    _, csrf = await page.open(token)
    # too far ahead (max 14 days from Mon 2026-12-07) and in the past are refused
    for bad in ("2026-12-22", "2026-12-07", "2026-12-01", "someday"):
        r = await page.client.post(f"/p/{token}/promise", data={"csrf": csrf, "date": bad})
        assert r.status_code == 422, bad
    assert page.events("hold_placed") == []
    r = await page.client.post(f"/p/{token}/promise", data={"csrf": csrf, "date": "2026-12-21"})
    assert r.status_code == 303
    r = await page.client.get(r.headers["location"])
    assert "2026年12月21日" in r.text
    with page.engine.connect() as conn:
        hold = conn.execute(select(holds_t).where(holds_t.c.case_id == "cn-1")).one()
    assert hold.reason == "promise_to_pay"
    assert hold.until == dt.datetime(2026, 12, 21, 16, 0, tzinfo=dt.UTC)  # end of 12-21, Shanghai
    assert json.loads(page.events("self_service")[0].data) == {"choice": "promise_to_pay", "promised_by": "2026-12-21"}


async def test_dispute_opens_a_review_task_and_holds_contact(page: Page) -> None:
    token = page.token()
    _, csrf = await page.open(token)
    r = await page.client.post(f"/p/{token}/dispute", data={"csrf": csrf, "text": "  "})
    assert r.status_code == 422
    r = await page.client.post(f"/p/{token}/dispute", data={"csrf": csrf, "text": "我已于11月还清 <b>x</b>"})
    assert r.status_code == 303
    [task] = page.events("collector_task")
    assert json.loads(task.data)["task"] == "review_dispute"
    assert json.loads(task.data)["text"] == "我已于11月还清 <b>x</b>"
    snapshot = get_snapshot(page.engine, "cn-1", page.clock.now())
    assert [h.reason for h in snapshot.holds] == [Reason.DISPUTE_HOLD]


async def test_plan_from_an_offer_with_its_agreement_stored_verbatim(page: Page) -> None:
    token = page.token()
    r, csrf = await page.open(token)
    offer = re.search(r'name="offer" value="three_months">\s*<input type="hidden" name="digest" value="(\w+)"', r.text)
    assert offer is not None
    shown = re.search(r'id="offer-three_months".*?<div class="agreement">(.*?)</div>', r.text, re.S)
    assert shown is not None
    # a stale digest (the terms changed since the page was shown) is refused
    r = await page.client.post(f"/p/{token}/plan", data={"csrf": csrf, "offer": "three_months", "digest": "x"})
    assert r.status_code == 422
    r = await page.client.post(f"/p/{token}/plan",
                               data={"csrf": csrf, "offer": "three_months", "digest": offer.group(1)})
    assert r.status_code == 303
    with page.engine.connect() as conn:
        plan = conn.execute(select(plans_t)).one()
        instalments = conn.execute(select(instalments_t).order_by(instalments_t.c.number)).all()
        agreement = get_agreement(conn, plan.agreement_id)
    # 10,270.00 less the 150.00 penalty waived if kept: 10,120.00 in 3
    assert [(i.due, i.amount) for i in instalments] == [
        (dt.date(2027, 1, 6), Decimal("3373.34")), (dt.date(2027, 2, 5), Decimal("3373.33")),
        (dt.date(2027, 3, 7), Decimal("3373.33"))]
    assert agreement is not None and agreement.case_id == "cn-1" and agreement.locale == "zh-CN"
    assert agreement.text == html_lib.unescape(shown.group(1))  # the exact text shown
    assert agreement.terms["waived_if_kept"] == "150.00" and len(agreement.terms["instalments"]) == 3
    assert [json.loads(e.data)["choice"] for e in page.events("self_service")] == ["repayment_plan"]
    assert len(page.events("plan_created")) == 1
    # the page now shows the plan and links the printable agreement; no second plan
    r, _ = await page.open(token)
    assert f"/p/{token}/agreement/{plan.agreement_id}" in r.text and 'name="offer"' not in r.text
    r = await page.client.get(f"/p/{token}/agreement/{plan.agreement_id}")
    assert r.status_code == 200 and "分期还款协议" in r.text and "¥3,373.34" in r.text
    # another case's link cannot read it
    r = await page.client.get(f"/p/{page.token(page.us_msg)}/agreement/{plan.agreement_id}")
    assert r.status_code == 404 and "3,373.34" not in r.text
    # the gate: collection stops with repayment_plan
    gate = Gate(page.config)
    snapshot = get_snapshot(page.engine, "cn-1", page.clock.now())
    decisions = gate.decide_case(snapshot, {}, page.clock.now())
    assert {d.reason for d in decisions if d.stage != "plan"} == {Reason.REPAYMENT_PLAN}


async def test_expired_and_unknown_links_show_no_case_data(page: Page) -> None:
    token = page.token()
    page.clock.advance(days=15)
    r = await page.client.get(f"/p/{token}")
    assert r.status_code == 410 and "expired" in r.text and "95555" in r.text
    r2 = await page.client.get(f"/p/{token[:-3]}xyz")
    assert r2.status_code == 400 and "not valid" in r2.text
    gone = page.signer.payment_token(987_654, page.clock.now() + dt.timedelta(days=1))
    r3 = await page.client.get(f"/p/{gone}")
    assert r3.status_code == 400  # unknown: "not valid", with the support numbers only
    for resp in (r, r2, r3):
        assert "10,270" not in resp.text and "cn-1" not in resp.text and "csrf" not in resp.text
    assert (await page.client.post(f"/p/{token}/pay", data={"csrf": "x"})).status_code == 410
    assert page.events("link_clicked") == []


async def test_rate_limit_per_client_and_link(page: Page) -> None:
    token = page.token()
    limit = page.config.self_service.requests_per_minute
    statuses = [(await page.client.get(f"/p/{token}")).status_code for _ in range(limit + 2)]
    assert statuses[:limit] == [200] * limit and statuses[limit:] == [429, 429]
    r = await page.client.get(f"/p/{token}")
    assert "retry-after" in r.headers and "10,270" not in r.text
    # another link from the same client still works; a minute later this one does again
    assert (await page.client.get(f"/p/{page.token(page.us_msg)}")).status_code == 200
    page.clock.advance(seconds=60)
    assert (await page.client.get(f"/p/{token}")).status_code == 200


async def test_rate_limit_per_client_over_all_links(page: Page) -> None:
    """Guessing tokens from one address: every guess counts against that address."""
    limit = page.config.self_service.client_requests_per_minute
    statuses = [(await page.client.get(f"/p/guess{i:011d}")).status_code for i in range(limit + 1)]
    assert statuses[:limit] == [400] * limit and statuses[limit] == 429
    assert (await page.client.get(f"/p/{page.token()}")).status_code == 429  # a real link too, for a minute


async def test_plan_check_breaks_a_late_plan_and_resumes_collection(page: Page) -> None:
    token = page.token()
    r, csrf = await page.open(token)
    digest = re.search(r'value="three_months">\s*<input type="hidden" name="digest" value="(\w+)"', r.text)
    assert digest is not None
    await page.client.post(f"/p/{token}/plan", data={"csrf": csrf, "offer": "three_months",
                                                      "digest": digest.group(1)})
    # first instalment 3,373.34 due 2027-01-06; paid in part only; grace 3 days
    with page.engine.begin() as conn:
        repo.record_payment(conn, "cn-1", Decimal("3000.00"), "test", page.clock.now())
    page.clock.set(dt.datetime(2027, 1, 9, 10, 0, tzinfo=dt.UTC))
    assert check_plans(page.engine, page.config, page.clock.now()).broken == 0
    page.clock.set(dt.datetime(2027, 1, 10, 10, 0, tzinfo=dt.UTC))
    assert check_plans(page.engine, page.config, page.clock.now()).broken == 1
    assert check_plans(page.engine, page.config, page.clock.now()).broken == 0  # once
    [broken] = page.events("plan_broken")
    assert json.loads(broken.data)["instalment"] == 1
    assert [json.loads(e.data)["task"] for e in page.events("collector_task")] == ["broken_promise"]
    snapshot = get_snapshot(page.engine, "cn-1", page.clock.now())
    assert snapshot.plan is None
    decisions = Gate(page.config).decide_case(snapshot, {}, page.clock.now())
    assert Reason.REPAYMENT_PLAN not in {d.reason for d in decisions}
    # the report counts the plan taken in its period, and where it stands now
    from dispatcher.reports import build_report

    report = build_report(page.engine, page.config, page.clock.now(), since=dt.date(2026, 12, 1),
                          until=dt.date(2027, 1, 10))
    assert [p.as_json() for p in report.plans] == [
        {"jurisdiction": "cn", "taken": 1, "active": 0, "completed": 0, "broken": 1, "keep_rate": 0.0}]
    assert report.as_json()["plans"][0]["broken"] == 1


async def test_plan_check_completes_a_kept_plan_and_settles_the_waived_penalty(page: Page) -> None:
    token = page.token()
    r, csrf = await page.open(token)
    digest = re.search(r'value="three_months">\s*<input type="hidden" name="digest" value="(\w+)"', r.text)
    assert digest is not None
    await page.client.post(f"/p/{token}/plan", data={"csrf": csrf, "offer": "three_months",
                                                      "digest": digest.group(1)})
    with page.engine.begin() as conn:
        repo.record_payment(conn, "cn-1", Decimal("10120.00"), "test", page.clock.now())  # all but the penalty
    assert check_plans(page.engine, page.config, page.clock.now()).completed == 1
    snapshot = get_snapshot(page.engine, "cn-1", page.clock.now())
    assert snapshot.case.status.value == "settled" and snapshot.plan is None
    assert len(page.events("plan_completed")) == 1


async def test_collectors_print_the_agreement_from_the_cli(page: Page, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dispatcher.cli import app

    token = page.token()
    r, csrf = await page.open(token)
    digest = re.search(r'value="three_months">\s*<input type="hidden" name="digest" value="(\w+)"', r.text)
    assert digest is not None
    await page.client.post(f"/p/{token}/plan", data={"csrf": csrf, "offer": "three_months",
                                                      "digest": digest.group(1)})
    monkeypatch.setenv("DISPATCHER_SIGNING_KEY", KEY)
    base = ["--config", SHIPPED_CONFIG,
            "--db", page.engine.url.render_as_string(hide_password=False), "case", "agreement"]
    with page.engine.connect() as conn:
        agreement = get_agreement(conn, conn.execute(select(plans_t.c.agreement_id)).scalar_one())
    assert agreement is not None
    result = CliRunner().invoke(app, [*base, "cn-1"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(agreement.text) and "plan 1 active" in result.output
    result = CliRunner().invoke(app, [*base, "cn-1", "--format", "json"])
    assert json.loads(result.output)["text"] == agreement.text
    shown = CliRunner().invoke(app, ["--config", SHIPPED_CONFIG, "--db", base[3], "case", "show", "cn-1",
                                     "--format", "json"])
    [plan] = json.loads(shown.output)["plans"]
    assert (plan["status"], plan["agreement_id"], plan["total"], len(plan["instalments"])) == (
        "active", agreement.agreement_id, "10120.00", 3)
    result = CliRunner().invoke(app, [*base, "cn-1", "--format", "html"])
    assert result.exit_code == 0 and "<html" in result.output and "¥3,373.34" in result.output
    result = CliRunner().invoke(app, [*base, "us-1"])
    assert result.exit_code == 1 and "no agreement" in result.output
    result = CliRunner().invoke(app, [*base, "cn-1", "--id", "999"])
    assert result.exit_code == 2 and "no agreement 999" in result.output


async def test_collectors_read_the_agreement_in_the_console(console: Console, engine: Engine) -> None:  # noqa: F811
    """Signed in with cases.read: the case's timeline links the agreement; another
    case's id in the path finds nothing; without a session, the sign-in page."""
    from dispatcher.config import PlanOffer
    from dispatcher.policy.plans import schedule

    offer = PlanOffer(name="three_months", instalments=3)
    with engine.begin() as conn:
        _, agreement_id = create_plan(
            conn, "A1", offer=offer.name, instalments=schedule(offer, Decimal("900.00"), dt.date(2026, 12, 7)),
            waived=Decimal("0.00"), paid_at_start=Decimal("0.00"), created_on=dt.date(2026, 12, 7), locale="en-US",
            terms={"offer": offer.name}, text="Dispatcher Bank: repayment plan agreement\nInstalment 1: $300.00",
            by="page", now=console.clock.now())
    c = console.client
    assert (await c.get(f"/ui/cases/A1/agreements/{agreement_id}")).status_code == 303
    await sign_in(c)
    r = await c.get("/ui/cases/A1")
    assert f'href="/ui/cases/A1/agreements/{agreement_id}"' in r.text
    assert 'id="plans"' in r.text and "1: 300.00 by 2027-01-06" in r.text
    r = await c.get(f"/ui/cases/A1/agreements/{agreement_id}")
    assert r.status_code == 200 and "Instalment 1: $300.00" in r.text and "the debtor&#39;s page" in r.text
    assert (await c.get(f"/ui/cases/P1/agreements/{agreement_id}")).status_code == 404
