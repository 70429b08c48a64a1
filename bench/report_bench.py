"""Benchmark: `dispatcher report` over a large history on PostgreSQL.

    python bench/report_bench.py                          # 1,000,000 cases, 10 messages each
    python bench/report_bench.py --cases 100000           # 1/10 of the size
    python bench/report_bench.py --url URL                # measure an existing database (no load; schema upgraded)
    python bench/report_bench.py --url URL --serial       # and the database's CPU, without parallel workers

Loads a generated history with COPY into a fresh database: N cases (cn and us, due dates
spread so that every stage has cases all period), messages over the 28-day
period (11 at most, about 10 on average: SMS with receipts and 1-2 segments, e-mails, calls in dpd60/dpd90 with
durations in their status events), payments for about 30 % of the cases (half of them
in full, with `case_closed` events), link clicks, opt-outs, promises and disputes. Then
VACUUM ANALYZE, and the report is built (`reports.build_report`, the same call as
`dispatcher report --format json`, JSON rendered and dropped) in a fresh child process,
twice: wall seconds, against a baseline measured just before in the same child (one
`GROUP BY channel, status` pass over the messages: the least any report over the history
reads), CPU seconds of the child and of its PostgreSQL backend (`--serial`: with no
parallel workers, so that the backend's CPU is all the database's work, a figure the
machine's load does not inflate), the child's peak RSS (VmHWM) and the load average. Every
aggregation runs in the database, so the child's memory does not grow with the history. Results go in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.child import peak_rss_mb, run_child  # noqa: E402

PG_ADMIN = os.environ.get("DISPATCHER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
CONFIG = ROOT / "config" / "dispatcher.toml"
SINCE = dt.date(2026, 11, 2)  # a Monday
DAYS = 28
UNTIL = SINCE + dt.timedelta(days=DAYS - 1)
NOW = dt.datetime.combine(UNTIL + dt.timedelta(days=1), dt.time(12), tzinfo=dt.UTC)
CHUNK = 20_000  # cases per COPY batch
STAGES = (("pre_due", -3), ("early", 1), ("dpd30", 30), ("dpd60", 60), ("dpd90", 90))


def _stage(dpd: int) -> str | None:
    found = None
    for name, lo in STAGES:
        if dpd >= lo:
            found = name
    return found


def _ts(day: dt.date, seconds: int) -> str:
    return f"{day.isoformat()} {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}+00"


class Loader:
    """Builds COPY text for each table and sends it in batches."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.buffers: dict[str, io.StringIO] = {}
        self.message_id = 0
        self.event_id = 0

    def add(self, table: str, line: str) -> None:
        self.buffers.setdefault(table, io.StringIO()).write(line)

    def flush(self) -> None:
        columns = {
            "cases": "case_id, name, jurisdiction, locale, timezone, zones, escalated_stages, currency, principal,"
                     " interest, penalty, fees, amount_due, penalty_rate_daily, due_date, status, product,"
                     " paid_total, created_at, updated_at",
            "messages": "id, case_id, channel, stage, kind, template_id, variant, locale, status, idempotency_key,"
                        " scheduled_at, created_at, sent_at, status_at, attempts, answered_by, conversation,"
                        " segments, call_seconds",
            "payments": "case_id, amount, at, recorded_by",
            "events": "id, case_id, message_id, at, kind, actor, data",
            "holds": "case_id, reason, placed_at, until, placed_by",
        }
        with self.conn.cursor() as cur:
            for table in ("cases", "messages", "payments", "events", "holds"):
                buffer = self.buffers.pop(table, None)
                if buffer is None:
                    continue
                with cur.copy(f"COPY {table} ({columns[table]}) FROM STDIN") as copy:
                    copy.write(buffer.getvalue())
        self.conn.commit()


def load(url: str, cases: int, per_case: int) -> None:
    import psycopg

    from dispatcher.store.db import ensure_schema, make_engine

    engine = make_engine(url)
    ensure_schema(engine)
    engine.dispose()
    started = time.perf_counter()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        loader = Loader(conn)
        for i in range(cases):
            _case(loader, i, per_case)
            if (i + 1) % CHUNK == 0:
                loader.flush()
                if (i + 1) % (CHUNK * 10) == 0:
                    rate = (i + 1) / (time.perf_counter() - started)
                    print(f"  loaded {i + 1:,} cases ({rate:,.0f}/s)", file=sys.stderr, flush=True)
        loader.flush()
        conn.execute(f"SELECT setval('messages_id_seq', {loader.message_id + 1})")
        conn.execute(f"SELECT setval('events_id_seq', {loader.event_id + 1})")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")


def _case(loader: Loader, i: int, per_case: int) -> None:
    h = (i * 2654435761) % 4294967296  # a cheap deterministic hash of the case number
    cn = h % 10 < 6
    case_id = f"B{i:08d}"
    jurisdiction, currency, locale, zone = (("cn", "CNY", "zh-CN", "Asia/Shanghai") if cn
                                            else ("us", "USD", "en-US", "America/New_York"))
    # DPD on the first day of the period: -10 .. 159, so every stage has cases all period
    dpd0 = (h >> 8) % 170 - 10
    due = SINCE - dt.timedelta(days=dpd0)
    cents = 50_000 + (h >> 4) % 2_000_000
    amount = f"{cents // 100}.{cents % 100:02d}"
    created = _ts(SINCE - dt.timedelta(days=30), 3600)
    pays = (h >> 12) % 10 < 3
    pay_day = (h >> 16) % DAYS
    full = (h >> 20) % 2 == 0
    paid_cents = cents if full else cents // 2
    status = "paid" if pays and full else "active"
    paid = f"{paid_cents // 100}.{paid_cents % 100:02d}" if pays else "0"
    loader.add("cases", f"{case_id}\tDebtor {i}\t{jurisdiction}\t{locale}\t\\N\t{zone}\t\t{currency}\t{amount}\t0\t0\t0"
                        f"\t{amount}\t\\N\t{due.isoformat()}\t{status}\tloan\t{paid}\t{created}\t{created}\n")
    pay_at = _ts(SINCE + dt.timedelta(days=pay_day), 30_000 + (h >> 3) % 30_000) if pays else None
    for k in range(per_case):
        day = (k * DAYS) // per_case + (h >> (k % 7)) % 2
        if pays and full and day > pay_day:
            break  # closed cases are not contacted
        sent_day = SINCE + dt.timedelta(days=day)
        stage = _stage(dpd0 + day)
        if stage is None:
            continue
        late = stage in ("dpd60", "dpd90")
        r = (h >> (k + 3)) % 20
        channel = "voice" if late and r < 6 else ("email" if r < 13 else "sms")
        loader.message_id += 1
        m = loader.message_id
        sent = _ts(sent_day, 3600 + (h >> k) % 40_000)
        answered, conversation, segments, seconds = "\\N", "f", "\\N", "\\N"
        if channel == "sms":
            status, segments = ("delivered" if r != 19 else "undelivered"), str(1 + k % 2)
        elif channel == "email":
            status = "sent"
            if (h >> k) % 33 == 0:
                _event(loader, case_id, m, sent, "link_clicked", "{}")
        else:
            status = "completed" if r % 2 == 0 else "no-answer"
            if status == "completed":
                human = r % 4 == 0
                answered, conversation = ("human", "t") if human else ("machine_end_beep", "f")
                seconds = str(20 + (h >> k) % 200)  # on the row and in its event, as the status callback leaves them
                _event(loader, case_id, m, sent, "status_received",
                       json.dumps({"duration": seconds, "status": "completed"}))
        variant = f"v{1 + (h >> (k + 1)) % (2 if channel == 'voice' else 3)}"
        loader.add("messages", f"{m}\t{case_id}\t{channel}\t{stage}\tscheduled\t{channel}/{stage}/{variant}\t{variant}"
                               f"\t{locale}\t{status}\tb{m}\t{sent}\t{sent}\t{sent}\t{sent}\t1\t{answered}"
                               f"\t{conversation}\t{segments}\t{seconds}\n")
    if pays and pay_at is not None:
        loader.add("payments", f"{case_id}\t{paid}\t{pay_at}\tbench\n")
        if full:
            _event(loader, case_id, None, pay_at, "case_closed", '{"reason": "paid_in_full"}')
    if h % 200 == 0:
        _event(loader, case_id, None, _ts(SINCE + dt.timedelta(days=(h >> 5) % DAYS), 40_000), "opted_out", "{}")
    if h % 50 == 1:
        placed = SINCE + dt.timedelta(days=(h >> 6) % DAYS)
        loader.add("holds", f"{case_id}\tpromise_to_pay\t{_ts(placed, 36_000)}"
                            f"\t{_ts(placed + dt.timedelta(days=7), 36_000)}\tivr\n")
    if h % 300 == 2:
        loader.add("holds", f"{case_id}\tdispute_hold\t{_ts(SINCE + dt.timedelta(days=(h >> 7) % DAYS), 36_000)}"
                            "\t\\N\tsms\n")


def _event(loader: Loader, case_id: str, message_id: int | None, at: str, kind: str, data: str) -> None:
    loader.event_id += 1
    mid = "\\N" if message_id is None else str(message_id)
    loader.add("events", f"{loader.event_id}\t{case_id}\t{mid}\t{at}\t{kind}\tbench\t{data}\n")


# ------------------------------------------------------------------------ measurement


def _measure(url: str, queue: Any) -> None:
    from dispatcher.config import load_config
    from dispatcher.reports import build_report
    from dispatcher.store.db import make_engine

    config = load_config(CONFIG)
    engine = make_engine(url)
    # the baseline, in the same process and minute: one pass over the messages with a
    # trivial grouping, the least any report over the history must read
    wall0 = time.perf_counter()
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT channel, status, count(*) FROM messages GROUP BY channel, status").all()
        backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    scan = time.perf_counter() - wall0
    db0 = _cpu_seconds(backend)
    load0 = os.getloadavg()[0]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    report = build_report(engine, config, NOW, since=SINCE, until=UNTIL)
    text = json.dumps(report.as_json(), ensure_ascii=False)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    db_cpu = _cpu_seconds(backend) - db0
    with engine.connect() as conn:  # the pool's one connection served the report too
        same = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == backend
    engine.dispose()
    queue.put({"wall": wall, "scan": scan, "cpu": cpu, "rss": peak_rss_mb(), "json_bytes": len(text),
               "db_cpu": db_cpu if same else None, "load0": load0,
               "sent": report.messages.total("sent"), "stages": len(report.stages),
               "entered": sum(s.cases_entered for s in report.stages), "experiments": len(report.experiments),
               "load": os.getloadavg()[0]})


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a PostgreSQL backend on this machine, from /proc: the
    database's own work for the report, whatever the load. Parallel workers are processes
    of their own and not counted: measure with `--serial` for the whole of it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _counts(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for t in ("cases", "messages", "payments", "events", "holds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--per-case", type=int, default=11, help="messages per case (at most; about 10 on average)")
    parser.add_argument("--url", help="an existing database: measure only")
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--serial", action="store_true",
                        help="no parallel query workers: the backend's CPU seconds are all the database's work")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    import psycopg

    name = None
    url = args.url
    if url is None:
        name = f"dispatcher_report_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
        if args.keep:
            print(f"database (kept): {url}", flush=True)
    try:
        if args.url is None:
            t0 = time.perf_counter()
            load(url, args.cases, args.per_case)
            print(f"load (COPY + VACUUM ANALYZE): {time.perf_counter() - t0:,.1f} s")
        else:  # a database kept by an earlier version: bring its schema up to this one's first
            from dispatcher.store.db import ensure_schema, make_engine

            t0 = time.perf_counter()
            ensure_schema(make_engine(url))
            print(f"schema brought up to date: {time.perf_counter() - t0:,.1f} s")
        counts = _counts(url)
        print("rows: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        if args.serial:  # libpq's options: no parallel workers, so the backend does all the work
            url += ("&" if "?" in url else "?") + "options=-c%20max_parallel_workers_per_gather%3D0"
        for run in range(args.runs):
            r = run_child(_measure, url)
            db_cpu = "?" if r["db_cpu"] is None else f"{r['db_cpu']:.1f} s"
            print(f"report run {run + 1}{' (serial)' if args.serial else ''}: wall {r['wall']:.1f} s (baseline scan"
                  f" {r['scan']:.1f} s, ratio {r['wall'] / r['scan']:.1f}), PostgreSQL backend CPU {db_cpu},"
                  f" report process CPU {r['cpu']:.1f} s, peak RSS {r['rss']:.0f} MB,"
                  f" JSON {r['json_bytes']:,} bytes, sent {r['sent']:,}, stage rows {r['stages']},"
                  f" cases entered (sum) {r['entered']:,}, experiments {r['experiments']},"
                  f" load avg {r['load0']:.1f} before, {r['load']:.1f} after", flush=True)
    finally:
        if name is not None and not args.keep:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
