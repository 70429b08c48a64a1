"""The planner: store -> policy -> outbox.

`plan_decisions` is read-only (it backs `dispatcher plan`, which evaluates every case).
`enqueue_decisions` turns `send` and `defer` decisions into queued outbox rows
(idempotent per case, channel, stage and local day) and records each first-time
escalation (with a `legal_handoff` task). `IncrementalPlanner` (and `run_planner`) is
the planning run of the daemon and `tick`: it evaluates only the cases whose planned
instant has passed or that an event invalidated (`store.plan_state`), partition by
partition, and on PostgreSQL shares the partitions with the other running instances
(`store.plan_leases`). Each batch's messages, escalations and next instants commit in
one transaction. A run then opens the `escalate` tasks (`services.tasks.
open_escalations`). Every entry point takes the caller's `Gate`, which keeps its caches
from one run to the next.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import socket
import time
import uuid
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
from dispatcher.domain import Action, CaseSnapshot, Channel, Decision, MessageKind, MessageStatus, Reason, SentMessage
from dispatcher.policy import Gate
from dispatcher.policy.next_check import next_check
from dispatcher.services.tasks import TaskKind, open_escalations, open_task
from dispatcher.store import plan_leases, plan_state, repository
from dispatcher.store.events import EventKind, event_values, insert_events
from dispatcher.store.snapshots import iter_snapshots
from dispatcher.store.tables import MessageRow

TemplateCatalog = Mapping[tuple[Channel, str, str], Sequence[str]]

log = logging.getLogger("dispatcher.planner")

#: Advisory-lock key serialising the planners' configuration check on PostgreSQL ("plan").
FINGERPRINT_LOCK_KEY = 0x706C616E

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
    #: cases evaluated, partitions planned (of which whole, after a configuration change),
    #: cases given a planned instant for the first time (`plan_state.adopt_orphans`)
    evaluated: int = 0
    partitions: int = 0
    whole_partitions: int = 0
    adopted: int = 0

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
    queued_out: list[tuple[Decision, dt.datetime]] | None = None,
) -> EnqueueSummary:
    """Queue a message for every send/defer decision and record escalations (each a
    `legal_handoff` task, its SLA from `config`). `queued_out`, if given, receives each
    decision that queued a new row, with its scheduled instant (an escalation: whether
    new or not). The planner's own scheduled messages do not invalidate their case's
    planned instant (it computes the next one knowing them); one-off messages do."""
    summary = summary or EnqueueSummary()
    rows: list[dict[str, object]] = []
    pending: list[tuple[Decision, dt.datetime, str]] = []
    escalations: list[tuple[str, str]] = []
    escalation_lines: dict[tuple[str, str], Decision] = {}
    for snapshot, decisions in items:
        zone = snapshot.zones[0] if snapshot.zones else "UTC"
        for decision in decisions:
            summary.count(decision)
            if decision.action is Action.ESCALATE and decision.stage:
                escalations.append((decision.case_id, decision.stage))
                escalation_lines[(decision.case_id, decision.stage)] = decision
                if queued_out is not None:
                    queued_out.append((decision, now))
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
    newly = repository.mark_escalated_many(conn, escalations, now, invalidates=kind is not MessageKind.SCHEDULED)
    summary.escalated += len(newly)
    for case_id, stage in sorted(newly):
        line = escalation_lines[(case_id, stage)]
        open_task(conn, config, case_id, TaskKind.LEGAL_HANDOFF, now, source=f"stage:{stage}", actor=created_by,
                  stage=stage, detail=f"handed off to legal in stage {stage}: {line.detail}")
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
        if queued_out is not None:
            queued_out.append((decision, when))
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
    insert_events(conn, events, invalidates=kind is not MessageKind.SCHEDULED)
    return summary




# ------------------------------------------------------------------ the planning run


def config_fingerprint(gate: Gate, templates: TemplateCatalog) -> str:
    """What every decision depends on besides the case: the configuration and the
    approved templates. A change invalidates every case (`plan_state.invalidate_all`)."""
    digest = hashlib.sha256(gate.config.model_dump_json().encode("utf-8"))
    for key in sorted(templates, key=lambda k: tuple(str(v) for v in k)):
        digest.update(repr((tuple(str(v) for v in key), tuple(sorted(templates[key])))).encode("utf-8"))
    return digest.hexdigest()


class _LeaseLost(Exception):
    """Another instance took the partition over (this one stalled past its lease)."""


class IncrementalPlanner:
    """The planning run. Keep one per process (like the gate): it adopts the cases that
    have no planned instant once, at its first run.

    A run: compare the configuration fingerprint (a difference invalidates every case),
    then plan each partition — on PostgreSQL the partitions this instance can claim,
    then, waiting `poll_seconds` between looks, those other instances held, once they
    are done or their lease expired — evaluating the partition's cases due at `now`
    (every case of it when it was last planned at an older configuration epoch, or
    with `full=True`)."""

    def __init__(self, engine: Engine, gate: Gate, *, instance_id: str | None = None,
                 lease_seconds: float = 60.0, batch_size: int = 2000, poll_seconds: float = 0.5,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.engine = engine
        self.gate = gate
        self.postgres = engine.dialect.name == "postgresql"
        self.me = (instance_id or f"{socket.gethostname()}-{os.getpid()}")[:48] + "-" + uuid.uuid4().hex[:8]
        self.first_part = plan_state.partition_of(instance_id) if instance_id else 0
        self.lease_seconds = lease_seconds
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.on_batch = on_batch  # (partition, cases) after each committed batch: tests, benchmarks
        self._adopted = False

    def run(self, templates: TemplateCatalog, now: dt.datetime, *, full: bool = False) -> EnqueueSummary:
        summary = EnqueueSummary()
        with self.engine.begin() as conn:
            if self.postgres:  # instances starting together with a new configuration: one bumps the epoch
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": FINGERPRINT_LOCK_KEY})
            plan_leases.ensure_partitions(conn)
            fingerprint = config_fingerprint(self.gate, templates)
            if plan_state.stored_fingerprint(conn) != fingerprint:
                plan_state.invalidate_all(conn, "configuration or approved templates changed", now)
                plan_state.store_fingerprint(conn, fingerprint, now)
            epoch = plan_state.current_epoch(conn)
        if not self._adopted:
            with self.engine.begin() as conn:
                summary.adopted = plan_state.adopt_orphans(conn)
            self._adopted = True
        start = self.first_part  # named instances start apart; runs are reproducible
        pending = [(start + i) % plan_state.PARTITIONS for i in range(plan_state.PARTITIONS)]
        while pending:
            progressed = False
            for part in list(pending):
                if self._part(part, templates, now, epoch, full, summary):
                    pending.remove(part)
                    progressed = True
            if pending and not progressed:
                time.sleep(self.poll_seconds)  # held by live instances: look again
        # cases that have not answered a delivered stage reminder (`escalate` tasks)
        summary.escalate_tasks = open_escalations(self.engine, self.gate.config, now)
        return summary

    def _part(self, part: int, templates: TemplateCatalog, now: dt.datetime, epoch: int, full: bool,
              summary: EnqueueSummary) -> bool:
        """Plan one partition if it is this run's to plan; True when it needs nothing more
        from this instance (planned here or by another instance at `now` or later)."""
        with self.engine.begin() as conn:
            if self.postgres:
                part_epoch = plan_leases.claim(conn, part, self.me, self.lease_seconds, now, epoch)
                if part_epoch is None:  # held by a live instance, or done for this run
                    st = plan_leases.state(conn, part)
                    return st.planned_now is not None and st.planned_now >= now and st.epoch >= epoch
            else:
                part_epoch = plan_leases.state(conn, part).epoch
            whole = full or part_epoch < epoch
            if whole:
                # Every case of the partition, in this claim's transaction, with the epoch:
                # an instance taking the partition over after a crash plans only what is
                # still dirty, not again what was committed before it.
                plan_state.invalidate_part(conn, part)
                plan_leases.set_epoch(conn, part, epoch)
        try:
            self._plan_part(part, templates, now, summary)
        except _LeaseLost:
            log.warning("plan: lost the lease of partition %d (stalled past %g s); another instance carries on",
                        part, self.lease_seconds)
            return False
        except BaseException:
            if self.postgres:
                with self.engine.begin() as conn:
                    plan_leases.release(conn, part, self.me)
            raise
        with self.engine.begin() as conn:
            plan_leases.finish(conn, part, self.me, now, epoch)
        summary.partitions += 1
        summary.whole_partitions += whole
        return True

    def _plan_part(self, part: int, templates: TemplateCatalog, now: dt.datetime, summary: EnqueueSummary) -> None:
        after: tuple[dt.datetime, str] | None = None
        decide = self.gate.decide_case
        while True:
            with self.engine.connect() as conn:
                due = plan_state.due_batch(conn, part, now, after, self.batch_size)
                conn.rollback()
            if not due:
                return
            gens = {case_id: gen for case_id, gen, _ in due}
            after = (due[-1][2], due[-1][0])
            items = [(snapshot, decide(snapshot, templates, now))
                     for snapshot in iter_snapshots(self.engine, case_ids=list(gens), now=now,
                                                    batch_size=self.batch_size)]
            with self.engine.begin() as conn:
                if self.postgres and not plan_leases.renew(conn, part, self.me, self.lease_seconds):
                    raise _LeaseLost(part)
                added: list[tuple[Decision, dt.datetime]] = []
                with plan_state.planner_writes(gens):  # what it writes for them, it accounts for
                    enqueue_decisions(conn, items, now, summary, config=self.gate.config, queued_out=added)
                instants = self._instants(items, added, gens, templates, now)
                plan_state.write_instants(conn, instants, now, self.me)
            summary.evaluated += len(items)
            if self.on_batch is not None:
                self.on_batch(part, len(items))

    def _instants(self, items: list[tuple[CaseSnapshot, list[Decision]]], added: list[tuple[Decision, dt.datetime]],
                  gens: dict[str, int], templates: TemplateCatalog,
                  now: dt.datetime) -> list[tuple[str, int, dt.datetime]]:
        """(case_id, generation read, next instant) for the batch, each case seen with what
        this batch queued for it (so a queued message counts for its cadence)."""
        own: dict[str, list[tuple[Decision, dt.datetime]]] = {}
        for decision, when in added:
            own.setdefault(decision.case_id, []).append((decision, when))
        out = []
        for snapshot, decisions in items:
            case_id = snapshot.case.case_id
            mine = own.get(case_id)
            if mine:
                extra = tuple(
                    SentMessage(d.channel, when.astimezone(dt.UTC), MessageStatus.QUEUED, d.stage, d.template,
                                False, None, None)
                    for d, when in mine if d.channel is not None)
                stages = {d.stage for d, _ in mine if d.action is Action.ESCALATE and d.stage}
                snapshot = dataclasses.replace(snapshot, history=snapshot.history + extra,
                                               escalated_stages=snapshot.escalated_stages | stages)
                decisions = self.gate.decide_case(snapshot, templates, now)
            at = next_check(self.gate, snapshot, decisions, now)
            out.append((case_id, gens.pop(case_id), plan_state.NEVER if at is None else at))
        # ids with a row and no case (a case removed by hand): not looked at again
        out.extend((case_id, gen, plan_state.NEVER) for case_id, gen in gens.items())
        return out


def run_planner(
    engine: Engine,
    gate: Gate,
    templates: TemplateCatalog,
    now: dt.datetime,
    *,
    batch_size: int = 2000,
    full: bool = False,
    planner: IncrementalPlanner | None = None,
) -> EnqueueSummary:
    """One planning run (see `IncrementalPlanner`); `full` evaluates every case."""
    planner = planner or IncrementalPlanner(engine, gate, batch_size=batch_size)
    return planner.run(templates, now, full=full)
