"""Issue 10, finding "outages exhaust attempts": the providers are down (nothing listens on
the sandbox's ports: every connection is refused) for a simulated minute and a half,
then come back.

With the circuit breakers (`channels.guarded`, built by `Runtime.channels()`): the
connection attempts during the outage are counted at the event loop and bounded (the
failures that open each circuit, then at most one probe per `probe_seconds`); no message
spends an attempt or fails; the circuits show on `/metrics`; once the providers are back
every message is sent exactly once, and each waiting message's contact window is
re-checked first: the Chinese cases whose window closed during the outage wait for the
next morning instead of going out at 21:00.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.domain import Channel
from dispatcher.policy import Gate
from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.policy.window import is_legal
from dispatcher.sandbox import run_sandbox_in_thread
from dispatcher.sandbox.options import SandboxOptions
from dispatcher.services.importer import import_file
from dispatcher.services.planner import run_planner
from dispatcher.services.portfolio import generate_cases, write_csv
from dispatcher.settings import Settings
from dispatcher.store.db import make_engine
from dispatcher.store.tables import CaseRow, MessageRow, messages_t
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
#: Mon 2026-12-07 20:58 in Shanghai: the Chinese window closes in two minutes, during the
#: outage; New York opens at 21:00 Shanghai time (08:00 local), also during it.
START = dt.datetime(2026, 12, 7, 20, 58, tzinfo=SHANGHAI)
OUTAGE = dt.timedelta(seconds=150)
FAILURES_TO_OPEN = 3
PROBE_SECONDS = 10.0
CONCURRENCY = 2
SENT = frozenset({"sent", "delivered", "read", "ringing", "in-progress", "completed"})


METRICS_TOKEN = "outage-metrics-token"  # the bootstrap credential: /metrics needs metrics.read

def outage_config(config: Config) -> Config:
    sending = config.sending.model_copy(update={
        "rate_per_second": {"sms": 1000.0, "voice": 1000.0, "email": 1000.0},
        "concurrency": CONCURRENCY,
        "provider_timeout_seconds": 2.0,
        "breaker": config.sending.breaker.model_copy(update={"failures_to_open": FAILURES_TO_OPEN,
                                                             "probe_seconds": PROBE_SECONDS}),
    })
    return config.model_copy(update={"sending": sending})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(select(MessageRow.status, func.count()).group_by(MessageRow.status)).all()))


def count_connections(loop: asyncio.AbstractEventLoop) -> Counter[int]:
    """Count every outgoing connection the loop opens, by port (the real call still runs)."""
    attempts: Counter[int] = Counter()
    original: Callable[..., Any] = loop.create_connection

    async def counting(protocol_factory: Any, host: Any = None, port: Any = None, *args: Any, **kwargs: Any) -> Any:
        attempts[int(port or 0)] += 1
        return await original(protocol_factory, host, port, *args, **kwargs)

    loop.create_connection = counting  # type: ignore[method-assign]
    return attempts


async def metrics_text(runtime: Runtime) -> str:
    app = create_app(runtime.web())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            response = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert response.status_code == 200
        return response.text
    finally:
        await runtime.receipts.aclose()


async def test_an_outage_spends_no_attempt_hammers_no_provider_and_everything_goes_once_it_is_back(
    _sqlite_template: Path, tmp_path: Path, config: Config
) -> None:
    cfg = outage_config(config)
    clock = FakeClock(START)
    db = tmp_path / "outage.db"
    shutil.copyfile(_sqlite_template, db)
    engine = make_engine(f"sqlite:///{db}")
    csv_path = tmp_path / "portfolio.csv"
    write_csv(csv_path, generate_cases(60, START.date(), seed=11, dpd_range=(0, 100)))
    assert import_file(csv_path, engine, cfg, clock).rejected == 0
    templates = TemplateSet(cfg.resolve(cfg.templates.directory), cfg)
    planned = run_planner(engine, Gate(cfg), templates.approved_catalog(), clock.now())
    assert planned is not None and planned.queued > 20, planned

    twilio_port, smtp_port = free_port(), free_port()
    defaults = SandboxOptions()
    settings = Settings(twilio_account_sid=defaults.account_sid, twilio_auth_token=defaults.auth_token,
                        twilio_api_url=f"http://127.0.0.1:{twilio_port}", smtp_url=f"smtp://127.0.0.1:{smtp_port}",
                        public_url="http://127.0.0.1:9", signing_key="outage-test-key-0123456789",
                        instance_id="outage", api_token=METRICS_TOKEN)
    runtime = Runtime(settings, clock, config=cfg, engine=engine, templates=templates)
    channels = runtime.channels()
    sender = runtime.sender(channels)
    attempts = count_connections(asyncio.get_running_loop())
    try:
        # -- the outage: nothing listens on either port ----------------------------------
        first = await sender.send_due()
        assert first.claimed > 0 and first.sent == 0 and first.failed == 0
        opening = attempts.copy()
        used = {Channel(c) for c in {r for r in _channels_claimed(engine)}}
        twilio_circuits = len(used & {Channel.SMS, Channel.VOICE})
        # each circuit opens after FAILURES_TO_OPEN refusals (plus the calls already under way)
        assert 0 < opening[twilio_port] <= twilio_circuits * (FAILURES_TO_OPEN + CONCURRENCY - 1), opening
        assert 0 < opening[smtp_port] <= FAILURES_TO_OPEN + CONCURRENCY - 1, opening
        states = {c.provider: c.state.value for c in runtime.circuits.all()}
        assert states and set(states.values()) == {"open"}, states
        text = await metrics_text(runtime)
        assert 'dispatcher_provider_circuit{channel="email"} 1' in text
        assert 'dispatcher_provider_circuit_opened_total{channel="email"} 1' in text

        # passes every 5 s until the outage ends: no connection but one probe per circuit per 10 s
        passes = 0
        while clock.now() < START + OUTAGE:
            clock.advance(dt.timedelta(seconds=5))
            passes += 1
            summary = await sender.send_due()
            assert summary.failed == 0 and summary.sent == 0
            await sender.reconcile_stale()
        probes_each = int(OUTAGE.total_seconds() // PROBE_SECONDS) + 1
        assert attempts[twilio_port] - opening[twilio_port] <= twilio_circuits * probes_each, attempts
        assert attempts[smtp_port] - opening[smtp_port] <= probes_each, attempts
        assert passes * 2 > probes_each, "the probes were bounded by the breaker, not by few passes"
        counts = statuses(engine)
        assert counts.get("failed", 0) == 0 and counts.get("sending", 0) == 0, counts
        with engine.connect() as conn:
            spent = conn.execute(select(func.max(MessageRow.attempts))).scalar()
        assert spent == 0, "an unreachable provider spent a message's attempt"

        # -- the providers are back --------------------------------------------------------
        with run_sandbox_in_thread(clock=clock, twilio_port=twilio_port, smtp_port=smtp_port,
                                   callback_delay_ms=0) as sandbox:
            for _ in range(40):
                clock.advance(dt.timedelta(seconds=PROBE_SECONDS))
                await sender.send_due()
                due = _next_due(engine)
                if due is None and not statuses(engine).get("sending"):
                    break
                if due is not None and due > clock.now():
                    clock.set(due)  # the next window opening
            sms, calls, emails = sandbox.messages(), sandbox.calls(), sandbox.email_records()
        assert {c.state.value for c in runtime.circuits.all()} == {"closed"}
        assert 'dispatcher_provider_circuit{channel="email"} 0' in await metrics_text(runtime)
        with engine.connect() as conn:
            rows = list(conn.execute(select(messages_t)))
            cases = {r.case_id: r for r in conn.execute(select(CaseRow.case_id, CaseRow.jurisdiction, CaseRow.zones))}
    finally:
        for adapter in channels.values():
            await adapter.aclose()
        runtime.close()
        engine.dispose()

    final = Counter(r.status for r in rows)
    assert final.get("failed", 0) == 0 and final.get("queued", 0) == 0 and final.get("sending", 0) == 0, final
    by_sid = {r.provider_id: r for r in rows if r.provider_id}
    for record in [*sms, *calls]:
        assert record["count"] == 1
        assert by_sid[record["sid"]].status in SENT
    assert Counter(e.message_id for e in emails).most_common(1)[0][1] == 1
    assert len(sms) + len(calls) + len(emails) == sum(1 for r in rows if r.status in SENT)
    assert all(r.attempts == 1 for r in rows if r.status in SENT), "attempts spent during the outage"
    # Every message reached the provider inside its case's window: the Chinese ones whose
    # window closed during the outage went out the next morning.
    calendars: dict[str, WorkingCalendar] = {}
    next_morning = 0
    stamps = [(by_sid[r["sid"]], dt.datetime.fromisoformat(r["date_created"])) for r in [*sms, *calls]]
    stamps += [(by_sid[e.message_id], e.received_at) for e in emails]
    for row, at in stamps:
        case = cases[row.case_id]
        profile = cfg.jurisdictions[case.jurisdiction]
        calendar = calendars.setdefault(case.jurisdiction, WorkingCalendar.for_profile(profile))
        assert is_legal(at, tuple(case.zones.split(",")), profile, calendar), (row.id, at)
        next_morning += case.jurisdiction == "cn" and at.date() > START.date()
    assert next_morning > 0


def _channels_claimed(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(MessageRow.channel).where(MessageRow.last_error.is_not(None))).scalars())


def _next_due(engine: Engine) -> dt.datetime | None:
    with engine.connect() as conn:
        return conn.execute(select(func.min(MessageRow.scheduled_at)).where(MessageRow.status == "queued")).scalar()
