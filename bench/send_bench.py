"""Send throughput and CPU per message of the Sender, against the cron-script baseline.

    .venv/bin/python bench/send_bench.py [--seconds 60] [--rate 200] [--concurrency 64]
        [--latency-ms 50] [--db URL] [--baseline-seconds N] [--batch-size 200]

- The sandbox runs as a separate process (`python -m dispatcher.cli sandbox ...
  --latency-ms 50`), so its CPU is not ours; its printed addresses are parsed.
- The outbox is filled with enough queued SMS for `rate x seconds` plus a margin: one
  Chinese DPD-30 case per message (caps allow one SMS per case and local day), bulk
  inserted with their contact points and queued rows. `--db` takes a PostgreSQL URL
  (a temporary database is created on that server and dropped afterwards); the default
  is a temporary SQLite file.
- The Sender (`rate_per_second.sms = --rate`, `concurrency = --concurrency`) runs
  `send_due` — claim, gate, render, stamp, concurrent provider calls through the real
  async Twilio SDK, record — for `--seconds`, then stops as on SIGTERM: the calls under
  way finish and are recorded, the messages still waiting for their turn go back to the
  queue (counted `deferred`). Reported: sent/s over the whole run and the process's CPU time (user+sys,
  `resource.getrusage`) per message.
- Baseline, in the same run: what a cron script would do — a sequential loop over the
  synchronous Twilio SDK (`Client(...).messages.create`) against the same sandbox, for
  `--baseline-seconds` (default: `--seconds`). No gate, no rendering, no database.
- For reference, the channel alone: the Twilio SMS channel (the official async SDK on
  our HTTP client, `channels.http11`) sending `--floor-messages` prepared messages with the same
  concurrency and no rate limit: the CPU floor of a message before any of our work.
- The load average is printed before and after: this machine class is shared.

Prints a markdown table (paste it into BENCHMARKS.md, section `## send`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import insert, make_url
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dispatcher.channels.base import OutboundMessage  # noqa: E402
from dispatcher.channels.registry import build_channels  # noqa: E402
from dispatcher.channels.twilio_sms import TwilioSmsChannel  # noqa: E402
from dispatcher.clock import FakeClock  # noqa: E402
from dispatcher.config import Config, load_config  # noqa: E402
from dispatcher.domain import Case, Channel, Product  # noqa: E402
from dispatcher.links import LinkSigner  # noqa: E402
from dispatcher.services.outbox import Sender  # noqa: E402
from dispatcher.settings import Settings  # noqa: E402
from dispatcher.store import repository  # noqa: E402
from dispatcher.store.db import ensure_schema, make_engine  # noqa: E402
from dispatcher.store.repository import ImportedCase  # noqa: E402
from dispatcher.store.tables import messages_t  # noqa: E402
from dispatcher.templates import TemplateSet  # noqa: E402

#: Mon 2026-12-07 10:00 in Shanghai: inside the Chinese window; the clock stays there.
NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)
DUE = dt.date(2026, 11, 7)  # DPD 30: stage dpd30, an SMS is due
#: Nothing listens here: the sandbox's status callbacks fail fast (its CPU, not ours).
PUBLIC_URL = "http://127.0.0.1:9"
SMS_FROM = "+8610695550100"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------ sandbox


@dataclass
class SandboxProcess:
    proc: subprocess.Popen[str]
    twilio_url: str
    smtp_url: str
    account_sid: str
    auth_token: str


@contextmanager
def sandbox_process(latency_ms: float) -> Iterator[SandboxProcess]:
    """`dispatcher sandbox` as a child process on free ports; stopped with SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", "sandbox", "--twilio-port", "0", "--smtp-port", "0",
         "--latency-ms", str(int(latency_ms))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        twilio = proc.stdout.readline().strip()
        smtp = proc.stdout.readline().strip()
        if not twilio.startswith("twilio ") or not smtp.startswith("smtp "):
            raise RuntimeError(f"unexpected sandbox output: {twilio!r} {smtp!r}: {proc.stderr.read()}")
        env_lines = []
        while True:  # the environment hints on stderr carry the credentials
            line = proc.stderr.readline()
            if not line:
                break
            env_lines.append(line)
            if "records:" in line:
                break
        hints = dict(re.findall(r"#\s+(TWILIO_ACCOUNT_SID|TWILIO_AUTH_TOKEN)=(\S+)", "".join(env_lines)))
        yield SandboxProcess(proc, twilio.split(" ", 1)[1], "smtp://" + smtp.split(" ", 1)[1],
                             hints["TWILIO_ACCOUNT_SID"], hints["TWILIO_AUTH_TOKEN"])
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


# ----------------------------------------------------------------------- database


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """A temporary SQLite file, or a temporary database on the PostgreSQL server of `url`."""
    if url is None:
        with tempfile.TemporaryDirectory(prefix="send-bench-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    admin = make_url(url).set(drivername="postgresql")
    name = f"send_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(url).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def case(i: int) -> ImportedCase:
    principal = Decimal(1000 + i % 50_000) + Decimal("0.25")
    penalty = (principal * Decimal("0.0005") * 30).quantize(Decimal("0.01"))
    c = Case(
        case_id=f"B{i:08d}", name="张伟", jurisdiction="cn", locale="zh-CN", currency="CNY",
        principal=principal, interest=Decimal("12.00"), penalty=penalty, fees=Decimal("0.00"),
        amount_due=principal + Decimal("12.00") + penalty, due_date=DUE, phone=f"+86138{i:08d}",
        penalty_rate_daily=Decimal("0.0005"), product=Product.CREDIT_CARD,
    )
    return ImportedCase(case=c, zones=("Asia/Shanghai",), sms_consent=True, email_consent=True, voice_consent=True)


def fill_outbox(engine: Engine, count: int) -> None:
    """`count` cases, each with one queued SMS due now."""
    chunk = 2000
    for start in range(0, count, chunk):
        ids = range(start, min(count, start + chunk))
        with engine.begin() as conn:
            repository.upsert_cases(conn, [case(i) for i in ids], NOW)
            conn.execute(insert(messages_t), [
                {"case_id": f"B{i:08d}", "channel": "sms", "stage": "dpd30", "kind": "scheduled",
                 "status": "queued", "idempotency_key": f"B{i:08d}:sms:dpd30:2026-12-07", "scheduled_at": NOW,
                 "created_at": NOW, "attempts": 0, "conversation": False}
                for i in ids
            ])


# ------------------------------------------------------------------------- runs


@dataclass
class Result:
    label: str
    sent: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.cpu / self.sent if self.sent else float("nan")


async def run_sender(engine: Engine, config: Config, sandbox: SandboxProcess, seconds: float) -> Result:
    settings = Settings(twilio_account_sid=sandbox.account_sid, twilio_auth_token=sandbox.auth_token,
                        twilio_api_url=sandbox.twilio_url, smtp_url=sandbox.smtp_url, public_url=PUBLIC_URL)
    channels = build_channels(settings, timeout=config.sending.provider_timeout_seconds, channels=[Channel.SMS])
    templates = TemplateSet(config.resolve(config.templates.directory), config)
    sender = Sender(engine, config, templates, channels, FakeClock(NOW), LinkSigner("send-bench-signing-key"),
                    PUBLIC_URL, "bench")
    try:
        # Warm-up outside the measurement: connections, template compilation, caches.
        await sender.send_due(max_messages=50)
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, sender.stop_claiming)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        summary = await sender.send_due()
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    finally:
        for adapter in channels.values():
            await adapter.aclose()
    if summary.failed or summary.retried or summary.cancelled or summary.sent + summary.deferred != summary.claimed:
        raise RuntimeError(f"the sender did not just send: {summary}")
    return Result("Sender (async SDK, rate-limited)", summary.sent, elapsed, cpu)


async def run_channel_floor(sandbox: SandboxProcess, count: int, concurrency: int) -> Result:
    """The SDK and HTTP client alone: `TwilioSmsChannel.send` of ready messages."""
    channel = TwilioSmsChannel(sandbox.account_sid, sandbox.auth_token, sandbox.twilio_url, timeout=15.0)
    gate = asyncio.Semaphore(concurrency)
    body = BASELINE_BODY

    async def one(i: int) -> None:
        async with gate:
            result = await channel.send(OutboundMessage(
                message_id=i, case_id=f"F{i}", channel=Channel.SMS, to=f"+86137{i:08d}", body=body,
                idempotency_key=f"f{i}", sender=SMS_FROM, status_callback=f"{PUBLIC_URL}/twilio/sms/status?m={i}"))
            if not result.provider_id:
                raise RuntimeError(f"floor run: {result}")

    try:
        await asyncio.gather(*(one(i) for i in range(50)))  # warm-up
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(50, 50 + count)))
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    finally:
        await channel.aclose()
    return Result("channel alone (async SDK, no gate/render/DB, no rate limit)", count, elapsed, cpu)


BASELINE_BODY = ("【调度银行】张伟您好，您的信用卡已逾期30天，欠款10,285.25元（含罚息：本金×0.05%×逾期天数）。"
                 "请尽快还款：https://pay.bank.example/p/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx 回复TD退订")


def run_baseline(sandbox: SandboxProcess, seconds: float) -> Result:
    """A cron script: one `messages.create` after the other with the synchronous SDK."""
    for name in ("TWILIO_REGION", "TWILIO_EDGE"):
        os.environ.pop(name, None)
    from twilio.rest import Client

    client = Client(sandbox.account_sid, sandbox.auth_token)
    client.api.base_url = sandbox.twilio_url
    body = BASELINE_BODY
    sent = 0
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        client.messages.create(to=f"+86139{sent:08d}", from_=SMS_FROM, body=body,
                               status_callback=f"{PUBLIC_URL}/twilio/sms/status")
        sent += 1
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return Result("cron baseline (sync SDK, sequential)", sent, elapsed, cpu)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=200.0, help="configured SMS rate limit (messages/s)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="sandbox latency per API request")
    parser.add_argument("--db", default=None, help="PostgreSQL server URL (default: a temporary SQLite file)")
    parser.add_argument("--baseline-seconds", type=float, default=None, help="default: --seconds")
    parser.add_argument("--floor-messages", type=int, default=3000, help="0: skip the channel-alone run")
    args = parser.parse_args()
    load_before = os.getloadavg()

    shipped = load_config(ROOT / "config" / "dispatcher.toml")
    sending = {"rate_per_second": {**shipped.sending.rate_per_second, "sms": args.rate},
               "concurrency": args.concurrency}
    if args.batch_size:
        sending["batch_size"] = args.batch_size
    config = shipped.model_copy(update={"sending": shipped.sending.model_copy(update=sending)})
    queued = int(args.rate * args.seconds) + 2 * config.sending.batch_size + 50

    with sandbox_process(args.latency_ms) as sandbox, database(args.db) as url:
        engine = make_engine(url)
        try:
            ensure_schema(engine)
            t0 = time.perf_counter()
            fill_outbox(engine, queued)
            print(f"queued {queued} SMS in {time.perf_counter() - t0:.1f} s ({engine.dialect.name}); "
                  f"sending for {args.seconds:g} s at <= {args.rate:g}/s ...", file=sys.stderr)
            ours = asyncio.run(run_sender(engine, config, sandbox, args.seconds))
        finally:
            engine.dispose()
        baseline_seconds = args.baseline_seconds or args.seconds
        print(f"baseline for {baseline_seconds:g} s ...", file=sys.stderr)
        base = run_baseline(sandbox, baseline_seconds)
        floor = None
        if args.floor_messages:
            print(f"channel alone, {args.floor_messages} messages ...", file=sys.stderr)
            floor = asyncio.run(run_channel_floor(sandbox, args.floor_messages, args.concurrency))
    load_after = os.getloadavg()

    backend = "PostgreSQL" if args.db else "SQLite"
    print(f"\nmachine: {machine()}")
    print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"sandbox latency {args.latency_ms:g} ms, rate limit {args.rate:g} SMS/s, concurrency {args.concurrency}, "
          f"batch {config.sending.batch_size}, store {backend}\n")
    print("| run | messages | seconds | messages/s | % of limit | CPU ms/message |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in (ours, base, floor):
        if r is None:
            continue
        limited = r is not floor
        share = f"{100 * r.rate / args.rate:.1f} %" if limited else "(no limit)"
        print(f"| {r.label} | {r.sent} | {r.seconds:.1f} | {r.rate:.1f} | {share} | {r.cpu_ms_per_message:.2f} |")
    print(f"\nthroughput ratio Sender / baseline: {ours.rate / base.rate:.1f}x; "
          f"target >= {0.95 * args.rate:.0f}/s: {'met' if ours.rate >= 0.95 * args.rate else 'MISSED'}; "
          f"CPU target <= 0.5 ms/message: {'met' if ours.cpu_ms_per_message <= 0.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
