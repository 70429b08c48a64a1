"""`dispatcher templates …` through the real command (SPEC 15): a new database has the
shipped set approved; export gives the same bytes back; an edit imported from files is
a draft, diffed against the approved version; four eyes refuses with exit 4 and the
reason code; a checker's approval is what the next send uses, pinned on the message."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "dispatcher.toml"
NOW = "2026-12-07T10:00:00+08:00"
SMS = "sms/dpd30/v1"


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_"))}
    env |= {"DISPATCHER_CONFIG": str(SHIPPED), "DISPATCHER_DB_URL": f"sqlite:///{tmp / 'd.db'}",
            "DISPATCHER_SIGNING_KEY": "k", "DISPATCHER_TRANSPORT": "file", "DISPATCHER_SPOOL_DIR": str(tmp / "spool"),
            "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "dispatcher.cli", *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=120)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def approved_version(tmp: Path, locale: str) -> tuple[int, str]:
    with sqlite3.connect(tmp / "d.db") as db:
        return db.execute("select version, approved_by from template_versions where template_id = ? and locale = ?"
                          " and state = 'approved'", (SMS, locale)).fetchone()


def test_export_of_a_new_database_is_the_shipped_folder_byte_for_byte(tmp_path: Path) -> None:
    assert "exported" in ok(run(tmp_path, "templates", "export", "out"))
    shipped = sorted(p.relative_to(ROOT / "templates") for p in (ROOT / "templates").rglob("*.j2"))
    exported = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.j2"))
    assert exported == shipped
    for rel in [*shipped, Path("approvals.toml")]:
        assert (tmp_path / "out" / rel).read_bytes() == (ROOT / "templates" / rel).read_bytes(), rel


def test_draft_review_and_approval_from_the_command_line(tmp_path: Path) -> None:
    for name, role in (("alice", "author"), ("bob", "author"), ("carol", "compliance"), ("eve", "collector")):
        ok(run(tmp_path, "users", "add", name, "--role", role))
    ok(run(tmp_path, "templates", "export", "tree"))
    zh = tmp_path / "tree" / f"{SMS}.zh-CN.j2"
    zh.write_text(zh.read_text(encoding="utf-8").rstrip("\n") + "谢谢。\n", encoding="utf-8")
    en = tmp_path / "tree" / f"{SMS}.en-US.j2"
    en.write_text(en.read_text(encoding="utf-8").rstrip("\n") + " Or the police will call.\n", encoding="utf-8")
    imported = ok(run(tmp_path, "templates", "import", "tree", "--by", "alice"))
    assert f"draft {SMS}.zh-CN.j2 version" in imported and f"draft {SMS}.en-US.j2 version" in imported
    assert "forbidden phrase 'police'" in imported and "0 approved, 2 draft(s)" in imported

    diff = ok(run(tmp_path, "templates", "diff", SMS, "--locale", "zh-CN"))
    assert diff.startswith(f"--- {SMS}.zh-CN.j2 (approved v") and "谢谢。" in diff.split("+++", 1)[1]

    for by, reason in (("alice", "same_author"), ("bob", "not_compliance"), ("eve", "not_compliance"),
                       ("mallory", "unknown_user")):
        refused = run(tmp_path, "templates", "approve", SMS, "--locale", "zh-CN", "--by", by)
        assert refused.returncode == 4, (by, refused.stdout, refused.stderr)
        assert refused.stdout.strip() == f"refused: {reason}" and "Traceback" not in refused.stderr
    lint = run(tmp_path, "templates", "approve", SMS, "--locale", "en-US", "--by", "carol")
    assert lint.returncode == 4 and lint.stdout.strip() == "refused: lint_failed"
    assert "forbidden phrase 'police'" in lint.stderr
    both = run(tmp_path, "templates", "approve", SMS, "--by", "carol")  # two locales have drafts: say which
    assert both.returncode == 2 and "--locale" in both.stderr

    before_en = approved_version(tmp_path, "en-US")
    approved = ok(run(tmp_path, "templates", "approve", SMS, "--locale", "zh-CN", "--by", "carol", "--note", "ok"))
    assert f"approved {SMS}.zh-CN.j2 version" in approved and "by carol" in approved
    version, by = approved_version(tmp_path, "zh-CN")
    assert by == "carol" and approved_version(tmp_path, "en-US") == before_en  # the other locale untouched
    ok(run(tmp_path, "templates", "reject", SMS, "--locale", "en-US", "--by", "carol", "--note", "no threats"))
    history = ok(run(tmp_path, "templates", "history", SMS))
    assert "rejected" in history and "retired" in history and "no threats" in history
    assert "nothing" not in ok(run(tmp_path, "templates", "diff", SMS)) and \
        "no draft awaits approval" in ok(run(tmp_path, "templates", "diff", SMS))

    # the next send uses the approved text, and the message names its version
    cases = tmp_path / "cases.csv"
    with cases.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "name", "jurisdiction", "phone", "email", "principal", "interest", "penalty",
                         "fees", "amount_due", "penalty_rate_daily", "due_date"])
        writer.writerow(["N-001", "王小明", "cn", "+8613812345678", "wang@example.com", "10000.00", "100.00",
                         "225.00", "0", "10325.00", "0.0005", "2026-11-07"])
    ok(run(tmp_path, "import", str(cases)))
    ok(run(tmp_path, "--now", NOW, "send", "N-001", "--channel", "sms", "--template", SMS, "--by", "eve"))
    shown = json.loads(ok(run(tmp_path, "--now", NOW, "case", "show", "N-001", "--format", "json")))
    (message,) = [m for m in shown["messages"] if m["template"] == SMS]
    assert message["body"].endswith("谢谢。") and message["template_version"] == version
    table = ok(run(tmp_path, "--now", NOW, "case", "show", "N-001"))
    assert f"{SMS} v{version} " in table

    # rollback: the earlier version approved again
    (previous,) = [line.split("│")[1].strip() for line in history.splitlines()
                   if "│" in line and "retired" in line and "zh-CN" in line]
    ok(run(tmp_path, "templates", "approve", SMS, "--locale", "zh-CN", "--version", previous, "--by", "carol"))
    assert approved_version(tmp_path, "zh-CN") == (int(previous), "carol")


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    for args in (["templates", "approve", "sms/dpd30/v99", "--by", "li"], ["templates", "history", "sms/dpd30/v99"],
                 ["templates", "diff", "nope"], ["templates", "import", "missing", "--by", "li"],
                 ["templates", "approve", SMS, "--locale", "fr-FR", "--by", "li"]):
        result = run(tmp_path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.startswith("error:"), result.stderr
    assert run(tmp_path, "templates", "import", "--by", " ").returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(ROOT / "templates" / "approvals.toml", empty)
    assert "0 approved, 0 draft(s)" in ok(run(tmp_path, "templates", "import", str(empty), "--by", "li"))
