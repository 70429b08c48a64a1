"""Chaos bench (issue 10): the outbox keeps its promise under crashes, deploys, clock skew,
provider outages and database loss.

    .venv/bin/python bench/chaos.py [--quick] [--cases N] [--scenario NAME ...] [--seed N]

Each scenario runs on its own PostgreSQL database (a uniquely named one on the server of
DISPATCHER_TEST_PG_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/test,
dropped afterwards) with `dispatcher sandbox --records FILE` as a process of its own (a
restarted sandbox still answers reconcile) and `dispatcher run` instances as real
processes. Chinese cases in the early stage (an SMS and an e-mail each) are imported at
Monday 10:00 Shanghai; the daemons' clocks run from there (`--now`, carried on across
restarts), and the sandbox's clock is set to theirs (`--clock-offset-seconds`), give or
take the scenario's skew.

Scenarios: `kill1` / `kill3` (random SIGKILLs with 1 and 3 instances, each restarted),
`sigterm` (SIGTERM in the middle of a batch, then a restart: nothing may be left in
flight by the stopped instance), `skew-5` / `skew+5` (the daemon's clock 5 minutes
behind / ahead of the provider's, with 30 % timeouts and resets), `outage` (the sandbox
stopped, then started again on its records file), `dbkill` (every connection to the
database terminated with `pg_terminate_backend` during start-up and during sending).

Each ends, once the outbox has settled, with the checks of the issue: 0 delivered twice
(per message id at the sandbox: the `m=` of SMS status callbacks and call URLs, our
Message-ID for e-mail), 0 stuck in flight, 0 lost (every planned message sent,
sent_unconfirmed, failed with a reason or cancelled), none outside its window (our
stamp of the send, in the case's zones), no more than one message per case, channel and
local day (cap and cadence). Prints a markdown table (BENCHMARKS.md, `## chaos`).
`tests/e2e/test_chaos.py` runs the same scenarios in a short configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql
from sqlalchemy import make_url

from dispatcher.sandbox.options import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from dispatcher.testing import copy_shipped_config

ROOT = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))  # Monday, CN window open
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SENT = {"sent", "delivered", "read", "undelivered", "ringing", "in-progress", "completed", "busy", "no-answer",
        "sent_unconfirmed"}
SETTLED = SENT | {"failed", "cancelled"}
#: messages per second per channel: sending lasts (cases / RATE) seconds
RATE = 5.0


@dataclass(frozen=True)
class Scenario:
    name: str
    instances: int = 1
    kills: int = 0  # random SIGKILLs (each instance restarted)
    sigterm: bool = False
    skew_seconds: float = 0.0  # the daemon's clock minus the provider's
    faults: str | None = None
    outage_seconds: float = 0.0
    db_kills_startup: int = 0
    db_kills_sending: int = 0
    latency_ms: int = 0  # the sandbox's answer delay (a batch stays in flight long enough to be interrupted)


#: The CI configuration (`tests/e2e/test_chaos.py`): the same disruptions, two worlds instead of seven.
CI_SCENARIOS = (
    Scenario("ci-1-instance", kills=2, skew_seconds=-300, faults="timeout:0.15,reset:0.15", outage_seconds=4,
             db_kills_startup=6),
    Scenario("ci-3-instances", instances=3, kills=2, skew_seconds=300, faults="timeout:0.15,reset:0.15",
             db_kills_sending=3),
    Scenario("ci-sigterm", sigterm=True, latency_ms=1000),
)
CI_CASES = 25


def scenarios(quick: bool) -> list[Scenario]:
    kills = 3 if quick else 20
    return [
        Scenario("kill1", kills=kills),
        Scenario("kill3", instances=3, kills=kills),
        Scenario("sigterm", sigterm=True, latency_ms=1000),
        Scenario("skew-5", skew_seconds=-300, faults="timeout:0.15,reset:0.15"),
        Scenario("skew+5", skew_seconds=300, faults="timeout:0.15,reset:0.15"),
        Scenario("outage", outage_seconds=8 if quick else 300),
        Scenario("dbkill", db_kills_startup=10, db_kills_sending=3 if quick else 10),
    ]


@dataclass
class Result:
    scenario: str
    planned: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    twice: int = 0
    stuck: int = 0
    lost: int = 0
    failed_without_reason: int = 0
    outside_window: int = 0
    over_cap: int = 0
    left_by_sigterm: int = 0
    disruptions: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.twice or self.stuck or self.lost or self.failed_without_reason or self.outside_window
                    or self.over_cap or self.left_by_sigterm) and self.planned > 0


def admin_url() -> str:
    url = os.environ.get("DISPATCHER_TEST_PG_URL") or DEFAULT_PG_URL
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_file(directory: Path) -> Path:
    """The shipped configuration with quick jobs, short timeouts and a quick breaker."""
    def quick(text: str) -> str:
        for key, value in {"plan_every_seconds": "5", "send_every_seconds": "1", "reconcile_every_seconds": "2",
                           "repair_every_seconds": "5", "repair_after_seconds": "5", "batch_size": "20",
                           "concurrency": "8", "provider_timeout_seconds": "2.0", "retry_backoff_seconds": "1.0",
                           "probe_seconds": "2.0", "failures_to_open": "3"}.items():
            text = re.sub(rf"(?m)^{key} = [^\s#]+", f"{key} = {value}", text)
        # a slow trickle, so that every disruption meets messages still to be sent
        rates = f"rate_per_second = {{ sms = {RATE}, voice = {RATE}, email = {RATE} }}"
        return re.sub(r"(?m)^rate_per_second = .*$", rates, text)

    return copy_shipped_config(directory, quick)


class World:
    """One scenario's database, sandbox process and daemon processes."""

    def __init__(self, scenario: Scenario, workdir: Path, cases: int, seed: int) -> None:
        self.scenario, self.workdir, self.cases, self.seed = scenario, workdir, cases, seed
        self.db = f"dispatcher_chaos_{uuid.uuid4().hex[:8]}"
        self.db_url = make_url(admin_url()).set(drivername="postgresql+psycopg", database=self.db).render_as_string(
            hide_password=False)
        self.config = config_file(workdir)
        self.records = workdir / "sandbox-records.jsonl"
        self.twilio_port, self.smtp_port = free_port(), free_port()
        self.ports = [free_port() for _ in range(scenario.instances)]
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.daemons: list[subprocess.Popen[bytes] | None] = [None] * scenario.instances
        self.started = time.monotonic()
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.lives = 0
        self.instance_ids = [""] * scenario.instances

    # -- clocks ----------------------------------------------------------------------
    def daemon_now(self) -> dt.datetime:
        """The daemons' clock: NOW when the world started, running on in real time."""
        return NOW + dt.timedelta(seconds=time.monotonic() - self.started)

    # -- processes ---------------------------------------------------------------------
    def env(self, instance: int = 0) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_"))}
        env.update({
            "DISPATCHER_DB_URL": self.db_url, "DISPATCHER_INSTANCE_ID": self.instance_ids[instance],
            "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID, "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN,
            "DISPATCHER_TWILIO_API_URL": f"http://127.0.0.1:{self.twilio_port}",
            "DISPATCHER_SMTP_URL": f"smtp://127.0.0.1:{self.smtp_port}",
            "DISPATCHER_PUBLIC_URL": f"http://127.0.0.1:{self.ports[0]}",
            "DISPATCHER_SIGNING_KEY": "chaos-bench-signing-key-0123456789",
        })
        return env

    def start_sandbox(self) -> None:
        offset = (self.daemon_now() - dt.datetime.now(dt.UTC)).total_seconds() - self.scenario.skew_seconds
        args = [sys.executable, "-m", "dispatcher.cli", "sandbox", "--twilio-port", str(self.twilio_port),
                "--smtp-port", str(self.smtp_port), "--records", str(self.records),
                "--clock-offset-seconds", f"{offset:.3f}"]
        if self.scenario.faults:
            args += ["--faults", self.scenario.faults]
        if self.scenario.latency_ms:
            args += ["--latency-ms", str(self.scenario.latency_ms)]
        with open(self.logs / "sandbox.log", "ab") as log:
            self.sandbox = subprocess.Popen(args, cwd=self.workdir, stdout=subprocess.PIPE, stderr=log)
        assert self.sandbox.stdout is not None
        for _ in range(2):  # "twilio ..." and "smtp ..." once it listens
            if not self.sandbox.stdout.readline():
                raise RuntimeError(f"the sandbox did not start; see {self.logs / 'sandbox.log'}")

    def stop_sandbox(self) -> None:
        if self.sandbox is not None:
            if self.sandbox.poll() is None:
                self.sandbox.send_signal(signal.SIGTERM)
                try:
                    self.sandbox.wait(20)
                except subprocess.TimeoutExpired:
                    self.sandbox.kill()
                    self.sandbox.wait()
            if self.sandbox.stdout is not None:
                self.sandbox.stdout.close()  # or a ResourceWarning when the Popen is collected
        self.sandbox = None

    def start_daemon(self, instance: int) -> None:
        self.lives += 1
        self.instance_ids[instance] = f"chaos-{instance}-{self.lives}"
        args = [sys.executable, "-m", "dispatcher.cli", "--config", str(self.config), "--now",
                self.daemon_now().isoformat(), "run", "--port", str(self.ports[instance])]
        with open(self.logs / f"daemon-{instance}.log", "ab") as log:
            self.daemons[instance] = subprocess.Popen(args, cwd=self.workdir, env=self.env(instance),
                                                      stdout=subprocess.DEVNULL, stderr=log)

    def signal_daemon(self, instance: int, sig: int, wait: float = 20.0) -> int | None:
        proc = self.daemons[instance]
        if proc is None or proc.poll() is not None:
            return None
        proc.send_signal(sig)
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def healthy(self, instance: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[instance]}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop_all(self) -> None:
        for instance in range(len(self.daemons)):
            self.signal_daemon(instance, signal.SIGKILL, 10)
        self.stop_sandbox()

    def import_cases(self, csv_path: Path) -> None:
        """Schema and cases, in this process (what `dispatcher db upgrade` and `import` do)."""
        from dispatcher.clock import FakeClock
        from dispatcher.config import load_config
        from dispatcher.services.importer import import_file
        from dispatcher.store.db import ensure_schema, make_engine

        engine = make_engine(self.db_url)
        try:
            ensure_schema(engine)
            report = import_file(csv_path, engine, load_config(self.config), FakeClock(self.daemon_now()))
            assert report.rejected == 0, report.errors[:3]
        finally:
            engine.dispose()

    # -- database ----------------------------------------------------------------------
    @contextlib.contextmanager
    def database(self) -> Iterator[None]:
        with psycopg.connect(admin_url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db)))
        try:
            yield
        finally:
            with psycopg.connect(admin_url(), autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db)))

    def kill_connections(self) -> int:
        """Terminate every backend of THIS scenario's database (never another's)."""
        assert self.db.startswith("dispatcher_chaos_")
        with psycopg.connect(admin_url(), autocommit=True, connect_timeout=10) as conn:
            return len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                    " WHERE datname = %s AND pid <> pg_backend_pid()", (self.db,)).fetchall())

    def query(self, statement: str, *params: Any) -> list[Any]:
        url = make_url(admin_url()).set(database=self.db).render_as_string(hide_password=False)
        for attempt in range(10):
            try:
                with psycopg.connect(url, connect_timeout=10) as conn:
                    return conn.execute(statement, params).fetchall()
            except psycopg.OperationalError:
                if attempt == 9:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def counts(self) -> Counter[str]:
        return Counter(dict(self.query("SELECT status, count(*) FROM messages GROUP BY status")))

    def in_play(self) -> int:
        """Messages still queued (due by the daemons' clock) or in flight."""
        now = self.daemon_now()
        return int(self.query("SELECT count(*) FROM messages WHERE status = 'sending' OR (status = 'queued'"
                              " AND scheduled_at <= %s)", now + dt.timedelta(seconds=30))[0][0])

    def sandbox_records(self) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for kind in ("messages", "calls", "emails"):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.twilio_port}/sandbox/{kind}", timeout=30) as r:
                out[kind] = json.loads(r.read())
        return out


def _message_id(record: dict[str, Any]) -> str | None:
    for key in ("status_callback", "url"):
        value = record.get(key)
        if value:
            m = parse_qs(urlsplit(value).query).get("m")
            if m:
                return m[0]
    ref = record.get("message_id")
    found = re.match(r"<dispatcher-(\d+)@", ref or "")
    return found.group(1) if found else None


def wait_until(predicate: Any, within: float, world: World) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error):
            if predicate():
                return True
        time.sleep(0.3)
    return False


def run_scenario(scenario: Scenario, *, cases: int, seed: int, settle_seconds: float = 120.0,
                 workdir: Path | None = None) -> Result:
    """Run one scenario end to end and check the invariants."""
    from dispatcher.services.portfolio import generate_cases, write_csv

    rng = random.Random(seed)
    result = Result(scenario.name)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        base = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        world = World(scenario, base, cases, seed)
        stack.enter_context(world.database())
        stack.callback(world.stop_all)
        csv_path = base / "cases.csv"
        write_csv(csv_path, generate_cases(cases, NOW.date(), seed=seed, dpd_range=(1, 29), cn_share=1.0))
        world.import_cases(csv_path)
        world.start_sandbox()

        def sent_something() -> bool:
            return world.counts().get("sent", 0) + world.counts().get("delivered", 0) > 0

        if scenario.db_kills_startup:  # terminate its connections while it starts (schema, reconcile, plan)
            for instance in range(scenario.instances):
                world.start_daemon(instance)
            for _ in range(scenario.db_kills_startup):
                time.sleep(0.3)
                result.disruptions += bool(world.kill_connections())
        else:
            for instance in range(scenario.instances):
                world.start_daemon(instance)
        # planned once a daemon is up (slow on a loaded machine: up to minutes)
        if not wait_until(lambda: int(world.query("SELECT count(*) FROM messages")[0][0]) > 0, 300, world):
            result.notes.append("nothing was planned within 300 s")
        result.planned = int(world.query("SELECT count(*) FROM messages")[0][0])

        for _ in range(scenario.kills):
            time.sleep(rng.uniform(0.3, 2.0))
            victim = rng.randrange(scenario.instances)
            world.signal_daemon(victim, signal.SIGKILL)
            result.disruptions += 1
            world.start_daemon(victim)
        if scenario.sigterm:  # once it serves (it has begun sending), while a batch is in flight
            wait_until(lambda: world.healthy(0) and world.counts().get("sending", 0) > 0, 60, world)
            owner = world.instance_ids[0]
            status = world.signal_daemon(0, signal.SIGTERM)
            result.disruptions += 1
            result.left_by_sigterm = int(world.query(
                "SELECT count(*) FROM messages WHERE status = 'sending' AND claimed_by = %s", owner)[0][0])
            if status != 0:
                result.notes.append(f"SIGTERM exit status {status}")
                result.left_by_sigterm = max(result.left_by_sigterm, 1)
            world.start_daemon(0)
        if scenario.outage_seconds:
            wait_until(sent_something, 60, world)
            world.stop_sandbox()
            result.disruptions += 1
            time.sleep(scenario.outage_seconds)
            world.start_sandbox()
        for _ in range(scenario.db_kills_sending):
            time.sleep(1.0)
            result.disruptions += bool(world.kill_connections())

        disrupted = time.monotonic()
        if not wait_until(lambda: world.in_play() == 0, settle_seconds, world):
            result.notes.append(f"not settled after {settle_seconds:.0f} s: {dict(world.counts())}")
        result.notes.append(f"settled {time.monotonic() - disrupted:.0f} s after the last disruption")
        rows = world.query("SELECT m.id, m.case_id, m.channel, m.status, m.last_error, m.sent_at, c.zones,"
                           " c.jurisdiction FROM messages m JOIN cases c ON c.case_id = m.case_id")
        records = world.sandbox_records()
        world.stop_all()

    result.seconds = time.monotonic() - started
    check(result, rows, records)
    return result


def check(result: Result, rows: list[Any], records: dict[str, list[dict[str, Any]]]) -> None:
    from dispatcher.config import load_config
    from dispatcher.policy.calendar import WorkingCalendar
    from dispatcher.policy.window import is_legal
    from dispatcher.services.planner import local_day

    config = load_config(ROOT / "config" / "dispatcher.toml")
    result.statuses = Counter(r[3] for r in rows)
    result.stuck = result.statuses.get("sending", 0)
    result.lost = sum(1 for r in rows if r[3] not in SETTLED and r[3] != "sending")
    result.failed_without_reason = sum(1 for r in rows if r[3] == "failed" and not r[4])
    reasons = Counter(f"{r[2]}: {re.sub(r'[0-9]+', 'N', (r[4] or '')[:60])}" for r in rows if r[3] == "failed")
    if reasons:
        result.notes.append(f"failed: {dict(reasons)}")
    at_provider: Counter[str] = Counter()
    for kind in ("messages", "calls", "emails"):
        for record in records[kind]:
            mid = _message_id(record)
            at_provider[mid or f"unknown-{kind}"] += 1
    result.twice = sum(n - 1 for n in at_provider.values() if n > 1)
    calendars: dict[str, WorkingCalendar] = {}
    per_day: Counter[tuple[str, str, dt.date]] = Counter()
    for _id, case_id, channel, status, _err, sent_at, zones, jurisdiction in rows:
        if status not in SENT or sent_at is None:
            continue
        profile = config.jurisdictions[jurisdiction]
        calendar = calendars.setdefault(jurisdiction, WorkingCalendar.for_profile(profile))
        zone_list = tuple(zones.split(","))
        when = sent_at if sent_at.tzinfo else sent_at.replace(tzinfo=dt.UTC)
        result.outside_window += not is_legal(when, zone_list, profile, calendar)
        per_day[(case_id, channel, local_day(when, zone_list[0]))] += 1
    result.over_cap = sum(n - 1 for n in per_day.values() if n > 1)


TABLE_HEAD = ("| scenario | disruptions | planned | sent | failed (reason) | cancelled | delivered twice | stuck |"
              " lost | outside window | over cap/cadence | seconds |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: Result) -> str:
    sent = sum(n for s, n in r.statuses.items() if s in SENT)
    return (f"| {r.scenario} | {r.disruptions} | {r.planned} | {sent} | {r.statuses.get('failed', 0)} |"
            f" {r.statuses.get('cancelled', 0)} | {r.twice} | {r.stuck + r.left_by_sigterm} | {r.lost} |"
            f" {r.outside_window} | {r.over_cap} | {r.seconds:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI configuration (fewer kills, short outage)")
    parser.add_argument("--cases", type=int, default=None, help="cases per scenario (default 200; quick: 60)")
    parser.add_argument("--scenario", action="append", help="run only these (repeatable)")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--ci", action="store_true", help="the two worlds of tests/e2e/test_chaos.py")
    args = parser.parse_args()
    # a SIGTERM (or `timeout`) still stops the daemons and the sandbox and drops the databases
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cases = args.cases or (60 if args.quick else 200)
    pool = list(CI_SCENARIOS) if args.ci else scenarios(args.quick)
    chosen = [s for s in pool if not args.scenario or s.name in args.scenario]
    if args.ci and not args.cases:
        cases = CI_CASES
    print(f"chaos: {len(chosen)} scenario(s), {cases} cases each; nproc {os.cpu_count()}; "
          f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    results = []
    for scenario in chosen:
        result = run_scenario(scenario, cases=cases, seed=args.seed, settle_seconds=180 if args.quick else 600)
        results.append(result)
        print(f"{scenario.name}: {'ok' if result.ok else 'FAILED'} {dict(result.statuses)} {result.notes}",
              flush=True)
    print(TABLE_HEAD)
    for result in results:
        print(table_row(result))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
