"""`dispatcher demo`: the embedded-default end-to-end run (SPEC section 10).

Everything is real except the people: SQLite, the real import, planner, outbox and
sender, the official Twilio SDK and aiosmtplib talking over loopback to the sandbox,
the sandbox's signed callbacks, calls that fetch our TwiML and press keys, and inbound
replies posted to our webhooks served by uvicorn. A simulated clock walks several weeks;
debtors reply, press keys, bounce and pay, and the summary shows what that did.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import re
import shutil
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from dispatcher.clock import Clock, SharedClock
from dispatcher.config import Config
from dispatcher.demo_plans import open_links, plan_counts, seed_plans
from dispatcher.logs import log_to_file
from dispatcher.services.planner import IncrementalPlanner
from dispatcher.services.portfolio import REALISTIC_DPD_BUCKETS, generate_cases, write_csv
from dispatcher.settings import Settings
from dispatcher.wiring import Runtime

START = dt.datetime(2026, 11, 30, 0, 0, tzinfo=dt.UTC)  # a Monday
#: Ticks per simulated day (UTC): 09:30 in Shanghai; 12:30 ET / 09:30 PT (every US zone open).
TICK_TIMES = (dt.time(1, 30), dt.time(17, 30))
#: The demo's sample people, one per role (SPEC 14). Their passwords are public: demo only.
DEMO_USERS = (
    ("王小明", "collector", "demo-collector-1"),
    ("Alice Author", "author", "demo-author-1"),
    ("陈合规", "compliance", "demo-compliance-1"),
    ("admin", "admin", "demo-admin-1"),
    ("ops", "ops", "demo-ops-1"),
)
SMS_REPLIES = [("退订", 0.15), ("STOP", 0.15), ("PAID", 0.15), ("已还款", 0.1), ("DISPUTE", 0.08),
               ("不是我", 0.05), ("HELP", 0.07), ("Can I pay next Friday?", 0.15), ("请问可以分期吗", 0.10),
               # revocations in free text (SPEC 13): opt out at once, a review task for a collector
               ("Please stop calling me at work", 0.04), ("不要再给我发短信了", 0.04)]


@dataclass
class DemoResult:
    cases: int
    days: int
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    decisions: Counter[str] = field(default_factory=Counter)
    holds: dict[str, int] = field(default_factory=dict)
    report_html: Path | None = None
    report_json: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    api_token: str = ""  # the sample collector's API token (DEMO_USERS[0])


def _call_behaviour(number: str) -> Any:
    """Deterministic callee behaviour by number: voicemail, no answer, or a person."""
    from dispatcher.sandbox.options import CallBehaviour

    # Right-party contact rates of collection calls are low: most go unanswered.
    roll = zlib.crc32(number.encode()) % 100
    if roll < 35:
        return CallBehaviour(outcome="no-answer")
    if roll < 60:
        return CallBehaviour(answered_by="machine_end_beep")
    if roll < 70:
        return CallBehaviour(digits=("1", "2", "date+3", "1"))  # promise to pay in 3 days, confirmed
    if roll < 80:
        return CallBehaviour(digits=("1", "1"))  # payment link by SMS
    if roll < 84:
        return CallBehaviour(digits=("1", "9"))  # stop calls
    if roll < 88:
        return CallBehaviour(digits=("2",))  # not the debtor
    return CallBehaviour(digits=("1",))  # listens, then hangs up


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_config(config: Config) -> Config:
    """The shipped config with sender rate limits raised for a loopback sandbox, and
    payment links under the demo's own address (the debtors there open them)."""
    sending = config.sending.model_copy(update={
        "rate_per_second": {"sms": 2000.0, "voice": 1000.0, "email": 2000.0},
        "concurrency": 48,
        "batch_size": 500,
        "retry_backoff_seconds": 600.0,
    })
    return config.model_copy(update={"sending": sending,
                                     "links": config.links.model_copy(update={"base_url": None})})


def run_demo(
    config: Config,
    workdir: Path,
    *,
    cases: int = 5000,
    days: int = 21,
    seed: int = 7,
    console: Console | None = None,
    serve_port: int | None = None,
) -> DemoResult:
    """Run the whole simulation in `workdir` (recreated) and return what happened.

    With `serve_port`, the sandbox stays up afterwards and the daemon (scheduler, sender,
    webhooks, API and console) serves the demo's data on that port (0: a free one) until
    Ctrl-C or SIGTERM, the clock running on in real time from the simulation's end."""
    from dispatcher.sandbox.server import run_sandbox_in_process
    from dispatcher.services.importer import import_file
    from dispatcher.web.process import run_web_in_process

    console = console or Console()
    started = time.perf_counter()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    log_to_file(workdir / "dispatcher.log")
    config = demo_config(config)
    clock = SharedClock(workdir / "clock", START)
    signing_key = "demo-signing-key-not-for-production"
    rng = random.Random(seed)
    result = DemoResult(cases=cases, days=days, seconds=0.0)

    web_port = serve_port or _free_port()
    public_url = f"http://127.0.0.1:{web_port}"
    sandbox_opts = dict(
        seed=seed,
        clock=clock,
        fail_ratio=0.03,
        callback_delay_ms=0.0,
        default_call_behaviour=_call_behaviour,
        email_rules={"debtor*13@example.com": "hard", "debtor*29@example.com": "async_hard"},
        bounce_url=f"{public_url}/email/bounce",
        bounce_key=signing_key,
    )
    # Three processes, so the sender, the sandbox and our webhooks each get a core's
    # worth of interpreter (in one process they would take turns on one lock), all on
    # the driver's simulated clock.
    with run_sandbox_in_process(**sandbox_opts) as sandbox:
        settings = Settings(
            config_path=config.source or Path("config/dispatcher.toml"),
            db_url=f"sqlite:///{workdir / 'demo.db'}",
            twilio_account_sid=sandbox.account_sid,
            twilio_auth_token=sandbox.auth_token,
            twilio_api_url=sandbox.twilio_url,
            smtp_url=sandbox.smtp_url,
            public_url=public_url,
            signing_key=signing_key,
            instance_id="demo",
        )
        runtime = Runtime(settings, clock, config=config)
        try:
            csv_path = workdir / "portfolio.csv"
            write_csv(csv_path, generate_cases(cases, START.date(), seed=seed, dpd_buckets=REALISTIC_DPD_BUCKETS,
                                               other_profiles=0.3))
            report = import_file(csv_path, runtime.engine, config, clock)
            console.print(f"imported {report.imported} generated cases (rejected {report.rejected})")
            plans = seed_plans(runtime.engine, config, clock.now(), rng)
            console.print(f"{plans} debtors took a repayment plan 35 days ago (about half paid its first instalment)")
            result.api_token = _add_demo_users(runtime.engine, clock)
            with run_web_in_process(settings, clock, web_port, log_path=workdir / "dispatcher.log"):
                ticks = [dt.datetime.combine(START.date() + dt.timedelta(days=d), t, tzinfo=dt.UTC)
                         for d in range(days) for t in TICK_TIMES]
                asyncio.run(_simulate(ticks, runtime, sandbox, rng, result, console))
            _summarise(runtime.engine, config, clock, workdir, result)
            result.seconds = time.perf_counter() - started
            (workdir / "summary.json").write_text(result_json(result), encoding="utf-8")
            if serve_port is not None:
                print_summary(result, console)
                _serve(runtime, sandbox, web_port, result, console)
        finally:
            runtime.close()
    result.seconds = result.seconds or time.perf_counter() - started
    return result


def _add_demo_users(engine: Engine, clock: Clock) -> str:
    """One sample user per role, with the passwords of `DEMO_USERS`; returns an API
    token for the sample collector. Light argon2 parameters: these passwords are public."""
    from dispatcher.credentials import light_passwords
    from dispatcher.roles import Role
    from dispatcher.services.people import People

    people = People(engine, clock, light_passwords())
    for name, role, password in DEMO_USERS:
        people.add_user(name, frozenset({Role(role)}), "demo")
        people.set_password(name, password, "demo")
    return people.create_token(DEMO_USERS[0][0], 30, "demo").token


def _serve(runtime: Runtime, sandbox: Any, port: int, result: DemoResult, console: Console) -> None:
    """The daemon on the demo's data, with the sandbox, until Ctrl-C: the same jobs and
    web app as `dispatcher run`, on the shared clock, which runs on in real time."""
    from dispatcher.services.daemon import DaemonJobs, run_daemon
    from dispatcher.services.plan_check import after_planning
    from dispatcher.services.repair import StatusRepair
    from dispatcher.web.app import create_app

    clock = runtime.clock
    assert isinstance(clock, SharedClock)  # the sandbox process reads it
    stop_ticking = threading.Event()
    start, wall = clock.now(), time.monotonic()

    def keep_time() -> None:
        while not stop_ticking.wait(0.5):
            clock.set(start + dt.timedelta(seconds=time.monotonic() - wall))

    channels = runtime.channels()
    jobs = DaemonJobs(engine=runtime.engine, config=runtime.config, gate=runtime.gate, clock=clock,
                      sender=runtime.sender(channels), catalog=runtime.templates.approved_catalog,
                      after_plan=after_planning(runtime.config),
                      repair=StatusRepair(runtime.engine, runtime.config, clock, channels))
    web = runtime.web()

    def ready() -> None:  # once the console listens: the first click must not be refused
        _print_how_to_look_around(runtime.settings.public_url, sandbox, result, console)

    async def serve() -> int:
        try:
            return await run_daemon(jobs, create_app(web), "127.0.0.1", port, on_listening=ready)
        finally:
            await web.receipts.aclose()

    ticker = threading.Thread(target=keep_time, name="demo-clock", daemon=True)
    ticker.start()
    try:
        asyncio.run(serve())
    finally:
        stop_ticking.set()
        ticker.join()
    console.print("demo stopped")


def _print_how_to_look_around(base: str, sandbox: Any, result: DemoResult, console: Console) -> None:
    name, _role, password = DEMO_USERS[0]
    console.print(f"serving the demo: open {base}/ui/login and sign in as any sample user above,"
                  f" e.g. {name} / {password} (collector)", highlight=False)
    console.print(f"API: curl -H 'Authorization: Bearer {result.api_token}' {base}/api/cases/<case id>"
                  f"  ({DEMO_USERS[0][0]}'s token)", highlight=False, soft_wrap=True)
    console.print(f"sandbox: {sandbox.twilio_url}/sandbox/messages, /sandbox/calls, /sandbox/emails",
                  highlight=False)
    console.print(f"the clock runs on in real time from the end of the {result.days} simulated days;"
                  " press Ctrl-C to stop", highlight=False)
    console.print(f"demo ready at {base}/ui/login", highlight=False)


def _summarise(engine: Engine, config: Config, clock: Clock, workdir: Path, result: DemoResult) -> None:
    """The KPI report (HTML and JSON), and the summary's message counts taken from it:
    one computation, so the summary and the report cannot disagree."""
    from dispatcher.reports import build_report
    from dispatcher.reports.html import report_html
    from dispatcher.store.tables import EventRow, HoldRow

    kpis = build_report(engine, config, clock.now())
    totals = kpis.messages
    with engine.connect() as conn:
        kinds = dict(conn.execute(select(col(EventRow.kind), func.count()).group_by(col(EventRow.kind))).all())
        result.holds = dict(conn.execute(
            select(col(HoldRow.reason), func.count()).group_by(col(HoldRow.reason))).all())
    result.counts = {
        "sent": totals.total("sent"),
        "delivered": totals.total("delivered"),
        "failed": totals.total("failed"),
        "rejected before sending": totals.total("rejected"),
        "still queued": totals.total("queued"),
        "cancelled before sending": totals.total("cancelled"),
        # cases that opted out, each once per stage spell: the report's own figure
        "opt-outs": sum(stage.opt_outs for stage in kpis.stages),
        "replies for collectors": kinds.get("reply_received", 0),
        "keypresses": kinds.get("keypress", 0),
        "payment-link clicks": kinds.get("link_clicked", 0),
        "payments": kinds.get("payment_recorded", 0),
        "cases closed": kinds.get("case_closed", 0),
        "escalated to legal": kinds.get("escalated", 0),
        "addresses marked invalid": kinds.get("address_invalid", 0),
        "broken promises": kinds.get("promise_broken", 0),
        **plan_counts(kinds),
    }
    result.report_html = workdir / "report.html"
    result.report_json = workdir / "report.json"
    result.report_html.write_text(report_html(kpis), encoding="utf-8")
    result.report_json.write_text(json.dumps(kpis.as_json(), ensure_ascii=False, indent=2), encoding="utf-8")


async def _simulate(ticks: list[dt.datetime], runtime: Runtime, sandbox: Any, rng: random.Random,
                    result: DemoResult, console: Console) -> None:
    from dispatcher.services.plan_check import after_planning
    from dispatcher.store import repository
    from dispatcher.store.tables import MessageRow

    # one gate for the whole run: the planner and the sender share its caches
    engine, gate, clock = runtime.engine, runtime.gate, runtime.clock
    assert isinstance(clock, SharedClock)  # the driver moves it; the sandbox and the web process read it
    catalog = runtime.templates.approved_catalog()
    planner = IncrementalPlanner(engine, gate, instance_id="demo")  # evaluates what changed, tick by tick
    channels = runtime.channels()
    sender = runtime.sender(channels)
    inbound_url = f"{runtime.settings.public_url}/twilio/sms/inbound"
    try:
        with Progress(TextColumn("[bold]simulating"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=False) as progress:
            task = progress.add_task("", total=len(ticks))
            for instant in ticks:
                clock.set(instant)
                t0 = time.perf_counter()
                await asyncio.to_thread(after_planning(runtime.config), engine, instant)
                summary = await asyncio.to_thread(planner.run, catalog, instant)
                result.timings["plan"] = result.timings.get("plan", 0.0) + time.perf_counter() - t0
                if summary is not None:
                    result.decisions.update(summary.by_reason)
                t0 = time.perf_counter()
                sent = await sender.send_due()
                result.timings["send"] = result.timings.get("send", 0.0) + time.perf_counter() - t0
                t0 = time.perf_counter()
                await sandbox.drain(30)
                result.timings["callbacks"] = result.timings.get("callbacks", 0.0) + time.perf_counter() - t0
                # Debtors react to what they received in this tick.
                t0 = time.perf_counter()
                with engine.connect() as conn:
                    fresh = conn.execute(
                        select(col(MessageRow.case_id), col(MessageRow.channel), col(MessageRow.to_address),
                               col(MessageRow.status), col(MessageRow.stage), col(MessageRow.body))
                        .where(col(MessageRow.sent_at) == instant, col(MessageRow.kind) != "system")
                    ).all()
                clicks: list[str] = []
                replies: list[tuple[str, str]] = []
                payers: list[str] = []
                for case_id, channel, to_address, status, stage, body in fresh:
                    if channel == "sms" and status == "delivered" and to_address and rng.random() < 0.04:
                        replies.append((to_address, rng.choices([b for b, _ in SMS_REPLIES],
                                                                [w for _, w in SMS_REPLIES])[0]))
                    link = _PAY_LINK.search(body or "")
                    if channel != "voice" and link and rng.random() < 0.05:
                        clicks.append(link.group(0))
                    # Early-stage debtors mostly pay after a reminder; the tail rarely does.
                    pay_chance = 0.10 if stage in ("pre_due", "early") else 0.025
                    if rng.random() < pay_chance:
                        payers.append(case_id)
                await _reply_all(sandbox, replies, inbound_url)
                if payers:
                    await asyncio.to_thread(_pay_all, engine, repository, payers, instant, rng)
                if clicks:
                    await open_links(clicks, rng)
                if fresh:
                    await sender.send_due()  # confirmations, HELP replies, requested payment links
                result.timings["reactions"] = result.timings.get("reactions", 0.0) + time.perf_counter() - t0
                progress.update(task, advance=1,
                                description=f"{instant:%Y-%m-%d %H:%M} UTC  sent {sent.sent:>4}")
        await sandbox.drain(30)  # the last tick's callbacks
    finally:
        for adapter in channels.values():
            await adapter.aclose()


async def _reply_all(sandbox: Any, replies: list[tuple[str, str]], inbound_url: str) -> None:
    """Debtors answer by SMS, a few at a time (the sandbox signs and posts each to us)."""
    gate = asyncio.Semaphore(16)

    async def reply_once(number: str, text: str) -> None:
        async with gate:
            await sandbox.simulate_inbound(number, "+10000000000", text, inbound_url)

    await asyncio.gather(*(reply_once(number, text) for number, text in replies))


_PAY_LINK = re.compile(r"https?://127\.0\.0\.1:\d+/p/[A-Za-z0-9._-]+")


def _pay_all(engine, repository, case_ids: list[str], instant: dt.datetime, rng: random.Random) -> None:  # type: ignore[no-untyped-def]
    """This tick's payments from the lender's feed: most pay in full, some half."""
    from dispatcher.store.tables import CaseRow

    with engine.begin() as conn:
        for case_id in case_ids:
            row = conn.execute(select(col(CaseRow.amount_due), col(CaseRow.paid_total), col(CaseRow.status))
                               .where(col(CaseRow.case_id) == case_id)).one()
            if row.status != "active":
                continue
            owed = row.amount_due - row.paid_total
            amount = owed if rng.random() < 0.7 else (owed / 2).quantize(Decimal("0.01"))
            if amount > 0:
                repository.record_payment(conn, case_id, amount, "demo-payment-feed", instant)


def print_summary(result: DemoResult, console: Console) -> None:
    table = Table("what", "count", title=f"demo: {result.cases} cases over {result.days} simulated days "
                                         f"in {result.seconds:.0f} s")
    for key, value in result.counts.items():
        table.add_row(key, str(value))
    console.print(table)
    deferred = Table("deferred / skipped by reason", "decisions")
    for key, value in sorted(result.decisions.items()):
        if not key.startswith("send:"):
            deferred.add_row(key, str(value))
    console.print(deferred)
    holds = Table("holds placed", "count")
    for key, value in sorted(result.holds.items()):
        holds.add_row(key, str(value))
    console.print(holds)
    console.print("time spent: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    console.print(f"report: {result.report_html} (and {result.report_json.name if result.report_json else ''})")
    users = Table("sample user", "role", "password", title="people (demo only: these passwords are public)")
    for name, role, password in DEMO_USERS:
        users.add_row(name, role, password)
    console.print(users)


def result_json(result: DemoResult) -> str:
    return json.dumps({"cases": result.cases, "days": result.days, "seconds": round(result.seconds, 1),
                       "counts": result.counts, "decisions": dict(result.decisions), "holds": result.holds},
                      ensure_ascii=False, indent=2)
