"""Fault injection (issue 4): 20 % of the provider's create requests fail, with every
fault kind — 429 with Retry-After, 500, a timeout (the client gives up; the provider
created it), a reset after creating, a reset before creating — and the SMTP sink
tempfails or drops some recipients after DATA. A FakeClock shared with the sandbox
walks past every backoff and window; the sender and the stale-row reconcile run until
nothing is left.

Then every message is either sent exactly once (one sandbox record, the SID or
Message-ID we stored) or failed with a reason (and at most once at the provider), no
provider record is unknown to us, nothing was received outside the case's contact
window, and no case got two messages on a channel on one local day.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from dispatcher.channels.registry import build_channels
from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.policy.window import is_legal
from dispatcher.sandbox import run_sandbox_in_thread
from dispatcher.services.importer import import_file
from dispatcher.services.ledger import StoreLedger
from dispatcher.services.outbox import Sender, SendSummary
from dispatcher.services.planner import local_day, run_planner
from dispatcher.services.portfolio import generate_cases, write_csv
from dispatcher.settings import Settings
from dispatcher.store.db import make_engine
from dispatcher.store.tables import CaseRow, MessageRow, messages_t
from dispatcher.templates import TemplateSet

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
#: Mon 2026-12-07 20:59:30 in Shanghai: Chinese cases are due now, but their window
#: closes at 21:00, before any retry (backoff 60 s), so retries must wait for Tuesday
#: 09:00; US cases wait for 08:00 local (New York opens at 21:00 Shanghai time, Los
#: Angeles three hours later).
START = dt.datetime(2026, 12, 7, 20, 59, 30, tzinfo=SHANGHAI)
CN_CLOSE = dt.datetime(2026, 12, 7, 21, 0, tzinfo=SHANGHAI)
FAULTS = "429:0.04,500:0.04,timeout:0.04,reset:0.04,reset_before:0.04"
#: The client gives up on a held answer after this long (a `timeout` fault).
CLIENT_TIMEOUT_S = 0.3
SENT = frozenset({"sent", "delivered", "read", "ringing", "in-progress", "completed"})
TERMINAL = SENT | {"sent_unconfirmed", "failed", "cancelled"}


def faulty_config(config: Config) -> Config:
    sending = config.sending.model_copy(update={
        "rate_per_second": {"sms": 1000.0, "voice": 1000.0, "email": 1000.0},
        "concurrency": 32,
        "batch_size": 100,
        "provider_timeout_seconds": CLIENT_TIMEOUT_S,
        "retry_backoff_seconds": 60.0,
        # one create in five answers 429 here, at random: a test of at-most-once, not of a
        # throttling provider, so the bucket's pause after a 429 is kept short (the pause
        # itself is tested in test_outbox_sender)
        "rate_limit_pause_max_seconds": 0.02,
    })
    return config.model_copy(update={"sending": sending})


def statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(select(MessageRow.status, func.count()).group_by(MessageRow.status)).all()))


def next_due(engine: Engine) -> dt.datetime | None:
    with engine.connect() as conn:
        return conn.execute(select(func.min(MessageRow.scheduled_at)).where(MessageRow.status == "queued")).scalar()


@pytest.mark.parametrize("seed", [20, 33])
async def test_twenty_percent_faults_every_message_sent_once_or_failed_never_outside_its_window(
    _sqlite_template: Path, tmp_path: Path, config: Config, seed: int
) -> None:
    cfg = faulty_config(config)
    clock = FakeClock(START)
    db = tmp_path / "faults.db"
    shutil.copyfile(_sqlite_template, db)
    engine = make_engine(f"sqlite:///{db}")
    csv_path = tmp_path / "portfolio.csv"
    write_csv(csv_path, generate_cases(160, START.date(), seed=seed, dpd_range=(0, 100)))
    assert import_file(csv_path, engine, cfg, clock).rejected == 0
    templates = TemplateSet(cfg.resolve(cfg.templates.directory), cfg)
    planned = run_planner(engine, Gate(cfg), templates.approved_catalog(), clock.now())
    assert planned is not None and planned.queued + planned.deferred >= 250, planned

    email_rules = {"debtor*3@example.com": "tempfail", "debtor*7@example.com": "drop_after_data"}
    totals = SendSummary()
    passes = 0
    crashes: list[int] = []  # rows a crashed instance left in flight
    try:
        with run_sandbox_in_thread(seed=seed, clock=clock, faults=FAULTS, retry_after_s=90, timeout_hold_s=5,
                                   callback_delay_ms=0, email_rules=email_rules) as sandbox:
            settings = Settings(twilio_account_sid=sandbox.account_sid, twilio_auth_token=sandbox.auth_token,
                                twilio_api_url=sandbox.twilio_url, smtp_url=sandbox.smtp_url,
                                public_url="http://127.0.0.1:9")  # callbacks and TwiML fetches fail: not needed
            channels = build_channels(settings, timeout=CLIENT_TIMEOUT_S, clock=clock, ledger=StoreLedger(engine))
            signer = LinkSigner("fault-test-key-0123456789")
            sender = Sender(engine, cfg, templates, channels, clock, signer, settings.public_url, "faulty")
            doomed_channels = build_channels(settings, timeout=CLIENT_TIMEOUT_S, clock=clock,
                                             ledger=StoreLedger(engine))
            try:
                while True:
                    passes += 1
                    assert passes <= 60, f"not settled after 60 passes: {statuses(engine)}"
                    if passes in (2, 4):
                        # Another instance dies in the middle of its provider calls: its
                        # rows stay in `sending`, some at the provider, some not.
                        doomed = Sender(engine, cfg, templates, doomed_channels, clock, signer,
                                        settings.public_url, f"doomed-{passes}")
                        task = asyncio.create_task(doomed.send_due())
                        # Crash it once it has claimed rows (a fixed delay raced it: a whole
                        # batch can be sent in tens of milliseconds), a moment later, so
                        # some of its calls have begun and some not.
                        for _ in range(5000):  # at most ~5 s
                            if task.done() or statuses(engine).get("sending"):
                                break
                            await asyncio.sleep(0.001)
                        await asyncio.sleep(0.003)
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                        crashes.append(statuses(engine).get("sending", 0))
                    summary = await sender.send_due()
                    for name in ("claimed", "sent", "failed", "retried", "deferred", "cancelled", "reconciled"):
                        setattr(totals, name, getattr(totals, name) + getattr(summary, name))
                    # Past the stale cutoff, then settle anything left in flight.
                    clock.advance(sender.stale_after + dt.timedelta(seconds=1))
                    await sender.reconcile_stale()
                    due = next_due(engine)
                    if due is None and not statuses(engine).get("sending"):
                        break
                    if due is not None and due > clock.now():
                        clock.set(due)  # the next backoff or window opening
            finally:
                for adapter in [*channels.values(), *doomed_channels.values()]:
                    await adapter.aclose()
            sms, calls, emails = sandbox.messages(), sandbox.calls(), sandbox.email_records()
            injected = Counter(m["fault"] for m in [*sms, *calls] if m["fault"])

        with engine.connect() as conn:
            rows = list(conn.execute(select(messages_t)))
            cases = {r.case_id: r for r in conn.execute(select(CaseRow.case_id, CaseRow.jurisdiction, CaseRow.zones))}
    finally:
        engine.dispose()

    # The faults really happened, of every kind, and were dealt with.
    assert set(injected) == {"timeout", "reset"}  # the kinds that create the resource
    # Reconciled inline by the sender, or (the crashed instances' rows) by reconcile_stale,
    # whose settlements this total does not count: every record the provider created is
    # matched to its row below.
    assert totals.reconciled > 0
    assert totals.retried > 20  # 429, 500, reset_before, SMTP tempfail
    assert totals.sent > 200
    assert sum(crashes) > 0, "the crashed instances left rows in flight for the reconcile"

    # Every message settled: sent, failed with a reason, or cancelled by the gate.
    assert {r.status for r in rows} <= TERMINAL, Counter(r.status for r in rows)
    by_sid = {r.provider_id: r for r in rows if r.provider_id}
    for row in rows:
        if row.status == "failed":
            assert row.last_error, f"message {row.id} failed without a reason"

    # Exactly once at the provider, and only what we know of.
    for record in [*sms, *calls]:
        assert record["count"] == 1, f"{record['sid']} reached the provider {record['count']} times"
        row = by_sid.get(record["sid"])
        assert row is not None, f"the provider has {record['sid']} and we do not know it"
        assert row.status in SENT
    sent_twilio = [r for r in rows if r.channel in ("sms", "voice") and r.status in SENT]
    assert len(sent_twilio) == len(sms) + len(calls)
    received = Counter(e.message_id for e in emails)
    assert all(n == 1 for n in received.values()), "an e-mail was accepted twice"
    for row in rows:
        if row.channel != "email":
            continue
        if row.status in SENT:
            assert received[row.provider_id] == 1
        elif row.status == "sent_unconfirmed":
            # Dropped after DATA (or a crash during the SMTP conversation): the sink may have
            # it, we cannot know; never sent again, counted as sent.
            assert received[row.provider_id] <= 1 and "outcome unknown" in row.last_error
        elif row.status == "failed":
            assert not received[row.provider_id], f"e-mail {row.id} was delivered but recorded failed"
    greylisted = [r for r in rows if r.channel == "email" and (r.to_address or "").endswith("3@example.com")]
    # Always greylisted: given up (or, if a crash caught it mid-conversation, unconfirmed).
    assert greylisted and all(r.status in ("failed", "sent_unconfirmed") and not received[r.provider_id]
                              for r in greylisted)
    failures = Counter((r.channel, (r.last_error or "").split(":")[0]) for r in rows if r.status == "failed")

    # Nothing was received outside the case's window; caps per local day hold.
    calendars: dict[str, WorkingCalendar] = {}
    per_day: Counter[tuple[str, str, dt.date]] = Counter()
    stamps: list[tuple[MessageRow | Any, dt.datetime]] = []
    for record in [*sms, *calls]:
        stamps.append((by_sid[record["sid"]], dt.datetime.fromisoformat(record["date_created"])))
    for email in emails:
        stamps.append((by_sid[email.message_id], email.received_at))
    cn_after_close = 0
    for row, at in stamps:
        case = cases[row.case_id]
        zones = tuple(case.zones.split(","))
        profile = cfg.jurisdictions[case.jurisdiction]
        calendar = calendars.setdefault(case.jurisdiction, WorkingCalendar.for_profile(profile))
        assert is_legal(at, zones, profile, calendar), f"message {row.id} received at {at}, outside its window"
        per_day[(row.case_id, row.channel, local_day(at, zones[0]))] += 1
        cn_after_close += case.jurisdiction == "cn" and at > CN_CLOSE
    assert max(per_day.values()) == 1
    # Retries that met the closed window waited for Tuesday (re-checked by the gate).
    assert totals.deferred > 0 and cn_after_close > 0
    assert any(cases[r.case_id].jurisdiction == "us" for r, _ in stamps)
    print(
        f"\nfaults: {passes} passes, crashes left {crashes} in flight, injected {dict(injected)} (+ HTTP faults), "
        f"totals {totals}, "
        f"final {Counter(r.status for r in rows)}, failures {dict(failures)}"
    )
