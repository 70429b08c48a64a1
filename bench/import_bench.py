"""Import throughput: rows/s for a generated file of N cases on SQLite and PostgreSQL.

    .venv/bin/python bench/import_bench.py [--rows 100000] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]

Each run imports into a fresh database (a temporary SQLite file; a temporary PostgreSQL
database created on the server of --pg and dropped afterwards), then re-imports the
same file (all updates). Prints rows/s and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import resource
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import make_url

from dispatcher.clock import FakeClock
from dispatcher.config import load_config
from dispatcher.services.importer import import_file
from dispatcher.store.db import ensure_schema, make_engine

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("case_id,name,jurisdiction,phone,email,principal,interest,penalty,fees,amount_due,"
          "penalty_rate_daily,due_date,product\n")


def write_cases(path: Path, rows: int, seed: int = 7) -> None:
    """A realistic mix: CN and US cases, national and E.164 numbers, some without e-mail."""
    rnd = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        out.write(HEADER)
        for i in range(rows):
            cents = rnd.randrange(10_000, 5_000_000)
            principal, interest, penalty = cents, cents // 50, cents // 200
            due = dt.date(2026, 12, 7) - dt.timedelta(days=rnd.randrange(-3, 200))
            if i % 3:
                jurisdiction, phone = "cn", f"138{i % 100_000_000:08d}"
            else:
                jurisdiction, phone = "us", f"+1 310 555 {i % 10_000:04d}"
            email = f"d{i}@example.com" if i % 4 else ""
            money = (f"{principal / 100:.2f}", f"{interest / 100:.2f}", f"{penalty / 100:.2f}", "0",
                     f"{(principal + interest + penalty) / 100:.2f}")
            out.write(f"C{i:09d},Debtor {i},{jurisdiction},{phone},{email},{','.join(money)},0.0005,"
                      f"{due.isoformat()},loan\n")


def run(url: str, path: Path, rows: int, label: str) -> None:
    config = load_config(ROOT / "config" / "dispatcher.toml")
    clock = FakeClock(dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC))
    engine = make_engine(url)
    try:
        ensure_schema(engine)
        started = time.perf_counter()
        report = import_file(path, engine, config, clock)
        first = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        started = time.perf_counter()
        again = import_file(path, engine, config, clock)
        second = time.perf_counter() - started
    finally:
        engine.dispose()
    assert report.imported == rows and again.updated == rows, (report.summary, again.summary)
    print(f"{label:10s} insert {rows / first:9,.0f} rows/s ({first:5.1f} s, peak RSS so far {peak / 2**20:5.0f} MiB)"
          f"   update {rows / second:9,.0f} rows/s ({second:5.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="server to create a scratch database on; empty to skip PostgreSQL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cases.csv"
        write_cases(path, args.rows)
        print(f"{args.rows:,} rows, {path.stat().st_size / 2**20:.1f} MiB")
        run(f"sqlite:///{tmp}/bench.db", path, args.rows, "sqlite")
        if args.pg:
            admin = make_url(args.pg)
            libpq = admin.set(drivername="postgresql").render_as_string(hide_password=False)
            name = f"dispatcher_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(libpq, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            try:
                run(admin.set(database=name).render_as_string(hide_password=False), path, args.rows, "postgresql")
            finally:
                with psycopg.connect(libpq, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
