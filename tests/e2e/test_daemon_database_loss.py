"""Issue 10, finding "database loss kills the daemon": `dispatcher run` (a real process) on
PostgreSQL, against the sandbox, with the database taken away.

1. At start-up the database does not exist yet, then its connections are terminated
   (`pg_terminate_backend`) while the daemon creates its schema: the daemon waits and
   retries with backoff (JSON log lines, no exit), then serves.
2. While it sends and the sandbox posts status callbacks, every connection to the
   database is terminated again and again: nothing crashes, every message is sent once,
   nothing stays in flight, and every SMS ends "delivered" — a callback answered 503
   in the worst moment is made good by the status repair job.

Only this test's own, uniquely named database is touched (the server is shared).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url

from dispatcher.sandbox import run_sandbox_in_thread
from dispatcher.testing import copy_shipped_config
from tests.e2e.test_daemon import (
    base_env,
    free_port,
    healthy,
    import_cases,
    start_daemon,
    wait_for,
)

pytestmark = pytest.mark.postgres

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
EMAIL_SETTLED = frozenset({"sent", "sent_unconfirmed", "failed"})


def _admin() -> str:
    url = os.environ.get("DISPATCHER_TEST_PG_URL") or DEFAULT_PG_URL
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def db_name() -> Iterator[str]:
    """A unique database name; the database is created by the test and dropped here."""
    try:
        psycopg.connect(_admin(), connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("DISPATCHER_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL not reachable ({exc}); DISPATCHER_REQUIRE_POSTGRES=1", pytrace=False)
        pytest.skip("PostgreSQL not reachable; set DISPATCHER_TEST_PG_URL")
    name = f"dispatcher_test_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(_admin(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def daemons() -> Iterator[list[Any]]:
    """Started daemons are killed if the test fails before it stops them."""
    procs: list[Any] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def create_database(name: str) -> None:
    with psycopg.connect(_admin(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def kill_connections(name: str) -> int:
    """Terminate every backend connected to OUR database `name` (never another's)."""
    assert name.startswith("dispatcher_test_")
    with psycopg.connect(_admin(), autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchall()
    return len(rows)


class Killer:
    """Terminates the database's connections every `every` seconds in a thread."""

    def __init__(self, name: str, every: float) -> None:
        self.name, self.every, self.killed, self.rounds = name, every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.killed += kill_connections(self.name)
            self.rounds += 1

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class LogReader:
    """Collects a process's stderr lines while it runs."""

    def __init__(self, proc: Any) -> None:
        self._lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under it (teardown)
            for raw in iter(stream.readline, b""):
                self._lines.append(raw.decode("utf-8", "replace"))

    def count(self, fragment: str) -> int:
        return sum(fragment in line for line in list(self._lines))

    def text(self) -> str:
        return "".join(self._lines)

    def join(self) -> None:
        self._thread.join(10)


def fast_config(tmp: Path) -> Path:
    """The shipped config with the daemon's jobs every few seconds and a quick repair."""
    def fast(source: str) -> str:
        for key, value in {"plan_every_seconds": 2, "send_every_seconds": 1, "reconcile_every_seconds": 3,
                           "repair_every_seconds": 2, "repair_after_seconds": 3}.items():
            source = re.sub(rf"(?m)^{key} = \d+", f"{key} = {value}", source)
        return source

    return copy_shipped_config(tmp / "config", fast)


def rows(name: str) -> list[tuple[int, str, str, str | None]]:
    url = make_url(_admin()).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(url, connect_timeout=10) as conn:
        return conn.execute("SELECT id, channel, status, provider_id FROM messages ORDER BY id").fetchall()


def test_the_daemon_waits_for_the_database_and_outlives_its_connections_being_killed(
    tmp_path: Path, db_name: str, daemons: list[Any]
) -> None:
    config = fast_config(tmp_path)
    port = free_port()
    db_url = make_url(_admin()).set(drivername="postgresql+psycopg", database=db_name).render_as_string(
        hide_password=False)
    with run_sandbox_in_thread(callback_delay_ms=50) as sandbox:
        env = base_env(
            tmp_path, DISPATCHER_DB_URL=db_url, TWILIO_ACCOUNT_SID=sandbox.account_sid,
            TWILIO_AUTH_TOKEN=sandbox.auth_token, DISPATCHER_TWILIO_API_URL=sandbox.twilio_url,
            DISPATCHER_SMTP_URL=sandbox.smtp_url, DISPATCHER_PUBLIC_URL=f"http://127.0.0.1:{port}",
            DISPATCHER_SIGNING_KEY="db-loss-test-signing-key-0123456789")

        # 1. no database yet: it waits (and says so), it does not exit
        proc = start_daemon(daemons, env, tmp_path, config, port)
        logs = LogReader(proc)
        wait_for(lambda: logs.count("the database is unavailable") >= 2, 60, "retries while the database is missing",
                 proc)
        create_database(db_name)
        with Killer(db_name, every=0.15) as startup_kills:  # its schema creation is interrupted
            time.sleep(3)
        try:
            wait_for(lambda: healthy(port), 90, "/healthz after the database came", proc)
        except AssertionError as exc:  # say why: the daemon's own log
            raise AssertionError(f"{exc}\n{logs.text()[-6000:]}") from None

        # 2. cases arrive; connections are killed while it plans, sends and takes callbacks
        import_cases(env, tmp_path, config, 40, seed=21, dpd_range=(1, 29))  # SMS + e-mail
        wait_for(lambda: len(sandbox.messages()) + len(sandbox.emails()) >= 5, 60, "the first messages", proc)
        with Killer(db_name, every=0.7) as sending_kills:
            time.sleep(6)

        def settled() -> bool:
            current = rows(db_name)
            # every case planned: a plan run cut short by a killed connection leaves its
            # cases due, and the next run (2 s later) plans them; 40 cases give 60+ messages
            if len(current) < 60:
                return False
            # an e-mail whose result could not be recorded (the connection killed after the
            # SMTP server accepted it) is settled "outcome unknown", never resent
            return bool(current) and all(
                (ch == "sms" and status == "delivered") or (ch == "email" and status in EMAIL_SETTLED)
                for _id, ch, status, _p in current)

        try:
            wait_for(settled, 90, "every SMS delivered and every e-mail sent", proc)
        except AssertionError as exc:
            states = Counter((ch, status) for _id, ch, status, _p in rows(db_name))
            raise AssertionError(f"{exc}: {dict(states)}\n{logs.text()[-4000:]}") from None
        final = rows(db_name)
        sms, emails = sandbox.messages(), sandbox.emails()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, logs.text()[-3000:]
        logs.join()

    assert startup_kills.rounds > 5 and sending_kills.killed > 0, (startup_kills.killed, sending_kills.killed)
    assert len(final) >= 60
    assert all(m["count"] == 1 for m in sms) and all(e["count"] == 1 for e in emails)
    assert {m["sid"] for m in sms} == {r[3] for r in final if r[1] == "sms"}
    sent_emails = {r[3] for r in final if r[1] == "email" and r[2] != "failed"}
    assert sent_emails <= {e["message_id"] for e in emails} <= {r[3] for r in final if r[1] == "email"}
    text = logs.text()
    messages = [json.loads(line)["msg"] for line in text.splitlines() if line.startswith("{")]
    assert any("start-up: the database is unavailable" in m for m in messages)
    print(f"\nkills: start-up {startup_kills.killed} in {startup_kills.rounds} rounds, sending {sending_kills.killed};"
          f" outage log lines {sum('unavailable' in m for m in messages)}, errors "
          f"{sum(1 for line in text.splitlines() if chr(34) + 'error' + chr(34) in line)}")
    assert "Traceback" not in "\n".join(line for line in text.splitlines() if not line.startswith("{"))
