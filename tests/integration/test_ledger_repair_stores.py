"""The store's side of reconcile (`StoreLedger`) and the status repair job, on SQLite and
PostgreSQL, with the real SDK against the sandbox. Every status callback is lost here:
only the sender's records and the provider's answers are there to go by."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from dispatcher.channels.base import ChannelAdapter
from dispatcher.channels.reconcile import Attempt
from dispatcher.channels.registry import build_channels
from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.domain import Case, Channel, Product
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.sandbox import Sandbox, run_sandbox_in_thread
from dispatcher.services.ledger import StoreLedger
from dispatcher.services.outbox import Sender
from dispatcher.services.planner import run_planner
from dispatcher.services.repair import StatusRepair
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.repository import ImportedCase
from dispatcher.store.tables import messages_t
from dispatcher.templates import TemplateSet

SHARED = "+8613877770000"
DEAD_URL = "http://127.0.0.1:9"


def case(n: int, phone: str) -> ImportedCase:
    c = Case(case_id=f"cn-{n:04d}", name="张伟", jurisdiction="cn", locale="zh-CN", currency="CNY",
             principal=Decimal("10000.00"), interest=Decimal("120.00"), penalty=Decimal("150.00"),
             fees=Decimal("0.00"), amount_due=Decimal("10270.00"), due_date=dt.date(2026, 10, 8), phone=phone,
             email=f"debtor{n}@example.com", penalty_rate_daily=Decimal("0.0005"), product=Product.CREDIT_CARD)
    return ImportedCase(case=c, zones=("Asia/Shanghai",), sms_consent=True, email_consent=True, voice_consent=True)


@dataclass
class Store:
    engine: Engine
    config: Config
    clock: FakeClock
    sandbox: Sandbox
    channels: dict[Channel, ChannelAdapter]
    sender: Sender

    def rows(self, channel: Channel) -> list[Any]:
        with self.engine.connect() as conn:
            # by case: the planner queues partition by partition, not in case order
            return list(conn.execute(select(messages_t).where(messages_t.c.channel == channel.value)
                                     .order_by(messages_t.c.case_id, messages_t.c.id)))


@pytest.fixture
async def store(engine: Engine, config: Config, fake_clock: FakeClock) -> AsyncIterator[Store]:
    cfg = config.model_copy(update={"sending": config.sending.model_copy(update={
        "rate_per_second": {"sms": 1000.0, "voice": 1000.0, "email": 1000.0}, "provider_timeout_seconds": 1.0})})
    templates = TemplateSet(cfg.resolve(cfg.templates.directory), cfg)
    with engine.begin() as conn:
        repo.upsert_cases(conn, [case(1, SHARED), case(2, SHARED), case(3, "+8613877770003")], fake_clock.now())
    assert run_planner(engine, Gate(cfg), templates.approved_catalog(), fake_clock.now()) is not None
    with run_sandbox_in_thread(seed=6, clock=fake_clock, callback_delay_ms=0, drop_callback_ratio=1.0,
                               fail_ratio=0.3) as sandbox:
        settings = Settings(twilio_account_sid=sandbox.account_sid, twilio_auth_token=sandbox.auth_token,
                            twilio_api_url=sandbox.twilio_url, smtp_url=sandbox.smtp_url, public_url=DEAD_URL)
        channels = build_channels(settings, timeout=1.0, clock=fake_clock, ledger=StoreLedger(engine))
        sender = Sender(engine, cfg, templates, channels, fake_clock, LinkSigner("k" * 32), DEAD_URL, "stores")
        try:
            yield Store(engine, cfg, fake_clock, sandbox, channels, sender)
        finally:
            for adapter in channels.values():
                await adapter.aclose()


async def test_the_ledger_knows_our_sids_their_owners_and_the_rivals_without_one(store: Store) -> None:
    calls = store.rows(Channel.VOICE)
    first, second, third = (r.id for r in calls)
    assert (await store.sender.send_due(only_ids=[first])).sent == 1
    (placed,) = store.rows(Channel.VOICE)[:1]
    ledger = StoreLedger(store.engine)
    since = store.clock.now() - dt.timedelta(minutes=10)

    def attempt(message_id: int, to: str = SHARED) -> Attempt:
        return Attempt(message_id=message_id, channel=Channel.VOICE, to=to, stamped_at=store.clock.now())

    mine = await ledger.view(attempt(first), since, [placed.provider_id, "CA-unknown"])
    assert (mine.own_sid, dict(mine.owners), mine.rivals) == (placed.provider_id, {placed.provider_id: first}, 0)
    theirs = await ledger.view(attempt(second), since, [placed.provider_id])
    assert (theirs.own_sid, dict(theirs.owners), theirs.rivals) == (None, {placed.provider_id: first}, 0)

    # the first call loses its SID (as if its answer never came): it is now a rival of the second's
    with store.engine.begin() as conn:
        conn.execute(update(messages_t).where(messages_t.c.id == first).values(provider_id=None))
    assert (await ledger.view(attempt(second), since, [])).rivals == 1
    assert (await ledger.view(attempt(third, "+8613877770003"), since, [])).rivals == 0  # another number
    assert (await ledger.view(attempt(second), store.clock.now() + dt.timedelta(seconds=1), [])).rivals == 0
    sms = Attempt(message_id=second, channel=Channel.SMS, to=SHARED, stamped_at=store.clock.now(), body="x")
    assert (await ledger.view(sms, since, [])).rivals == 0  # an SMS rival needs the same body


async def test_repair_settles_what_lost_callbacks_left_behind(store: Store) -> None:
    assert (await store.sender.send_due()).sent == 9
    store.sandbox.drain_threadsafe(15)
    stuck = [r for ch in (Channel.SMS, Channel.VOICE) for r in store.rows(ch)]
    assert {r.status for r in stuck} == {"sent"}  # every callback was lost

    store.clock.advance(seconds=store.config.receipts.repair_after_seconds + 1)
    summary = await StatusRepair(store.engine, store.config, store.clock, store.channels).run()

    assert (summary.examined, summary.repaired, summary.unreachable) == (6, 6, 0)
    provider = {r["sid"]: r["status"] for r in [*store.sandbox.messages(), *store.sandbox.calls()]}
    for row in [*store.rows(Channel.SMS), *store.rows(Channel.VOICE)]:
        assert row.status == provider[row.provider_id] != "sent", row
    assert {r.status for r in store.rows(Channel.EMAIL)} == {"sent"}  # nothing to fetch for SMTP
