"""`dispatcher demo` end to end at a small size: everything real (sandbox over loopback,
webhooks on uvicorn, SQLite), checked through what it wrote."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def test_small_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "DISPATCHER_CONFIG": str(ROOT / "config/dispatcher.toml")}
    for key in ("DISPATCHER_NOW", "DISPATCHER_TRANSPORT", "DISPATCHER_DB_URL"):
        env.pop(key, None)
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "demo", "--cases", "150", "--days", "3", "--workdir", str(workdir)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported 150 generated cases (rejected 0)" in result.stdout
    assert "demo: 150 cases over 3 simulated days" in result.stdout

    report = json.loads((workdir / "report.json").read_text(encoding="utf-8"))
    totals = report["messages"]
    assert totals["sent"] > 100
    assert 0 < totals["delivered"] <= totals["sent"]
    assert "<svg" in (workdir / "report.html").read_text(encoding="utf-8")
    # one source of truth: the printed summary is the report's own count, figure by figure
    summary = json.loads((workdir / "summary.json").read_text(encoding="utf-8"))["counts"]
    for printed, reported in (("sent", "sent"), ("delivered", "delivered"), ("failed", "failed"),
                              ("rejected before sending", "rejected"), ("still queued", "queued"),
                              ("cancelled before sending", "cancelled")):
        assert summary[printed] == totals[reported], printed
        assert re.search(rf"│ {re.escape(printed)}\s+│\s+{totals[reported]}\s+│", result.stdout), printed
    # and the report's figures add up: every message that reached the provider once
    with sqlite3.connect(workdir / "demo.db") as db:
        reached = db.execute("select count(*) from messages where sent_at is not null").fetchone()[0]
    assert totals["sent"] == reached
    assert {s["stage"] for s in report["stages"]} >= {"early", "dpd30", "dpd60", "dpd90"}

    with sqlite3.connect(workdir / "demo.db") as db:
        channels = {c for (c,) in db.execute("select distinct channel from messages where sent_at is not null")}
        assert channels == {"sms", "email", "voice"}
        # the portfolio spans the shipped profiles, and their cases were contacted
        profiles = {j for (j,) in db.execute(
            "select distinct c.jurisdiction from cases c join messages m on m.case_id = c.case_id"
            " where m.sent_at is not null")}
        assert {"cn", "us"} < profiles and len(profiles) >= 5, profiles
        # receipts flowed back from the sandbox through our signed webhooks
        assert db.execute("select count(*) from events where kind = 'status_received'").fetchone()[0] > 50
        assert db.execute("select count(*) from events where kind = 'keypress'").fetchone()[0] > 0
        # nothing was sent twice: one provider id per sent message
        dupes = db.execute(
            "select count(*) from (select provider_id from messages where provider_id is not null"
            " group by provider_id having count(*) > 1)").fetchone()[0]
        assert dupes == 0
        # every message that left was rendered from an approved template and stored verbatim
        missing = db.execute(
            "select count(*) from messages where sent_at is not null and kind != 'system'"
            " and (body is null or content_hash is null)").fetchone()[0]
        assert missing == 0


def test_demo_serve_lets_a_newcomer_sign_in_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """`demo --serve`: after the run, the console, API and sandbox stay up on the demo's
    data; each sample user signs in with the printed password; Ctrl-C (SIGINT to the
    whole process group, as a terminal sends it) stops everything cleanly."""
    import signal
    import threading

    env = {**os.environ, "DISPATCHER_CONFIG": str(ROOT / "config/dispatcher.toml")}
    for key in ("DISPATCHER_NOW", "DISPATCHER_TRANSPORT", "DISPATCHER_DB_URL", "DISPATCHER_API_TOKEN"):
        env.pop(key, None)
    stderr_path = tmp_path / "stderr.txt"
    lines: list[str] = []
    ready = threading.Event()
    with stderr_path.open("w") as stderr_file, subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "demo", "--cases", "40", "--days", "1", "--workdir",
             str(tmp_path / "demo"), "--serve"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr_file, text=True,
            start_new_session=True) as process:

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if line.startswith("demo ready at "):
                    ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            _look_around(tmp_path, ready, lines)
        finally:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(60)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
            reader.join(10)
    assert process.returncode == 0
    stderr = stderr_path.read_text()
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "demo stopped" in "".join(lines)


def _look_around(tmp_path: Path, ready: Any, lines: list[str]) -> None:
    """Each sample user signs in with the printed password; the collector's token reads a case."""
    import re

    import httpx

    assert ready.wait(240), "".join(lines)[-3000:]
    text = "".join(lines)
    base = re.search(r"demo ready at (http://127\.0\.0\.1:\d+)/ui/login", text).group(1)  # type: ignore[union-attr]
    users = re.findall(r"│ (\S+(?: \S+)?)\s+│ (collector|author|compliance|admin|ops)\s+│ (demo-\S+)\s+│", text)
    assert {role for _, role, _ in users} == {"collector", "author", "compliance", "admin", "ops"}
    token = re.search(r"Bearer (dsp_\S+)'", text).group(1)  # type: ignore[union-attr]
    with httpx.Client(base_url=base, timeout=30) as client:
        for name, role, password in users:
            client.cookies.clear()
            page = client.get("/ui/login").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            r = client.post("/ui/login", data={"user": name, "password": password, "csrf": csrf, "next": ""})
            assert r.status_code == 303, (name, r.text[-500:])
            start = client.get(r.headers["location"])
            assert start.status_code == 200 and name in start.text, role
        with sqlite3.connect(tmp_path / "demo" / "demo.db") as db:
            (case_id,) = db.execute("select case_id from cases order by case_id limit 1").fetchone()
        r = client.get(f"/api/cases/{case_id}", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["case_id"] == case_id
        assert client.get(f"/api/cases/{case_id}").status_code == 401
