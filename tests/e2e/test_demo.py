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
