"""Benchmark: case search (`GET /api/cases?q=`, `services.search.search_cases`) on
PostgreSQL with 1,000,000 cases.

    python bench/search_bench.py                      # 1,000,000 cases
    python bench/search_bench.py --cases 100000       # 1/10 of the size
    python bench/search_bench.py --url URL            # measure an existing database (no load)

Loads N cases (60 % Chinese names of a common surname and one or two given characters,
40 % English first and last names) with their three contact points (SMS and voice on
one phone, e-mail) by COPY into a fresh migrated database, the search indexes dropped
during the load and built again after it (as `CREATE INDEX` on a loaded table), then
VACUUM ANALYZE. Each query kind is then run `--runs` times through `search_cases` (the
API's own call, limit 20) with queries drawn from the loaded data, and its p50 / p99 /
max wall time printed (the client's: a search and its detail query, two round trips),
with the database's own execution time of the search statement (EXPLAIN ANALYZE, p50 /
p99) and the EXPLAIN ANALYZE plan of each kind's SQL. Results go in
BENCHMARKS.md (goal: p99 <= 50 ms).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN = os.environ.get("DISPATCHER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
CHUNK = 50_000
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红鹏辉建国文斌宇浩凯健俊帆鑫晨欣怡佳琪梓轩子涵雨"
FIRST = ("Alex", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Avery", "Quinn", "Drew", "Maria",
         "James", "Linda", "Robert", "Patricia", "Michael", "Jennifer", "David", "Elizabeth", "William")
LAST = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
        "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Moore", "Jackson", "Martin", "Lee")
NOW = "2026-12-01 00:00:00+00"


def _person(i: int, rng: random.Random) -> tuple[str, str, str, str]:
    """(case id, name, phone, e-mail) of case number i."""
    case_id = f"C{i:08d}" if i % 2 else f"cn-{i:08d}"
    if rng.random() < 0.6:
        name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
        phone = f"+861{rng.choice('3456789')}{rng.randrange(10**9):09d}"
        email = f"user{i}.{rng.choice(('wang', 'li', 'zhang', 'liu', 'chen'))}@example.cn"
    else:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        name = f"{first} {last}"
        phone = f"+1{rng.randrange(200, 999)}{rng.randrange(10**7):07d}"
        email = f"{first.lower()}.{last.lower()}{i}@example.com"
    return case_id, name, phone, email


def load(url: str, cases: int) -> None:
    import psycopg

    from dispatcher.store.db import ensure_schema, make_engine

    engine = make_engine(url)
    ensure_schema(engine)
    engine.dispose()
    rng = random.Random(13)
    started = time.perf_counter()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE indexname LIKE 'ix_search_%%'"
                               ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        conn.commit()
        for start in range(0, cases, CHUNK):
            case_rows, contact_rows = io.StringIO(), io.StringIO()
            for i in range(start, min(start + CHUNK, cases)):
                case_id, name, phone, email = _person(i, rng)
                cn = name[0] in SURNAMES
                case_rows.write("\t".join((
                    case_id, name, "cn" if cn else "us", "zh-CN" if cn else "en-US",
                    "Asia/Shanghai" if cn else "America/New_York", "", "CNY" if cn else "USD", "1000.00", "0",
                    "0", "0", "1000.00", "2026-10-01", "active", "other", "0", NOW, NOW)) + "\n")
                for channel, address in (("sms", phone), ("voice", phone), ("email", email)):
                    contact_rows.write(f"{case_id}\t{channel}\t{address}\tt\tf\tf\t{NOW}\n")
            with conn.cursor() as cur:
                with cur.copy("COPY cases (case_id, name, jurisdiction, locale, zones, escalated_stages,"
                              " currency, principal, interest, penalty, fees, amount_due, due_date, status,"
                              " product, paid_total, created_at, updated_at) FROM STDIN") as copy:
                    copy.write(case_rows.getvalue())
                with cur.copy("COPY contact_points (case_id, channel, address, consent, opted_out, invalid,"
                              " updated_at) FROM STDIN") as copy:
                    copy.write(contact_rows.getvalue())
            conn.commit()
            done = min(start + CHUNK, cases)
            if done % (CHUNK * 4) == 0 or done == cases:
                print(f"  loaded {done:,} cases ({done / (time.perf_counter() - started):,.0f}/s)",
                      file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        for _name, ddl in indexes:
            conn.execute(ddl)
            conn.commit()
        print(f"  search indexes built in {time.perf_counter() - t0:.1f} s: {', '.join(n for n, _ in indexes)}",
              file=sys.stderr)
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")


def _queries(url: str, runs: int) -> dict[str, list[str]]:
    """Queries of each kind, drawn from the loaded data (and some that find nothing)."""
    import psycopg

    rng = random.Random(7)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        sample = conn.execute("SELECT case_id, name FROM cases TABLESAMPLE SYSTEM (1) LIMIT 5000").fetchall()
        phones = [r[0] for r in conn.execute(
            "SELECT address FROM contact_points TABLESAMPLE SYSTEM (1) WHERE channel = 'sms' LIMIT 2000")]
        emails = [r[0] for r in conn.execute(
            "SELECT address FROM contact_points TABLESAMPLE SYSTEM (1) WHERE channel = 'email' LIMIT 2000")]
    chinese = [n for _, n in sample if n[0] in SURNAMES and len(n) == 3]
    english = [n for _, n in sample if " " in n]
    pick = lambda pool, f: [f(rng.choice(pool)) for _ in range(runs)]  # noqa: E731
    return {
        "case id prefix (8 chars, lower case)": pick(sample, lambda r: r[0][:8].lower()),
        "case id prefix (3 chars)": pick(sample, lambda r: r[0][:3].upper()),
        "name: Chinese surname (1 char)": pick(chinese, lambda n: n[0]),
        "name: Chinese full name (3 chars)": pick(chinese, lambda n: n),
        "name: Chinese given name (2 chars)": pick(chinese, lambda n: n[1:]),
        "name: English last name": pick(english, lambda n: n.split()[1].lower()),
        "phone last 4": pick(phones, lambda p: p[-4:]),
        "e-mail local part": pick(emails, lambda e: e.split("@")[0]),
        "nothing found (name)": pick(sample, lambda r: "Zyxwv"),
        "nothing found (Chinese)": pick(sample, lambda r: "龘"),
    }


def measure(url: str, runs: int) -> None:
    from sqlalchemy.dialects import postgresql

    from dispatcher.services.search import SUBSTRING_MIN, search_cases, search_statement
    from dispatcher.services.search import _queries as search_sql
    from dispatcher.store.db import make_engine

    engine = make_engine(url)
    queries = _queries(url, runs)
    print("\n| query kind | runs | p50 ms | p99 ms | max ms | server p50 ms | server p99 ms | hits (median) |"
          "\n|---|---|---|---|---|---|---|---|")
    plans: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for label, qs in queries.items():
            times, hits, server = [], [], []
            for q in qs:
                t0 = time.perf_counter()
                found = search_cases(conn, q, 20)
                times.append((time.perf_counter() - t0) * 1000)
                hits.append(len(found))
                # the database's own time for the search statement (no client, no scheduling)
                sql = str(search_statement(conn, q, 20).compile(dialect=postgresql.dialect(),
                                                                compile_kwargs={"literal_binds": True}))
                savepoint = conn.begin_nested()  # as search_cases runs it (services.search._run)
                if len(q) < SUBSTRING_MIN:
                    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
                plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, TIMING OFF) " + sql)]
                savepoint.rollback()
                server.append(float(next(p for p in plan if p.startswith("Execution Time")).split()[2]))
            times.sort()
            server.sort()
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            s99 = server[min(len(server) - 1, int(len(server) * 0.99))]
            print(f"| {label} | {len(times)} | {statistics.median(times):.1f} | {p99:.1f} | {times[-1]:.1f} |"
                  f" {statistics.median(server):.2f} | {s99:.2f} | {statistics.median(hits):.0f} |", flush=True)
            for kind, stmt in search_sql(conn, qs[0], 20).items():
                sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
                savepoint = conn.begin_nested()
                if len(qs[0]) < SUBSTRING_MIN:
                    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
                plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF) " + sql)]
                savepoint.rollback()
                plans.setdefault(f"{label} [{kind}] q={qs[0]!r}", plan)
    engine.dispose()
    print("\nEXPLAIN ANALYZE (first query of each kind):")
    for label, plan in plans.items():
        print(f"\n{label}")
        for line in plan:
            print(f"    {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--url", help="an existing database: measure only")
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    parser.add_argument("--runs", type=int, default=200, help="queries per kind")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC,"
          f" load avg {os.getloadavg()[0]:.1f}")
    import psycopg

    name = None
    url = args.url
    if url is None:
        name = f"dispatcher_search_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        if args.url is None:
            t0 = time.perf_counter()
            load(url, args.cases)
            print(f"load (COPY, index build, VACUUM ANALYZE) of {args.cases:,} cases:"
                  f" {time.perf_counter() - t0:,.1f} s")
        measure(url, args.runs)
        print(f"\nload avg after: {os.getloadavg()[0]:.1f}")
    finally:
        if name is not None and not args.keep:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
