"""`build_report`: run the report's queries and assemble the KPIs (SPEC sections 9, 16).

Money is summed in integer cents by the database and becomes `Decimal` here; costs are
`[costs.<CURRENCY>]` prices times the stored SMS segments, e-mails and billed call
minutes, in the currency of the cases the messages served.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import queue
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from dispatcher.config import Config
from dispatcher.domain import CLOSED_STATUSES
from dispatcher.reports.dialect import Dialect
from dispatcher.reports.model import (
    CENT,
    Balance,
    Experiment,
    OutboxTotals,
    PlanKpi,
    Report,
    StageKpi,
    VariantKpi,
    Week,
)
from dispatcher.reports.period import Period, from_day_number, resolve_period
from dispatcher.reports.queries import Query
from dispatcher.reports.stats import chi_squared, wilson_interval
from dispatcher.store.tables import cases_t, plans_t

T = TypeVar("T")

#: channels whose provider reports delivery (SMS receipts, call outcomes); e-mail over
#: SMTP has none: its delivery figures are null and clicks stand in for engagement
RECEIPT_CHANNELS = frozenset({"sms", "voice"})
#: PostgreSQL memory per sort/hash of the report's queries (the default 4 MB spills to disk)
WORK_MEM = "128MB"
DELIVERED = frozenset({"delivered", "read", "completed"})
FAILED = frozenset({"failed", "undelivered", "busy", "no-answer", "canceled"})


def _cents(value: int | None) -> Decimal:
    return (Decimal(int(value or 0)) / 100).quantize(CENT)


def build_report(engine: Engine, config: Config, now: dt.datetime, *, since: dt.date | None = None,
                 until: dt.date | None = None) -> Report:
    """The KPIs for `since` .. `until` (dates in `organisation.timezone`; defaults: from
    the first imported case to today)."""
    zone = config.organisation.timezone
    with engine.connect() as conn:
        dialect = Dialect(conn.dialect.name)
        if dialect.postgres:
            # every figure from one snapshot, so that they add up while the daemon writes
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            _session(conn)
        first_day = None
        if since is None:
            first = Query(dialect, Period(now.date(), now.date(), zone), config)
            rows = first.run(conn, first.first_day_sql())
            first_at = rows[0][0] if rows else None
            if isinstance(first_at, str):  # SQLite, outside the ORM's types
                first_at = dt.datetime.fromisoformat(first_at).replace(tzinfo=dt.UTC)
            if first_at is not None:
                from zoneinfo import ZoneInfo

                first_day = first_at.astimezone(ZoneInfo(zone)).date()
        period = resolve_period(since, until, zone, now, first_day)
        query = Query(dialect, period, config)
        with _readers(engine, conn, query) as submit:
            # longest first: on PostgreSQL they run side by side, in one snapshot
            stage_rows = submit(lambda c: query.run(c, query.stage_sql()))
            message_rows = submit(lambda c: _message_rows(c, query))
            stage_messages = submit(lambda c: query.run(c, query.stage_messages_sql()))
            converted = submit(lambda c: query.run(c, query.converted_sql()))
            weekly = submit(lambda c: query.run(c, query.weekly_payments_sql()))
            balance_rows = submit(lambda c: _balances(c, query))
            plan_rows = submit(lambda c: _plans(c, period))
            messages = message_rows.result()
            stages = _stages(query, config, stage_rows.result(), stage_messages.result())
            variants, by_week = _messages(query, messages, converted.result())
            weeks = _payment_weeks(weekly.result(), by_week)
            balances, plans = balance_rows.result(), plan_rows.result()
        outbox = _outbox(messages)
    currency: dict[str, set[str]] = defaultdict(set)
    for s in stages:
        currency[s.jurisdiction].add(s.currency)
    notes = [
        "cured counts cases paid in full; a case brought back to a lower stage by a re-import is not in the"
        " stored history and is not counted",
    ]
    missing = sorted({s.currency for s in stages if s.cost is None and s.messages})
    if missing:
        notes.append(f"no [costs.<CURRENCY>] prices for {', '.join(missing)}: cost is null there")
    return Report(
        since=period.since, until=period.until, timezone=zone, generated_at=now,
        currency={k: sorted(v) for k, v in sorted(currency.items())},
        stages=stages, variants=variants, experiments=_experiments(variants, config), weeks=weeks,
        messages=outbox, notes=notes, balances=balances, plans=plans,
    )


def _session(conn: Connection) -> None:
    """The report's PostgreSQL session: room for the aggregations' hash tables (the
    report's own session only), and no JIT — compiling these long queries cost more than
    it saved: 33 s of the 263 s its two largest queries ran at 1,000,000 cases
    (BENCHMARKS.md), every run."""
    conn.exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")
    conn.exec_driver_sql("SET LOCAL jit = off")


#: connections the report reads through on PostgreSQL, side by side (see `_readers`)
READERS = 3


@contextlib.contextmanager
def _readers(engine: Engine, conn: Connection, query: Query) -> Iterator[Callable[[Callable[[Connection], T]],
                                                                               Future[T]]]:
    """`submit(read)`: a future of `read(connection)`. On PostgreSQL the reads run side by
    side on `READERS` connections — `conn` and others in the same snapshot
    (`pg_export_snapshot`, as `pg_dump --jobs` shares one), so that their figures still
    add up while the daemon writes — and the report uses several of the server's cores
    for the parts of its plans PostgreSQL runs in one process (the stage KPIs' CTEs, the
    aggregations' final steps) instead of one after the other (BENCHMARKS.md). On SQLite
    each read runs at once on `conn`."""
    if not query.dialect.postgres:
        def here(read: Callable[[Connection], T]) -> Future[T]:
            done: Future[T] = Future()
            done.set_result(read(conn))
            return done

        yield here
        return
    snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
    free: queue.SimpleQueue[Connection] = queue.SimpleQueue()
    free.put(conn)
    with contextlib.ExitStack() as stack:
        for _ in range(READERS - 1):
            other = stack.enter_context(engine.connect()).execution_options(isolation_level="REPEATABLE READ")
            other.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")  # first in its transaction
            _session(other)
            free.put(other)
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(READERS, "report"))

        def on_a_free_connection(read: Callable[[Connection], T]) -> T:
            c = free.get()  # never waits: no more reads run at once than there are connections
            try:
                return read(c)
            finally:
                free.put(c)

        yield lambda read: pool.submit(on_a_free_connection, read)


def _plans(conn: Connection, period: Period) -> list[PlanKpi]:
    """Plans taken in the period per jurisdiction, by their status now."""
    p = plans_t.c
    out: dict[str, PlanKpi] = {}
    for jurisdiction, status, count in conn.execute(
            select(cases_t.c.jurisdiction, p.status, func.count())
            .join_from(plans_t, cases_t, cases_t.c.case_id == p.case_id)
            .where(p.created_at >= period.since_at, p.created_at < period.until_at)
            .group_by(cases_t.c.jurisdiction, p.status)):
        kpi = out.setdefault(jurisdiction, PlanKpi(jurisdiction))
        kpi.taken += count
        if status in ("active", "completed", "broken"):
            setattr(kpi, status, getattr(kpi, status) + count)
    return [out[k] for k in sorted(out)]


def _message_rows(conn: Connection, query: Query) -> list[Any]:
    """The one pass over the period's messages. PostgreSQL cannot estimate how few groups
    its eight keys make (a few hundred; it guessed millions at 10,000,000 messages) and
    sorted every message to disk to group them, the report's largest cost; told not to
    sort, it hashes them in memory."""
    if not query.dialect.postgres:
        return query.run(conn, query.message_sql())
    conn.exec_driver_sql("SET LOCAL enable_sort = off")
    try:
        return query.run(conn, query.message_sql())
    finally:
        conn.exec_driver_sql("SET LOCAL enable_sort = on")


def _balances(conn: Connection, query: Query) -> list[Balance]:
    """What debtors owe now, per jurisdiction and currency: summed in the database in
    integer cents (exact on both; a SQL SUM of the money columns is a float on SQLite),
    so the report reads a few rows whatever the number of cases."""
    closed = sorted(s.value for s in CLOSED_STATUSES)
    return [Balance(r.jurisdiction, r.currency, int(r.cases), int(r.open_cases or 0), _cents(r.due_cents),
                    _cents(r.paid_cents), _cents(r.outstanding_cents))
            for r in query.run(conn, query.balances_sql(closed))]


def _stages(query: Query, config: Config, stage_rows: list[Any], stage_messages: list[Any]) -> list[StageKpi]:
    """The stage KPIs from the rows of `query.stage_sql()`, with the stages' messages and
    cost from those of `query.stage_messages_sql()`."""
    last = query.ordered_stages()[-1].name
    rows: dict[tuple[str, str, str], StageKpi] = {}
    order: dict[str, int] = {s.name: i for i, s in enumerate(query.ordered_stages())}
    for r in stage_rows:
        rows[(r.stage, r.jurisdiction, r.currency)] = StageKpi(
            stage=r.stage, jurisdiction=r.jurisdiction, currency=r.currency,
            cases_entered=int(r.entered), contacted=int(r.contacted or 0), right_party_contacts=int(r.rpc or 0),
            first_contact_hours_p50=None if r.p50 is None else round(float(r.p50), 4),
            promises=int(r.promises or 0), promises_kept=int(r.kept or 0), cured=int(r.cured or 0),
            rolled_forward=int(r.rolled or 0), has_next_stage=r.stage != last,
            amount_at_entry=_cents(r.entry_cents), amount_recovered=_cents(r.recovered_cents),
            complaints=int(r.complaints or 0), opt_outs=int(r.opt_outs or 0),
        )

    def kpi_of(r: Any) -> StageKpi:  # a stage with messages but no cohort gets a row too
        key = (r.stage, r.jurisdiction, r.currency)
        return rows.get(key) or rows.setdefault(key, StageKpi(r.stage, r.jurisdiction, r.currency,
                                                              has_next_stage=r.stage != last))

    # system replies (opt-out confirmations, HELP) have no stage and are not here
    for r in stage_messages:
        kpi = kpi_of(r)
        kpi.messages += int(r.n)
        if r.channel == "sms":
            kpi.segments += int(r.segments or 0)
        elif r.channel == "email":
            kpi.emails += int(r.n)
        kpi.call_minutes += int(r.minutes or 0)
    for kpi in rows.values():
        prices = config.costs.get(kpi.currency)
        if prices is not None:
            kpi.cost = prices.cost(segments=kpi.segments, emails=kpi.emails, call_minutes=kpi.call_minutes)
        elif not kpi.messages:
            kpi.cost = Decimal("0.0000")
    return sorted(rows.values(), key=lambda k: (order.get(k.stage, len(order)), k.stage, k.jurisdiction, k.currency))


def template_stage(template_id: str) -> str:
    """The stage a template was written for: `<channel>/<stage>/<variant>`."""
    parts = template_id.split("/")
    return parts[1] if len(parts) == 3 else "-"


def _messages(query: Query, messages: list[Any], converted: list[Any]) -> tuple[list[VariantKpi], dict[int, Week]]:
    """Variants grouped by the template (whose id names its stage), not by the case's
    stage at sending: a template sent to a case in another stage (after a broken
    promise, the next stage's firmer wording) is counted under its own stage and in
    `off_stage`, so a variant appears once. And the weekly trend of messages."""
    rows: dict[tuple[str, str], VariantKpi] = {}
    weeks: dict[int, Week] = {}

    def variant(template_id: str, locale: str | None, channel: str) -> VariantKpi:
        key = (template_id, locale or "-")
        v = rows.get(key)
        if v is None:
            v = rows[key] = VariantKpi(template_id, template_stage(template_id), channel, locale or "-",
                                       delivered=0 if channel in RECEIPT_CHANNELS else None)
        return v

    for r in messages:
        if not r.reached:
            continue
        w = weeks.setdefault(int(r.week), Week(from_day_number(int(r.week))))
        w.sent += int(r.n)
        w.contacts += int(r.contacts or 0)
        if r.template_id is None or r.system:
            continue
        v = variant(r.template_id, r.locale, r.channel)
        v.sent += int(r.n)
        if v.delivered is not None:
            v.delivered += int(r.delivered or 0)
        v.clicks += int(r.clicks or 0)
        if r.stage != v.stage:
            v.off_stage += int(r.n)
    for r in converted:
        variant(r.template_id, r.locale, r.channel).payments_7d += int(r.payments_7d)
    for v in rows.values():
        v.conversion_ci = wilson_interval(v.payments_7d, v.sent)
    order = {s.name: i for i, s in enumerate(query.ordered_stages())}
    ordered = sorted(rows.values(), key=lambda v: (order.get(v.stage, len(order)), v.channel, v.locale, v.template))
    return ordered, weeks


def _experiments(variants: list[VariantKpi], config: Config) -> list[Experiment]:
    groups: dict[tuple[str, str, str], list[VariantKpi]] = defaultdict(list)
    for v in variants:
        if v.sent:
            groups[(v.stage, v.channel, v.locale)].append(v)
    experiments = []
    for (stage, channel, locale), arms in groups.items():
        if len(arms) < 2:
            continue
        test = chi_squared([(a.payments_7d, a.sent) for a in arms])
        best = max(arms, key=lambda a: (a.payments_7d / a.sent))
        ties = [a for a in arms if a.payments_7d * best.sent == best.payments_7d * a.sent]
        experiments.append(Experiment(
            stage, channel, locale, arms,
            p_value=None if test is None else test.p_value, chi2=None if test is None else test.statistic,
            leader=best.template if len(ties) == 1 and best.payments_7d else None,
        ))
    return experiments


def _payment_weeks(weekly: list[Any], weeks: dict[int, Week]) -> list[Week]:
    for r in weekly:
        w = weeks.setdefault(int(r.week), Week(from_day_number(int(r.week))))
        w.payments += int(r.payments)
        w.recovered[r.currency] = w.recovered.get(r.currency, Decimal("0.00")) + _cents(r.cents)
    return [weeks[k] for k in sorted(weeks)]


def _outbox(messages: list[Any]) -> OutboxTotals:
    totals = OutboxTotals()
    for r in messages:
        counts = totals.by_channel.setdefault(r.channel, {})
        n = int(r.n)

        def add(what: str, n: int = n, counts: dict[str, int] = counts) -> None:
            counts[what] = counts.get(what, 0) + n

        if r.reached:
            add("sent")
            if r.status in DELIVERED:
                add("delivered")
            elif r.status in FAILED:
                add("failed")
        elif r.status == "failed":
            add("rejected")
        elif r.status in ("queued", "sending"):
            add("queued")
        elif r.status == "cancelled":
            add("cancelled")
    return totals
