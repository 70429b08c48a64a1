"""The planner: store -> policy -> outbox.

`plan_decisions` is read-only (it backs `dispatcher plan`). `enqueue_decisions` turns
`send` and `defer` decisions into queued outbox rows (idempotent per case, channel,
stage and local day) and records each first-time escalation (with a `legal_handoff` task);
`run_planner` then opens the `escalate` tasks (`services.tasks.open_escalations`). Both planning entry points
take the caller's `Gate`, which keeps its caches from one run to the next.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from json.encoder import encode_basestring as _json_str  # ensure_ascii=False escaping

from sqlalchemy import Insert, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from dispatcher.config import Config
from dispatcher.domain import Action, CaseSnapshot, Channel, Decision, MessageKind, Reason
from dispatcher.policy import Gate
from dispatcher.services.tasks import TaskKind, open_escalations, open_task
from dispatcher.store import repository
from dispatcher.store.events import EventKind, event_values, insert_events
from dispatcher.store.snapshots import iter_snapshots
from dispatcher.store.tables import MessageRow

TemplateCatalog = Mapping[tuple[Channel, str, str], Sequence[str]]

log = logging.getLogger("dispatcher.planner")

#: Advisory-lock key electing the single planner per tick on PostgreSQL ("dispatch").
PLANNER_LOCK_KEY = 0x64697370


@lru_cache(maxsize=1024)
def zone_info(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def local_day(instant: dt.datetime, zone: str) -> dt.date:
    """The calendar date of `instant` in `zone`."""
    return instant.astimezone(zone_info(zone)).date()


def idempotency_key(case_id: str, channel: Channel | str, stage: str | None, day: dt.date) -> str:
    """One scheduled message per case, channel, stage and local day."""
    return f"{case_id}:{channel}:{stage or '-'}:{day.isoformat()}"


def plan_decisions(
    engine: Engine,
    gate: Gate,
    templates: TemplateCatalog,
    now: dt.datetime,
    *,
    case_ids: Sequence[str] | None = None,
    batch_size: int = 5000,
) -> Iterator[tuple[CaseSnapshot, list[Decision]]]:
    """Evaluate every case (or the named ones) at `now` through `gate`. Writes nothing."""
    decide = gate.decide_case
    for snapshot in iter_snapshots(
        engine, case_ids=list(case_ids) if case_ids else None, batch_size=batch_size, now=now
    ):
        yield snapshot, decide(snapshot, templates, now)


_JSON_SMALL: dict[str | None, str] = {None: "null"}


def _json_small(value: str | None) -> str:
    """JSON text of one of the few distinct stage/channel/action/reason/template values.
    Enum members are their own keys: a StrEnum hashes and compares as its value, and
    this skips the `.value` property (a Python-level call)."""
    text = _JSON_SMALL.get(value)
    if text is None:
        if len(_JSON_SMALL) >= 10_000:
            _JSON_SMALL.clear()
            _JSON_SMALL[None] = "null"
        text = _JSON_SMALL[value] = _json_str(value)  # type: ignore[arg-type]
    return text


def _generic_line(decision: Decision) -> str:
    return json.dumps(decision.as_json(), ensure_ascii=False) + "\n"


def _fast_line(decision: Decision) -> str:
    # the text of _generic_line, built without a dict or an encoder object per line
    d = decision
    not_before = d.not_before
    return (
        f'{{"case_id": {_json_str(d.case_id)}, "stage": {_json_small(d.stage)}, '
        f'"channel": {_json_small(d.channel)}, '
        f'"action": {_json_small(d.action)}, "reason": {_json_small(d.reason)}, '
        f'"template": {_json_small(d.template)}, '
        f'"not_before": {"null" if not_before is None else _json_str(not_before.isoformat())}, '
        f'"detail": {_json_str(d.detail)}}}\n'
    )


def _fast_line_agrees() -> bool:
    """Does `_fast_line` still write what `Decision.as_json` says? (Fields, order, escapes.)"""
    samples = (
        Decision("C-1 \"x\"", "dpd30", Channel.SMS, Action.DEFER, Reason.OUTSIDE_HOURS, "sms/dpd30/v1",
                 dt.datetime(2026, 5, 6, 9, 0, tzinfo=zoneinfo.ZoneInfo("Asia/Shanghai")),
                 "21:30 王伟\t\u2028 \\ \x01 \U0001f600"),
        Decision("C-2", None, None, Action.SKIP, Reason.NOT_OVERDUE),
    )
    return all(_fast_line(d) == _generic_line(d) for d in samples)


#: Plan lines written by the generic encoder because `_fast_line` no longer writes what
#: `Decision.as_json` says (0 while the fast line agrees; read by tests and benchmarks).
fallback_lines = 0


def _counted_generic_line(decision: Decision) -> str:
    global fallback_lines
    fallback_lines += 1
    return _generic_line(decision)


def choose_decision_line() -> Callable[[Decision], str]:
    """The plan's line encoder: `_fast_line` while it writes exactly what `Decision.as_json`
    says (checked on samples), else the generic encoder, with a warning, each line counted
    in `fallback_lines`: slower, never different."""
    if _fast_line_agrees():
        return _fast_line
    log.warning("plan output: the hand-built JSON line no longer matches Decision.as_json;"
                " writing lines with json.dumps instead (same text, slower): update planner._fast_line")
    return _counted_generic_line


#: `decision` as one line of `dispatcher plan --format jsonl`, newline included: the text
#: of ``json.dumps(decision.as_json(), ensure_ascii=False) + "\\n"``, about three times
#: cheaper (a plan writes millions of lines). Chosen once, at import.
decision_line: Callable[[Decision], str] = choose_decision_line()

#: The cyclic collector's young-generation threshold for the `plan` command (set by
#: its entry point in `cli.py`, only there): a plan allocates a dozen container objects
#: per case, which reference counting frees (there are no cycles); at CPython's default
#: of 700 the collector still ran every ~60 cases and walked the whole heap every
#: ~10,000: a sixth of a plan's CPU.
PLAN_GC_THRESHOLD = 20_000


@dataclass
class EnqueueSummary:
    queued: int = 0
    deferred: int = 0
    already_queued: int = 0
    escalated: int = 0
    escalate_tasks: int = 0  # `escalate` tasks opened (no answer to a delivered reminder)
    by_reason: dict[str, int] = field(default_factory=dict)

    def count(self, decision: Decision) -> None:
        key = f"{decision.action}:{decision.reason}"
        self.by_reason[key] = self.by_reason.get(key, 0) + 1


def _insert_ignoring_duplicates(conn: Connection, rows: list[dict[str, object]]) -> set[str]:
    """Insert outbox rows; an existing idempotency key is left alone.

    Returns the idempotency keys actually added."""
    if not rows:
        return set()
    dialect = conn.dialect.name
    stmt: Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(MessageRow).on_conflict_do_nothing(index_elements=["idempotency_key"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(MessageRow).on_conflict_do_nothing(index_elements=["idempotency_key"])
    else:  # pragma: no cover - other databases are not supported
        stmt = insert(MessageRow)
    # One look-up of the existing keys, then one executemany insert: the planner lock
    # makes this the only writer of scheduled rows, and ON CONFLICT covers the rest.
    keys = [str(r["idempotency_key"]) for r in rows]
    existing: set[str] = set()
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        existing.update(conn.execute(
            select(col(MessageRow.idempotency_key)).where(col(MessageRow.idempotency_key).in_(chunk))).scalars())
    fresh: dict[str, dict[str, object]] = {}
    for row in rows:
        key = str(row["idempotency_key"])
        if key not in existing and key not in fresh:
            fresh[key] = row
    if fresh:
        conn.execute(stmt, list(fresh.values()))
    return set(fresh)


def enqueue_decisions(
    conn: Connection,
    items: Iterable[tuple[CaseSnapshot, list[Decision]]],
    now: dt.datetime,
    summary: EnqueueSummary | None = None,
    *,
    created_by: str | None = None,
    kind: MessageKind = MessageKind.SCHEDULED,
    config: Config | None = None,
) -> EnqueueSummary:
    """Queue a message for every send/defer decision and record escalations (each a
    `legal_handoff` task, its SLA from `config`)."""
    summary = summary or EnqueueSummary()
    rows: list[dict[str, object]] = []
    pending: list[tuple[Decision, dt.datetime, str]] = []
    for snapshot, decisions in items:
        zone = snapshot.zones[0] if snapshot.zones else "UTC"
        for decision in decisions:
            summary.count(decision)
            if decision.action is Action.ESCALATE and decision.stage:
                if repository.mark_escalated(conn, decision.case_id, decision.stage, now):
                    summary.escalated += 1
                    open_task(conn, config, decision.case_id, TaskKind.LEGAL_HANDOFF, now,
                              source=f"stage:{decision.stage}", actor=created_by, stage=decision.stage,
                              detail=f"handed off to legal in stage {decision.stage}: {decision.detail}")
                continue
            if decision.action not in (Action.SEND, Action.DEFER) or decision.channel is None:
                continue
            when = decision.not_before if decision.action is Action.DEFER and decision.not_before else now
            key = idempotency_key(decision.case_id, decision.channel, decision.stage, local_day(when, zone))
            if kind is MessageKind.ONE_OFF:
                key = f"oneoff:{key}:{now.timestamp():.6f}"
            rows.append(
                {
                    "case_id": decision.case_id,
                    "channel": decision.channel.value,
                    "stage": decision.stage,
                    "kind": kind.value,
                    "template_id": decision.template,
                    "variant": decision.template.rsplit("/", 1)[-1] if decision.template else None,
                    "locale": snapshot.case.locale,
                    "status": "queued",
                    "idempotency_key": key,
                    "scheduled_at": when,
                    "created_at": now,
                    "created_by": created_by,
                    "attempts": 0,
                    "conversation": False,
                }
            )
            pending.append((decision, when, key))
    added = _insert_ignoring_duplicates(conn, rows)
    events: list[dict[str, object]] = []
    summary.already_queued += len(rows) - len(added)
    for decision, when, key in pending:
        if key not in added:
            continue
        if decision.action is Action.SEND:
            summary.queued += 1
        else:
            summary.deferred += 1
        events.append(event_values(
            EventKind.MESSAGE_QUEUED if decision.action is Action.SEND else EventKind.MESSAGE_DEFERRED,
            now,
            case_id=decision.case_id,
            actor=created_by,
            channel=decision.channel.value if decision.channel else None,
            template=decision.template,
            reason=decision.reason.value,
            scheduled_at=when.isoformat(),
        ))
    insert_events(conn, events)
    return summary


def try_planner_lock(conn: Connection) -> bool:
    """Elect one planner per tick: a transaction-scoped advisory lock on PostgreSQL.

    SQLite has a single writer anyway, so the lock is always granted there."""
    if conn.dialect.name != "postgresql":
        return True
    return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": PLANNER_LOCK_KEY}).scalar())


def run_planner(
    engine: Engine,
    gate: Gate,
    templates: TemplateCatalog,
    now: dt.datetime,
    *,
    batch_size: int = 2000,
) -> EnqueueSummary | None:
    """One planning pass: evaluate every case through `gate` and fill the outbox.

    Returns None when another instance holds the planner lock (PostgreSQL)."""
    summary = EnqueueSummary()
    with engine.begin() as lock_conn:
        if not try_planner_lock(lock_conn):
            return None
        batch: list[tuple[CaseSnapshot, list[Decision]]] = []
        for item in plan_decisions(engine, gate, templates, now, batch_size=batch_size):
            batch.append(item)
            if len(batch) >= batch_size:
                with engine.begin() as conn:
                    enqueue_decisions(conn, batch, now, summary, config=gate.config)
                batch.clear()
        if batch:
            with engine.begin() as conn:
                enqueue_decisions(conn, batch, now, summary, config=gate.config)
        # cases that have not answered a delivered stage reminder (`escalate` tasks)
        summary.escalate_tasks = open_escalations(engine, gate.config, now)
    return summary
