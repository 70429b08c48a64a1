"""The sender end to end on SQLite: the real Twilio SDK and aiosmtplib against an
in-thread sandbox, our web app serving the callbacks and the TwiML on a loopback port.

What it proves (issue 4): a queued SMS, e-mail and call are each sent once, with the
rendered body, template and content hash stored, and move on to delivered/completed
through the sandbox's signed callbacks; the gate is re-checked just before sending
(paid, opted out, held: cancelled; window closed: deferred to the next legal moment, not
sent late); 429 is retried later honouring Retry-After; timeout/reset are reconciled,
never duplicated; reset_before and 5xx are retried and sent once; `reconcile_stale`
settles what a crashed sender left behind; two senders racing on the same rows send
each message once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from dispatcher.channels.base import ChannelAdapter
from dispatcher.channels.registry import build_channels
from dispatcher.channels.smtp_email import UNKNOWN_AFTER_DATA
from dispatcher.clock import FakeClock, StartedClock
from dispatcher.config import Config
from dispatcher.domain import Case, CaseStatus, Channel, Product, Reason
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.sandbox import Sandbox, run_sandbox_in_thread
from dispatcher.sandbox.asgi_server import AsgiServer
from dispatcher.sandbox.twilio_api import num_segments
from dispatcher.services.ledger import StoreLedger
from dispatcher.services.outbox import Sender
from dispatcher.services.planner import run_planner
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.db import make_engine
from dispatcher.store.repository import ImportedCase
from dispatcher.store.tables import MessageRow, events_t, messages_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime

KEY = "outbox-test-signing-key-0123456789abcdef"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
#: Mon 2026-12-07 10:00 in Shanghai (the fake_clock fixture's instant).
MONDAY_10 = dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI)
#: DPD 60 that Monday: stage dpd60, so an SMS, an e-mail and a call are due.
DUE_DPD60 = dt.date(2026, 10, 8)
#: DPD 30 that Monday: stage dpd30, SMS and e-mail only.
DUE_DPD30 = dt.date(2026, 11, 7)
#: What the sandbox answers a 429 with; longer than the first retry backoff (30 s).
RETRY_AFTER_S = 120
RATE_LIMIT_PAUSE_S = 0.5  # the bucket's pause after a 429 (Retry-After capped to this)
CLIENT_TIMEOUT_S = 0.5
#: A row the provider accepted; status callbacks may already have moved it on.
ACCEPTED = frozenset({"sent", "delivered", "ringing", "in-progress", "completed"})


# ------------------------------------------------------------------------------ world


def cn_case(n: int, *, due: dt.date = DUE_DPD60, status: CaseStatus = CaseStatus.ACTIVE) -> ImportedCase:
    case = Case(
        case_id=f"cn-{n:04d}",
        name="张伟",
        jurisdiction="cn",
        locale="zh-CN",
        currency="CNY",
        principal=Decimal("10000.00"),
        interest=Decimal("120.00"),
        penalty=Decimal("150.00"),
        fees=Decimal("0.00"),
        amount_due=Decimal("10270.00"),
        due_date=due,
        phone=f"+86138{n:08d}",
        email=f"debtor{n}@example.com",
        penalty_rate_daily=Decimal("0.0005"),
        status=status,
        product=Product.CREDIT_CARD,
    )
    return ImportedCase(case=case, zones=("Asia/Shanghai",), sms_consent=True, email_consent=True,
                        voice_consent=True)


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Our web app (callbacks, TwiML) on a loopback port, in its own thread and loop."""
    server = AsgiServer(app, "127.0.0.1", 0)
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        holder["loop"] = asyncio.get_running_loop()
        holder["stop"] = asyncio.Event()
        holder["port"] = await server.start()
        ready.set()
        await holder["stop"].wait()
        await server.stop()

    thread = threading.Thread(target=lambda: asyncio.run(main()), name="test-web", daemon=True)
    thread.start()
    assert ready.wait(30), "the web app did not start"
    try:
        yield f"http://127.0.0.1:{holder['port']}"
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)


@dataclass
class World:
    engine: Engine
    config: Config
    clock: FakeClock
    sandbox: Sandbox
    templates: TemplateSet
    settings: Settings
    _channels: list[dict[Channel, ChannelAdapter]] = field(default_factory=list)

    def sender(self, instance: str = "sender-1", *, config: Config | None = None,
               engine: Engine | None = None, public_url: str | None = None) -> Sender:
        config = config or self.config
        channels = build_channels(self.settings, timeout=config.sending.provider_timeout_seconds, clock=self.clock,
                                  ledger=StoreLedger(engine or self.engine))
        self._channels.append(channels)
        return Sender(engine or self.engine, config, self.templates, channels, self.clock, LinkSigner(KEY),
                      public_url or self.settings.public_url, instance)

    async def aclose(self) -> None:
        for channels in self._channels:
            for adapter in channels.values():
                await adapter.aclose()

    def add_cases(self, *cases: ImportedCase) -> None:
        with self.engine.begin() as conn:
            repo.upsert_cases(conn, list(cases), self.clock.now())

    def plan(self) -> int:
        summary = run_planner(self.engine, Gate(self.config), self.templates.approved_catalog(), self.clock.now())
        assert summary is not None
        return summary.queued

    def rows(self, **where: Any) -> list[Any]:
        query = select(messages_t).order_by(MessageRow.id)
        for name, value in where.items():
            query = query.where(getattr(MessageRow, name) == value)
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def row(self, message_id: int) -> Any:
        (found,) = self.rows(id=message_id)
        return found

    def message_id(self, case_id: str, channel: Channel) -> int:
        (found,) = self.rows(case_id=case_id, channel=channel.value)
        return int(found.id)

    def sms_to(self, phone: str) -> list[dict[str, Any]]:
        return [m for m in self.sandbox.messages() if m["to"] == phone]

    def calls_to(self, phone: str) -> list[dict[str, Any]]:
        return [c for c in self.sandbox.calls() if c["to"] == phone]


async def wait_until(predicate: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def test_config(config: Config) -> Config:
    sending = config.sending.model_copy(update={
        "rate_per_second": {"sms": 1000.0, "voice": 1000.0, "email": 1000.0},
        "provider_timeout_seconds": CLIENT_TIMEOUT_S,
        "rate_limit_pause_max_seconds": RATE_LIMIT_PAUSE_S,
    })
    return config.model_copy(update={"sending": sending})


@pytest.fixture
async def world(_sqlite_template: Path, tmp_path: Path, test_config: Config,
                fake_clock: FakeClock) -> AsyncIterator[World]:
    path = tmp_path / "outbox.db"
    shutil.copyfile(_sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    templates = TemplateSet(test_config.resolve(test_config.templates.directory), test_config)
    try:
        with run_sandbox_in_thread(seed=11, clock=fake_clock, callback_delay_ms=1, retry_after_s=RETRY_AFTER_S,
                                   timeout_hold_s=5) as sandbox, contextlib.ExitStack() as stack:
            # The app must know its public URL (signature checks) before it serves, and the
            # port is only known once it listens: bind first, then wire.
            holder: dict[str, Any] = {}

            def late_app(scope: Any, receive: Any, send: Any) -> Any:
                return holder["app"](scope, receive, send)

            def close_receipts() -> None:  # registered first: runs after the server stopped
                if "app" in holder:
                    holder["app"].collaborators.receipts.close()

            stack.callback(close_receipts)
            url = stack.enter_context(serve_in_thread(late_app))
            web_settings = Settings(twilio_auth_token=sandbox.auth_token, signing_key=KEY, public_url=url)
            holder["app"] = create_app(Runtime(web_settings, fake_clock, config=test_config, engine=engine,
                                               templates=templates).web())
            settings = Settings(
                twilio_account_sid=sandbox.account_sid,
                twilio_auth_token=sandbox.auth_token,
                twilio_api_url=sandbox.twilio_url,
                smtp_url=sandbox.smtp_url,
                public_url=url,
                signing_key=KEY,
            )
            w = World(engine, test_config, fake_clock, sandbox, templates, settings)
            try:
                yield w
                sandbox.drain_threadsafe(10)
            finally:
                await w.aclose()
    finally:
        engine.dispose()


# ------------------------------------------------------------------------ happy path


async def test_sms_email_and_call_are_sent_once_with_content_stored_and_receipts_flow_back(world: World) -> None:
    world.add_cases(cn_case(1))
    assert world.plan() == 3
    sender = world.sender()

    summary = await sender.send_due()

    assert (summary.claimed, summary.sent, summary.failed, summary.retried) == (3, 3, 0, 0)
    assert summary.by_channel == {"sms": 1, "email": 1, "voice": 1}
    phone, address = "+8613800000001", "debtor1@example.com"
    for row in world.rows():
        assert row.attempts == 1
        assert row.template_id and row.template_id.startswith(f"{row.channel}/dpd60/")
        assert row.content_hash and len(row.content_hash) == 64
        assert row.body and "10,270.00" in row.body
        assert row.provider_id
        assert row.to_address == (address if row.channel == "email" else phone)
        assert row.sent_at == world.clock.now()
    sms = world.row(world.message_id("cn-0001", Channel.SMS))
    email = world.row(world.message_id("cn-0001", Channel.EMAIL))
    voice = world.row(world.message_id("cn-0001", Channel.VOICE))

    # The provider got exactly what we stored, once.
    (received,) = world.sms_to(phone)
    assert (received["count"], received["body"], received["sid"]) == (1, sms.body, sms.provider_id)
    assert received["from"] == world.config.jurisdictions["cn"].sms_from
    # what the provider bills: the stored segment count is the provider's own count of the body
    assert sms.segments is not None and sms.segments == num_segments(received["body"]) >= 1
    assert (email.segments, voice.segments) == (None, None)
    (call,) = world.calls_to(phone)
    assert (call["count"], call["sid"]) == (1, voice.provider_id)
    (mail,) = world.sandbox.email_records()
    assert mail.message_id == email.provider_id
    assert mail.rcpt_tos == [address]
    assert mail.subject == email.subject and any("\u4e00" <= ch <= "\u9fff" for ch in mail.subject or "")
    assert mail.text is not None and mail.html is not None and "10,270.00" in mail.text
    # (a long header is folded onto a continuation line: compare it unfolded)
    assert (mail.header("List-Unsubscribe") or "").strip().startswith(
        f"<{world.settings.public_url}/email/unsubscribe/")
    assert mail.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert mail.mail_from.endswith("@" + world.config.organisation.bounce_domain)
    assert [e["count"] for e in world.sandbox.emails()] == [1]

    # Signed status callbacks reach our web app: sent -> delivered; the call is played
    # through our TwiML and completes.
    world.sandbox.drain_threadsafe(10)
    await wait_until(lambda: world.row(sms.id).status == "delivered", what="SMS delivered")
    await wait_until(lambda: world.row(voice.id).status == "completed", what="call completed")
    assert world.calls_to(phone)[0]["documents"], "the sandbox fetched our TwiML"
    assert world.row(email.id).status == "sent"

    # Nothing is left to send, and another pass sends nothing again.
    again = await world.sender("sender-2").send_due()
    assert again.claimed == 0
    assert len(world.sandbox.messages()) == len(world.sandbox.calls()) == len(world.sandbox.emails()) == 1


# -------------------------------------------------------------- the gate before sending


async def test_case_paid_opted_out_or_held_after_enqueue_is_cancelled_not_sent(world: World) -> None:
    world.add_cases(cn_case(1), cn_case(2), cn_case(3), cn_case(4))
    assert world.plan() == 12
    now = world.clock.now()
    with world.engine.begin() as conn:
        repo.upsert_cases(conn, [cn_case(1, status=CaseStatus.PAID)], now)  # the bank's feed says paid
        repo.set_opt_out(conn, Channel.SMS, "+8613800000002", True, now, "test")
        repo.place_hold(conn, "cn-0003", Reason.COLLECTOR_HOLD, None, "collector-7", now)

    summary = await world.sender().send_due()

    # the import closed case 1: its three messages were cancelled then (case_closed), not claimed
    assert summary.claimed == 12 - 3
    assert summary.cancelled == 1 + 3
    assert summary.sent == 2 + 3  # case 2: e-mail and call; case 4: all three
    expected = {
        "cn-0001": {"sms": "case_closed", "email": "case_closed", "voice": "case_closed"},
        "cn-0002": {"sms": "opted_out", "email": None, "voice": None},
        "cn-0003": {"sms": "collector_hold", "email": "collector_hold", "voice": "collector_hold"},
        "cn-0004": {"sms": None, "email": None, "voice": None},
    }
    for row in world.rows():
        reason = expected[row.case_id][row.channel]
        if reason is None:
            assert row.status in ACCEPTED, (row.case_id, row.channel, row.last_error)
        else:
            assert row.status == "cancelled", (row.case_id, row.channel)
            assert row.last_error.startswith(reason), row.last_error
            assert row.provider_id is None and row.sent_at is None
    sms_sent = {m["to"] for m in world.sandbox.messages()}
    calls = {c["to"] for c in world.sandbox.calls()}
    emails = {r.rcpt_tos[0] for r in world.sandbox.email_records()}
    assert sms_sent == {"+8613800000004"}
    assert calls == {"+8613800000002", "+8613800000004"}
    assert emails == {"debtor2@example.com", "debtor4@example.com"}


async def test_two_messages_a_cap_allows_one_of_do_not_defer_each_other_forever(world: World) -> None:
    """A one-off SMS queued beside the planner's SMS for the same moment (e.g. a
    collector's click racing the planner), claimed in one batch: each counts only the
    messages ahead of it, so the first goes and the second waits for the next legal day
    (counted both ways, each would push the other to the same moment again and again)."""
    world.add_cases(cn_case(1))
    assert world.plan() == 3
    planned = world.message_id("cn-0001", Channel.SMS)
    copy = {k: v for k, v in world.row(planned)._mapping.items() if k != "id"}
    with world.engine.begin() as conn:
        conn.execute(insert(messages_t).values(**{**copy, "kind": "one_off", "idempotency_key": "race-one-off"}))
    sender = world.sender()
    first = await sender.send_due()
    assert (first.sent, first.deferred) == (3, 1)  # e-mail, call and one SMS; one SMS a day (cn)
    sms = world.rows(case_id="cn-0001", channel="sms")
    assert [r.status for r in sms].count("queued") == 1
    (waiting,) = [r for r in sms if r.status == "queued"]
    tomorrow = dt.datetime(2026, 12, 8, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert waiting.scheduled_at.replace(tzinfo=dt.UTC) == tomorrow
    world.clock.set(tomorrow)
    second = await sender.send_due()
    assert (second.sent, second.deferred) == (1, 0)
    await wait_until(lambda: len(world.sms_to("+8613800000001")) == 2, what="both SMS at the provider")


async def test_window_closed_between_enqueue_and_send_defers_to_next_legal_moment(world: World) -> None:
    world.clock.set(dt.datetime(2026, 12, 7, 20, 59, tzinfo=SHANGHAI))
    world.add_cases(cn_case(1))
    assert world.plan() == 3
    world.clock.set(dt.datetime(2026, 12, 7, 21, 0, 30, tzinfo=SHANGHAI))  # the window closed at 21:00
    sender = world.sender()

    summary = await sender.send_due()

    assert (summary.claimed, summary.deferred, summary.sent) == (3, 3, 0)
    tuesday_9 = dt.datetime(2026, 12, 8, 9, 0, tzinfo=SHANGHAI)
    for row in world.rows():
        assert row.status == "queued"
        assert row.scheduled_at == tuesday_9
        assert row.last_error.startswith("outside_hours")
        assert row.attempts == 0  # never reached a provider
    assert not world.sandbox.messages() and not world.sandbox.calls() and not world.sandbox.emails()

    world.clock.set(tuesday_9 - dt.timedelta(seconds=1))
    assert (await sender.send_due()).claimed == 0  # not due yet

    world.clock.set(tuesday_9)
    summary = await sender.send_due()
    assert summary.sent == 3
    (sms,) = world.sandbox.messages()
    assert dt.datetime.fromisoformat(sms["date_created"]) == tuesday_9
    assert dt.datetime.fromisoformat(world.sandbox.calls()[0]["date_created"]) == tuesday_9
    assert world.sandbox.email_records()[0].received_at == tuesday_9


# ------------------------------------------------------------------- provider faults


async def test_429_is_retried_later_honouring_retry_after(world: World) -> None:
    world.add_cases(cn_case(1))
    world.plan()
    sms_id = world.message_id("cn-0001", Channel.SMS)
    sender = world.sender()
    world.sandbox.force_faults("429")
    first_try = world.clock.now()

    summary = await sender.send_due(only_ids=[sms_id])

    assert (summary.claimed, summary.retried, summary.sent) == (1, 1, 0)
    row = world.row(sms_id)
    assert row.status == "queued" and row.attempts == 1
    assert "rate limited" in row.last_error
    # Retry-After (120 s) wins over the first backoff (30 s).
    assert row.scheduled_at == first_try + dt.timedelta(seconds=RETRY_AFTER_S)
    assert not world.sandbox.messages()

    world.clock.advance(seconds=RETRY_AFTER_S - 1)
    assert (await sender.send_due(only_ids=[sms_id])).claimed == 0
    world.clock.advance(seconds=1)
    summary = await sender.send_due(only_ids=[sms_id])
    assert summary.sent == 1
    row = world.row(sms_id)
    assert row.status in ("sent", "delivered") and row.attempts == 2
    (received,) = world.sandbox.messages()
    assert received["count"] == 1 and received["sid"] == row.provider_id


async def test_a_429_pauses_the_other_messages_of_that_sender(world: World) -> None:
    world.add_cases(*(cn_case(n) for n in range(1, 4)))
    world.plan()
    ids = [world.message_id(f"cn-000{n}", Channel.SMS) for n in range(1, 4)]
    slow = world.config.model_copy(update={"sending": world.config.sending.model_copy(update={
        "rate_per_second": {"sms": 5.0}})})  # a burst of one, then one every 200 ms
    sender = world.sender(config=slow)
    world.sandbox.force_faults("429")
    started = time.monotonic()
    summary = await sender.send_due(only_ids=ids)
    elapsed = time.monotonic() - started
    assert (summary.claimed, summary.retried, summary.sent) == (3, 1, 2)
    # without the pause the two others go out at +0.2 s and +0.4 s; after the 429 the
    # bucket holds them for the (capped) Retry-After first
    assert elapsed >= RATE_LIMIT_PAUSE_S + 0.2 - 0.02
    assert len(world.sandbox.messages()) == 2


@pytest.mark.parametrize("channel", [Channel.SMS, Channel.VOICE])
@pytest.mark.parametrize("fault", ["timeout", "reset"])
async def test_ambiguous_fault_is_reconciled_never_duplicated(world: World, fault: str, channel: Channel) -> None:
    world.add_cases(cn_case(1))
    world.plan()
    message_id = world.message_id("cn-0001", channel)
    sender = world.sender()
    world.sandbox.force_faults(fault)

    summary = await sender.send_due(only_ids=[message_id])

    # The provider created it although the client saw an error: the sender asked the
    # provider, found it, and recorded it as sent, without a second create.
    assert (summary.sent, summary.reconciled, summary.retried, summary.failed) == (1, 1, 0, 0)
    row = world.row(message_id)
    records = world.sms_to("+8613800000001") if channel is Channel.SMS else world.calls_to("+8613800000001")
    assert len(records) == 1 and records[0]["count"] == 1
    assert records[0]["fault"] == fault
    assert row.provider_id == records[0]["sid"]
    assert row.status not in ("queued", "sending", "failed") and row.attempts == 1

    # Later passes and the stale-row reconcile change nothing at the provider.
    world.clock.advance(minutes=10)
    assert (await sender.send_due(only_ids=[message_id])).claimed == 0
    assert await sender.reconcile_stale() == 0
    records = world.sms_to("+8613800000001") if channel is Channel.SMS else world.calls_to("+8613800000001")
    assert len(records) == 1


@pytest.mark.parametrize("fault", ["reset_before", "500"])
async def test_fault_that_created_nothing_is_retried_and_sent_once(world: World, fault: str) -> None:
    world.add_cases(cn_case(1))
    world.plan()
    sms_id = world.message_id("cn-0001", Channel.SMS)
    sender = world.sender()
    world.sandbox.force_faults(fault)
    first_try = world.clock.now()

    summary = await sender.send_due(only_ids=[sms_id])

    # Ambiguous to the client; the provider has no trace of it, so a retry is safe.
    assert (summary.sent, summary.retried) == (0, 1)
    row = world.row(sms_id)
    assert row.status == "queued" and row.attempts == 1
    assert row.scheduled_at == first_try + dt.timedelta(seconds=world.config.sending.retry_backoff_seconds)
    assert not world.sandbox.messages()

    world.clock.advance(seconds=world.config.sending.retry_backoff_seconds)
    summary = await sender.send_due(only_ids=[sms_id])
    assert summary.sent == 1
    row = world.row(sms_id)
    (received,) = world.sandbox.messages()
    assert received["count"] == 1 and received["sid"] == row.provider_id and received["fault"] is None
    assert row.attempts == 2


async def test_retries_give_up_after_max_attempts_with_the_reason(world: World) -> None:
    world.add_cases(cn_case(1))
    world.plan()
    sms_id = world.message_id("cn-0001", Channel.SMS)
    sender = world.sender()
    attempts = world.config.sending.max_attempts
    world.sandbox.force_faults(*["503"] * attempts)
    for _ in range(attempts):
        await sender.send_due(only_ids=[sms_id])
        world.clock.advance(hours=1)  # past every backoff, still inside Monday's window
    row = world.row(sms_id)
    assert row.status == "failed" and row.attempts == attempts
    assert row.last_error.startswith(f"gave up after {attempts} attempts")
    assert "503" in row.last_error
    assert not world.sandbox.messages()


# ---------------------------------------------------------------- crash recovery


async def test_reconcile_stale_requeues_rows_claimed_but_never_started(world: World) -> None:
    world.add_cases(cn_case(1), cn_case(2))
    world.plan()
    crashed = world.sender("crashed")
    claimed = crashed.claim(10)  # ... and the instance dies before gating or stamping them
    assert len(claimed) == 6
    assert {r.status for r in world.rows()} == {"sending"}

    survivor = world.sender("survivor")
    assert await survivor.reconcile_stale() == 0  # too fresh: the owner may still be working
    world.clock.advance(survivor.stale_after + dt.timedelta(seconds=1))
    assert await survivor.reconcile_stale() == 6
    rows = world.rows()
    assert {r.status for r in rows} == {"queued"}
    assert all(r.attempts == 0 and r.claimed_by is None for r in rows)

    summary = await survivor.send_due()
    assert summary.sent == 6
    assert all(m["count"] == 1 for m in world.sandbox.messages()) and len(world.sandbox.messages()) == 2
    assert len(world.sandbox.calls()) == 2 and len(world.sandbox.emails()) == 2


async def test_reconcile_stale_settles_a_started_call_with_the_provider(world: World) -> None:
    """The sender dies while the provider call is in flight: the provider has the
    message, we never learnt it. The survivor finds it and records it; nothing is resent."""
    world.add_cases(cn_case(1))
    world.plan()
    sms_id = world.message_id("cn-0001", Channel.SMS)
    slow = world.config.model_copy(update={"sending": world.config.sending.model_copy(
        update={"provider_timeout_seconds": 30.0})})
    # Its status callbacks are lost too (they would settle the row on their own: see
    # the next test), so only the provider knows.
    doomed = world.sender("doomed", config=slow, public_url="http://127.0.0.1:9")
    world.sandbox.force_faults("timeout")  # created, but the answer never comes

    task = asyncio.create_task(doomed.send_due(only_ids=[sms_id]))
    await wait_until(lambda: len(world.sandbox.messages()) == 1, what="the provider to receive the SMS")
    task.cancel()  # the crash
    with pytest.raises(asyncio.CancelledError):
        await task
    row = world.row(sms_id)
    assert row.status == "sending" and row.status_at is not None and row.attempts == 1

    survivor = world.sender("survivor")
    world.clock.advance(survivor.stale_after + dt.timedelta(seconds=1))
    assert await survivor.reconcile_stale() == 1
    row = world.row(sms_id)
    (received,) = world.sandbox.messages()
    assert row.status in ACCEPTED and row.provider_id == received["sid"] and row.last_error is None
    world.clock.advance(minutes=10)
    assert (await survivor.send_due()).claimed == 2  # the e-mail and the call, not the SMS
    assert len(world.sandbox.messages()) == 1


async def test_a_crashed_senders_message_is_settled_by_its_status_callback(world: World) -> None:
    """Same crash, but the provider's signed callbacks reach us: they settle the row
    (and teach it the SID) without any reconcile, and nothing is resent."""
    world.add_cases(cn_case(1))
    world.plan()
    sms_id = world.message_id("cn-0001", Channel.SMS)
    slow = world.config.model_copy(update={"sending": world.config.sending.model_copy(
        update={"provider_timeout_seconds": 30.0})})
    doomed = world.sender("doomed", config=slow)
    world.sandbox.force_faults("timeout")

    task = asyncio.create_task(doomed.send_due(only_ids=[sms_id]))
    await wait_until(lambda: len(world.sandbox.messages()) == 1, what="the provider to receive the SMS")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    world.sandbox.drain_threadsafe(10)
    (received,) = world.sandbox.messages()
    await wait_until(lambda: world.row(sms_id).status == "delivered", what="the delivery receipt")
    assert world.row(sms_id).provider_id == received["sid"]

    survivor = world.sender("survivor")
    world.clock.advance(minutes=10)
    assert await survivor.reconcile_stale() == 0
    assert (await survivor.send_due(only_ids=[sms_id])).claimed == 0
    assert len(world.sandbox.messages()) == 1


async def test_reconcile_stale_retries_a_started_message_the_provider_never_got(world: World) -> None:
    world.add_cases(cn_case(1))
    world.plan()
    voice_id = world.message_id("cn-0001", Channel.VOICE)
    email_id = world.message_id("cn-0001", Channel.EMAIL)
    crashed = world.sender("crashed")
    claimed = crashed.claim(10, only_ids=[voice_id, email_id])
    assert len(claimed) == 2
    # The stamp "the provider may have it" was committed, then the instance died before
    # (or while) calling the provider, which has no trace of the call.
    with world.engine.begin() as conn:
        conn.execute(update(MessageRow).where(MessageRow.id.in_([voice_id, email_id])).values(
            status_at=MessageRow.claimed_at, attempts=MessageRow.attempts + 1,
            to_address="+8613800000001", body="script"))
        conn.execute(update(MessageRow).where(MessageRow.id == email_id).values(to_address="debtor1@example.com"))

    survivor = world.sender("survivor")
    world.clock.advance(survivor.stale_after + dt.timedelta(seconds=1))
    assert await survivor.reconcile_stale() == 2
    call = world.row(voice_id)
    assert call.status == "queued" and "no trace" in call.last_error
    assert call.scheduled_at == world.clock.now() + dt.timedelta(seconds=world.config.sending.retry_backoff_seconds)
    # SMTP cannot be asked whether it accepted a message: at most once means never resent;
    # it most likely arrived, so it counts as sent ("sent_unconfirmed"), with why.
    mail = world.row(email_id)
    assert mail.status == "sent_unconfirmed" and mail.last_error == UNKNOWN_AFTER_DATA
    # ... recorded under the Message-ID it was sent with (bounces are matched by it).
    assert mail.provider_id == f"<dispatcher-{email_id}@{world.config.organisation.bounce_domain}>"
    assert not world.sandbox.calls() and not world.sandbox.emails()

    world.clock.advance(seconds=world.config.sending.retry_backoff_seconds)
    summary = await survivor.send_due(only_ids=[voice_id])
    assert summary.sent == 1
    (call_record,) = world.sandbox.calls()
    assert call_record["count"] == 1 and world.row(voice_id).provider_id == call_record["sid"]
    assert not world.sandbox.emails()


# ---------------------------------------------------------------- concurrent senders


async def test_two_senders_racing_on_the_same_rows_send_each_message_once(world: World) -> None:
    cases = 60
    world.add_cases(*(cn_case(n, due=DUE_DPD30) for n in range(1, cases + 1)))
    assert world.plan() == 2 * cases
    small_batches = world.config.model_copy(update={"sending": world.config.sending.model_copy(
        update={"batch_size": 7})})
    url = str(world.engine.url)
    results: dict[str, Any] = {}

    def run(instance: str) -> None:
        engine = make_engine(url)  # its own connections, as another process would have
        try:
            sender = world.sender(instance, config=small_batches, engine=engine)

            async def go() -> Any:
                try:
                    return await sender.send_due()
                finally:
                    for adapter in sender.channels.values():
                        await adapter.aclose()

            results[instance] = asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[instance] = exc
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("racer-a", "racer-b")]
    for t in threads:
        t.start()
    await asyncio.to_thread(lambda: [t.join(60) for t in threads])

    for name, result in results.items():
        assert not isinstance(result, BaseException), f"{name}: {result!r}"
    assert sum(r.claimed for r in results.values()) == 2 * cases
    assert sum(r.sent for r in results.values()) == 2 * cases, results
    rows = world.rows()
    assert all(r.status in ("sent", "delivered") for r in rows)
    owners = Counter(r.claimed_by for r in rows)
    assert set(owners) == {"racer-a", "racer-b"}, owners  # both did real work
    sms = world.sandbox.messages()
    assert len(sms) == cases and all(m["count"] == 1 for m in sms)
    emails = world.sandbox.emails()
    assert len(emails) == cases and all(e["count"] == 1 for e in emails)
    assert {m["sid"] for m in sms} == {r.provider_id for r in rows if r.channel == "sms"}


# ------------------------------------------------------------ the window, in real time


async def test_a_rate_limited_batch_never_spills_past_the_window_close(world: World) -> None:
    """The gate runs when a batch is prepared, but a rate-limited batch reaches the
    provider over seconds: a message whose turn comes after the window closed must be
    deferred, not sent late. Here the clock runs in real time from 20:59:58 and the
    SMS limit is 5/s, so only the first ~10 of 20 SMS may go out before 21:00."""
    world.add_cases(*(cn_case(n, due=DUE_DPD30) for n in range(1, 21)))
    world.plan()
    sms_ids = [r.id for r in world.rows(channel="sms")]
    close = dt.datetime(2026, 12, 7, 21, 0, tzinfo=SHANGHAI)
    clock = StartedClock(close - dt.timedelta(seconds=2))
    paced = world.config.model_copy(update={"sending": world.config.sending.model_copy(update={
        "rate_per_second": {"sms": 5.0, "voice": 5.0, "email": 5.0}, "batch_size": 50})})
    with run_sandbox_in_thread(clock=clock, callback_delay_ms=0) as sandbox:
        settings = Settings(twilio_account_sid=sandbox.account_sid, twilio_auth_token=sandbox.auth_token,
                            twilio_api_url=sandbox.twilio_url, smtp_url=sandbox.smtp_url,
                            public_url="http://127.0.0.1:9")
        channels = build_channels(settings, timeout=CLIENT_TIMEOUT_S, channels=[Channel.SMS], clock=clock)
        sender = Sender(world.engine, paced, world.templates, channels, clock, LinkSigner(KEY),
                        settings.public_url, "paced")
        try:
            summary = await sender.send_due(only_ids=sms_ids)
        finally:
            for adapter in channels.values():
                await adapter.aclose()
        received = sandbox.messages()

    late = [m for m in received if dt.datetime.fromisoformat(m["date_created"]) >= close]
    assert not late, f"{len(late)} SMS reached the provider after the window closed"
    assert 5 <= len(received) <= 14, len(received)
    assert summary.sent == len(received)
    rows = [world.row(i) for i in sms_ids]
    tuesday_9 = dt.datetime(2026, 12, 8, 9, 0, tzinfo=SHANGHAI)
    waiting = [r for r in rows if r.status == "queued"]
    assert len(waiting) == 20 - len(received)
    assert all(r.scheduled_at == tuesday_9 for r in waiting)
    assert {r.provider_id for r in rows if r.status in ACCEPTED} == {m["sid"] for m in received}


# ------------------------------------------------- reconcilers and live owners racing


async def test_two_instances_reconciling_the_same_stale_rows_never_resend_a_message(world: World) -> None:
    """Every instance runs `reconcile_stale` on a timer, so two may settle the same rows
    at once. The slow one must not put back in the queue a row the fast one re-queued
    and a third instance has sent meanwhile."""
    world.add_cases(cn_case(1), cn_case(2), cn_case(3))
    world.plan()
    started_id, *fresh_ids = [world.message_id(f"cn-000{n}", Channel.SMS) for n in (1, 2, 3)]
    world.sender("crashed").claim(10, only_ids=[started_id, *fresh_ids])
    with world.engine.begin() as conn:  # one of them was stamped before the crash
        conn.execute(update(MessageRow).where(MessageRow.id == started_id).values(
            status_at=MessageRow.claimed_at, attempts=MessageRow.attempts + 1, to_address="+8613800000001",
            body="body"))
    slow, fast = world.sender("slow-reconciler"), world.sender("fast-reconciler")
    world.clock.advance(slow.stale_after + dt.timedelta(seconds=1))

    # The slow one reads the stale rows, re-queues at once the two never stamped (nothing
    # to ask), then waits on the provider for the stamped one.
    world.sandbox.options = replace(world.sandbox.options, latency_ms=600)
    slow_task = asyncio.create_task(slow.reconcile_stale())
    await asyncio.sleep(0.2)
    world.sandbox.options = replace(world.sandbox.options, latency_ms=0)
    assert await fast.reconcile_stale() == 1  # the stamped one: the provider has no trace of it
    assert world.row(started_id).status == "queued"
    sent = await world.sender("next").send_due(only_ids=fresh_ids)
    assert sent.sent == 2
    assert await slow_task == 2  # the stamped row had been settled by the fast one meanwhile
    with world.engine.connect() as conn:  # settled once: one re-queue event, not two
        settled = conn.execute(select(events_t.c.kind).where(events_t.c.message_id == started_id)).scalars().all()
    assert settled == ["message_deferred"]

    for message_id in fresh_ids:
        assert world.row(message_id).status in ACCEPTED
    world.clock.advance(minutes=5)
    assert (await world.sender("later").send_due(only_ids=fresh_ids)).claimed == 0
    received = world.sandbox.messages()
    assert len(received) == 2 and all(m["count"] == 1 for m in received)


async def test_a_live_senders_slow_batch_is_not_resent_by_another_instances_reconcile(world: World) -> None:
    """A batch waiting at the rate limiter longer than the stale cutoff is not abandoned:
    its owner stops handing rows over when its claim's lease ends, so the rows another
    instance re-queues are never also sent by the owner."""
    world.add_cases(*(cn_case(n, due=DUE_DPD30) for n in range(1, 11)))
    world.plan()
    sms_ids = [r.id for r in world.rows(channel="sms")]
    paced = world.config.model_copy(update={"sending": world.config.sending.model_copy(update={
        "rate_per_second": {"sms": 2.0, "voice": 2.0, "email": 2.0}})})
    owner = world.sender("owner", config=paced)
    owner_task = asyncio.create_task(owner.send_due(only_ids=sms_ids))
    await wait_until(lambda: len(world.sandbox.messages()) >= 2, what="the owner's first SMS")

    # Business time passes (the owner is slow, not dead); another instance reconciles.
    other = world.sender("other")
    world.clock.advance(other.stale_after + dt.timedelta(seconds=1))
    await other.reconcile_stale()
    world.clock.advance(seconds=world.config.sending.retry_backoff_seconds)
    await other.send_due(only_ids=sms_ids)
    owner_summary = await owner_task

    # (a re-render carries a new payment link, so a duplicate shows per number, not per body)
    per_number = Counter(m["to"] for m in world.sandbox.messages())
    assert max(per_number.values()) == 1, f"sent twice: {[n for n, c in per_number.items() if c > 1]}"
    assert owner_summary.deferred > 0  # it stopped handing rows over when the lease ended
    world.clock.advance(minutes=5)
    await other.send_due(only_ids=sms_ids)
    rows = [world.row(i) for i in sms_ids]
    assert all(r.status in ACCEPTED for r in rows), Counter(r.status for r in rows)
    received = world.sandbox.messages()
    assert len(received) == 10 and len({m["to"] for m in received}) == 10
    assert {m["sid"] for m in received} == {r.provider_id for r in rows}
