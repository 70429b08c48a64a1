"""Issue 10's reconcile findings, each over the real SDK against the sandbox (which lists
as Twilio does): the sender's clock minutes away from the provider's with timeouts and
resets injected; two cases sharing a phone number; a record created before ours but
sent after it. Each failed on the reconcile that matched by our clock and stopped its
walk at the first record created before the attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.channels.base import OutboundMessage
from dispatcher.channels.registry import build_channels
from dispatcher.channels.twilio_sms import TwilioSmsChannel
from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.domain import Case, Channel, MessageStatus, Product
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.sandbox import Sandbox, run_sandbox_in_thread
from dispatcher.services.ledger import StoreLedger
from dispatcher.services.outbox import Sender
from dispatcher.services.planner import run_planner
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.db import make_engine
from dispatcher.store.repository import ImportedCase
from dispatcher.store.tables import messages_t
from dispatcher.templates import TemplateSet

KEY = "reconcile-findings-key-0123456789abcdef"
TIMEOUT_S = 0.5
DEAD_URL = "http://127.0.0.1:9"  # callbacks and TwiML fetches fail: only the provider's list can tell
DUE_DPD60 = dt.date(2026, 10, 8)  # stage dpd60 on the fake clock's Monday: SMS, e-mail and a call


def case(n: int, phone: str | None = None) -> ImportedCase:
    c = Case(case_id=f"cn-{n:04d}", name="张伟", jurisdiction="cn", locale="zh-CN", currency="CNY",
             principal=Decimal("10000.00"), interest=Decimal("120.00"), penalty=Decimal("150.00"),
             fees=Decimal("0.00"), amount_due=Decimal("10270.00"), due_date=DUE_DPD60,
             phone=phone or f"+86138{n:08d}", email=f"debtor{n}@example.com",
             penalty_rate_daily=Decimal("0.0005"), product=Product.CREDIT_CARD)
    return ImportedCase(case=c, zones=("Asia/Shanghai",), sms_consent=True, email_consent=True, voice_consent=True)


@dataclasses.dataclass
class Outbox:
    engine: Engine
    config: Config
    clock: FakeClock
    sandbox: Sandbox
    sender: Sender

    def rows(self, channel: Channel | None = None) -> list[Any]:
        query = select(messages_t).order_by(messages_t.c.id)
        if channel is not None:
            query = query.where(messages_t.c.channel == channel.value)
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    async def settle(self, passes: int = 12) -> None:
        """Send, reconcile stale rows, let business time pass the backoffs, until nothing moves."""
        for _ in range(passes):
            await self.sender.send_due()
            self.clock.advance(self.sender.stale_after + dt.timedelta(seconds=1))
            await self.sender.reconcile_stale()
            self.clock.advance(minutes=20)
        self.sandbox.drain_threadsafe(10)


@contextlib.contextmanager
def outbox(tmp_path: Path, template: Path, config: Config, clock: FakeClock, cases: list[ImportedCase],
           **sandbox_options: Any) -> Iterator[Outbox]:
    db = tmp_path / "findings.db"
    shutil.copyfile(template, db)
    engine = make_engine(f"sqlite:///{db}")
    cfg = config.model_copy(update={"sending": config.sending.model_copy(update={
        "rate_per_second": {"sms": 1000.0, "voice": 1000.0, "email": 1000.0},
        "provider_timeout_seconds": TIMEOUT_S})})
    templates = TemplateSet(cfg.resolve(cfg.templates.directory), cfg)
    with engine.begin() as conn:
        repo.upsert_cases(conn, cases, clock.now())
    assert run_planner(engine, Gate(cfg), templates.approved_catalog(), clock.now()) is not None
    try:
        with run_sandbox_in_thread(seed=10, clock=clock, callback_delay_ms=0, timeout_hold_s=3,
                                   **sandbox_options) as sandbox:
            settings = Settings(twilio_account_sid=sandbox.account_sid, twilio_auth_token=sandbox.auth_token,
                                twilio_api_url=sandbox.twilio_url, smtp_url=sandbox.smtp_url, public_url=DEAD_URL)
            channels = build_channels(settings, timeout=TIMEOUT_S, clock=clock, ledger=StoreLedger(engine))
            sender = Sender(engine, cfg, templates, channels, clock, LinkSigner(KEY), DEAD_URL, "findings")
            yield Outbox(engine, cfg, clock, sandbox, sender)  # the `closing` fixture closes its channels
    finally:
        engine.dispose()


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Channels to close on the test's loop."""
    opened: list[Any] = []
    yield opened
    for sender in opened:
        for adapter in sender.channels.values():
            await adapter.aclose()


# -- clock skew ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider_offset_s", [-180, 180, -300])
async def test_a_skewed_provider_clock_with_timeouts_and_resets_delivers_each_message_once(
        tmp_path: Path, _sqlite_template: Path, config: Config, fake_clock: FakeClock, closing: list[Any],
        provider_offset_s: int) -> None:
    """The issue: daemon 3 minutes ahead of the provider, 30 % timeouts/resets: 53 of 205
    SMS and 34 of 99 calls reached the debtor 2-3 times. The provider's Date header now
    places the attempt on its clock."""
    cases = [case(n) for n in range(1, 13)]
    with outbox(tmp_path, _sqlite_template, config, fake_clock, cases,
                clock_offset_seconds=provider_offset_s, faults="timeout:0.25,reset:0.25") as box:
        closing.append(box.sender)
        await box.settle()
        sms, calls = box.rows(Channel.SMS), box.rows(Channel.VOICE)
        injected = Counter(r["fault"] for r in [*box.sandbox.messages(), *box.sandbox.calls()] if r["fault"])

    assert sum(injected.values()) >= 6, injected  # the faults did happen (on records that exist)
    per_message_sms = Counter(m["body"] for m in box.sandbox.messages())
    per_message_calls = Counter(c["url"] for c in box.sandbox.calls())
    assert max(per_message_sms.values()) == 1, per_message_sms
    assert max(per_message_calls.values()) == 1, per_message_calls
    # and nothing was lost: every SMS and call reached the provider once and is recorded with its SID
    assert len(per_message_sms) == len(sms) == 12 and len(per_message_calls) == len(calls) == 12
    by_sid = {m["sid"]: m for m in [*box.sandbox.messages(), *box.sandbox.calls()]}
    for row in [*sms, *calls]:
        assert row.status in {"sent", "delivered", "undelivered", "completed", "ringing", "in-progress"}, row
        record = by_sid[row.provider_id]
        assert record["to"] == row.to_address
        assert record.get("body", row.body) == row.body or record.get("url", "").endswith(f"m={row.id}")


# -- shared phone numbers ----------------------------------------------------------------------


async def test_two_cases_sharing_a_phone_never_take_each_others_call(
        tmp_path: Path, _sqlite_template: Path, config: Config, fake_clock: FakeClock, closing: list[Any]) -> None:
    """The issue: a call of case C0001785 was recorded with the call SID of case
    C0001605's call (same phone). Here one of two concurrent calls to a shared phone is
    refused before creation (a reset before the request reached Twilio): its reconcile
    sees only the other case's call, whose SID is not yet on record."""
    shared = "+8613899990000"
    with outbox(tmp_path, _sqlite_template, config, fake_clock, [case(1, shared), case(2, shared)]) as box:
        closing.append(box.sender)
        ids = [r.id for r in box.rows(Channel.VOICE)]
        box.sandbox.force_faults("reset_before")
        await box.sender.send_due(only_ids=ids)
        rows = box.rows(Channel.VOICE)
        box.sandbox.drain_threadsafe(10)
        calls = box.sandbox.calls()

    (placed,) = calls
    sids = [r.provider_id for r in rows if r.provider_id]
    assert sids == [placed["sid"]]  # one row has the call, the other never takes its SID
    owner = next(r for r in rows if r.provider_id == placed["sid"])
    assert placed["url"].endswith(f"m={owner.id}")
    (other,) = [r for r in rows if r.id != owner.id]
    # the other row's evidence cannot rule a send out: at most once, it is failed with the reason
    assert other.status == MessageStatus.FAILED.value and other.last_error.startswith("outcome unknown:"), other


async def test_a_call_of_another_case_on_record_is_never_ours(
        tmp_path: Path, _sqlite_template: Path, config: Config, fake_clock: FakeClock, closing: list[Any]) -> None:
    """The other case's call was placed (and recorded with its SID) the same second our
    attempt began; ours never reached Twilio: ours is retried, not given the other's SID."""
    shared = "+8613899990001"
    with outbox(tmp_path, _sqlite_template, config, fake_clock, [case(1, shared), case(2, shared)]) as box:
        closing.append(box.sender)
        first, second = (r.id for r in box.rows(Channel.VOICE))
        assert (await box.sender.send_due(only_ids=[first])).sent == 1
        box.sandbox.force_faults("reset_before")
        summary = await box.sender.send_due(only_ids=[second])
        rows = {r.id: r for r in box.rows(Channel.VOICE)}
        retried_at = rows[second].scheduled_at
        box.clock.set(retried_at)
        assert (await box.sender.send_due(only_ids=[second])).sent == 1
        rows = {r.id: r for r in box.rows(Channel.VOICE)}
        box.sandbox.drain_threadsafe(10)
        calls = {c["sid"]: c for c in box.sandbox.calls()}

    assert (summary.sent, summary.retried) == (0, 1)
    assert len(calls) == 2 and rows[first].provider_id != rows[second].provider_id
    for message_id, row in rows.items():
        assert calls[row.provider_id]["url"].endswith(f"m={message_id}")


# -- the list order ------------------------------------------------------------------------------


@pytest.mark.parametrize("undated_first", [True, False])
async def test_a_record_created_before_ours_but_sent_after_it_does_not_stop_the_walk(undated_first: bool) -> None:
    """Twilio lists by DateSent: a message created ten minutes before our attempt and
    sent after ours comes first. A walk that stops at the first record created before
    the attempt concludes "never sent", and the message is sent again."""
    clock = FakeClock(dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC))
    to, sender = "+8613812345678", "+15005550006"
    async with Sandbox(seed=2, clock=clock, callback_delay_ms=600_000, timeout_hold_s=3,
                       undated_first=undated_first) as sandbox:
        channel = TwilioSmsChannel(sandbox.account_sid, sandbox.auth_token, sandbox.twilio_url, timeout=TIMEOUT_S,
                                   clock=clock)
        try:
            clock.advance(minutes=-10)
            older = await channel.send(message(1, to, sender, "an earlier reminder, held in Twilio's queue"))
            clock.advance(minutes=10)
            attempt_at = clock.now()
            sandbox.force_faults("timeout")
            ambiguous = await channel.send(message(2, to, sender, "ours"))
            assert ambiguous.ambiguous
            (ours,) = [m["sid"] for m in sandbox.messages() if m["body"] == "ours"]
            dispatched(sandbox, ours, attempt_at + dt.timedelta(seconds=2))
            dispatched(sandbox, older.provider_id or "", attempt_at + dt.timedelta(seconds=5))

            found = await channel.reconcile(message(2, to, sender, "ours"), attempt_at)
            # and a message still in Twilio's queue (no DateSent) is found wherever the list puts it
            sandbox.force_faults("timeout")
            await channel.send(message(3, to, sender, "queued"))
            queued = await channel.reconcile(message(3, to, sender, "queued"), attempt_at)
        finally:
            await channel.aclose()
    assert found is not None and found.provider_id == ours
    assert queued is not None and queued.provider_id not in (None, ours, older.provider_id)


def message(message_id: int, to: str, sender: str, body: str) -> OutboundMessage:
    return OutboundMessage(message_id=message_id, case_id=f"C-{message_id}", channel=Channel.SMS, to=to, body=body,
                           idempotency_key=f"m{message_id}", sender=sender)


def dispatched(sandbox: Sandbox, sid: str, when: dt.datetime) -> None:
    """Twilio takes the message off its queue at `when` (its queue, not creation order)."""
    with sandbox.recorder.lock:
        record = sandbox.recorder.messages_by_sid[sid]
        record.status, record.date_sent = "sent", when
