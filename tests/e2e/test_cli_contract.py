"""The CLI contract of SPEC sections 3–5, driven through the real `dispatcher` command.

The worked examples of SPEC section 4 are checked line by line through `plan`.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HEADER = [
    "case_id", "name", "jurisdiction", "phone", "email", "principal", "interest", "penalty", "fees",
    "amount_due", "penalty_rate_daily", "due_date", "status", "sms_consent", "voice_consent", "timezone",
]


def case_row(case_id: str, due: str, **kw: str) -> dict[str, str]:
    row = {
        "case_id": case_id, "name": "王伟", "jurisdiction": "cn", "phone": "+8613812345678",
        "email": "wang@example.com", "principal": "10000.00", "interest": "100.00", "penalty": "225.00",
        "fees": "0", "amount_due": "10325.00", "penalty_rate_daily": "0.0005", "due_date": due,
        "status": "active", "sms_consent": "", "voice_consent": "", "timezone": "",
    }
    row.update(kw)
    return row


def write_cases(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)
    return path


class Cli:
    """Runs `python -m dispatcher.cli` in a scratch directory with its own database."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = tmp / "d.db"
        self.env = {
            **os.environ,
            "DISPATCHER_CONFIG": str(ROOT / "config/dispatcher.toml"),
            "DISPATCHER_DB_URL": f"sqlite:///{self.db}",
            "DISPATCHER_TRANSPORT": "file",
            "DISPATCHER_SPOOL_DIR": str(tmp / "spool"),
            "DISPATCHER_SIGNING_KEY": "test-key",
            "DISPATCHER_PUBLIC_URL": "http://127.0.0.1:9",
        }
        self.env.pop("DISPATCHER_NOW", None)

    def __call__(self, *args: str, now: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "dispatcher.cli"]
        if now:
            cmd += ["--now", now]
        return subprocess.run([*cmd, *args], cwd=self.tmp, env=self.env, capture_output=True, text=True,
                              timeout=120)

    def plan(self, now: str, *cases: str) -> list[dict[str, object]]:
        args = ["plan", "--format", "jsonl"]
        for c in cases:
            args += ["--case", c]
        result = self(*args, now=now)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def only(decisions: list[dict[str, object]], channel: str | None) -> dict[str, object]:
    found = [d for d in decisions if d["channel"] == channel]
    assert len(found) == 1, decisions
    return found[0]


def test_worked_examples_of_the_spec(cli: Cli) -> None:
    rows = [
        case_row("dpd30", "2026-11-07"),
        case_row("labour", "2026-04-02"),
        case_row("paid", "2026-11-07", status="paid"),
        case_row("us-la", "2026-02-01", jurisdiction="us", phone="+13105550123", email="", sms_consent="true",
                 principal="500.00", interest="0", penalty="0", amount_due="500.00", penalty_rate_daily=""),
        case_row("calls", "2026-09-30"),  # DPD 70 on 2026-12-09
    ]
    result = cli("import", str(write_cases(cli.tmp / "cases.csv", rows)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "imported 5, updated 0, rejected 0"

    d = only(cli.plan("2026-12-07T10:00:00+08:00", "dpd30"), "sms")
    assert (d["stage"], d["action"], d["reason"]) == ("dpd30", "send", "due")
    assert str(d["template"]).startswith("sms/dpd30/")
    assert d["not_before"] is None

    d = only(cli.plan("2026-12-07T08:59:00+08:00", "dpd30"), "sms")
    assert (d["action"], d["reason"], d["not_before"]) == ("defer", "outside_hours", "2026-12-07T09:00:00+08:00")

    d = only(cli.plan("2026-05-02T10:00:00+08:00", "labour"), "email")
    assert (d["action"], d["reason"], d["not_before"]) == ("defer", "non_working_day", "2026-05-06T09:00:00+08:00")

    d = only(cli.plan("2026-05-09T10:00:00+08:00", "labour"), "email")
    assert (d["action"], d["reason"]) == ("send", "due")

    d = only(cli.plan("2026-06-19T20:00:00+08:00", "labour"), "sms")
    assert (d["action"], d["reason"], d["not_before"]) == ("defer", "non_working_day", "2026-06-22T09:00:00+08:00")

    d = only(cli.plan("2026-03-08T07:59:00-07:00", "us-la"), "sms")
    assert (d["action"], d["reason"], d["not_before"]) == ("defer", "outside_hours", "2026-03-08T08:00:00-07:00")

    for decision in cli.plan("2026-12-07T10:00:00+08:00", "paid"):
        assert (decision["action"], decision["reason"]) == ("skip", "case_closed")
        assert decision["template"] is None and decision["not_before"] is None

    # 3 days of calls (Mon 7, Tue 8, Wed 9 Dec), one tick a day through the file transport.
    for day in ("07", "08", "09"):
        tick = cli("tick", now=f"2026-12-{day}T10:00:00+08:00")
        assert tick.returncode == 0, tick.stderr
    d = only(cli.plan("2026-12-10T10:00:00+08:00", "calls"), "voice")
    assert (d["action"], d["reason"], d["not_before"]) == ("defer", "rest_period", "2026-12-14T09:00:00+08:00")


def test_plan_fields_and_not_overdue_line(cli: Cli) -> None:
    write_cases(cli.tmp / "c.csv", [case_row("future", "2026-12-31")])
    assert cli("import", str(cli.tmp / "c.csv")).returncode == 0
    [d] = cli.plan("2026-12-07T10:00:00+08:00")
    assert set(d) == {"case_id", "stage", "channel", "action", "reason", "template", "not_before", "detail"}
    assert (d["stage"], d["channel"], d["action"], d["reason"]) == (None, None, "skip", "not_overdue")
    assert d["detail"]


def test_plan_writes_nothing(cli: Cli) -> None:
    write_cases(cli.tmp / "c.csv", [case_row("a", "2026-11-07"), case_row("b", "2026-09-01")])
    assert cli("import", str(cli.tmp / "c.csv")).returncode == 0

    def counts() -> dict[str, int]:
        with sqlite3.connect(cli.db) as conn:
            return {t: conn.execute(f"select count(*) from {t}").fetchone()[0]
                    for t in ("cases", "contact_points", "messages", "events", "holds", "escalations")}

    before = counts()
    assert cli("plan", now="2026-12-07T10:00:00+08:00").returncode == 0
    assert cli("plan", "--format", "table", now="2026-12-07T10:00:00+08:00").returncode == 0
    assert counts() == before


def test_import_partial_rejects_and_exit_statuses(cli: Cli) -> None:
    good = case_row("ok1", "2026-11-07")
    bad_sum = case_row("bad1", "2026-11-07", amount_due="1.00")
    bad_id = case_row("bad id!", "2026-11-07")
    path = write_cases(cli.tmp / "c.csv", [good, bad_sum, bad_id])
    result = cli("import", str(path), "--rejects", str(cli.tmp / "rejects.csv"))
    assert result.returncode == 3
    assert result.stdout.strip().splitlines()[-1] == "imported 1, updated 0, rejected 2"
    assert "line 3: amount_due:" in result.stderr
    assert "line 4: case_id:" in result.stderr
    with (cli.tmp / "rejects.csv").open(encoding="utf-8") as fh:
        rejected = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rejected] == ["bad1", "bad id!"]
    assert all(r["error"] for r in rejected)

    again = cli("import", str(write_cases(cli.tmp / "d.csv", [good])))
    assert again.returncode == 0
    assert again.stdout.strip().splitlines()[-1] == "imported 0, updated 1, rejected 0"

    assert cli("import", str(cli.tmp / "missing.csv")).returncode == 2
    (cli.tmp / "cases.txt").write_text("x")
    assert cli("import", str(cli.tmp / "cases.txt")).returncode == 2


def test_tick_sends_through_file_transport_once(cli: Cli) -> None:
    write_cases(cli.tmp / "c.csv", [case_row("a", "2026-11-07")])
    assert cli("import", str(cli.tmp / "c.csv")).returncode == 0
    first = cli("tick", now="2026-12-07T10:00:00+08:00")
    assert first.returncode == 0, first.stderr
    spooled = sorted((cli.tmp / "spool").rglob("*.json"))
    assert len(spooled) == 2  # sms + email of stage dpd30
    bodies = [json.loads(p.read_text(encoding="utf-8")) for p in spooled]
    assert {b["channel"] for b in bodies} == {"sms", "email"}
    assert all("10,325.00" in b["body"] for b in bodies)
    second = cli("tick", now="2026-12-07T15:00:00+08:00")
    assert second.returncode == 0
    assert len(sorted((cli.tmp / "spool").rglob("*.json"))) == 2
    for d in cli.plan("2026-12-08T10:00:00+08:00", "a"):
        assert (d["action"], d["reason"]) == ("skip", "not_due")


def test_one_off_send_gate_and_exit_codes(cli: Cli) -> None:
    write_cases(cli.tmp / "c.csv", [case_row("a", "2026-11-07"), case_row("p", "2026-11-07", status="paid")])
    assert cli("import", str(cli.tmp / "c.csv")).returncode == 0
    refused = cli("send", "p", "--channel", "sms", "--by", "agent7", now="2026-12-07T10:00:00+08:00")
    assert refused.returncode == 4
    assert "case_closed" in refused.stdout
    deferred = cli("send", "a", "--channel", "sms", "--by", "agent7", now="2026-12-07T08:00:00+08:00")
    assert deferred.returncode == 0, deferred.stderr
    assert "2026-12-07T09:00:00+08:00" in deferred.stdout
    sent = cli("send", "a", "--channel", "email", "--by", "agent7", now="2026-12-07T10:00:00+08:00")
    assert sent.returncode == 0, sent.stderr
    assert "sent message" in sent.stdout
    shown = cli("case", "show", "a", "--format", "json")
    timeline = json.loads(shown.stdout)
    assert timeline["case_id"] == "a"
    statuses = {m["channel"]: m["status"] for m in timeline["messages"]}
    assert statuses == {"sms": "queued", "email": "sent"}
    assert all({"id", "channel", "template", "status", "provider_id", "body"} <= set(m) for m in timeline["messages"])
    assert all({"at", "kind"} <= set(e) for e in timeline["events"])
    bad = cli("send", "a", "--channel", "fax", "--by", "x")
    assert bad.returncode == 2


def test_holds_and_payment(cli: Cli) -> None:
    write_cases(cli.tmp / "c.csv", [case_row("a", "2026-11-07")])
    assert cli("import", str(cli.tmp / "c.csv")).returncode == 0
    held = cli("case", "hold", "a", "--reason", "collector_hold", "--until", "2026-12-20")
    assert held.returncode == 0, held.stderr
    for d in cli.plan("2026-12-07T10:00:00+08:00", "a"):
        assert (d["action"], d["reason"]) == ("skip", "collector_hold")
    assert cli("case", "hold", "a", "--reason", "because").returncode == 2
    assert cli("case", "release", "a").returncode == 0
    assert only(cli.plan("2026-12-07T10:00:00+08:00", "a"), "sms")["action"] == "send"

    assert cli("send", "a", "--channel", "sms", "--by", "x", now="2026-12-07T08:00:00+08:00").returncode == 0
    paid = cli("payment", "a", "10325.00", now="2026-12-07T08:30:00+08:00")
    assert paid.returncode == 0, paid.stderr
    timeline = json.loads(cli("case", "show", "a", "--format", "json").stdout)
    assert timeline["status"] == "paid"
    assert [m["status"] for m in timeline["messages"]] == ["cancelled"]
    assert cli("payment", "a", "abc").returncode == 2


def test_profile_rules_through_import_plan_and_send(cli: Cli) -> None:
    """SPEC 12 through the CLI: Washington opens at 07:30, cn-bank closes at 22:00, NYC
    refuses SMS without recorded consent, and a one-off counts for Massachusetts'
    shared cap on calls and texts."""
    us = {"phone": "", "email": "pat@example.com", "principal": "500.00", "interest": "0", "penalty": "0",
          "amount_due": "500.00", "penalty_rate_daily": ""}
    rows = [
        case_row("wa", "2026-11-09", jurisdiction="us-wa", sms_consent="true", **{**us, "phone": "+12065550100"}),
        case_row("bank", "2026-11-07", jurisdiction="cn-bank"),
        case_row("nyc", "2026-11-09", jurisdiction="us-nyc", **{**us, "phone": "+12125550100"}),
        case_row("ma", "2026-09-30", jurisdiction="us-ma", sms_consent="true", voice_consent="true",
                 **{**us, "phone": "+16175550100"}),
    ]
    result = cli("import", str(write_cases(cli.tmp / "cases.csv", rows)))
    assert result.returncode == 0, result.stderr
    early = only(cli.plan("2026-12-09T07:29:00-08:00", "wa"), "sms")
    assert (early["action"], early["reason"], early["not_before"]) == ("defer", "outside_hours",
                                                                       "2026-12-09T07:30:00-08:00")
    assert "(us-wa: Washington RCW 19.16.250)" in str(early["detail"])
    assert only(cli.plan("2026-12-09T07:30:00-08:00", "wa"), "sms")["action"] == "send"
    late = only(cli.plan("2026-12-06T22:00:00+08:00", "bank"), "sms")  # a Sunday: every day counts
    assert (late["action"], late["reason"], late["not_before"]) == ("defer", "outside_hours",
                                                                    "2026-12-07T08:00:00+08:00")
    assert only(cli.plan("2026-12-06T21:59:00+08:00", "bank"), "sms")["action"] == "send"
    nyc = only(cli.plan("2026-12-09T10:00:00-05:00", "nyc"), "sms")
    assert (nyc["action"], nyc["reason"]) == ("skip", "no_consent")
    refused = cli("send", "nyc", "--channel", "email", "--by", "agent-7", now="2026-12-09T10:00:00-05:00")
    assert refused.returncode == 4 and "no_consent" in refused.stdout + refused.stderr
    # Massachusetts: two one-off SMS fill the calls-and-texts cap; the planned call waits
    for day in ("2026-12-07T10:00:00-05:00", "2026-12-08T10:00:00-05:00"):
        sent = cli("send", "ma", "--channel", "sms", "--by", "agent-7", now=day)
        assert sent.returncode == 0, sent.stderr
    call = only(cli.plan("2026-12-09T10:00:00-05:00", "ma"), "voice")
    assert (call["action"], call["reason"]) == ("defer", "frequency_cap")
    assert "shared cap calls_and_texts (sms+voice)" in str(call["detail"])
    assert call["not_before"] == "2026-12-14T08:00:00-05:00"
