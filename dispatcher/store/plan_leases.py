"""Partitions of the portfolio and who plans each: leases in `plan_partitions`.

On PostgreSQL every running instance takes part in each planning run: it claims a
partition (a row lock-free `UPDATE ... WHERE owner IS NULL OR lease expired`), plans
its due cases batch by batch, renewing the lease in the transaction of each batch, and
releases it with the run's instant. An instance that dies leaves its lease to expire
(`lease_seconds`); the next instance that looks claims the partition and carries on
from what the dead one committed. The renewal is the fence: a batch commits only while
its instance holds the lease, in the same transaction, so no batch is applied twice
and none is lost. Lease times are the database server's clock (`clock_timestamp()`),
one clock for every instance whatever their own.

SQLite has one planning instance (its single writer): it plans every partition in turn
and takes no lease.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from dispatcher.store.plan_state import PARTITIONS
from dispatcher.store.tables import plan_partitions_t


@dataclass(frozen=True, slots=True)
class PartitionState:
    part: int
    owner: str | None
    leased: bool  # the lease is unexpired (by the database clock)
    planned_now: dt.datetime | None
    epoch: int


def ensure_partitions(conn: Connection) -> None:
    """Create the partition rows that are missing (a new or emptied store)."""
    stmt = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(plan_partitions_t)
    conn.execute(stmt.on_conflict_do_nothing(index_elements=[plan_partitions_t.c.part]),
                 [{"part": p, "epoch": 0} for p in range(PARTITIONS)])


_CLAIM = text(
    "UPDATE plan_partitions SET owner = :me, lease_until = clock_timestamp() + make_interval(secs => :ttl)"
    " WHERE part = :part AND (owner IS NULL OR owner = :me OR lease_until < clock_timestamp())"
    " AND NOT (planned_now IS NOT NULL AND planned_now >= :now AND epoch >= :epoch)"
    " RETURNING epoch"
)
_RENEW = text(
    "UPDATE plan_partitions SET lease_until = clock_timestamp() + make_interval(secs => :ttl)"
    " WHERE part = :part AND owner = :me RETURNING part"
)
_STATE = text(
    "SELECT part, owner, owner IS NOT NULL AND lease_until >= clock_timestamp(), planned_now, epoch"
    " FROM plan_partitions WHERE part = :part"
)


def claim(conn: Connection, part: int, me: str, ttl: float, now: dt.datetime, epoch: int) -> int | None:
    """Take the partition's lease for this run unless another instance holds it or it was
    already planned at `now` or later at `epoch`: the epoch it was last planned at, or
    None. PostgreSQL only."""
    row = conn.execute(_CLAIM, {"me": me, "ttl": ttl, "part": part, "now": now, "epoch": epoch}).first()
    return None if row is None else int(row[0])


def renew(conn: Connection, part: int, me: str, ttl: float) -> bool:
    """Extend the lease (in the transaction of a batch: the fence). False if lost."""
    return conn.execute(_RENEW, {"me": me, "ttl": ttl, "part": part}).first() is not None


def state(conn: Connection, part: int) -> PartitionState:
    if conn.dialect.name != "postgresql":
        row = conn.execute(
            plan_partitions_t.select().where(plan_partitions_t.c.part == part)).first()
        assert row is not None
        return PartitionState(part, None, False, row.planned_now, row.epoch)
    r = conn.execute(_STATE, {"part": part}).one()
    return PartitionState(r[0], r[1], bool(r[2]), r[3], r[4])


def finish(conn: Connection, part: int, me: str, now: dt.datetime, epoch: int) -> bool:
    """Release the lease, recording the run's instant and epoch; False if the lease was
    lost meanwhile (someone else finishes the partition)."""
    pp = plan_partitions_t.c
    stmt = plan_partitions_t.update().where(pp.part == part)
    if conn.dialect.name == "postgresql":
        stmt = stmt.where(pp.owner == me)
    result = conn.execute(stmt.values(owner=None, lease_until=None, planned_now=now, planned_by=me, epoch=epoch))
    return bool(result.rowcount)


def set_epoch(conn: Connection, part: int, epoch: int) -> None:
    """The partition's cases were all marked dirty for configuration epoch `epoch`."""
    pp = plan_partitions_t.c
    conn.execute(plan_partitions_t.update().where(pp.part == part).values(epoch=epoch))


def release(conn: Connection, part: int, me: str) -> None:
    """Give the lease back without planning (stopping, an error)."""
    pp = plan_partitions_t.c
    conn.execute(plan_partitions_t.update().where(pp.part == part, pp.owner == me)
                 .values(owner=None, lease_until=None))
