"""Benchmark: incremental planning spread over instances, on PostgreSQL.

    python bench/scale_bench.py                        # 1,000,000 cases; 1, 2 and 3 instances
    python bench/scale_bench.py --cases 100000 --instances 1 3
    python bench/scale_bench.py --cases 10000000 --instances 1 --planned   # steady state only

Loads N generated cases (three contact points each, an SMS in the history of every third
case; `plan_bench.generated_rows`) into a fresh database with COPY, their planned
instants marked dirty as the import leaves them, and VACUUM ANALYZE. Then, for each
instance count k, on a copy of that database (`CREATE DATABASE ... TEMPLATE`):

  - full: k planner processes (`IncrementalPlanner`, as `dispatcher run` has one) start
    together at the same instant and plan the whole portfolio (every case is dirty),
    sharing its 64 partitions through their leases;
  - steady: 1 % of the cases change (an import update of their amount, through the
    store's own `insert_events`, which invalidates them), and the k processes plan again
    one minute later: only what changed or fell due is evaluated.

With `--planned` the cases are loaded as a full plan leaves them instead (each case's next
instant spread over the following day, from the case id: nothing due a minute later) and
only the steady run is measured: the figure that matters at sizes whose full plan takes
longer than a session (10,000,000 cases: about 110 minutes on a 2-core machine at the
1,000,000-case rate). What this leaves out against a real full plan: the outbox the plan
would have queued (about 1.7 messages per case), so the database is smaller.

Per run: wall seconds (from the common start to the last instance's end), cases
evaluated, cases/s, each instance's CPU seconds and peak RSS, the load average. Then
the steady/full ratio, the 1 -> k scaling of the full plan, and the database size. At
the end, EXPLAIN (ANALYZE, BUFFERS) of the due-cases scan, the partition claim, the
planner's instant write and the sender's outbox claim, on the last copy. Results go in
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan_bench import (  # noqa: E402 - the shared generator and COPY writer
    CASE_COLUMNS,
    CONFIG,
    CONTACT_COLUMNS,
    LOAD_CHUNK,
    MESSAGE_COLUMNS,
    NOW,
    PG_ADMIN,
    BulkWriter,
    generated_rows,
    machine,
)

from bench.child import peak_rss_mb  # noqa: E402

STEADY_AT = NOW + dt.timedelta(minutes=1)
CHANGED_SHARE = 0.01


def url_of(name: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0].split("://", 1)[1]
    return f"postgresql+psycopg://{base}/{name}"


def admin(sql: str) -> Any:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if sql.lstrip().upper().startswith("SELECT") else None


def planned_instant(case_id: str) -> dt.datetime:
    """Where a full plan at NOW leaves a case with nothing due: its next instant somewhere
    in the following day (1 to 24 h on, from the case id's hash: deterministic, spread)."""
    return NOW + dt.timedelta(minutes=60 + zlib.crc32(case_id.encode()) % (23 * 60))


def load(url: str, n: int, *, planned: bool = False) -> float:
    """COPY n generated cases (and their planned instants: dirty as the import leaves
    them, or with `planned` as a full plan at NOW leaves them) into an empty store."""
    from dispatcher.store.db import ensure_schema, make_engine
    from dispatcher.store.plan_state import DIRTY, partition_of
    from dispatcher.store.tables import cases_t, contacts_t, messages_t, plan_instants_t

    started = time.perf_counter()
    engine = make_engine(url)
    ensure_schema(engine)
    writer = BulkWriter(engine)
    cases: list[tuple[Any, ...]] = []
    contacts: list[tuple[Any, ...]] = []
    messages: list[tuple[Any, ...]] = []
    instants: list[tuple[Any, ...]] = []

    def flush() -> None:
        writer.write(cases_t, CASE_COLUMNS, cases)
        writer.write(contacts_t, CONTACT_COLUMNS, contacts)
        writer.write(messages_t, MESSAGE_COLUMNS, messages)
        writer.write(plan_instants_t, ("case_id", "part", "next_check_at", "generation"), instants)
        writer.commit()
        for rows in (cases, contacts, messages, instants):
            rows.clear()

    try:
        for case_row, case_contacts, message in generated_rows(n):
            cases.append(case_row)
            contacts.extend(case_contacts)
            at = planned_instant(case_row[0]) if planned else DIRTY
            instants.append((case_row[0], partition_of(case_row[0]), at, 0))
            if message is not None:
                messages.append(message)
            if len(cases) >= LOAD_CHUNK:
                flush()
        if cases:
            flush()
    finally:
        writer.close()
    if planned:
        _mark_planned(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    return time.perf_counter() - started


def _mark_planned(engine: Any) -> None:
    """What a full plan at NOW leaves besides the instants: the configuration's
    fingerprint and every partition planned at its epoch (else the first run would
    evaluate every case, as after a configuration change)."""
    from dispatcher.config import load_config
    from dispatcher.policy import Gate
    from dispatcher.services.planner import config_fingerprint
    from dispatcher.store import plan_leases, plan_state
    from dispatcher.templates import TemplateSet

    config = load_config(CONFIG)
    catalog = TemplateSet(config.resolve(config.templates.directory), config).approved_catalog()
    with engine.begin() as conn:
        plan_leases.ensure_partitions(conn)
        plan_state.store_fingerprint(conn, config_fingerprint(Gate(config), catalog), NOW)
        epoch = plan_state.current_epoch(conn)
        for part in range(plan_state.PARTITIONS):
            plan_leases.set_epoch(conn, part, epoch)
            assert plan_leases.claim(conn, part, "loader", 60, NOW, epoch) is not None
            assert plan_leases.finish(conn, part, "loader", NOW, epoch)


# ----------------------------------------------------------------------- the instances


def _instance(url: str, now_iso: str, name: str, go: Any, queue: Any) -> None:
    """One planning instance: wait for the common start, plan, report."""
    from dispatcher.config import load_config
    from dispatcher.policy import Gate
    from dispatcher.services.planner import IncrementalPlanner
    from dispatcher.store.db import make_engine
    from dispatcher.templates import TemplateSet

    config = load_config(CONFIG)
    engine = make_engine(url)
    catalog = TemplateSet(config.resolve(config.templates.directory), config).approved_catalog()
    planner = IncrementalPlanner(engine, Gate(config), instance_id=name, lease_seconds=60, batch_size=2000)
    with engine.connect() as conn:  # connect (and import everything) before the start
        conn.exec_driver_sql("SELECT 1")
    go.wait()
    cpu = time.process_time()
    summary = planner.run(catalog, dt.datetime.fromisoformat(now_iso))
    queue.put({"name": name, "end": time.time(), "cpu": time.process_time() - cpu,
               "evaluated": summary.evaluated, "partitions": summary.partitions, "queued": summary.queued,
               "deferred": summary.deferred, "adopted": summary.adopted, "rss_mb": peak_rss_mb()})
    engine.dispose()


def run_instances(url: str, k: int, now: dt.datetime) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    go, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_instance, args=(url, now.isoformat(), f"bench{i}", go, queue)) for i in range(k)]
    for p in procs:
        p.start()
    time.sleep(8)  # let every child import and connect: the start is common
    start = time.time()
    go.set()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a planning instance failed ({p.exitcode})")
    wall = max(r["end"] for r in results) - start
    evaluated = sum(r["evaluated"] for r in results)
    return {"wall_s": wall, "evaluated": evaluated, "cases_s": evaluated / wall if wall else 0.0,
            "per_instance": results, "load_1m": os.getloadavg()[0]}


def change_one_percent(url: str, n: int) -> int:
    """An import update of 1 % of the cases (spread evenly): their amount due changes and
    a `case_updated` event is recorded for each through `insert_events`, which is what
    invalidates them (the store's own path)."""
    from sqlalchemy import text

    from dispatcher.store.db import make_engine
    from dispatcher.store.events import EventKind, event_values, insert_events

    step = int(1 / CHANGED_SHARE)
    ids = [f"C{i:07d}" for i in range(0, n, step)]
    engine = make_engine(url)
    stmt = text("UPDATE cases SET amount_due = amount_due + 1, updated_at = :at WHERE case_id = ANY(:ids)")
    for start in range(0, len(ids), 5000):
        chunk = ids[start:start + 5000]
        with engine.begin() as conn:
            conn.execute(stmt, {"at": STEADY_AT, "ids": chunk})
            insert_events(conn, [event_values(EventKind.CASE_UPDATED, STEADY_AT, case_id=i, actor="import")
                                 for i in chunk])
    engine.dispose()
    return len(ids)


EXPLAINS = {
    "due-cases scan (one partition, 2,000 due cases at most)": (
        "SELECT case_id, generation, next_check_at FROM plan_instants"
        " WHERE part = 7 AND next_check_at <= '{now}' ORDER BY next_check_at, case_id LIMIT 2000"),
    "partition claim (lease)": (
        "UPDATE plan_partitions SET owner = 'explain', lease_until = clock_timestamp() + make_interval(secs => 60)"
        " WHERE part = 7 AND (owner IS NULL OR owner = 'explain' OR lease_until < clock_timestamp())"
        " AND NOT (planned_now IS NOT NULL AND planned_now >= '{now}' AND epoch >= 1) RETURNING epoch"),
    "planner's instant write (2,000 cases as bound arrays, generation-checked)": (
        "UPDATE plan_instants AS p SET next_check_at = v.at, planned_at = '{now}', planned_by = 'explain'"
        " FROM (SELECT unnest(CAST(%(ids)s AS VARCHAR[])) AS id, unnest(CAST(%(gens)s AS INTEGER[])) AS gen,"
        " unnest(CAST(%(ats)s AS TIMESTAMPTZ[])) AS at) AS v"
        " WHERE p.case_id = v.id AND p.generation = v.gen"),
    "sender's outbox claim (200 due messages, FOR UPDATE SKIP LOCKED)": (
        "WITH due AS MATERIALIZED (SELECT id FROM messages WHERE status = 'queued' AND scheduled_at <= '{now}'"
        " ORDER BY scheduled_at, id LIMIT 200 FOR UPDATE SKIP LOCKED)"
        " UPDATE messages SET status = 'sending', claimed_by = 'explain', claimed_at = '{now}'"
        " FROM due WHERE messages.id = due.id RETURNING messages.id"),
}


def explain(url: str, now: dt.datetime) -> None:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        sample = conn.execute("SELECT case_id, generation FROM plan_instants WHERE part = 7 ORDER BY case_id"
                              " LIMIT 2000").fetchall()
        params = {"ids": [r[0] for r in sample], "gens": [r[1] for r in sample],
                  "ats": [now + dt.timedelta(days=1)] * len(sample)}  # as the planner binds them
        for title, sql in EXPLAINS.items():
            text = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql.format(now=now.isoformat())
            rows = conn.execute(text, params if "%(ids)s" in sql else None).fetchall()
            conn.rollback()  # the writes are only explained
            print(f"\n{title}:\n```")
            print("\n".join(r[0] for r in rows))
            print("```")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--keep", action="store_true", help="keep the databases (names printed)")
    parser.add_argument("--planned", action="store_true",
                        help="load the cases as a full plan leaves them and measure the steady run only")
    args = parser.parse_args()
    print(machine(), flush=True)
    print(f"PostgreSQL {admin('SELECT version()')[0][0]}", flush=True)
    tag = uuid.uuid4().hex[:8]
    base = f"scale_bench_{tag}"
    made = [base]
    admin(f'CREATE DATABASE "{base}"')
    try:
        load_s = load(url_of(base), args.cases, planned=args.planned)
        size = admin(f"SELECT pg_size_pretty(pg_database_size('{base}'))")[0][0]
        print(f"loaded {args.cases:,} cases in {load_s:.0f} s; database {size}", flush=True)
        rows = []
        full_walls: dict[int, float] = {}
        for k in args.instances:
            copy = f"scale_bench_{tag}_{k}"
            admin(f'CREATE DATABASE "{copy}" TEMPLATE "{base}"')
            made.append(copy)
            full = None
            if not args.planned:
                full = run_instances(url_of(copy), k, NOW)
                assert full["evaluated"] == args.cases, full
                full_walls[k] = full["wall_s"]
            changed = change_one_percent(url_of(copy), args.cases)
            steady = run_instances(url_of(copy), k, STEADY_AT)
            assert steady["evaluated"] >= changed, steady
            size = admin(f"SELECT pg_size_pretty(pg_database_size('{copy}'))")[0][0]
            for label, r in (("full", full), ("steady", steady)):
                if r is None:
                    continue
                per = r["per_instance"]
                rows.append({
                    "instances": k, "run": label, "cases_evaluated": r["evaluated"],
                    "wall_s": round(r["wall_s"], 1), "cases_s": round(r["cases_s"]),
                    "cpu_s_per_instance": " / ".join(f"{p['cpu']:.1f}" for p in per),
                    "evaluated_per_instance": " / ".join(str(p["evaluated"]) for p in per),
                    "peak_rss_mb_per_instance": " / ".join(f"{p['rss_mb']:.0f}" for p in per),
                    "steady_vs_full": round(steady["wall_s"] / full["wall_s"], 4)
                    if label == "steady" and full is not None else "-",
                    "changed": changed if label == "steady" else "-",
                    "db_size": size, "load_1m": round(r["load_1m"], 1),
                })
                print(rows[-1], flush=True)
        cols = list(rows[0])
        print("\n| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(str(r[c]) for c in cols) + " |")
        if 1 in full_walls:
            for k, wall in full_walls.items():
                print(f"full plan scaling 1 -> {k}: {full_walls[1] / wall:.2f}x")
        explain(url_of(made[-1]), STEADY_AT)
    finally:
        if not args.keep:
            for name in made:
                admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print("kept:", ", ".join(made))


if __name__ == "__main__":
    main()
