"""Benchmark: signed Twilio status callbacks against the real webhook server.

Starts N uvicorn processes serving `dispatcher.web.app:create_app_from_env` on one free
loopback port (SO_REUSEPORT, so the kernel balances connections) over a fresh database (a SQLite
file, and/or a PostgreSQL database created for the run and dropped afterwards), seeds messages in flight, then
fires signed status callbacks (every message's provider history, a third of them
duplicated, shuffled) from a concurrent keep-alive client. It reports the sustained
rate and the latency percentiles, and verifies in the database that nothing was lost:
every request answered 200 and every message ended in exactly its highest-ranked
status.

    .venv/bin/python bench/webhook_bench.py                      # SQLite and PostgreSQL
    .venv/bin/python bench/webhook_bench.py --backend postgres --workers 2 --concurrency 64
    .venv/bin/python bench/webhook_bench.py --rate 1000          # open loop: fixed offered rate

PostgreSQL: --pg URL or DISPATCHER_TEST_PG_URL (a server URL whose user may create
databases; default postgresql+psycopg://postgres@127.0.0.1:5432/test).

The client is a small asyncio HTTP/1.1 client (one request in flight per connection):
a general-purpose client such as httpx costs more CPU per request than the server
does, and on a small machine it would measure itself. `--client httpx` uses httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from sqlalchemy import func, insert, make_url, select  # noqa: E402
from twilio.request_validator import RequestValidator  # noqa: E402

from dispatcher.policy.replies import map_provider_status, status_rank  # noqa: E402
from dispatcher.store.db import ensure_schema, make_engine  # noqa: E402
from dispatcher.store.tables import cases_t, events_t, messages_t  # noqa: E402

TOKEN = "bench-auth-token"
PUBLIC = "https://hooks.bench.example"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)

SMS_HISTORIES = [["sent", "delivered"], ["delivered"], ["sent", "undelivered"], ["failed"],
                 ["sent", "delivered", "read"], ["delivered", "read"]]
VOICE_HISTORIES = [["initiated", "ringing", "in-progress", "completed"], ["ringing", "no-answer"], ["busy"],
                   ["initiated", "failed"], ["ringing", "in-progress", "completed"]]


# ------------------------------------------------------------------------ databases


@contextlib.contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
        yield f"sqlite:///{tmp}/bench.db"


@contextlib.contextmanager
def pg_database(admin_url: str) -> Iterator[str]:
    admin = make_url(admin_url)
    libpq = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"dispatcher_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# ------------------------------------------------------------------------ workload


@dataclass
class Workload:
    requests: list[bytes]  # raw HTTP requests
    expected: dict[int, str]  # message id -> final status
    initial: dict[int, str]
    unique: int


def seed_and_build(db_url: str, messages: int, duplicate_share: float, seed: int) -> tuple[Workload, Workload]:
    """Seed `messages` in-flight messages (and a warm-up set); return the workloads."""
    rnd = random.Random(seed)
    engine = make_engine(db_url)
    try:
        ensure_schema(engine)
        rows = []
        warm = max(200, messages // 20)
        for n in range(messages + warm):
            channel = "sms" if n % 10 < 7 else "voice"
            rows.append({
                "case_id": f"bench-{n % 500:03d}", "channel": channel, "kind": "scheduled",
                "status": rnd.choice(["sending", "sent"]),
                # half the rows know their SID already, half learn it from the callback
                "provider_id": _sid(channel, n) if rnd.random() < 0.5 else None,
                "idempotency_key": f"bench:{n}", "scheduled_at": NOW, "created_at": NOW,
                "to_address": f"+86138{n % 500:08d}",
            })
        cases = [
            {"case_id": f"bench-{i:03d}", "name": "Bench Case", "jurisdiction": "cn", "locale": "zh-CN",
             "currency": "CNY", "principal": Decimal("100.00"), "interest": Decimal("0.00"),
             "penalty": Decimal("0.00"), "fees": Decimal("0.00"), "amount_due": Decimal("100.00"),
             "paid_total": Decimal("0.00"), "due_date": dt.date(2026, 10, 1), "status": "active",
             "product": "other", "zones": "Asia/Shanghai", "escalated_stages": "", "created_at": NOW,
             "updated_at": NOW}
            for i in range(500)
        ]
        with engine.begin() as conn:
            conn.execute(insert(cases_t), cases)
            for start in range(0, len(rows), 5000):
                conn.execute(insert(messages_t), rows[start:start + 5000])
            ids = dict(conn.execute(select(messages_t.c.idempotency_key, messages_t.c.id)).all())
    finally:
        engine.dispose()
    validator = RequestValidator(TOKEN)

    def build(indices: range, dup: float) -> Workload:
        unique: list[bytes] = []
        expected: dict[int, str] = {}
        initial: dict[int, str] = {}
        for n in indices:
            row = rows[n]
            message_id = ids[f"bench:{n}"]
            channel = row["channel"]
            final = row["status"]
            initial[message_id] = final
            for status in rnd.choice(SMS_HISTORIES if channel == "sms" else VOICE_HISTORIES):
                ours = map_provider_status(status)
                assert ours is not None
                if status_rank(ours) > status_rank(final):
                    final = ours.value
                if channel == "sms":
                    path = f"/twilio/sms/status?m={message_id}"
                    params = {"MessageSid": _sid(channel, n), "MessageStatus": status}
                else:
                    path = f"/twilio/voice/status?m={message_id}"
                    params = {"CallSid": _sid(channel, n), "CallStatus": status}
                params |= {"AccountSid": "AC" + "0" * 32, "ApiVersion": "2010-04-01"}
                unique.append(_http_request(path, params, validator.compute_signature(PUBLIC + path, params)))
            expected[message_id] = final
        requests = unique + rnd.choices(unique, k=int(len(unique) * dup / (1 - dup)))
        rnd.shuffle(requests)
        return Workload(requests, expected, initial, len(unique))

    return build(range(warm, warm + messages), duplicate_share), build(range(warm), duplicate_share)


def _sid(channel: str, n: int) -> str:
    return f"{'SM' if channel == 'sms' else 'CA'}{n:032x}"


def _http_request(path: str, params: dict[str, str], signature: str) -> bytes:
    body = urlencode(params).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: TwilioProxy/1.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


# ------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(port: int, http: str, loop: str) -> None:
    """One server process (internal `--serve` mode): uvicorn on a SO_REUSEPORT socket,
    so several processes on one port get connections balanced by the kernel (uvicorn's
    own --workers shares one accepting socket, and long-lived keep-alive connections
    then pile up on whichever worker accepted first)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    config = uvicorn.Config("dispatcher.web.app:create_app_from_env", factory=True, http=http, loop=loop,
                            log_level="warning", access_log=False, lifespan="on", ws="none")
    uvicorn.Server(config).run(sockets=[sock])


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU time of processes (Linux /proc), or None elsewhere."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None
    return total / ticks


@dataclass
class Servers:
    port: int
    pids: list[int]


@contextlib.contextmanager
def server(db_url: str, workers: int, http: str, loop: str) -> Iterator[Servers]:
    port = free_port()
    env = {
        **os.environ,
        "DISPATCHER_DB_URL": db_url,
        "DISPATCHER_CONFIG": str(ROOT / "config" / "dispatcher.toml"),
        "DISPATCHER_PUBLIC_URL": PUBLIC,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "DISPATCHER_SIGNING_KEY": "bench-signing-key-" + "x" * 16,
        "DISPATCHER_NOW": NOW.isoformat(),
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port), "--http", http, "--loop", loop]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env) for _ in range(workers)]
    try:
        deadline = time.monotonic() + 60
        healthy = 0
        while healthy < 3:  # a few answers in a row: every process is up, or soon will be
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a server process exited during start-up")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    healthy = healthy + 1 if s.recv(64).startswith(b"HTTP/1.1 200") else 0
            except OSError:
                healthy = 0
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become healthy within 60 s")
            time.sleep(0.3 if healthy == 0 else 0.05)
        time.sleep(1.0 if workers > 1 else 0.0)
        yield Servers(port, [p.pid for p in procs])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ------------------------------------------------------------------------ clients


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def fire_raw(port: int, requests: list[bytes], concurrency: int, rate: float | None) -> Run:
    run = Run()
    pending = list(reversed(requests))
    start = time.perf_counter()
    interval = 1.0 / rate if rate else 0.0

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while pending:
                request = pending.pop()
                if interval:
                    # open loop: request k is due at start + k / rate, whatever the server does
                    due = start + (len(requests) - len(pending) - 1) * interval
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent = due
                else:
                    sent = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                run.latencies.append(time.perf_counter() - sent)
                run.count(status)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    await asyncio.gather(*(connection(i) for i in range(concurrency)))
    run.elapsed = time.perf_counter() - start
    return run


async def fire_httpx(port: int, requests: list[bytes], concurrency: int, rate: float | None) -> Run:
    import httpx

    run = Run()
    pending = list(reversed(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:

        async def worker() -> None:
            while pending:
                raw = pending.pop()
                head, _, body = raw.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                path = lines[0].split()[1]
                headers = dict(line.split(": ", 1) for line in lines[1:])
                headers.pop("Content-Length", None)
                t = time.perf_counter()
                response = await client.post(path, content=body, headers=headers)
                run.latencies.append(time.perf_counter() - t)
                run.count(response.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.elapsed = time.perf_counter() - start
    return run


# ------------------------------------------------------------------------ verification


def verify(db_url: str, workload: Workload) -> tuple[int, int, int]:
    """(messages in a wrong final status, status_received events, orphan events)."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            final = dict(conn.execute(
                select(messages_t.c.id, messages_t.c.status)
                .where(messages_t.c.id.in_(list(workload.expected)))
            ).all())
            events = dict(conn.execute(
                select(events_t.c.kind, func.count()).group_by(events_t.c.kind)
            ).all())
    finally:
        engine.dispose()
    wrong = sum(1 for m, want in workload.expected.items() if final.get(m) != want)
    return wrong, int(events.get("status_received", 0)), int(events.get("orphan_callback", 0))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def bench(backend: str, db_url: str, args: argparse.Namespace) -> dict[str, object]:
    workload, warmup = seed_and_build(db_url, args.messages, args.duplicates, args.seed)
    fire = fire_httpx if args.client == "httpx" else fire_raw
    with server(db_url, args.workers, args.http, args.loop) as servers:
        asyncio.run(fire(servers.port, warmup.requests, args.concurrency, None))
        load_before = os.getloadavg()[0]
        cpu_before = cpu_seconds(servers.pids)
        run = asyncio.run(fire(servers.port, workload.requests, args.concurrency, args.rate))
        cpu_after = cpu_seconds(servers.pids)
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    wrong, received, orphans = verify(db_url, workload)
    non_200 = sum(n for status, n in run.statuses.items() if status != 200)
    moved = sum(1 for m, want in workload.expected.items() if want != workload.initial[m])
    return {
        "backend": backend,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "offered": f"{args.rate:.0f}/s" if args.rate else "max",
        "callbacks": len(workload.requests),
        "messages": len(workload.expected),
        "seconds": run.elapsed,
        "rate": len(workload.requests) / run.elapsed,
        "p50": percentile(run.latencies, 0.50) * 1000,
        "p99": percentile(run.latencies, 0.99) * 1000,
        "max": max(run.latencies) * 1000,
        "mean": statistics.fmean(run.latencies) * 1000,
        "non_200": non_200,
        "wrong_final": wrong,
        "lost": non_200 + wrong,
        "events_ok": moved <= received <= workload.unique and orphans == 0,
        "load": load_before,
        # server processes' CPU per callback: what a core can sustain is about 1 / this
        "cpu_us": None if server_cpu is None else server_cpu / len(workload.requests) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--pg", default=os.environ.get("DISPATCHER_TEST_PG_URL") or DEFAULT_PG,
                        help="PostgreSQL server URL (a bench database is created and dropped there)")
    parser.add_argument("--messages", type=int, default=6000, help="messages in flight (default 6000)")
    parser.add_argument("--duplicates", type=float, default=1 / 3, help="share of duplicated callbacks")
    parser.add_argument("--concurrency", type=int, default=32, help="connections, one request each in flight")
    parser.add_argument("--workers", type=int, default=None,
                        help="server processes on one SO_REUSEPORT port (default: 1 on SQLite, 2 on PostgreSQL)")
    parser.add_argument("--rate", type=float, default=None, help="open loop: offer this many callbacks/s")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--http", default="auto", help="uvicorn --http (auto, h11, httptools)")
    parser.add_argument("--loop", default="auto", help="uvicorn --loop (auto, asyncio, uvloop)")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.http, args.loop)
        return 0

    results = []
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        workers = args.workers or (1 if backend == "sqlite" else 2)
        run_args = argparse.Namespace(**{**vars(args), "workers": workers})
        database = sqlite_database() if backend == "sqlite" else pg_database(args.pg)
        with database as db_url:
            print(f"running {backend} ({workers} worker(s), {args.concurrency} connections)...", file=sys.stderr)
            results.append(bench(backend, db_url, run_args))

    try:
        import httptools  # noqa: F401
        parser_impl = "httptools"
    except ImportError:
        parser_impl = "h11"
    print(f"\nWebhook benchmark: signed status callbacks, {args.duplicates:.0%} duplicated, shuffled;"
          f" uvicorn --http {args.http} ({parser_impl} available), --loop {args.loop}; client {args.client}."
          f" {os.cpu_count()} CPUs, Python {platform.python_version()}.\n")
    print("| backend | workers | conns | offered | callbacks | messages | seconds | callbacks/s | p50 ms | p99 ms"
          " | max ms | non-200 | wrong final | lost | server CPU µs/callback | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['backend']} | {r['workers']} | {r['concurrency']} | {r['offered']} | {r['callbacks']} |"
              f" {r['messages']} | {r['seconds']:.1f} | {r['rate']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} |"
              f" {r['max']:.1f} | {r['non_200']} | {r['wrong_final']} | {r['lost']} |"
              f" {'-' if r['cpu_us'] is None else format(r['cpu_us'], '.0f')} | {r['load']:.1f} |")
    failed = [r for r in results if r["lost"] or not r["events_ok"]]
    for r in failed:
        print(f"\n{r['backend']}: LOST {r['lost']} (non-200 {r['non_200']}, wrong final {r['wrong_final']});"
              f" events consistent: {r['events_ok']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
