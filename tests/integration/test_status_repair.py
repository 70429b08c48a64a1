"""The status repair job: a run whose provider lost half the status callbacks leaves SMS
"sent" and calls "ringing"/"in progress"; the job asks the provider and brings every
one to its final status, through the receipts service (an event says "repair")."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.channels.base import ChannelAdapter
from dispatcher.channels.registry import build_channels
from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.domain import Case, Channel, Product
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.sandbox import Sandbox, run_sandbox_in_thread
from dispatcher.sandbox.asgi_server import serve_in_thread
from dispatcher.services.ledger import StoreLedger
from dispatcher.services.outbox import Sender
from dispatcher.services.planner import run_planner
from dispatcher.services.repair import StatusRepair
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.db import make_engine
from dispatcher.store.repository import ImportedCase
from dispatcher.store.tables import events_t, messages_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime

KEY = "status-repair-key-0123456789abcdef0123"
FINAL = {"sms": {"delivered", "undelivered", "failed"}, "voice": {"completed", "busy", "no-answer", "failed"}}
DUE_DPD60 = dt.date(2026, 10, 8)


def case(n: int) -> ImportedCase:
    c = Case(case_id=f"cn-{n:04d}", name="张伟", jurisdiction="cn", locale="zh-CN", currency="CNY",
             principal=Decimal("10000.00"), interest=Decimal("120.00"), penalty=Decimal("150.00"),
             fees=Decimal("0.00"), amount_due=Decimal("10270.00"), due_date=DUE_DPD60, phone=f"+86138{n:08d}",
             email=f"debtor{n}@example.com", penalty_rate_daily=Decimal("0.0005"), product=Product.CREDIT_CARD)
    return ImportedCase(case=c, zones=("Asia/Shanghai",), sms_consent=True, email_consent=True, voice_consent=True)


@dataclass
class Run:
    engine: Engine
    config: Config
    clock: FakeClock
    sandbox: Sandbox
    channels: dict[Channel, ChannelAdapter]
    sender: Sender

    def rows(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(messages_t).where(messages_t.c.channel != "email")
                                     .order_by(messages_t.c.id)))

    def stuck(self) -> list[Any]:
        return [r for r in self.rows() if r.status not in FINAL[r.channel]]


@contextlib.contextmanager
def lossy_run(tmp_path: Path, template: Path, config: Config, clock: FakeClock) -> Iterator[Run]:
    """Our web app serves the callbacks and the TwiML; the sandbox loses half the callbacks."""
    db = tmp_path / "repair.db"
    shutil.copyfile(template, db)
    engine = make_engine(f"sqlite:///{db}")
    cfg = config.model_copy(update={"sending": config.sending.model_copy(update={
        "rate_per_second": {"sms": 1000.0, "voice": 1000.0, "email": 1000.0}, "provider_timeout_seconds": 2.0})})
    templates = TemplateSet(cfg.resolve(cfg.templates.directory), cfg)
    with engine.begin() as conn:
        repo.upsert_cases(conn, [case(n) for n in range(1, 21)], clock.now())
    assert run_planner(engine, Gate(cfg), templates.approved_catalog(), clock.now()) is not None
    holder: dict[str, Any] = {}

    def late_app(scope: Any, receive: Any, send: Any) -> Any:
        return holder["app"](scope, receive, send)

    try:
        with serve_in_thread(late_app, name="repair-web") as port, run_sandbox_in_thread(
                seed=8, clock=clock, callback_delay_ms=1, drop_callback_ratio=0.5, fail_ratio=0.2) as sandbox:
            url = f"http://127.0.0.1:{port}"
            web = Settings(twilio_auth_token=sandbox.auth_token, signing_key=KEY, public_url=url)
            holder["app"] = create_app(Runtime(web, clock, config=cfg, engine=engine, templates=templates).web())
            settings = Settings(twilio_account_sid=sandbox.account_sid, twilio_auth_token=sandbox.auth_token,
                                twilio_api_url=sandbox.twilio_url, smtp_url=sandbox.smtp_url, public_url=url,
                                signing_key=KEY)
            channels = build_channels(settings, timeout=2.0, clock=clock, ledger=StoreLedger(engine))
            sender = Sender(engine, cfg, templates, channels, clock, LinkSigner(KEY), url, "repair-test")
            try:
                yield Run(engine, cfg, clock, sandbox, channels, sender)
            finally:
                holder["app"].collaborators.receipts.close()
    finally:
        engine.dispose()


@pytest.fixture
async def run(tmp_path: Path, _sqlite_template: Path, config: Config, fake_clock: FakeClock) -> AsyncIterator[Run]:
    with lossy_run(tmp_path, _sqlite_template, config, fake_clock) as r:
        try:
            yield r
        finally:
            for adapter in r.channels.values():
                await adapter.aclose()


async def test_the_repair_job_brings_every_sms_and_call_to_its_final_status(run: Run) -> None:
    summary = await run.sender.send_due()
    assert summary.sent == 60 and summary.failed == 0
    run.sandbox.drain_threadsafe(30)
    stuck = run.stuck()
    left = {(r.channel, r.status) for r in stuck}
    assert {("sms", "sent"), ("voice", "ringing")} <= left or {("sms", "sent"), ("voice", "in-progress")} <= left, left
    assert len(stuck) >= 10, len(stuck)

    repair = StatusRepair(run.engine, run.config, run.clock, run.channels)
    # not yet: a receipt may still be on its way
    assert (await repair.run()).examined == 0
    run.clock.advance(seconds=run.config.receipts.repair_after_seconds + 1)
    result = await repair.run()

    assert result.examined == len(stuck) and result.repaired == len(stuck), result
    assert run.stuck() == []
    provider = {r["sid"]: r["status"] for r in [*run.sandbox.messages(), *run.sandbox.calls()]}
    for row in run.rows():
        assert row.status == provider[row.provider_id], row  # what the provider says, nothing else
    with run.engine.connect() as conn:
        events = [json.loads(e.data) for e in conn.execute(
            select(events_t.c.data).where(events_t.c.kind == "status_received"))]
    repaired = [e for e in events if e.get("source") == "repair"]
    assert len(repaired) == len(stuck) and {e["sid"] for e in repaired} == {r.provider_id for r in stuck}
    # nothing left to do; statuses never move backwards on a second pass
    run.clock.advance(hours=1)
    again = await repair.run()
    assert (again.examined, again.repaired) == (0, 0)


async def test_repair_leaves_recent_and_ancient_rows_and_channels_without_a_provider_alone(run: Run) -> None:
    await run.sender.send_due()
    run.sandbox.drain_threadsafe(30)
    stuck = len(run.stuck())
    assert stuck
    email_only = StatusRepair(run.engine, run.config, run.clock, {Channel.EMAIL: run.channels[Channel.EMAIL]})
    assert email_only.sources == {}
    run.clock.advance(hours=run.config.receipts.repair_max_age_hours + 1)
    assert (await StatusRepair(run.engine, run.config, run.clock, run.channels).run()).examined == 0
    assert len(run.stuck()) == stuck
