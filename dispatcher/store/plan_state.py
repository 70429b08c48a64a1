"""When the planner next needs to look at each case, and the one place that says a
case's decision may have changed.

Every case has a `plan_instants` row: `next_check_at`, the next instant at which its
decision can change (computed by the planner, `policy.next_check`), and `generation`,
which counts invalidations. A planner run evaluates only the cases whose instant has
passed; `dispatcher plan` (the read-only audit view) still evaluates every case.

Invalidation — read this before adding a new source of events:

- `invalidate(conn, case_ids)` marks cases dirty (`next_check_at` = `DIRTY`, generation
  + 1) in the caller's transaction; the next planner run evaluates them. The planner
  writes the instant it computed only where the generation is still the one it read,
  so an event that commits while the planner works is never lost.
- `store.events.insert_events` and `record_event` call it for every event row that
  names a case. **A new kind of event (tasks, repayment plans, self-service ...) needs
  nothing more**, as long as it is recorded through `store.events` in the transaction
  that changes the case. Only a write that changes what the planner reads *without*
  an event must call `invalidate` itself (the status hot path's hand-written SQL does,
  with `INVALIDATE_SQL`; so does `ivr.settle_conversation`). The planner's own writes
  for the batch it plans (its messages, escalations and their tasks) run inside
  `planner_writes`, which exempts those cases: it computes their instants knowing them.
- `invalidate_all(conn, reason, now)` is for what changes every decision at once: the
  configuration, a template approval. It costs one row: it bumps the configuration
  epoch, and each partition planned at an older epoch is evaluated whole at its next
  run. The planner also compares a fingerprint of the configuration and the approved
  templates with the one stored here at the start of every run and calls it on a
  difference, so a change made on disk while nobody called it is still seen.

Partitions: `part` is a hash of the case id modulo `PARTITIONS` (fixed: changing it
would need every row rewritten); `store.plan_leases` hands them out to instances.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from dispatcher.store.tables import cases_t, plan_instants_t, plan_meta_t

#: `next_check_at` of a case an event invalidated (or that was never planned): due at once.
DIRTY = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: `next_check_at` of a case whose decision only an event can change (a closed case).
NEVER = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)
#: Partitions of the portfolio (hash of the case id modulo this).
PARTITIONS = 64

#: The invalidation as PostgreSQL text, for hand-written statements (the status hot
#: path's single statement): the cases whose ids the subquery `{ids}` yields (a message's
#: case always has its row: the import made it).
INVALIDATE_SQL = (
    "UPDATE plan_instants SET next_check_at = '1970-01-01 00:00:00+00', generation = generation + 1"
    " WHERE case_id IN ({ids})"
)

_EPOCH = "epoch"
_FINGERPRINT = "fingerprint"
_CHUNK = 5000
_pi = plan_instants_t.c


def partition_of(case_id: str) -> int:
    """The case's partition: CRC-32 of its id modulo `PARTITIONS` (stable everywhere)."""
    return zlib.crc32(case_id.encode("utf-8")) % PARTITIONS


def _upsert(conn: Connection) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(plan_instants_t)


#: The cases whose planner batch is being written in this thread/task (`planner_writes`).
_PLANNING: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("planning", default=frozenset())


@contextlib.contextmanager
def planner_writes(case_ids: Iterable[str]) -> Iterator[None]:
    """The planner writing its own batch (messages, escalations, their tasks) for these
    cases: it computes their next instants knowing what it wrote, so these writes do not
    invalidate them. Only the planner uses it; every other write invalidates."""
    token = _PLANNING.set(frozenset(case_ids))
    try:
        yield
    finally:
        _PLANNING.reset(token)


def invalidate(conn: Connection, case_ids: Iterable[str | None]) -> int:
    """Mark these cases dirty: the next planner run evaluates them (see the module
    docstring). A case without a row gets one. Returns how many ids were given."""
    planning = _PLANNING.get()
    ids = sorted({c for c in case_ids if c and c not in planning})
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        stmt = _upsert(conn)
        rows = [{"case_id": c, "part": partition_of(c), "next_check_at": DIRTY, "generation": 0} for c in chunk]
        if conn.dialect.name == "postgresql":
            source = select(
                func.unnest(bindparam("ids", type_=ARRAY(_pi.case_id.type))).label("case_id"),
                func.unnest(bindparam("parts", type_=ARRAY(_pi.part.type))).label("part"),
                bindparam("dirty", type_=_pi.next_check_at.type).label("next_check_at"),
                bindparam("zero", type_=_pi.generation.type).label("generation"),
            )
            stmt = stmt.from_select(["case_id", "part", "next_check_at", "generation"], source)
            params: Any = {"ids": chunk, "parts": [r["part"] for r in rows], "dirty": DIRTY, "zero": 0}
        else:
            params = rows
        stmt = stmt.on_conflict_do_update(
            index_elements=[_pi.case_id],
            set_={"next_check_at": stmt.excluded.next_check_at, "generation": _pi.generation + 1},
        )
        conn.execute(stmt, params)
    return len(ids)


def invalidate_all(conn: Connection, reason: str, now: dt.datetime | None = None) -> int:
    """Every case's decision may have changed (configuration, template approval): bump
    the configuration epoch; each partition is evaluated whole at its next run. Returns
    the new epoch; `reason` is kept with it (`plan_meta`, key `epoch_reason`)."""
    now = now or dt.datetime.now(dt.UTC)
    epoch = current_epoch(conn) + 1
    _set_meta(conn, _EPOCH, str(epoch), now)
    _set_meta(conn, "epoch_reason", reason[:128], now)
    return epoch


def current_epoch(conn: Connection) -> int:
    value = conn.execute(select(plan_meta_t.c.value).where(plan_meta_t.c.key == _EPOCH)).scalar()
    return int(value) if value else 0


def stored_fingerprint(conn: Connection) -> str | None:
    value: str | None = conn.execute(
        select(plan_meta_t.c.value).where(plan_meta_t.c.key == _FINGERPRINT)).scalar()
    return value


def store_fingerprint(conn: Connection, fingerprint: str, now: dt.datetime) -> None:
    _set_meta(conn, _FINGERPRINT, fingerprint, now)


def _set_meta(conn: Connection, key: str, value: str, now: dt.datetime) -> None:
    stmt = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(plan_meta_t)
    conn.execute(stmt.values(key=key, value=value, updated_at=now).on_conflict_do_update(
        index_elements=[plan_meta_t.c.key], set_={"value": value, "updated_at": now}))


def adopt_orphans(conn: Connection) -> int:
    """Give a (dirty) row to every case that has none: cases written by something other
    than the store's import (a bulk load, a database made before the planner kept
    instants). One anti-join over the two primary keys; the planner runs it once per
    process. Returns how many were adopted."""
    orphans = select(cases_t.c.case_id).where(
        ~select(_pi.case_id).where(_pi.case_id == cases_t.c.case_id).exists())
    adopted = 0
    result = conn.execution_options(yield_per=_CHUNK).execute(orphans)
    ids: list[str] = []
    for case_id in result.scalars():
        ids.append(case_id)
    result.close()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        conn.execute(insert(plan_instants_t), [
            {"case_id": c, "part": partition_of(c), "next_check_at": DIRTY, "generation": 0} for c in chunk])
        adopted += len(chunk)
    return adopted


# ------------------------------------------------------------------- the planner's scans


def due_batch(conn: Connection, part: int, now: dt.datetime, after: tuple[dt.datetime, str] | None,
              limit: int) -> list[tuple[str, int, dt.datetime]]:
    """(case_id, generation, next_check_at) of the partition's cases due at `now`, in
    (next_check_at, case_id) order after the keyset position `after`: an index range
    scan of `ix_plan_instants_due`. A case planned in this pass moves beyond `now`, one
    invalidated meanwhile back to `DIRTY` (before the position): neither comes again."""
    where = [_pi.part == part, _pi.next_check_at <= now]
    if after is not None:
        at, case_id = after
        where.append(or_(_pi.next_check_at > at, and_(_pi.next_check_at == at, _pi.case_id > case_id)))
    rows = conn.execute(
        select(_pi.case_id, _pi.generation, _pi.next_check_at).where(*where)
        .order_by(_pi.next_check_at, _pi.case_id).limit(limit)).all()
    return [(r[0], r[1], r[2]) for r in rows]


def invalidate_part(conn: Connection, part: int) -> int:
    """Mark every case of the partition dirty (after a configuration change): one UPDATE
    along `ix_plan_instants_due`'s leading column."""
    result = conn.execute(update(plan_instants_t).where(_pi.part == part)
                          .values(next_check_at=DIRTY, generation=_pi.generation + 1))
    return int(result.rowcount or 0)


def write_instants(conn: Connection, rows: Sequence[tuple[str, int, dt.datetime]], now: dt.datetime,
                   by: str | None) -> int:
    """Store (case_id, generation read, next instant) for planned cases, each only if its
    generation is still the one read (no event since). Returns how many were written."""
    if not rows:
        return 0
    rows = sorted(rows)  # one lock order for every writer of these rows
    if conn.dialect.name == "postgresql":
        result = conn.execute(
            postgresql_write(), {"ids": [r[0] for r in rows], "gens": [r[1] for r in rows],
                                 "ats": [r[2] for r in rows], "now": now, "by": by})
        return int(result.rowcount or 0)
    stmt = (update(plan_instants_t)
            .where(_pi.case_id == bindparam("b_id"), _pi.generation == bindparam("b_gen"))
            .values(next_check_at=bindparam("b_at", type_=_pi.next_check_at.type), planned_at=now, planned_by=by))
    result = conn.execute(stmt, [{"b_id": r[0], "b_gen": r[1], "b_at": r[2]} for r in rows])
    return int(result.rowcount or 0)


def postgresql_write() -> Any:
    """The planner's write on PostgreSQL: one UPDATE ... FROM unnest(arrays)."""
    from sqlalchemy import text

    return text(
        "UPDATE plan_instants AS p SET next_check_at = v.at, planned_at = :now, planned_by = :by"
        " FROM (SELECT unnest(CAST(:ids AS VARCHAR[])) AS id, unnest(CAST(:gens AS INTEGER[])) AS gen,"
        " unnest(CAST(:ats AS TIMESTAMPTZ[])) AS at) AS v"
        " WHERE p.case_id = v.id AND p.generation = v.gen"
    )
