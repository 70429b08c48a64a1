"""Benchmark: `dispatcher plan` throughput on N generated cases, SQLite and PostgreSQL.

    python bench/plan_bench.py                    # 100,000 cases, both databases
    python bench/plan_bench.py --cases 1000000
    python bench/plan_bench.py --db sqlite        # one backend only

For each backend it loads N cases (with contact points and some message history),
then, each in a fresh child process so peak RSS is its own:
  - baseline: a plain streamed SELECT of the same case and contact rows;
  - plan: the real pipeline (store stream -> pure policy -> JSON Lines to /dev/null).
It reports cases/s, peak RSS and the ratio plan/baseline. Results go in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import resource
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)  # Mon 10:00 in Shanghai
PG_ADMIN = os.environ.get("DISPATCHER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


def load(url: str, n: int) -> None:
    """Bulk-load n generated cases (+contact points, +a little history) with Core inserts."""
    from decimal import Decimal

    from sqlalchemy import insert

    from dispatcher.config import load_config
    from dispatcher.domain import Case
    from dispatcher.policy import resolve_zones
    from dispatcher.services.portfolio import generate_cases
    from dispatcher.store.db import ensure_schema, make_engine
    from dispatcher.store.tables import CaseRow, ContactPointRow, MessageRow

    config = load_config(ROOT / "config/dispatcher.toml")
    engine = make_engine(url)
    ensure_schema(engine)
    cases, contacts, messages = [], [], []
    zone_cache: dict[tuple[str, str], str] = {}

    def flush() -> None:
        with engine.begin() as conn:
            conn.execute(insert(CaseRow), cases)
            conn.execute(insert(ContactPointRow), contacts)
            if messages:
                conn.execute(insert(MessageRow), messages)
        cases.clear()
        contacts.clear()
        messages.clear()

    for i, row in enumerate(generate_cases(n, NOW.date(), seed=11)):
        profile = config.jurisdictions[row["jurisdiction"]]
        key = (row["jurisdiction"], row["phone"][:6] + row["timezone"])
        if key not in zone_cache:
            case = Case(case_id=row["case_id"], name=row["name"], jurisdiction=row["jurisdiction"],
                        locale=row["locale"], currency=row["currency"], principal=Decimal(0), interest=Decimal(0),
                        penalty=Decimal(0), fees=Decimal(0), amount_due=Decimal(0),
                        due_date=dt.date.fromisoformat(row["due_date"]), timezone=row["timezone"] or None,
                        phone=row["phone"] or None)
            zone_cache[key] = ",".join(resolve_zones(case, profile))
        cases.append({
            "case_id": row["case_id"], "name": row["name"], "jurisdiction": row["jurisdiction"],
            "locale": row["locale"], "timezone": row["timezone"] or None, "zones": zone_cache[key],
            "escalated_stages": "", "currency": row["currency"],
            "principal": Decimal(row["principal"]), "interest": Decimal(row["interest"]),
            "penalty": Decimal(row["penalty"]), "fees": Decimal(row["fees"]),
            "amount_due": Decimal(row["amount_due"]),
            "penalty_rate_daily": Decimal(row["penalty_rate_daily"]) if row["penalty_rate_daily"] else None,
            "due_date": dt.date.fromisoformat(row["due_date"]), "status": "active", "product": row["product"],
            "paid_total": Decimal(0), "created_at": NOW, "updated_at": NOW,
        })
        for channel, address, consent in (("sms", row["phone"], row["sms_consent"]),
                                          ("voice", row["phone"], row["voice_consent"]),
                                          ("email", row["email"], row["email_consent"])):
            contacts.append({"case_id": row["case_id"], "channel": channel, "address": address or None,
                             "consent": consent == "true", "opted_out": False, "invalid": False,
                             "updated_at": NOW})
        if i % 3 == 0:  # a third of the cases have a recent SMS
            sent = NOW - dt.timedelta(days=(i % 9) + 1)
            messages.append({"case_id": row["case_id"], "channel": "sms", "stage": None, "kind": "scheduled",
                             "template_id": "sms/early/v1", "status": "delivered",
                             "idempotency_key": f"bench-{row['case_id']}", "scheduled_at": sent,
                             "created_at": sent, "sent_at": sent, "attempts": 1, "conversation": False})
        if len(cases) >= 10_000:
            flush()
    if cases:
        flush()
    engine.dispose()


def _baseline(url: str, queue: mp.Queue) -> None:
    from sqlalchemy import select

    from dispatcher.store.db import make_engine
    from dispatcher.store.tables import CaseRow, ContactPointRow

    engine = make_engine(url)
    start = time.perf_counter()
    count = 0
    with engine.connect() as conn:
        last = ""
        while True:
            rows = conn.execute(select(CaseRow.__table__).where(CaseRow.case_id > last)
                                .order_by(CaseRow.case_id).limit(5000)).all()
            if not rows:
                break
            ids = [r.case_id for r in rows]
            conn.execute(select(ContactPointRow.__table__).where(ContactPointRow.case_id.in_(ids))).all()
            count += len(rows)
            last = ids[-1]
    elapsed = time.perf_counter() - start
    engine.dispose()
    queue.put({"cases": count, "seconds": elapsed, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _plan(url: str, queue: mp.Queue) -> None:
    from dispatcher.config import load_config
    from dispatcher.services.planner import plan_decisions
    from dispatcher.store.db import make_engine
    from dispatcher.templates import TemplateSet

    config = load_config(ROOT / "config/dispatcher.toml")
    catalog = TemplateSet(ROOT / "templates", config).approved_catalog()
    engine = make_engine(url)
    start = time.perf_counter()
    count = decisions = 0
    with open(os.devnull, "w") as sink:
        for _snapshot, ds in plan_decisions(engine, config, catalog, NOW):
            count += 1
            for d in ds:
                decisions += 1
                sink.write(json.dumps(d.as_json(), ensure_ascii=False) + "\n")
    elapsed = time.perf_counter() - start
    engine.dispose()
    queue.put({"cases": count, "decisions": decisions, "seconds": elapsed,
               "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run_child(target, url: str) -> dict:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(url, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bench_backend(name: str, url: str, n: int) -> dict:
    t0 = time.perf_counter()
    load(url, n)
    load_s = time.perf_counter() - t0
    base = run_child(_baseline, url)
    plan = run_child(_plan, url)
    assert plan["cases"] == n == base["cases"], (plan, base)
    return {
        "backend": name,
        "cases": n,
        "load_s": round(load_s, 1),
        "baseline_cases_s": round(n / base["seconds"]),
        "plan_cases_s": round(n / plan["seconds"]),
        "decisions": plan["decisions"],
        "plan_s": round(plan["seconds"], 1),
        "plan_peak_rss_mb": round(plan["rss_mb"]),
        "baseline_peak_rss_mb": round(base["rss_mb"]),
        "plan_vs_select": round(base["seconds"] / plan["seconds"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    results = []
    if args.db in ("sqlite", "both"):
        path = ROOT / "var" / f"plan_bench_{uuid.uuid4().hex[:8]}.db"
        try:
            results.append(bench_backend("sqlite", f"sqlite:///{path}", args.cases))
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    if args.db in ("postgres", "both"):
        import psycopg

        name = f"dispatcher_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
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
