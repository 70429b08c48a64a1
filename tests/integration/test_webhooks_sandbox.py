"""What comes back, end to end through the sandbox (issue 5, "how it must be shown"):
the real sender and Twilio SDK against the in-thread sandbox, our web app on a loopback
port receiving the sandbox's signed callbacks, TwiML fetches, keypresses, inbound SMS
and bounces. SQLite store."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.channels.registry import build_channels
from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.domain import Action, Case, Channel, Product, Reason
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.sandbox import CallBehaviour, Sandbox, run_sandbox_in_thread
from dispatcher.sandbox.asgi_server import serve_in_thread
from dispatcher.services.ledger import StoreLedger
from dispatcher.services.links import resolve
from dispatcher.services.outbox import Sender
from dispatcher.services.planner import run_planner
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.db import make_engine
from dispatcher.store.repository import ImportedCase
from dispatcher.store.snapshots import get_snapshot
from dispatcher.store.tables import contacts_t, holds_t, messages_t
from dispatcher.store.timeline import case_timeline
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime

KEY = "sandbox-e2e-signing-key-0123456789abcdef"
DUE_DPD60 = dt.date(2026, 10, 8)  # DPD 60 on Mon 2026-12-07: SMS, e-mail and a call are due

PHONE_PERSON = "+8613800000001"
PHONE_MACHINE = "+8613800000002"
PHONE_SILENT = "+8613800000003"
PHONE_QUIET = "+8613800000005"  # answers, presses nothing
PHONE_SELF = "+8613800000018"  # asks for the self-service link (option 4)


def cn_case(n: int, phone: str, email: str) -> ImportedCase:
    case = Case(
        case_id=f"e2e-{n}", name="张伟", jurisdiction="cn", locale="zh-CN", currency="CNY",
        principal=Decimal("10000.00"), interest=Decimal("120.00"), penalty=Decimal("150.00"), fees=Decimal("0.00"),
        amount_due=Decimal("10270.00"), due_date=DUE_DPD60, phone=phone, email=email,
        penalty_rate_daily=Decimal("0.0005"), product=Product.CREDIT_CARD,
    )
    return ImportedCase(case=case, zones=("Asia/Shanghai",), sms_consent=True, email_consent=True, voice_consent=True)


async def wait_until(predicate: Callable[[], bool], what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class E2E:
    engine: Engine
    config: Config
    clock: FakeClock
    sandbox: Sandbox
    templates: TemplateSet
    sender: Sender
    url: str

    def timeline(self, case_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return case_timeline(conn, case_id, self.clock.now())

    def message(self, case_id: str, channel: str, kind: str = "scheduled") -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                select(messages_t).where(messages_t.c.case_id == case_id,
                                              messages_t.c.channel == channel,
                                              messages_t.c.kind == kind)
            ).one()

    def contact(self, case_id: str, channel: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(contacts_t).where(contacts_t.c.case_id == case_id,
                                                              contacts_t.c.channel == channel)).one()

    def call_to(self, phone: str) -> dict[str, Any]:
        (call,) = [c for c in self.sandbox.calls() if c["to"] == phone]
        return call

    async def settle(self) -> None:
        self.sandbox.drain_threadsafe(15)


@pytest.fixture
async def e2e(_sqlite_template: Path, tmp_path: Path, config: Config, fake_clock: FakeClock) -> AsyncIterator[E2E]:
    path = tmp_path / "e2e.db"
    shutil.copyfile(_sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    sending = config.sending.model_copy(update={"rate_per_second": {"sms": 1000.0, "voice": 1000.0, "email": 1000.0}})
    config = config.model_copy(update={"sending": sending})
    templates = TemplateSet(config.resolve(config.templates.directory), config)
    behaviours = {
        # option 2: a date that does not exist (Dec 99), then Dec 10, then 1 to confirm the read-back
        PHONE_PERSON: CallBehaviour(answered_by="human", digits=("1", "2", "1299", "1210", "1")),
        PHONE_SELF: CallBehaviour(answered_by="human", digits=("1", "4")),
        PHONE_MACHINE: CallBehaviour(answered_by="machine_end_beep"),
        PHONE_SILENT: CallBehaviour(answered_by="human", digits=("1", "9")),
    }
    holder: dict[str, Any] = {}

    def late_app(scope: Any, receive: Any, send: Any) -> Any:  # the port is known only once it listens
        return holder["app"](scope, receive, send)

    app = None
    channels: dict[Channel, Any] = {}
    try:
        with serve_in_thread(late_app, name="e2e-web") as port, run_sandbox_in_thread(
            seed=5, clock=fake_clock, callback_delay_ms=1, call_behaviours=behaviours,
            email_rules={"bounce-*@example.com": "async_hard"},
            bounce_url=f"http://127.0.0.1:{port}/email/bounce", bounce_key=KEY,
        ) as sandbox:
            url = f"http://127.0.0.1:{port}"
            web = Settings(twilio_auth_token=sandbox.auth_token, signing_key=KEY, public_url=url)
            app = create_app(Runtime(web, fake_clock, config=config, engine=engine, templates=templates).web())
            holder["app"] = app
            settings = Settings(twilio_account_sid=sandbox.account_sid, twilio_auth_token=sandbox.auth_token,
                                twilio_api_url=sandbox.twilio_url, smtp_url=sandbox.smtp_url, public_url=url,
                                signing_key=KEY)
            channels = build_channels(settings, timeout=5.0, clock=fake_clock, ledger=StoreLedger(engine))
            sender = Sender(engine, config, templates, channels, fake_clock, LinkSigner(KEY), url, "e2e")
            try:
                yield E2E(engine, config, fake_clock, sandbox, templates, sender, url)
                sandbox.drain_threadsafe(15)
            finally:
                for adapter in channels.values():
                    await adapter.aclose()
    finally:
        if app is not None:
            await app.collaborators.receipts.aclose()
        engine.dispose()


async def send_everything(e2e: E2E, *cases: ImportedCase) -> None:
    with e2e.engine.begin() as conn:
        repo.upsert_cases(conn, list(cases), e2e.clock.now())
    summary = run_planner(e2e.engine, Gate(e2e.config), e2e.templates.approved_catalog(), e2e.clock.now())
    assert summary is not None and summary.queued == 3 * len(cases)
    sent = await e2e.sender.send_due()
    assert sent.sent == 3 * len(cases)
    await e2e.settle()


async def test_delivery_receipts_reach_the_timeline(e2e: E2E) -> None:
    await send_everything(e2e, cn_case(1, PHONE_PERSON, "one@example.com"))
    sms = e2e.message("e2e-1", "sms")
    await wait_until(lambda: e2e.message("e2e-1", "sms").status == "delivered", "SMS delivered")
    timeline = e2e.timeline("e2e-1")
    statuses = [(e.get("message_id"), e.get("status")) for e in timeline["events"] if e["kind"] == "status_received"]
    assert (sms.id, "delivered") in statuses
    assert [m["status"] for m in timeline["messages"] if m["id"] == sms.id] == ["delivered"]


async def test_a_person_confirms_identity_and_promises_to_pay(e2e: E2E) -> None:
    await send_everything(e2e, cn_case(1, PHONE_PERSON, "one@example.com"))
    await wait_until(lambda: e2e.message("e2e-1", "voice").conversation, "a completed conversation")
    call = e2e.call_to(PHONE_PERSON)
    assert call["digits"] == ["1", "2", "1299", "1210", "1"]
    spoken = " ".join(call["spoken"])
    assert "10,270.00" in spoken  # the script, after the identity check
    assert spoken.index("按1") < spoken.index("10,270.00")
    # the date prompt (window: Mon Dec 7 to Dec 14), the retry, the read-back, the goodbye
    assert spoken.index("两位月份") < spoken.index("抱歉，这不是今天至12月14日之间的日期") \
        < spoken.index("您承诺在12月10日前还款。确认请按1") < spoken.index("我们已记录您承诺于12月10日前还款")
    voice = e2e.message("e2e-1", "voice")
    assert (voice.status, voice.answered_by) == ("completed", "human")
    holds = e2e.timeline("e2e-1")["holds"]
    assert [h["reason"] for h in holds] == [Reason.PROMISE_TO_PAY.value]
    with e2e.engine.connect() as conn:
        until = conn.execute(select(holds_t.c.until).where(holds_t.c.case_id == "e2e-1")).scalar_one()
    assert until == dt.datetime(2026, 12, 10, 16, 0, tzinfo=dt.UTC)  # the end of Dec 10 in Shanghai
    snapshot = get_snapshot(e2e.engine, "e2e-1", e2e.clock.now())
    assert {
        d.reason for d in Gate(e2e.config).decide_case(snapshot, e2e.templates.approved_catalog(), e2e.clock.now())
    } == {Reason.PROMISE_TO_PAY}


async def test_option_4_texts_the_self_service_link_through_the_outbox(e2e: E2E) -> None:
    await send_everything(e2e, cn_case(8, PHONE_SELF, "eight@example.com"))
    await wait_until(lambda: e2e.message("e2e-8", "voice").status == "completed", "call completed")
    spoken = " ".join(e2e.call_to(PHONE_SELF)["spoken"])
    assert "按4" in spoken and "自助服务链接已通过短信发送到本机" in spoken
    queued = e2e.message("e2e-8", "sms", kind="system")
    assert (queued.template_id, queued.status) == ("sms/replies/self_service", "queued")
    sent = await e2e.sender.send_due()
    assert sent.sent == 1
    await e2e.settle()
    texts = [m for m in e2e.sandbox.messages() if m["to"] == PHONE_SELF]
    assert len(texts) == 2  # the reminder, then the link the caller asked for
    link = re.search(rf"{re.escape(str(e2e.config.links.base_url))}/p/([A-Za-z0-9_-]{{16}}) ", texts[-1]["body"])
    assert link is not None and "自助服务" in texts[-1]["body"]
    target = resolve(e2e.engine, LinkSigner(KEY), link.group(1), e2e.clock.now())
    voice = e2e.message("e2e-8", "voice")
    assert target is not None and (target.case_id, target.message_id, target.expired) == ("e2e-8", voice.id, False)


async def test_an_answering_machine_gets_a_voicemail_that_names_no_debt(e2e: E2E) -> None:
    await send_everything(e2e, cn_case(2, PHONE_MACHINE, "two@example.com"))
    await wait_until(lambda: e2e.message("e2e-2", "voice").status == "completed", "call completed")
    call = e2e.call_to(PHONE_MACHINE)
    assert call["answered_by"] == "machine_end_beep" and call["digits"] == []
    spoken = " ".join(call["spoken"])
    assert spoken, "the voicemail was spoken"
    # a limited-content message: a greeting may name the person, nothing names the debt
    for secret in ("10,270", "10270", "欠款", "逾期", "罚息", "还款"):
        assert secret not in spoken
    assert e2e.message("e2e-2", "voice").conversation is False


async def test_option_9_opts_the_number_out_of_calls(e2e: E2E) -> None:
    await send_everything(e2e, cn_case(3, PHONE_SILENT, "three@example.com"))
    await wait_until(lambda: e2e.contact("e2e-3", "voice").opted_out, "voice opt-out")
    snapshot = get_snapshot(e2e.engine, "e2e-3", e2e.clock.now())
    voice = [d for d in Gate(e2e.config).decide_case(snapshot, e2e.templates.approved_catalog(), e2e.clock.now())
             if d.channel is Channel.VOICE]
    assert [(d.action, d.reason) for d in voice] == [(Action.SKIP, Reason.OPTED_OUT)]


async def test_inbound_tuiding_opts_out_and_the_confirmation_is_sent_once(e2e: E2E) -> None:
    await send_everything(e2e, cn_case(5, PHONE_QUIET, "five@example.com"))
    result = await asyncio.to_thread(e2e.sandbox.simulate_inbound_threadsafe, PHONE_QUIET, "+8610695550100", "退订",
                                     f"{e2e.url}/twilio/sms/inbound")
    assert result["status"] == 200
    assert e2e.contact("e2e-5", "sms").opted_out is True
    # the next plan says opted_out for SMS
    e2e.clock.advance(days=3)
    snapshot = get_snapshot(e2e.engine, "e2e-5", e2e.clock.now())
    sms = [d for d in Gate(e2e.config).decide_case(snapshot, e2e.templates.approved_catalog(), e2e.clock.now())
           if d.channel is Channel.SMS]
    assert [(d.action, d.reason) for d in sms] == [(Action.SKIP, Reason.OPTED_OUT)]
    # the confirmation goes out once, through the same channel code
    reply = e2e.message("e2e-5", "sms", kind="system")
    assert "退订" in (reply.body or "")
    await e2e.sender.send_due()
    await e2e.sender.send_due()
    await e2e.settle()
    confirmations = [m for m in e2e.sandbox.messages() if m["to"] == PHONE_QUIET and m["body"] == reply.body]
    assert [m["count"] for m in confirmations] == [1]


async def test_a_revocation_phrase_about_calls_opts_out_of_sms_and_voice_at_once(e2e: E2E) -> None:
    """SPEC 13 through the real webhook: free text with a phrase, sent by the sandbox as a
    signed inbound SMS, opts the number out of SMS and calls, names the phrase on the
    `opted_out` events, opens a `review_revocation` task and sends one confirmation."""
    await send_everything(e2e, cn_case(6, "+8613800000006", "six@example.com"))
    text = "请不要再打电话了，我下周一定还"
    result = await asyncio.to_thread(e2e.sandbox.simulate_inbound_threadsafe, "+8613800000006", "+8610695550100",
                                     text, f"{e2e.url}/twilio/sms/inbound")
    assert result["status"] == 200
    assert e2e.contact("e2e-6", "sms").opted_out is True
    assert e2e.contact("e2e-6", "voice").opted_out is True
    assert e2e.contact("e2e-6", "email").opted_out is False  # the debtor spoke of calls and texts only
    events = e2e.timeline("e2e-6")["events"]
    reply = [e for e in events if e["kind"] == "reply_received"]
    assert [(e["intent"], e["phrase"], e["text"]) for e in reply] == [("revocation", "不要再打", text)]
    opted = [e for e in events if e["kind"] == "opted_out"]
    assert sorted((e["channel"], e["phrase"], e["matched"]) for e in opted) == [
        ("sms", "不要再打", "不要再打"), ("voice", "不要再打", "不要再打")]
    tasks = [e for e in events if e["kind"] == "collector_task"]
    assert [(t["task"], t["phrase"], t["channels"], t["text"]) for t in tasks] == [
        ("review_revocation", "不要再打", ["sms", "voice"], text)]
    # at once: the very next plan skips both
    e2e.clock.advance(days=3)
    snapshot = get_snapshot(e2e.engine, "e2e-6", e2e.clock.now())
    lines = Gate(e2e.config).decide_case(snapshot, e2e.templates.approved_catalog(), e2e.clock.now())
    assert {(d.channel, d.action, d.reason) for d in lines if d.channel is not Channel.EMAIL} == {
        (Channel.SMS, Action.SKIP, Reason.OPTED_OUT), (Channel.VOICE, Action.SKIP, Reason.OPTED_OUT)}
    # one confirmation, saying calls stop too; a repeated delivery of the same SMS changes nothing
    confirmation = e2e.message("e2e-6", "sms", kind="system")
    assert confirmation.template_id == "sms/replies/opt_out_calls"
    assert "打电话" in (confirmation.body or "")
    again = await asyncio.to_thread(e2e.sandbox.simulate_inbound_threadsafe, "+8613800000006", "+8610695550100",
                                    text, f"{e2e.url}/twilio/sms/inbound")
    assert again["status"] == 200
    await e2e.sender.send_due()
    await e2e.sender.send_due()
    await e2e.settle()
    sent = [m for m in e2e.sandbox.messages() if m["to"] == "+8613800000006" and m["body"] == confirmation.body]
    assert [m["count"] for m in sent] == [1]


async def test_an_english_phrase_about_texts_and_plain_free_text(e2e: E2E) -> None:
    us = Case(
        case_id="e2e-us-7", name="Pat Lee", jurisdiction="us", locale="en-US", currency="USD",
        principal=Decimal("900.00"), interest=Decimal("80.00"), penalty=Decimal("20.00"), fees=Decimal("0.00"),
        amount_due=Decimal("1000.00"), due_date=DUE_DPD60, phone="+12125550107", email="seven@example.com",
    )
    with e2e.engine.begin() as conn:
        repo.upsert_cases(conn, [ImportedCase(case=us, zones=("America/New_York",), sms_consent=True,
                                              email_consent=True, voice_consent=True)], e2e.clock.now())

    async def inbound(body: str) -> None:
        result = await asyncio.to_thread(e2e.sandbox.simulate_inbound_threadsafe, "+12125550107", "+18005550100",
                                         body, f"{e2e.url}/twilio/sms/inbound")
        assert result["status"] == 200

    await inbound("I paid yesterday")  # free text: stays a reply for a collector
    assert e2e.contact("e2e-us-7", "sms").opted_out is False
    await inbound("Can you please don’t text me at work anymore")
    assert e2e.contact("e2e-us-7", "sms").opted_out is True
    assert e2e.contact("e2e-us-7", "voice").opted_out is False  # a phrase about texts leaves calls alone
    events = e2e.timeline("e2e-us-7")["events"]
    assert [e["intent"] for e in events if e["kind"] == "reply_received"] == ["free_text", "revocation"]
    assert [(e["channel"], e["phrase"]) for e in events if e["kind"] == "opted_out"] == [("sms", "don't text")]
    # the free text is a reply for a collector to read, the revocation one to review
    assert [e["task"] for e in events if e["kind"] == "collector_task"] == ["read_reply", "review_revocation"]
    confirmation = e2e.message("e2e-us-7", "sms", kind="system")
    assert confirmation.template_id == "sms/replies/opt_out"
    assert "no more text messages" in (confirmation.body or "")


async def test_a_hard_bounce_marks_the_address_invalid(e2e: E2E) -> None:
    await send_everything(e2e, cn_case(4, "+8613800000004", "bounce-4@example.com"))
    await wait_until(lambda: e2e.contact("e2e-4", "email").invalid, "address invalid after the bounce")
    kinds = [e["kind"] for e in e2e.timeline("e2e-4")["events"]]
    assert "bounce" in kinds and "address_invalid" in kinds


async def test_after_a_partial_payment_every_channel_states_the_outstanding_amount(e2e: E2E) -> None:
    """Issue 11: the reminders were queued before the payment came in; rendered at send
    time, the SMS, the e-mail and the spoken script state what is owed *then* (SPEC 11)."""
    with e2e.engine.begin() as conn:
        repo.upsert_cases(conn, [cn_case(6, PHONE_PERSON, "six@example.com")], e2e.clock.now())
    summary = run_planner(e2e.engine, Gate(e2e.config), e2e.templates.approved_catalog(), e2e.clock.now())
    assert summary is not None and summary.queued == 3
    with e2e.engine.begin() as conn:
        paid = repo.record_payment(conn, "e2e-6", Decimal("3000.37"), "cashier", e2e.clock.now())
    assert not paid.closed and paid.amount_due - paid.paid_total == Decimal("7269.63")
    sent = await e2e.sender.send_due()
    assert sent.sent == 3
    await e2e.settle()
    await wait_until(lambda: e2e.message("e2e-6", "voice").conversation, "a completed conversation")

    owed, imported = "¥7,269.63", "10,270.00"
    (sms,) = [m for m in e2e.sandbox.messages() if m["to"] == PHONE_PERSON]
    assert f"应还{owed}" in sms["body"] and imported not in sms["body"]
    assert "已还¥3,000.37" in sms["body"]  # the penalty explanation reconciles the payment
    (email,) = [m for m in e2e.sandbox.emails() if m["rcpt_tos"] == ["six@example.com"]]
    assert f"应还金额：{owed}" in email["text"] and owed in email["html"]
    assert "已还金额：¥3,000.37（原应还¥10,270.00）" in email["text"]
    assert f"原应还¥10,270.00-已还¥3,000.37=尚欠{owed}。" in email["text"]
    spoken = " ".join(e2e.call_to(PHONE_PERSON)["spoken"])
    assert owed in spoken and f"尚欠{owed}" in spoken and imported not in spoken.replace("原应还¥10,270.00", "")
    # what was stored is what was sent
    assert e2e.message("e2e-6", "sms").body == sms["body"]
