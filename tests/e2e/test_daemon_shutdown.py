"""Issue 10, finding "a normal SIGTERM is a crash": `dispatcher run` as a real process on
PostgreSQL, the sandbox answering every Twilio request and every e-mail after 3 s.

The daemon starts on an empty database; cases are imported while it runs, so its
*scheduled* plan and send jobs (not the start-up pass) queue and send them. SIGTERM
arrives while a batch's provider calls are under way. APScheduler 3.11 cancels the jobs
running when it shuts down; the daemon must not let it: it stops claiming, lets the calls
under way finish and records them, re-queues what had not had its turn, and exits 0
within `[sending] shutdown_grace_seconds`, without a traceback. Nothing is left in
`sending`; every message the providers received is recorded sent, once.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from dispatcher.sandbox import run_sandbox_in_thread
from dispatcher.store.db import make_engine
from dispatcher.store.tables import messages_t
from tests.e2e import test_daemon as daemon_helpers
from tests.e2e.test_daemon import (
    NOW,
    free_port,
    healthy,
    import_cases,
    provider_env,
    slow_config,
    start_daemon,
    wait_for,
)

pytestmark = pytest.mark.postgres
daemon_procs = daemon_helpers.daemon_procs  # the fixture: daemons left running are killed

LATENCY_MS = 3000
GRACE_S = 20.0


def busy_config(tmp: Path) -> Path:
    """The shipped config; plans every 2 s and sends every second, so that cases imported
    while the daemon runs are planned and sent by the scheduled jobs."""
    path = slow_config(tmp)
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^plan_every_seconds = .*$", "plan_every_seconds = 2", text)
    text = re.sub(r"(?m)^send_every_seconds = .*$", "send_every_seconds = 1", text)
    text = re.sub(r"(?m)^shutdown_grace_seconds = .*$", f"shutdown_grace_seconds = {GRACE_S}", text)
    path.write_text(text, encoding="utf-8")
    return path


def test_sigterm_during_a_scheduled_batch_records_every_call_under_way_and_exits_0(
    tmp_path: Path, fresh_pg_url: str, daemon_procs: list[subprocess.Popen[bytes]]
) -> None:
    config = busy_config(tmp_path)
    with run_sandbox_in_thread(latency_ms=LATENCY_MS, smtp_latency_ms=LATENCY_MS, callback_delay_ms=0) as sandbox:
        env = provider_env(tmp_path, sandbox)
        env["DISPATCHER_DB_URL"] = fresh_pg_url
        port = free_port()
        proc = start_daemon(daemon_procs, env, tmp_path, config, port)
        wait_for(lambda: healthy(port), 30, "/healthz", proc)
        import_cases(env, tmp_path, config, 60, seed=12, dpd_range=(30, 59))  # an SMS and an e-mail each

        # The scheduled jobs plan and start sending; with 3 s per provider answer, the
        # first answers come back while many calls are still under way.
        wait_for(lambda: len(sandbox.messages()) + len(sandbox.emails()) >= 6, 60, "the first messages", proc)
        sent_signal = time.monotonic()
        proc.send_signal(15)  # SIGTERM
        try:
            _out, err_bytes = proc.communicate(timeout=GRACE_S + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err_bytes = proc.communicate()
            raise AssertionError(f"the daemon ignored SIGTERM:\n{err_bytes.decode()[-3000:]}") from None
        took = time.monotonic() - sent_signal
        err = err_bytes.decode()
        sms, emails = sandbox.messages(), sandbox.emails()

    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{err[-3000:]}"
    assert took < GRACE_S + 3, f"took {took:.1f} s to stop"
    assert "Traceback" not in err and "CancelledError" not in err, err[-3000:]

    engine = make_engine(fresh_pg_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(messages_t.c.id, messages_t.c.status, messages_t.c.provider_id)).all()
    finally:
        engine.dispose()
    assert len(rows) > 90  # an SMS and an e-mail for most of the 60 cases
    statuses = {status for _id, status, _p in rows}
    assert "sending" not in statuses, "calls under way were abandoned"
    assert statuses <= {"sent", "queued"}, statuses
    # Every message the providers received is recorded sent (under its SID / Message-ID), once.
    assert all(m["count"] == 1 for m in sms) and all(e["count"] == 1 for e in emails)
    received = {m["sid"] for m in sms} | {e["message_id"] for e in emails}
    recorded = {provider for _id, status, provider in rows if status == "sent"}
    assert received == recorded
    assert len(received) >= 6
    print(f"\nSIGTERM: exited 0 after {took:.1f} s; {len(received)} sent, "
          f"{sum(s == 'queued' for _i, s, _p in rows)} left queued")
    assert any(status == "queued" for _id, status, _p in rows), "it stopped claiming: the rest waits"


# ---------------------------------------------------- a restart after a crash


def test_a_restart_after_a_crash_settles_the_stranded_rows_while_it_sends(
    tmp_path: Path, fresh_pg_url: str, daemon_procs: list[subprocess.Popen[bytes]]
) -> None:
    """Issue 10, "recovery is slow and serial": an instance is SIGKILLed while its SMS
    calls are under way (every Twilio answer takes 1 s). The next instance, started with
    its clock past the stamps' grace (3 x a 2 s provider timeout), reconciles the
    stranded rows *while* its start-up pass sends the e-mails that are due:
    e-mails are recorded sent before the reconcile has finished, nothing is left in
    flight, and nothing reaches a provider twice."""
    config = busy_config(tmp_path)
    text = re.sub(r"(?m)^provider_timeout_seconds = .*$", "provider_timeout_seconds = 2.0",
                  config.read_text(encoding="utf-8"))
    # One lookup at a time here (the integration test measures the concurrency): even a
    # slow recovery must not hold up the sending.
    text = re.sub(r"(?m)^reconcile_concurrency = .*$", "reconcile_concurrency = 1", text)
    config.write_text(text, encoding="utf-8")
    later = (dt.datetime.fromisoformat(NOW) + dt.timedelta(minutes=1)).isoformat()
    with run_sandbox_in_thread(latency_ms=1000, callback_delay_ms=0) as sandbox:
        env = provider_env(tmp_path, sandbox)
        env["DISPATCHER_DB_URL"] = fresh_pg_url
        import_cases(env, tmp_path, config, 40, seed=21, dpd_range=(30, 59))
        port = free_port()
        crashed = start_daemon(daemon_procs, env, tmp_path, config, port)
        wait_for(lambda: len(sandbox.messages()) >= 3, 60, "the first SMS", crashed)
        crashed.kill()  # SIGKILL: the calls under way are abandoned in flight
        crashed.communicate()
        stranded = {i for i, status, _p in outbox_rows(fresh_pg_url) if status == "sending"}
        assert len(stranded) >= 3

        log_path = tmp_path / "restarted.log"
        with log_path.open("wb") as log_file:
            restarted = subprocess.Popen(
                [sys.executable, "-m", "dispatcher.cli", "--config", str(config), "--now", later, "run", "--port",
                 str(port)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
            daemon_procs.append(restarted)
            wait_for(lambda: not any(s == "sending" and i in stranded for i, s, _p in outbox_rows(fresh_pg_url)),
                     120, "the stranded rows to settle", restarted)
            wait_for(lambda: "reconcile: settled" in log_path.read_text(encoding="utf-8"), 30,
                     "the reconcile's summary", restarted)
            restarted.send_signal(15)
            assert restarted.wait(timeout=GRACE_S + 10) == 0
        sms = sandbox.messages()

    messages = [json.loads(line)["msg"] for line in log_path.read_text(encoding="utf-8").splitlines()
                if line.startswith("{")]
    settled_at = next(i for i, m in enumerate(messages) if m.startswith("reconcile: settled"))
    emails_sent = [i for i, m in enumerate(messages) if re.match(r"message \d+ sent via email", m)]
    assert emails_sent and emails_sent[0] < settled_at, "the start-up pass waited for the reconcile"
    rows = outbox_rows(fresh_pg_url)
    assert not [i for i, s, _p in rows if s == "sending"], "left in flight after SIGTERM"
    assert all(m["count"] == 1 for m in sms)
    by_sid = {p: s for _i, s, p in rows if p}
    # (a reconciled record carries the provider's status at the time: often delivered already)
    unrecorded = [m["sid"] for m in sms if by_sid.get(m["sid"]) not in ("sent", "delivered")]
    assert not unrecorded, f"the provider has {unrecorded}, not recorded sent: {rows}"


def outbox_rows(url: str) -> list[tuple[int, str, str | None]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [(int(i), str(s), p) for i, s, p in conn.execute(
                select(messages_t.c.id, messages_t.c.status, messages_t.c.provider_id))]
    finally:
        engine.dispose()
