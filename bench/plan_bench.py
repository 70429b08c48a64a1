"""Benchmark: `dispatcher plan` throughput on N generated cases, SQLite and PostgreSQL.

    python bench/plan_bench.py                    # 100,000 cases, both databases
    python bench/plan_bench.py --cases 1000000
    python bench/plan_bench.py --db sqlite        # one backend only
    python bench/plan_bench.py --url URL          # measure an existing database (no load)

For each backend it bulk-loads N generated cases (three contact points each, an SMS in
the history of every third case) into a fresh database (SQLite: executemany; PostgreSQL:
COPY), analyses it, then runs two measurements, each in a fresh child process so that
peak RSS is its own:

  - select: a plain streamed SELECT of the rows the plan reads (cases, contact points,
    active holds, the 60-day message history) in keyset batches of 5,000 cases through
    SQLAlchemy Core, rows fetched and dropped;
  - plan: the `dispatcher plan` command itself (`--format jsonl`), run in-process with
    its standard output going to /dev/null. Timed from the call to the command's return,
    so it includes the command's start (configuration, template catalog, schema check)
    but not the interpreter's start and imports.

It prints the machine, then one row per backend: cases/s of each, their ratio
(plan/select), wall and CPU seconds of the plan, peak RSS of each child and the 1-minute
load average when the plan ended (this machine is shared: a load above the core count
means the figures are low). Results go in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.child import peak_rss_mb, run_child  # noqa: E402

NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)  # Mon 10:00 in Shanghai
PG_ADMIN = os.environ.get("DISPATCHER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
CONFIG = ROOT / "config" / "dispatcher.toml"
BATCH = 5000  # the plan's keyset batch (plan_decisions' default)
LOAD_CHUNK = 50_000  # cases per load transaction

CASE_COLUMNS = (
    "case_id", "name", "jurisdiction", "locale", "timezone", "zones", "escalated_stages", "currency",
    "principal", "interest", "penalty", "fees", "amount_due", "penalty_rate_daily", "due_date", "status",
    "product", "paid_total", "created_at", "updated_at",
)
CONTACT_COLUMNS = ("case_id", "channel", "address", "consent", "opted_out", "invalid", "updated_at")
MESSAGE_COLUMNS = (
    "case_id", "channel", "stage", "kind", "template_id", "status", "idempotency_key", "scheduled_at",
    "created_at", "sent_at", "attempts", "conversation",
)


# ------------------------------------------------------------------------------- load


def generated_rows(n: int) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]], tuple[Any, ...] | None]]:
    """(case, contact points, message or None) per generated case, in the column orders above."""
    from dispatcher.config import load_config
    from dispatcher.domain import Case
    from dispatcher.policy import resolve_zones
    from dispatcher.services.portfolio import generate_cases

    config = load_config(CONFIG)
    zone_cache: dict[tuple[str, str], str] = {}
    zero = Decimal(0)
    for i, row in enumerate(generate_cases(n, NOW.date(), seed=11)):
        # zones as the importer stores them, resolved once per (jurisdiction, prefix, zone)
        key = (row["jurisdiction"], row["phone"][:6] + row["timezone"])
        zones = zone_cache.get(key)
        if zones is None:
            case = Case(case_id=row["case_id"], name=row["name"], jurisdiction=row["jurisdiction"],
                        locale=row["locale"], currency=row["currency"], principal=zero, interest=zero,
                        penalty=zero, fees=zero, amount_due=zero,
                        due_date=dt.date.fromisoformat(row["due_date"]), timezone=row["timezone"] or None,
                        phone=row["phone"] or None)
            zones = zone_cache[key] = ",".join(resolve_zones(case, config.jurisdictions[row["jurisdiction"]]))
        case_id = row["case_id"]
        case_row = (
            case_id, row["name"], row["jurisdiction"], row["locale"], row["timezone"] or None, zones, "",
            row["currency"], Decimal(row["principal"]), Decimal(row["interest"]), Decimal(row["penalty"]),
            Decimal(row["fees"]), Decimal(row["amount_due"]),
            Decimal(row["penalty_rate_daily"]) if row["penalty_rate_daily"] else None,
            dt.date.fromisoformat(row["due_date"]), "active", row["product"], zero, NOW, NOW,
        )
        contacts = [
            (case_id, channel, address or None, consent == "true", False, False, NOW)
            for channel, address, consent in (("sms", row["phone"], row["sms_consent"]),
                                              ("voice", row["phone"], row["voice_consent"]),
                                              ("email", row["email"], row["email_consent"]))
        ]
        message = None
        if i % 3 == 0:  # a third of the cases have a recent SMS
            sent = NOW - dt.timedelta(days=(i % 9) + 1)
            message = (case_id, "sms", None, "scheduled", "sms/early/v1", "delivered", f"bench-{case_id}",
                       sent, sent, sent, 1, False)
        yield case_row, contacts, message


class BulkWriter:
    """Appends rows to a table of the store: executemany on SQLite, COPY on PostgreSQL.
    Values go through the columns' own SQLAlchemy bind processing (Money as text on
    SQLite, UTC datetimes ...), so the rows are stored exactly as the store writes them."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.raw = engine.raw_connection()
        self.dbapi = self.raw.driver_connection

    def write(self, table: Any, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        procs = [table.c[name].type.dialect_impl(self.dialect).bind_processor(self.dialect) for name in columns]
        converted = [tuple(v if p is None else p(v) for p, v in zip(procs, row, strict=True)) for row in rows]
        names = ", ".join(columns)
        if self.dialect.name == "postgresql":
            with self.dbapi.cursor() as cur, cur.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
                for row in converted:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" * len(columns))
            self.dbapi.executemany(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", converted)

    def commit(self) -> None:
        self.dbapi.commit()

    def close(self) -> None:
        self.raw.close()


def load(url: str, n: int) -> None:
    """Bulk-load n generated cases into an empty store at `url`, then analyse it."""
    from dispatcher.store.db import ensure_schema, make_engine
    from dispatcher.store.tables import cases_t, contacts_t, messages_t

    engine = make_engine(url)
    ensure_schema(engine)
    writer = BulkWriter(engine)
    cases: list[tuple[Any, ...]] = []
    contacts: list[tuple[Any, ...]] = []
    messages: list[tuple[Any, ...]] = []

    def flush() -> None:
        writer.write(cases_t, CASE_COLUMNS, cases)
        writer.write(contacts_t, CONTACT_COLUMNS, contacts)
        writer.write(messages_t, MESSAGE_COLUMNS, messages)
        writer.commit()
        cases.clear()
        contacts.clear()
        messages.clear()

    try:
        for case_row, case_contacts, message in generated_rows(n):
            cases.append(case_row)
            contacts.extend(case_contacts)
            if message is not None:
                messages.append(message)
            if len(cases) >= LOAD_CHUNK:
                flush()
        if cases:
            flush()
    finally:
        writer.close()
    # Statistics as a live database has them (autovacuum / a routine ANALYZE), and no
    # bulk-load aftermath (PostgreSQL hint bits, an un-checkpointed SQLite WAL) billed to
    # whichever measurement happens to read the rows first.
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


# ------------------------------------------------------------------------ measurements


def _select(url: str, queue: Any) -> None:
    """The baseline: the plan's rows, plainly selected and dropped."""
    from sqlalchemy import and_, func, or_, select, true

    from dispatcher.store.db import make_engine
    from dispatcher.store.tables import cases_t as cases
    from dispatcher.store.tables import contacts_t as contacts
    from dispatcher.store.tables import holds_t as holds
    from dispatcher.store.tables import messages_t as messages

    cutoff = NOW - dt.timedelta(days=60)
    engine = make_engine(url)
    start, cpu = time.perf_counter(), time.process_time()
    count = 0
    with engine.connect() as conn:
        last: str | None = None
        while True:
            after = true() if last is None else cases.c.case_id > last
            rows = conn.execute(select(cases).where(after).order_by(cases.c.case_id).limit(BATCH)).all()
            if not rows:
                break
            high = rows[-1].case_id

            def in_range(col: Any, low: str | None = last, high: str = high) -> Any:
                return col <= high if low is None else and_(col > low, col <= high)

            conn.execute(select(contacts).where(in_range(contacts.c.case_id))).all()
            conn.execute(select(holds).where(in_range(holds.c.case_id), holds.c.released_at.is_(None),
                                             or_(holds.c.until.is_(None), holds.c.until > NOW))).all()
            conn.execute(select(messages).where(
                in_range(messages.c.case_id), func.coalesce(messages.c.sent_at, messages.c.scheduled_at) >= cutoff
            )).all()
            conn.rollback()
            count += len(rows)
            last = high
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    engine.dispose()
    queue.put({"cases": count, "seconds": elapsed, "cpu": cpu, "rss_mb": peak_rss_mb()})


class _CountingSink:
    """Standard output of the plan child: counts decision lines and cases, then writes to
    /dev/null (so the text is still encoded, as for a real file or pipe)."""

    def __init__(self) -> None:
        self.null = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.lines = 0
        self.cases = 0
        self.last_case: str | None = None

    def write(self, text: str) -> int:
        for line in (text,) if text.count("\n") == 1 else text.splitlines():
            self.lines += 1
            case_id = line[13 : line.find('"', 13)]  # {"case_id": "...
            if case_id != self.last_case:
                self.cases += 1
                self.last_case = case_id
        return self.null.write(text)

    def flush(self) -> None:
        self.null.flush()

    def close(self) -> None:
        self.null.close()


def _plan(url: str, queue: Any) -> None:
    """`dispatcher --config ... --db URL --now NOW plan`, in this process."""
    from dispatcher.cli import app

    sink = _CountingSink()
    stdout = sys.stdout
    start, cpu = time.perf_counter(), time.process_time()
    sys.stdout = sink  # type: ignore[assignment]
    try:
        code = app(["--config", str(CONFIG), "--db", url, "--now", NOW.isoformat(), "plan"], standalone_mode=False)
    finally:
        sys.stdout = stdout
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    sink.close()
    if code not in (None, 0):
        raise SystemExit(f"dispatcher plan exited with {code}")
    queue.put({"cases": sink.cases, "decisions": sink.lines, "seconds": elapsed, "cpu": cpu,
               "rss_mb": peak_rss_mb(), "load_1m": os.getloadavg()[0]})


def count_cases(url: str) -> int:
    from sqlalchemy import func, select

    from dispatcher.store.db import make_engine
    from dispatcher.store.tables import cases_t

    engine = make_engine(url)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(cases_t)).scalar_one()
    engine.dispose()
    return int(n)


def bench_backend(name: str, url: str, n: int | None) -> dict[str, Any]:
    load_s: float | None = None
    if n is not None:
        t0 = time.perf_counter()
        load(url, n)
        load_s = time.perf_counter() - t0
    else:
        n = count_cases(url)
    base = run_child(_select, url)
    plan = run_child(_plan, url)
    assert plan["cases"] == n == base["cases"], (n, plan, base)
    return {
        "backend": name,
        "cases": n,
        "decisions": plan["decisions"],
        "load_s": "-" if load_s is None else round(load_s, 1),
        "select_cases_s": round(n / base["seconds"]),
        "plan_cases_s": round(n / plan["seconds"]),
        "plan_vs_select": round(base["seconds"] / plan["seconds"], 2),
        "plan_s": round(plan["seconds"], 1),
        "plan_cpu_s": round(plan["cpu"], 1),
        "plan_peak_rss_mb": round(plan["rss_mb"]),
        "select_peak_rss_mb": round(base["rss_mb"]),
        "load_avg_1m": round(plan["load_1m"], 2),
    }


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem = ""
    if Path("/proc/meminfo").exists():
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    return (f"{os.cpu_count()} CPUs ({model}){mem}; Python {platform.python_version()},"
            f" SQLite {sqlite3.sqlite_version}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--url", help="measure this existing database instead (nothing loaded or dropped)")
    args = parser.parse_args()
    print(machine(), flush=True)
    results = []
    if args.url:
        results.append(bench_backend(args.url.split(":", 1)[0], args.url, None))
    if not args.url and args.db in ("sqlite", "both"):
        path = ROOT / "var" / f"plan_bench_{uuid.uuid4().hex[:8]}.db"
        try:
            results.append(bench_backend("sqlite", f"sqlite:///{path}", args.cases))
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    if not args.url and args.db in ("postgres", "both"):
        import psycopg

        name = f"dispatcher_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            version = admin.execute("SHOW server_version").fetchone()
            print(f"PostgreSQL {version[0] if version else '?'}", flush=True)
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = PG_ADMIN.rsplit("/", 1)[0]
            results.append(bench_backend("postgres", f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}",
                                         args.cases))
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    cols = list(results[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
