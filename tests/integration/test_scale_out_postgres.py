"""Scale-out on PostgreSQL (SPEC section 10): three `dispatcher tick` processes on one
database and one sandbox.

Phase 1: ~1,500 generated cases are imported and planned once; three `tick` processes
then start together and send concurrently (`FOR UPDATE SKIP LOCKED` claims). Every
message reaches the sandbox exactly once, every sandbox record is one of our sent rows,
nothing is sent outside its window, and their planners add nothing (idempotency).
Phase 2: the next day three ticks start together again: their planners share the
portfolio's partitions (leases), so together they enqueue the new day's messages, each
message once; no case gets more than one message per channel per local day.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config, load_config
from dispatcher.policy import Gate
from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.policy.window import is_legal
from dispatcher.sandbox import Sandbox, run_sandbox_in_thread
from dispatcher.services.importer import import_file
from dispatcher.services.planner import local_day, run_planner
from dispatcher.services.portfolio import generate_cases, write_csv
from dispatcher.store.db import ensure_schema, make_engine
from dispatcher.store.tables import CaseRow, MessageRow, messages_t
from dispatcher.templates import TemplateSet

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
CASES = 1500
PROCESSES = 3
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
#: Mon 2026-12-07 10:00 in Shanghai: the Chinese window is open, the US ones are closed.
DAY_1 = dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI)
DAY_2 = DAY_1 + dt.timedelta(days=1)
#: Nothing listens there: the sandbox's status callbacks and TwiML fetches fail at once.
DEAD_PUBLIC_URL = "http://127.0.0.1:9"
SENT = ("sent", "delivered", "read", "ringing", "in-progress", "completed")


def _truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        names = conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'alembic_version'"
        )).scalars().all()
        conn.execute(text(f"TRUNCATE TABLE {', '.join(chr(34) + n + chr(34) for n in names)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """The session's PostgreSQL database, migrated and emptied before and after."""
    engine = make_engine(pg_url)
    ensure_schema(engine)
    _truncate(engine)
    try:
        yield engine
    finally:
        _truncate(engine)
        engine.dispose()


def fast_config(config: Config, directory: Path) -> Path:
    """The shipped config with rate limits that do not pace a loopback test."""
    source = (ROOT / "config" / "dispatcher.toml").read_text(encoding="utf-8")
    patched = re.sub(r"(?m)^rate_per_second = .*$",
                     'rate_per_second = { sms = 2000.0, voice = 2000.0, email = 2000.0 }', source)
    patched = re.sub(r"(?m)^concurrency = .*$", "concurrency = 32", patched)
    patched = patched.replace('directory = "../templates"', f'directory = "{ROOT / "templates"}"')
    patched = patched.replace('forbidden_phrases = "forbidden_phrases.txt"',
                              f'forbidden_phrases = "{ROOT / "config" / "forbidden_phrases.txt"}"')
    assert patched.count("2000.0") == 3 and str(ROOT / "templates") in patched
    path = directory / "config" / "dispatcher.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(patched, encoding="utf-8")
    return path


def start_ticks(sandbox: Sandbox, db_url: str, config_path: Path, now: dt.datetime, cwd: Path,
                tag: str) -> list[subprocess.Popen[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_"))}
    env.update({
        "TWILIO_ACCOUNT_SID": sandbox.account_sid,
        "TWILIO_AUTH_TOKEN": sandbox.auth_token,
        "DISPATCHER_TWILIO_API_URL": sandbox.twilio_url,
        "DISPATCHER_SMTP_URL": sandbox.smtp_url,
        "DISPATCHER_PUBLIC_URL": DEAD_PUBLIC_URL,
        "DISPATCHER_SIGNING_KEY": "scale-out-test-signing-key-0123456789",
        "COLUMNS": "160",
    })
    procs = []
    for i in range(PROCESSES):
        env_i = {**env, "DISPATCHER_INSTANCE_ID": f"{tag}-{i}"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "--config", str(config_path), "--db", db_url,
             "--now", now.isoformat(), "tick"],
            cwd=cwd, env=env_i, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    return procs


def finish(procs: list[subprocess.Popen[str]], timeout: float = 80.0) -> list[str]:
    outputs = []
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, f"tick exited {proc.returncode}:\n{out}\n{err}"
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return outputs


def table_value(output: str, label: str) -> str:
    found = re.search(rf"{re.escape(label)}\s*[│|]\s*([^│|\n]+?)\s*[│|]", output)
    assert found, f"no {label!r} row in:\n{output}"
    return found.group(1)


def planner_counts(outputs: list[str]) -> list[int | None]:
    """Rows each process's planner added; None when it found the lock taken."""
    counts: list[int | None] = []
    for out in outputs:
        if "skipped: another instance is planning" in out:
            counts.append(None)
        else:
            counts.append(int(table_value(out, "queued (send now)")) + int(table_value(out, "queued (deferred)")))
    return counts


def outbox(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(messages_t).order_by(MessageRow.id)))


def check_exactly_once(engine: Engine, sandbox: Sandbox) -> dict[str, int]:
    rows = outbox(engine)
    sent = [r for r in rows if r.status in SENT]
    assert not [r for r in rows if r.status in ("sending", "failed")], "every claimed message was settled"
    by_channel = Counter(r.channel for r in sent)

    sms = sandbox.messages()
    assert all(m["count"] == 1 for m in sms), "an SMS reached the provider twice"
    assert len(sms) == by_channel["sms"]
    assert {m["sid"] for m in sms} == {r.provider_id for r in sent if r.channel == "sms"}
    calls = sandbox.calls()
    assert all(c["count"] == 1 for c in calls), "a call was placed twice"
    assert len(calls) == by_channel["voice"]
    assert {c["sid"] for c in calls} == {r.provider_id for r in sent if r.channel == "voice"}
    emails = sandbox.emails()
    assert all(e["count"] == 1 for e in emails), "an e-mail was accepted twice"
    assert len(emails) == by_channel["email"]
    assert {e["message_id"] for e in emails} == {r.provider_id for r in sent if r.channel == "email"}
    return dict(by_channel)


def check_caps_and_windows(engine: Engine, config: Config) -> None:
    with engine.connect() as conn:
        cases = {r.case_id: r for r in conn.execute(select(CaseRow.case_id, CaseRow.jurisdiction, CaseRow.zones))}
    per_day: Counter[tuple[str, str, dt.date]] = Counter()
    calendars: dict[str, WorkingCalendar] = {}
    for row in outbox(engine):
        if row.status not in SENT:
            continue
        case = cases[row.case_id]
        zones = tuple(case.zones.split(","))
        per_day[(row.case_id, row.channel, local_day(row.sent_at, zones[0]))] += 1
        profile = config.jurisdictions[case.jurisdiction]
        calendar = calendars.setdefault(case.jurisdiction, WorkingCalendar.for_profile(profile))
        assert is_legal(row.sent_at, zones, profile, calendar), f"message {row.id} sent outside its window"
    over = {key: n for key, n in per_day.items() if n > 1}
    assert not over, f"more than one message per case, channel and local day: {list(over.items())[:5]}"


def test_three_tick_processes_share_the_outbox_and_send_each_message_once(
    pg_engine: Engine, pg_url: str, config: Config, tmp_path: Path
) -> None:
    started = time.perf_counter()
    config_path = fast_config(config, tmp_path)
    cfg = load_config(config_path)
    clock = FakeClock(DAY_1)
    csv_path = tmp_path / "portfolio.csv"
    write_csv(csv_path, generate_cases(CASES, DAY_1.date(), seed=42))
    report = import_file(csv_path, pg_engine, cfg, clock)
    assert (report.imported, report.rejected) == (CASES, 0)
    catalog = TemplateSet(cfg.resolve(cfg.templates.directory), cfg).approved_catalog()
    planned = run_planner(pg_engine, Gate(cfg), catalog, DAY_1)
    assert planned is not None and planned.queued >= 1500, planned
    due_now = planned.queued

    with run_sandbox_in_thread(seed=5, clock=clock, callback_delay_ms=0) as sandbox:
        # Phase 1: three senders over the same queued rows.
        outputs = finish(start_ticks(sandbox, pg_url, config_path, DAY_1, tmp_path, "day1"))
        counts = planner_counts(outputs)
        assert all(c in (None, 0) for c in counts), f"a planner re-queued planned work: {counts}"
        sent_by = [int(table_value(out, "sent")) for out in outputs]
        assert sum(sent_by) == due_now, (sent_by, due_now)
        owners = Counter(r.claimed_by for r in outbox(pg_engine) if r.status in SENT)
        assert len(owners) == PROCESSES and min(owners.values()) >= due_now // 20, owners  # all did real work
        day1 = check_exactly_once(pg_engine, sandbox)
        assert sum(day1.values()) == due_now

        # Phase 2: the next day, three ticks start together: they share the partitions.
        rows_before = len(outbox(pg_engine))
        outputs = finish(start_ticks(sandbox, pg_url, config_path, DAY_2, tmp_path, "day2"))
        counts = planner_counts(outputs)
        added = len(outbox(pg_engine)) - rows_before
        assert None not in counts, f"every tick plans its share now: {counts}"
        assert sum(c or 0 for c in counts) == added > 0, (counts, added)  # each message enqueued once
        day2 = check_exactly_once(pg_engine, sandbox)
        assert sum(day2.values()) > sum(day1.values())
        sandbox.drain_threadsafe(30)

    check_caps_and_windows(pg_engine, cfg)
    with pg_engine.connect() as conn:
        keys = conn.execute(select(MessageRow.idempotency_key)).scalars().all()
    assert len(keys) == len(set(keys))
    print(f"\nscale-out: day 1 sent {day1} by {dict(owners)}, day 2 planners {counts}, "
          f"{time.perf_counter() - started:.1f} s")
