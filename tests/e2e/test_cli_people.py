"""`dispatcher users …` and `dispatcher tokens …` through the real command (SPEC 14):
output, exit statuses (0 ok, 2 bad input, 1 other failure), and what they leave in the
store: argon2id hashes, hashed tokens that work until revoked or expired, events."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.clock import FakeClock, parse_instant
from dispatcher.credentials import token_digest
from dispatcher.services.people import People
from dispatcher.store.db import make_engine

ROOT = Path(__file__).resolve().parents[2]
NOW = "2026-12-07T10:00:00+08:00"


class Cli:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = tmp / "people.db"
        self.env = {**os.environ, "DISPATCHER_CONFIG": str(ROOT / "config/dispatcher.toml"),
                    "DISPATCHER_DB_URL": f"sqlite:///{self.db}", "DISPATCHER_NOW": NOW}

    def __call__(self, *args: str, stdin: str = "", now: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "dispatcher.cli", *(["--now", now] if now else []), *args]
        return subprocess.run(cmd, cwd=self.tmp, env=self.env, input=stdin, capture_output=True, text=True,
                              timeout=120)

    def people(self, now: str = NOW) -> People:
        return People(make_engine(f"sqlite:///{self.db}"), FakeClock(parse_instant(now)))


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def test_users_are_added_listed_given_passwords_and_disabled(cli: Cli) -> None:
    r = cli("users", "add", "王小明", "--role", "collector", "--role", "compliance")
    assert r.returncode == 0, r.stderr
    assert "added user 王小明 (collector, compliance)" in r.stdout
    r = cli("users", "password", "王小明", stdin="a long enough passphrase\n")
    assert r.returncode == 0 and "password set for 王小明" in r.stdout
    r = cli("users", "list")
    assert r.returncode == 0 and "王小明" in r.stdout and "active" in r.stdout and "collector, compliance" in r.stdout
    with sqlite3.connect(cli.db) as db:
        (stored,) = db.execute("select password_hash from users where name = '王小明'").fetchone()
        assert stored.startswith("$argon2id$") and "passphrase" not in stored
        # (a new database also imports the shipped templates: `template_imported` by `import`)
        people_events = "case_id is null and kind not like 'template%'"
        kinds = [k for (k,) in db.execute(f"select kind from events where {people_events} order by id")]
        actors = {a for (a,) in db.execute(f"select actor from events where {people_events}")}
    assert kinds == ["user_added", "password_set"]
    assert all(a.startswith("cli") for a in actors)
    assert cli.people().sign_in("王小明", "a long enough passphrase", "test").principal is not None

    r = cli("users", "disable", "王小明")
    assert r.returncode == 0 and "disabled user 王小明" in r.stdout
    assert "disabled" in cli("users", "list").stdout
    assert cli.people().sign_in("王小明", "a long enough passphrase", "test").principal is None


@pytest.mark.parametrize("args, stdin, message", [
    (["users", "add", "x", "--role", "boss"], "", "unknown role 'boss'"),
    (["users", "add", "x"], "", "--role"),
    (["users", "add", "bad<name>", "--role", "ops"], "", "may not contain '<'"),
    (["users", "add", "bootstrap", "--role", "admin"], "", "reserved"),
    (["users", "password", "nobody"], "a long enough passphrase\n", "no user 'nobody'"),
    (["users", "disable", "nobody"], "", "no user 'nobody'"),
    (["tokens", "create", "nobody"], "", "no user 'nobody'"),
    (["tokens", "revoke", "99"], "", "no token 99"),
    (["tokens", "revoke", "abc"], "", "tokens revoke [OPTIONS] {ID}"),
])
def test_bad_input_exits_2_and_says_what_to_do(cli: Cli, args: list[str], stdin: str, message: str) -> None:
    r = cli(*args, stdin=stdin)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr


def test_a_taken_name_a_short_password_and_bad_days_exit_2(cli: Cli) -> None:
    assert cli("users", "add", "Alice", "--role", "ops").returncode == 0
    r = cli("users", "add", "alice", "--role", "ops")
    assert r.returncode == 2 and "exists already" in r.stderr
    r = cli("users", "password", "alice", stdin="short\n")
    assert r.returncode == 2 and "at least 10 characters" in r.stderr
    r = cli("tokens", "create", "alice", "--days", "0")
    assert r.returncode == 2 and "1 to 3650 days" in r.stderr


def test_an_unreachable_database_exits_1(cli: Cli) -> None:
    r = cli("--db", "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1", "users", "list")
    assert r.returncode == 1 and "cannot open the database" in r.stderr


def test_tokens_are_shown_once_stored_hashed_and_expire_or_are_revoked(cli: Cli) -> None:
    assert cli("users", "add", "agent7", "--role", "collector").returncode == 0
    r = cli("tokens", "create", "agent7", "--days", "7")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("dsp_") and len(token) > 40 and "\n" not in token  # alone on stdout
    assert "token 1 for agent7, expires 2026-12-14T02:00:00+00:00" in r.stderr
    with sqlite3.connect(cli.db) as db:
        (digest,) = db.execute("select digest from api_tokens where id = 1").fetchone()
        dump = "\n".join(db.iterdump())
    assert digest == token_digest(token) and token not in dump
    assert token not in cli("tokens", "list").stdout

    principal = cli.people().principal_for_token(token)
    assert principal is not None and principal.name == "agent7"
    later = "2026-12-14T10:00:01+08:00"
    assert cli.people(later).principal_for_token(token) is None  # expired
    assert "expired" in cli("tokens", "list", now=later).stdout

    second = cli("tokens", "create", "agent7").stdout.strip()
    assert cli.people().principal_for_token(second) is not None
    r = cli("tokens", "revoke", "2")
    assert r.returncode == 0 and "revoked token 2 of agent7" in r.stdout
    assert cli.people().principal_for_token(second) is None
    listing = cli("tokens", "list").stdout
    assert "revoked" in listing and "active" in listing  # token 1 is still active at NOW

    assert cli("users", "disable", "agent7").returncode == 0
    assert cli.people().principal_for_token(token) is None  # a disabled user's tokens stop at once
    r = cli("tokens", "create", "agent7")
    assert r.returncode == 2 and "disabled" in r.stderr
