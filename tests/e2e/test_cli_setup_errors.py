"""A collaborator the command needs cannot be built: one line that says what to fix,
exit 2 for the operator's input (configuration file, --now), 1 for the environment
(database, secrets), never a traceback (SPEC section 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def dispatcher(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_"))}
    base |= {"DISPATCHER_CONFIG": str(ROOT / "config/dispatcher.toml"),
             "DISPATCHER_DB_URL": f"sqlite:///{tmp / 'd.db'}", "DISPATCHER_SIGNING_KEY": "k",
             "DISPATCHER_TRANSPORT": "file", "DISPATCHER_SPOOL_DIR": str(tmp / "spool"), **env}
    return subprocess.run([sys.executable, "-m", "dispatcher.cli", *args], cwd=tmp, env=base, capture_output=True,
                          text=True, timeout=120)


def test_a_broken_configuration_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[jurisdictions.cn]\nhours = 9\n", encoding="utf-8")
    result = dispatcher(tmp_path, "--config", str(bad), "plan")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {bad}: invalid configuration")
    assert "Traceback" not in result.stderr


def test_an_unreadable_now_exits_2(tmp_path: Path) -> None:
    result = dispatcher(tmp_path, "--now", "yesterday", "plan")
    assert result.returncode == 2 and result.stderr.startswith("error: --now:")


def test_an_unreachable_database_exits_1_without_its_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://collector:s3cret@127.0.0.1:1/none?connect_timeout=2"
    result = dispatcher(tmp_path, "--db", url, "case", "show", "C1")
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot open the database") and "Check --db" in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_real_providers_without_a_signing_key_exit_1(tmp_path: Path) -> None:
    providers = {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t",
                 "DISPATCHER_SMTP_URL": "smtp://127.0.0.1:9"}
    result = dispatcher(tmp_path, "tick", DISPATCHER_SIGNING_KEY="", DISPATCHER_TRANSPORT="", **providers)
    assert result.returncode == 1
    assert result.stderr.startswith("error: DISPATCHER_SIGNING_KEY is not set")
