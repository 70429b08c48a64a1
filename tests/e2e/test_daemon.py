"""`dispatcher run`, the daemon, as a real process (SPEC section 5, issue 4).

1. With the file transport on a scratch SQLite database: it plans and sends once at
   start (one spool file per message), serves `/healthz`, sends nothing twice while it
   runs, logs JSON lines without full phone numbers or e-mail addresses, and exits 0
   within 10 s of SIGTERM.
2. With the real providers (an in-thread sandbox with 200 ms latency) and a start-up
   send pass that would take far longer than 10 s: SIGTERM stops claiming, the batch in
   flight finishes (nothing is left in `sending`, nothing reaches the provider twice),
   the rest stays queued, and it exits 0 within 10 s.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dispatcher.sandbox import Sandbox, run_sandbox_in_thread
from dispatcher.services.portfolio import generate_cases, write_csv

ROOT = Path(__file__).resolve().parents[2]
NOW = "2026-12-07T10:00:00+08:00"  # Monday, inside the Chinese window
SIGTERM_DEADLINE_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], within: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(0.05)


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def outbox(db: Path) -> list[tuple[int, str, str, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, channel, status, provider_id FROM messages ORDER BY id").fetchall()
    conn.close()
    return rows


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_"))}
    env.update({"DISPATCHER_DB_URL": f"sqlite:///{tmp / 'd.db'}", "DISPATCHER_INSTANCE_ID": "daemon-test",
                "COLUMNS": "160", **extra})
    return env


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dispatcher.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def import_cases(env: dict[str, str], tmp: Path, config: Path, count: int, *, seed: int,
                 dpd_range: tuple[int, int]) -> None:
    """Generated Chinese cases (`dispatcher import`, the real command)."""
    csv_path = tmp / "cases.csv"
    today = dt.datetime.fromisoformat(NOW).date()
    write_csv(csv_path, generate_cases(count, today, seed=seed, dpd_range=dpd_range, cn_share=1.0))
    done = cli(env, tmp, "--config", str(config), "--now", NOW, "import", str(csv_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"imported {count}, updated 0, rejected 0"


@pytest.fixture
def daemon_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started daemons are killed if a test fails before it stops them."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def start_daemon(procs: list[subprocess.Popen[bytes]], env: dict[str, str], cwd: Path, config: Path,
                 port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", "--config", str(config), "--now", NOW, "run", "--port", str(port)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    procs.append(proc)
    return proc


def terminate(proc: subprocess.Popen[bytes]) -> tuple[float, str]:
    """SIGTERM; returns (seconds until exit, stderr). The exit status must be 0."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=SIGTERM_DEADLINE_S + 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"the daemon ignored SIGTERM:\n{err.decode()[-3000:]}") from None
    took = time.monotonic() - sent
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{err.decode()[-3000:]}"
    return took, err.decode()


# ------------------------------------------------------------------- file transport


def test_daemon_sends_once_at_start_serves_healthz_and_exits_0_on_sigterm(
    tmp_path: Path, daemon_procs: list[subprocess.Popen[bytes]]
) -> None:
    config = ROOT / "config" / "dispatcher.toml"
    spool = tmp_path / "spool"
    env = base_env(tmp_path, DISPATCHER_TRANSPORT="file", DISPATCHER_SPOOL_DIR=str(spool))
    import_cases(env, tmp_path, config, 6, seed=4, dpd_range=(30, 80))
    port = free_port()

    proc = start_daemon(daemon_procs, env, tmp_path, config, port)
    wait_for(lambda: healthy(port), 30, "/healthz", proc)

    def all_sent() -> bool:
        current = outbox(tmp_path / "d.db")
        return bool(current) and all(status == "sent" for _id, _ch, status, _p in current)

    wait_for(all_sent, 15, "the start-up pass to send everything", proc)
    rows = outbox(tmp_path / "d.db")
    assert len(rows) >= 12  # six cases in dpd30/dpd60: SMS and e-mail each, calls for dpd60
    files = sorted(spool.glob("*/*.json"))
    assert sorted(f"{p.parent.name}/{p.stem}" for p in files) == sorted(f"{ch}/{mid}" for mid, ch, _s, _p in rows)
    for path in files:
        payload = json.loads(path.read_text(encoding="utf-8"))
        assert payload["provider_id"] == f"file-{payload['message_id']}"
        assert payload["body"] and payload["to"]

    # It keeps running (the send job every few seconds) and sends nothing twice.
    response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5.0)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    time.sleep(6)  # > scheduler.send_every_seconds
    assert sorted(spool.glob("*/*.json")) == files
    assert outbox(tmp_path / "d.db") == rows

    took, logs = terminate(proc)
    assert took < SIGTERM_DEADLINE_S
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert any(m.startswith("dispatcher running on") for m in messages)
    assert "stopped" in messages
    phones = {json.loads(p.read_text(encoding="utf-8"))["to"] for p in files}
    for address in phones:
        assert address not in logs, "a full address reached the logs"
    assert not re.search(r"debtor\d+@example\.com", logs)


# ------------------------------------------------------------- SIGTERM in mid-pass


def slow_config(tmp: Path) -> Path:
    """The shipped config, with a sender slow enough that the start-up pass takes ~30 s."""
    source = (ROOT / "config" / "dispatcher.toml").read_text(encoding="utf-8")
    patched = re.sub(r"(?m)^rate_per_second = .*$", "rate_per_second = { sms = 20.0, voice = 5.0, email = 20.0 }",
                     source)
    patched = re.sub(r"(?m)^batch_size = .*$", "batch_size = 40", patched)
    patched = patched.replace('directory = "../templates"', f'directory = "{ROOT / "templates"}"')
    patched = patched.replace('forbidden_phrases = "forbidden_phrases.txt"',
                              f'forbidden_phrases = "{ROOT / "config" / "forbidden_phrases.txt"}"')
    path = tmp / "config" / "dispatcher.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(patched, encoding="utf-8")
    return path


def provider_env(tmp: Path, sandbox: Sandbox) -> dict[str, str]:
    return base_env(
        tmp,
        TWILIO_ACCOUNT_SID=sandbox.account_sid,
        TWILIO_AUTH_TOKEN=sandbox.auth_token,
        DISPATCHER_TWILIO_API_URL=sandbox.twilio_url,
        DISPATCHER_SMTP_URL=sandbox.smtp_url,
        DISPATCHER_PUBLIC_URL="http://127.0.0.1:9",  # callbacks are not needed here
        DISPATCHER_SIGNING_KEY="daemon-test-signing-key-0123456789",
    )


def test_sigterm_during_the_startup_send_pass_finishes_the_batch_in_flight_and_exits_within_10s(
    tmp_path: Path, daemon_procs: list[subprocess.Popen[bytes]]
) -> None:
    config = slow_config(tmp_path)
    with run_sandbox_in_thread(latency_ms=200, callback_delay_ms=0) as sandbox:
        env = provider_env(tmp_path, sandbox)
        import_cases(env, tmp_path, config, 300, seed=8, dpd_range=(30, 59))  # SMS + e-mail each
        port = free_port()

        proc = start_daemon(daemon_procs, env, tmp_path, config, port)
        wait_for(lambda: len(sandbox.messages()) + len(sandbox.emails()) >= 10, 60, "the first messages", proc)
        took, _logs = terminate(proc)
        assert took < SIGTERM_DEADLINE_S, f"took {took:.1f} s to stop"
        sms, emails = sandbox.messages(), sandbox.emails()

    rows = outbox(tmp_path / "d.db")
    assert len(rows) > 500
    statuses = {status for _id, _ch, status, _p in rows}
    assert "sending" not in statuses, "the batch in flight was abandoned"
    sent = [r for r in rows if r[2] == "sent"]
    queued = [r for r in rows if r[2] == "queued"]
    assert len(sent) + len(queued) == len(rows)
    assert queued, "it stopped claiming: the rest waits for the next instance"
    assert all(m["count"] == 1 for m in sms) and all(e["count"] == 1 for e in emails)
    assert len(sms) + len(emails) == len(sent)
    assert {m["sid"] for m in sms} | {e["message_id"] for e in emails} == {r[3] for r in sent}
