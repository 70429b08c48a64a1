"""The operator's first day (issue 16): each trap a new operator fell into, tried through
the real `dispatcher` command the way they typed it. Each test failed on the code before."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "dispatcher.toml"
NOW = "2026-12-07T10:00:00+08:00"
HEADER = ["case_id", "name", "jurisdiction", "phone", "email", "principal", "interest", "penalty", "fees",
          "amount_due", "penalty_rate_daily", "due_date"]
ROW = ["N-001", "王小明", "cn", "+8613812345678", "wang@example.com", "10000.00", "100.00", "225.00", "0",
       "10325.00", "0.0005", "2026-11-07"]


def run(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_"))}
    base |= {"DISPATCHER_CONFIG": str(SHIPPED), "DISPATCHER_DB_URL": f"sqlite:///{tmp / 'd.db'}",
             "DISPATCHER_SIGNING_KEY": "k", "DISPATCHER_TRANSPORT": "file",
             "DISPATCHER_SPOOL_DIR": str(tmp / "spool"), **env}
    return subprocess.run([sys.executable, "-m", "dispatcher.cli", *args], cwd=tmp, env=base, capture_output=True,
                          text=True, timeout=120)


def import_case(tmp: Path, encoding: str = "utf-8", *extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "cases.csv"
    with path.open("w", newline="", encoding=encoding) as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerow(ROW)
    return run(tmp, "import", str(path), *extra)


# ------------------------------------------------------------------ global options


def test_the_readme_example_with_global_options_after_the_command(tmp_path: Path) -> None:
    assert import_case(tmp_path).returncode == 0
    result = run(tmp_path, "plan", "--format", "jsonl", "--case", "N-001", "--now", NOW)
    assert result.returncode == 0, result.stderr
    sms = next(json.loads(line) for line in result.stdout.splitlines() if '"sms"' in line)
    assert (sms["stage"], sms["action"], sms["reason"]) == ("dpd30", "send", "due")
    # the = form, and --db / --config after the command too
    other = tmp_path / "other"
    other.mkdir()
    result = run(tmp_path, "plan", f"--now={NOW}", "--config", str(SHIPPED), "--db",
                 f"sqlite:///{tmp_path / 'd.db'}", "--case", "N-001", "--format", "table")
    assert result.returncode == 0, result.stderr
    assert "N-001" in result.stdout


def test_the_now_suggestion_is_itself_accepted(tmp_path: Path) -> None:
    result = run(tmp_path, "--now", "2026-12-07", "plan")
    assert result.returncode == 2 and result.stderr.startswith("error: --now:")
    suggested = re.findall(r"e\.g\. (\S+) or (\S+)", result.stderr)
    assert suggested, result.stderr
    for instant in suggested[0]:
        assert run(tmp_path, "--now", instant, "plan").returncode == 0, instant


def test_an_unreadable_dispatcher_now_is_named_as_such(tmp_path: Path) -> None:
    result = run(tmp_path, "plan", DISPATCHER_NOW="tomorrow")
    assert result.returncode == 2
    assert result.stderr.startswith("error: DISPATCHER_NOW"), result.stderr
    assert "--now" not in result.stderr.split(":")[1]


# ------------------------------------------------------------------ configuration


def patched_config(tmp: Path, old: str, new: str) -> Path:
    text = SHIPPED.read_text(encoding="utf-8")
    patched = re.sub(old, new, text, count=1)
    assert patched != text
    path = tmp / "config" / "dispatcher.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(patched, encoding="utf-8")
    shutil.copy(ROOT / "config" / "forbidden_phrases.txt", path.parent)
    if not (tmp / "templates").exists():
        shutil.copytree(ROOT / "templates", tmp / "templates")
    return path


def test_an_unknown_calendar_is_a_clear_error(tmp_path: Path) -> None:
    config = patched_config(tmp_path, 'calendar = "CN"', 'calendar = "ZZ"')
    result = run(tmp_path, "--config", str(config), "--now", NOW, "plan")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "jurisdictions.cn.calendar" in result.stderr and "'ZZ' is not a country code" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # the file, the key and what to do


@pytest.mark.parametrize(("old", "new", "key"), [
    (r"sms_max_segments = \d+", 'sms_max_segments = "3"', "templates.sms_max_segments"),
    ("per_day = 1", 'per_day = "1"', "jurisdictions.cn.caps.voice.per_day"),
    ("sms = true", 'sms = "true"', "jurisdictions.cn.consent_default.sms"),
])
def test_a_quoted_number_or_boolean_is_refused_naming_its_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    config = patched_config(tmp_path, old, new)
    result = run(tmp_path, "--config", str(config), "--now", NOW, "plan")
    assert result.returncode == 2, result.stdout
    assert key in result.stderr and "without quotes" in result.stderr, result.stderr


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path: Path) -> None:
    # the README's systemd layout: /etc/dispatcher/dispatcher.toml next to its templates
    etc = tmp_path / "etc" / "dispatcher"
    shutil.copytree(ROOT / "templates", etc / "templates")
    shutil.copy(ROOT / "config" / "forbidden_phrases.txt", etc)
    text = SHIPPED.read_text(encoding="utf-8").replace('directory = "../templates"', 'directory = "templates"')
    (etc / "dispatcher.toml").write_text(text, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    assert import_case(work).returncode == 0
    result = run(work, "--config", str(etc / "dispatcher.toml"), "--now", NOW, "plan", "--case", "N-001")
    assert result.returncode == 0, result.stderr
    assert '"reason": "due"' in result.stdout and "no_approved_template" not in result.stdout
    lint = run(work, "--config", str(etc / "dispatcher.toml"), "templates", "lint")
    assert lint.returncode == 0 and "all templates pass" in lint.stdout


def test_missing_templates_refuse_to_start(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(SHIPPED, etc / "dispatcher.toml")  # "../templates" from /tmp/x/etc: not there
    for command in (["plan"], ["tick"], ["run", "--port", "0"]):
        result = run(tmp_path, "--config", str(etc / "dispatcher.toml"), "--now", NOW, *command)
        assert result.returncode == 2, (command, result.stderr)
        assert "templates folder" in result.stderr and "does not exist" in result.stderr
        assert "Traceback" not in result.stderr
    daemon = run(tmp_path, "--config", str(etc / "dispatcher.toml"), "run", "--port", "0")
    line = json.loads(daemon.stderr.strip().splitlines()[-1])  # the daemon's stderr is JSON lines
    assert line["level"] == "error" and "templates folder" in line["msg"]


# ------------------------------------------------------------------ sandbox


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_sandbox_takes_the_twilio_credentials_from_the_environment(tmp_path: Path) -> None:
    sid, token = "AC" + "7" * 32, "one-token-for-both-processes"
    port, smtp = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_"))}
    env |= {"TWILIO_ACCOUNT_SID": sid, "TWILIO_AUTH_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-m", "dispatcher.cli", "sandbox", "--twilio-port", str(port),
                             "--smtp-port", str(smtp)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/2010-04-01/Accounts/{sid}/Messages.json",
                                   auth=(sid, token), timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "the sandbox did not start"
                time.sleep(0.2)
        assert answer.status_code == 200, answer.text
        wrong = httpx.get(f"http://127.0.0.1:{port}/2010-04-01/Accounts/{sid}/Messages.json",
                          auth=(sid, "sandbox-auth-token-0123456789abc"), timeout=2)
        assert wrong.status_code == 401
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert f"TWILIO_ACCOUNT_SID={sid}" in stderr and "/sandbox/inbound" in stderr


def test_the_sandbox_inbound_endpoint_is_documented() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "POST /sandbox/inbound" in readme and "TWILIO_AUTH_TOKEN" in readme


# ------------------------------------------------------------------ case show, templates


def test_case_show_prints_the_whole_text_and_a_header(tmp_path: Path) -> None:
    assert import_case(tmp_path).returncode == 0
    assert run(tmp_path, "--now", NOW, "tick").returncode == 0
    assert run(tmp_path, "payment", "N-001", "325.00").returncode == 0
    shown = run(tmp_path, "--now", NOW, "case", "show", "N-001", "--format", "json")
    bodies = [m["body"] for m in json.loads(shown.stdout)["messages"] if m["body"]]
    assert bodies and max(len(b) for b in bodies) > 80
    table = run(tmp_path, "--now", NOW, "case", "show", "N-001", COLUMNS="60")
    assert table.returncode == 0, table.stderr
    for body in bodies:
        for line in body.splitlines():
            assert line in table.stdout, line
    header = table.stdout.splitlines()[0]
    assert "王**" in header and "王小明" not in header
    assert "outstanding 10000.00 CNY" in header and "stage dpd30" in header


@pytest.mark.parametrize("command", [["templates", "approve", "sms/dpd30/v99", "--by", "li"],
                                     ["templates", "preview", "sms/dpd30/v99"]])
def test_an_unknown_template_id_exits_2_everywhere(tmp_path: Path, command: list[str]) -> None:
    result = run(tmp_path, *command)
    assert result.returncode == 2, result.stderr
    assert "no template sms/dpd30/v99" in result.stderr


# ------------------------------------------------------------------ import


@pytest.mark.parametrize("extra", [[], ["--encoding", "gbk"]])
def test_a_gbk_csv_imports_its_chinese_names(tmp_path: Path, extra: list[str]) -> None:
    result = import_case(tmp_path, "gbk", *extra)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "imported 1, updated 0, rejected 0"
    import sqlite3

    with sqlite3.connect(tmp_path / "d.db") as db:
        assert db.execute("select name from cases where case_id = 'N-001'").fetchone() == ("王小明",)


def test_an_unknown_encoding_is_a_usage_error(tmp_path: Path) -> None:
    result = import_case(tmp_path, "utf-8", "--encoding", "klingon")
    assert result.returncode == 2 and "--encoding 'klingon': unknown encoding" in result.stderr


def test_a_port_in_use_is_one_json_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(tmp_path, "run", "--port", str(port))
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # JSON lines only, no bare traceback
    assert lines[-1]["level"] == "error" and f"cannot listen on 127.0.0.1:{port}" in lines[-1]["msg"]
