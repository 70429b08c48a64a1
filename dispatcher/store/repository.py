"""The store's write functions (import, holds, payments, escalation, contact flags)
and the small reads that go with them (active holds, missing ids).

Core SQL throughout (no ORM objects). Every function takes an open `Connection` (or an
ORM `Session`, whose connection is used) and runs inside the caller's transaction.
The planner's fast snapshot read model is `store.snapshots`; a case's timeline for
people is `store.timeline`; stored value conversions are `store.values`.

Every state change appends an event (STYLE principle 9); event data never carries
addresses or names.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlmodel import Session

from dispatcher.domain import (
    ADDRESS_KIND,
    CLOSED_STATUSES,
    HOLD_REASONS,
    Case,
    CaseStatus,
    Channel,
    Hold,
    Reason,
)
from dispatcher.policy import lifecycle
from dispatcher.store import closing
from dispatcher.store.events import EventKind, event_values, insert_events
from dispatcher.store.tables import (
    cases_t,
    contacts_t,
    escalations_t,
    holds_t,
    payments_t,
)
from dispatcher.store.values import CASE_STATUS_OF, CENT, REASON_OF, cents, exact_cents, split_list

#: The note on a promise_to_pay hold released because the promise was broken.
BROKEN_PROMISE_NOTE = "promise_broken"


Executor = Connection | Session


class CaseNotFound(LookupError):
    """No case with this id in the store."""

    def __init__(self, case_id: str) -> None:
        super().__init__(
            f"no such case: {case_id!r}; check the id (dispatcher case show ID) or import it first"
            " (dispatcher import FILE)"
        )
        self.case_id = case_id


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportedCase:
    """One validated import row: the case, its resolved zones and its channel consents."""

    case: Case
    zones: tuple[str, ...]
    sms_consent: bool
    email_consent: bool
    voice_consent: bool


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    case_id: str
    amount: Decimal
    paid_total: Decimal
    amount_due: Decimal
    status: CaseStatus
    closed: bool  # this payment closed the case
    cancelled_message_ids: tuple[int, ...] = ()


# --------------------------------------------------------------------------- helpers


def _conn(executor: Executor) -> Connection:
    return executor.connection() if isinstance(executor, Session) else executor


def _dialect_insert(conn: Connection, table: Table) -> Any:
    """`INSERT` that supports `ON CONFLICT` on the two supported backends."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"database {name!r} is not supported; use PostgreSQL or SQLite")


#: `INSERT ... ON CONFLICT` for other store modules and services.
dialect_insert = _dialect_insert


def _bulk_insert(
    conn: Connection,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    conflict: list[Any] | None = None,
    update_set: Callable[[Any], dict[str, Any]] | None = None,
) -> None:
    """INSERT many rows (all with the same keys), optionally as an upsert:
    `ON CONFLICT (conflict) DO UPDATE SET update_set(excluded)`.

    On PostgreSQL the rows go as one array per column through `INSERT ... SELECT
    unnest(...)`: one statement per batch instead of one per row (several times faster
    for import batches; psycopg would otherwise execute and parse each row apart).
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        columns = list(rows[0])
        source = select(
            *(func.unnest(bindparam(c, type_=ARRAY(table.c[c].type))).label(c) for c in columns)
        )
        stmt: Any = postgresql.insert(table).from_select(columns, source)
        params: Any = {c: [row[c] for row in rows] for c in columns}
    else:
        stmt, params = _dialect_insert(conn, table), rows
    if conflict is not None and update_set is not None:
        stmt = stmt.on_conflict_do_update(index_elements=conflict, set_=update_set(stmt.excluded))
    conn.execute(stmt, params)


def _normalise_address(channel: Channel, address: str) -> str:
    address = address.strip()
    return address.lower() if ADDRESS_KIND[channel] == "email" else address


def _require_case(conn: Connection, case_id: str) -> Any:
    row = conn.execute(
        select(cases_t.c.status, cases_t.c.escalated_stages).where(cases_t.c.case_id == case_id)
    ).first()
    if row is None:
        raise CaseNotFound(case_id)
    return row


def case_zones(conn: Executor, case_id: str) -> tuple[str, tuple[str, ...]]:
    """The case's jurisdiction and its zones, primary first (`CaseNotFound` if none):
    what turns a date a person gives into an instant in the debtor's day (SPEC 11)."""
    row = _conn(conn).execute(
        select(cases_t.c.jurisdiction, cases_t.c.zones).where(cases_t.c.case_id == case_id)
    ).first()
    if row is None:
        raise CaseNotFound(case_id)
    return row.jurisdiction, split_list(row.zones)


def missing_case_ids(conn: Connection, case_ids: Iterable[str]) -> list[str]:
    """The ids among `case_ids` that are not in the store, in the order given."""
    wanted = list(dict.fromkeys(case_ids))
    found: set[str] = set()
    for start in range(0, len(wanted), 5000):
        chunk = wanted[start : start + 5000]
        found.update(conn.execute(select(cases_t.c.case_id).where(cases_t.c.case_id.in_(chunk))).scalars())
    return [case_id for case_id in wanted if case_id not in found]


# ---------------------------------------------------------------------------- import


_CASE_UPDATE_COLUMNS = (
    "name", "jurisdiction", "locale", "timezone", "zones", "currency", "principal", "interest",
    "penalty", "fees", "amount_due", "penalty_rate_daily", "due_date", "status", "product", "updated_at",
)  # not escalated_stages, paid_total, created_at: they are ours, not the file's


def upsert_cases(conn: Executor, rows: Sequence[ImportedCase], now: dt.datetime) -> tuple[int, int]:
    """Insert or update cases and their contact points; returns (inserted, updated).

    A case id repeated within `rows` is applied once with its last version and counts
    as an update the second time. Preserved on update: the opt-out and invalid flags of
    an unchanged address (a changed address starts clean, except that an address
    already opted out on the same channel elsewhere stays opted out), the escalated
    stages and the paid total. The status is `policy.lifecycle.imported_status`; a case
    the file closes (or whose payments now cover it) closes (`store.closing.case_closed`).
    """
    conn = _conn(conn)
    if not rows:
        return 0, 0
    ids = list(dict.fromkeys(r.case.case_id for r in rows))
    before = {r.case_id: r for r in conn.execute(
        select(cases_t.c.case_id, cases_t.c.paid_total, cases_t.c.status).where(cases_t.c.case_id.in_(ids)))}
    paid_totals: dict[str, Decimal] = {case_id: r.paid_total for case_id, r in before.items()}

    latest: dict[str, ImportedCase] = {}
    events: list[dict[str, Any]] = []
    inserted = updated = 0
    seen = set(paid_totals)
    for row in rows:
        c = row.case
        if c.case_id in seen:
            updated += 1
            kind = EventKind.CASE_UPDATED
        else:
            inserted += 1
            kind = EventKind.CASE_IMPORTED
            seen.add(c.case_id)
        latest[c.case_id] = row
        events.append(
            event_values(kind, now, case_id=c.case_id, actor="import", status=c.status.value,
                         currency=c.currency, amount_due=str(c.amount_due), due_date=c.due_date.isoformat())
        )

    addresses = {a for r in latest.values() for a in (r.case.phone, r.case.email) if a}
    opted_out_elsewhere: set[tuple[str, str]] = set()
    if addresses:
        opted_out_elsewhere = {
            (channel, address)
            for channel, address in conn.execute(
                select(contacts_t.c.channel, contacts_t.c.address)
                .where(contacts_t.c.address.in_(sorted(addresses)), contacts_t.c.opted_out)
                .distinct()
            )
        }

    case_values: list[dict[str, Any]] = []
    contact_values: list[dict[str, Any]] = []
    closures: list[tuple[str, CaseStatus, str]] = []
    for case_id, row in latest.items():
        c = row.case
        new_status = lifecycle.imported_status(c.status, paid_totals.get(case_id), c.amount_due)
        status = new_status.value
        if case_id in before and lifecycle.closes(CASE_STATUS_OF[before[case_id].status], new_status):
            closures.append((case_id, new_status, lifecycle.import_reason(c.status, new_status)))
        case_values.append(
            {
                "case_id": case_id,
                "name": c.name,
                "jurisdiction": c.jurisdiction,
                "locale": c.locale,
                "timezone": c.timezone,
                "zones": ",".join(row.zones),
                "escalated_stages": "",
                "currency": c.currency,
                "principal": exact_cents(c.principal, "principal"),
                "interest": exact_cents(c.interest, "interest"),
                "penalty": exact_cents(c.penalty, "penalty"),
                "fees": exact_cents(c.fees, "fees"),
                "amount_due": exact_cents(c.amount_due, "amount_due"),
                "penalty_rate_daily": c.penalty_rate_daily,
                "due_date": c.due_date,
                "status": status,
                "product": c.product.value,
                "paid_total": Decimal("0.00"),
                "created_at": now,
                "updated_at": now,
            }
        )
        for channel, address, consent in (
            (Channel.SMS, c.phone, row.sms_consent),
            (Channel.VOICE, c.phone, row.voice_consent),
            (Channel.EMAIL, c.email, row.email_consent),
        ):
            contact_values.append(
                {
                    "case_id": case_id,
                    "channel": channel.value,
                    "address": address,
                    "consent": consent,
                    "opted_out": (channel.value, address) in opted_out_elsewhere,
                    "invalid": False,
                    "updated_at": now,
                }
            )

    _bulk_insert(
        conn, cases_t, case_values,
        conflict=[cases_t.c.case_id],
        update_set=lambda excluded: {name: excluded[name] for name in _CASE_UPDATE_COLUMNS},
    )

    # The flags are decided in SQL, against the row as it is when the upsert locks it, so
    # an opt-out that commits while the import runs is never undone.
    def contact_update(excluded: Any) -> dict[str, Any]:
        same_address = contacts_t.c.address.is_not_distinct_from(excluded.address)
        return {
            "address": excluded.address,
            "consent": excluded.consent,
            "opted_out": case(
                (same_address, or_(contacts_t.c.opted_out, excluded.opted_out)), else_=excluded.opted_out
            ),
            "invalid": case((same_address, contacts_t.c.invalid), else_=excluded.invalid),
            "updated_at": excluded.updated_at,
        }

    _bulk_insert(
        conn, contacts_t, contact_values,
        conflict=[contacts_t.c.case_id, contacts_t.c.channel],
        update_set=contact_update,
    )
    insert_events(conn, events)
    closing.cases_closed(conn, closures, "import", now)
    return inserted, updated



# ------------------------------------------------------------------------------ holds


def place_hold(
    session_or_conn: Executor,
    case_id: str,
    reason: Reason | str,
    until: dt.datetime | None,
    by: str | None,
    now: dt.datetime,
    note: str | None = None,
) -> int:
    """Put a hold on a case (until released, or until `until`); returns the hold's id."""
    conn = _conn(session_or_conn)
    hold_reason = REASON_OF.get(str(reason))
    if hold_reason not in HOLD_REASONS:
        allowed = ", ".join(r.value for r in HOLD_REASONS)
        raise ValueError(f"hold reason {str(reason)!r} is not one of: {allowed}")
    if until is not None and until.tzinfo is None:
        raise ValueError("hold until must be timezone-aware")
    _require_case(conn, case_id)
    result = conn.execute(
        insert(holds_t).values(
            case_id=case_id, reason=hold_reason.value, placed_at=now, until=until, placed_by=by, note=note
        )
    )
    hold_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    insert_events(
        conn,
        [event_values(EventKind.HOLD_PLACED, now, case_id=case_id, actor=by, hold_id=hold_id,
                      reason=hold_reason.value, until=None if until is None else until.isoformat(), note=note)],
    )
    return hold_id


def _active_holds_query(case_id: str, now: dt.datetime) -> Any:
    return (
        select(holds_t.c.id, holds_t.c.reason, holds_t.c.until, holds_t.c.placed_at, holds_t.c.placed_by,
               holds_t.c.note)
        .where(
            holds_t.c.case_id == case_id,
            holds_t.c.released_at.is_(None),
            or_(holds_t.c.until.is_(None), holds_t.c.until > now),
        )
        .order_by(holds_t.c.placed_at, holds_t.c.id)
    )


def active_holds(conn: Executor, case_id: str, now: dt.datetime) -> list[Hold]:
    """The case's holds in force at `now` (not released, not expired), oldest first."""
    conn = _conn(conn)
    _require_case(conn, case_id)
    return [Hold(REASON_OF[r.reason], r.until) for r in conn.execute(_active_holds_query(case_id, now))]


def release_holds(
    conn: Executor, case_id: str, reason: Reason | str | None, by: str | None, now: dt.datetime,
    *, keep: Iterable[str] = (),
) -> int:
    """Release the case's holds in force (all, or those with `reason`; never those whose
    reason is in `keep`); returns how many."""
    conn = _conn(conn)
    _require_case(conn, case_id)
    query = _active_holds_query(case_id, now)
    if reason is not None:
        query = query.where(holds_t.c.reason == str(reason))
    if keep:
        query = query.where(holds_t.c.reason.not_in(list(keep)))
    held = conn.execute(query).all()
    if not held:
        return 0
    conn.execute(
        update(holds_t)
        .where(holds_t.c.id.in_([h.id for h in held]), holds_t.c.released_at.is_(None))
        .values(released_at=now, released_by=by)
    )
    insert_events(
        conn,
        [event_values(EventKind.HOLD_RELEASED, now, case_id=case_id, actor=by, hold_id=h.id, reason=h.reason)
         for h in held],
    )
    return len(held)


class HoldNotFound(LookupError):
    """No hold with this id on this case."""


def hold_reason(conn: Executor, case_id: str, hold_id: int) -> tuple[str, bool]:
    """A hold's reason and whether it is released already (`HoldNotFound`)."""
    row = _conn(conn).execute(
        select(holds_t.c.reason, holds_t.c.released_at).where(holds_t.c.id == hold_id, holds_t.c.case_id == case_id)
    ).first()
    if row is None:
        raise HoldNotFound(f"case {case_id!r} has no hold {hold_id}; its holds are on GET /api/cases/{case_id}")
    return row.reason, row.released_at is not None


def release_hold(conn: Executor, case_id: str, hold_id: int, by: str | None, now: dt.datetime) -> bool:
    """Release one hold of the case; False when it was released already (or `HoldNotFound`)."""
    conn = _conn(conn)
    reason, _ = hold_reason(conn, case_id, hold_id)
    released = conn.execute(
        update(holds_t).where(holds_t.c.id == hold_id, holds_t.c.released_at.is_(None))
        .values(released_at=now, released_by=by)
    ).rowcount
    if released:
        insert_events(conn, [event_values(EventKind.HOLD_RELEASED, now, case_id=case_id, actor=by, hold_id=hold_id,
                                          reason=reason)])
    return bool(released)


# --------------------------------------------------------------------------- payments


def record_payment(
    conn: Executor, case_id: str, amount: Decimal, by: str | None, now: dt.datetime
) -> PaymentOutcome:
    """Add a payment to the case's paid total; a fully paid active case becomes `paid`
    and closes (`store.closing.case_closed`: its queued messages cancelled, its tasks
    closed)."""
    conn = _conn(conn)
    if not isinstance(amount, Decimal):
        raise TypeError(f"payment amount must be Decimal, got {type(amount).__name__}")
    if not amount.is_finite() or amount <= 0 or amount != amount.quantize(CENT):
        raise ValueError(f"payment amount {amount} must be a positive amount with at most 2 decimals, e.g. 120.50")
    amount = amount.quantize(CENT)  # stored and reported as e.g. 120.00, like every amount
    # Touch the row first: that takes its write lock (row lock on PostgreSQL, the database
    # write lock on SQLite), so the read below cannot race another payment.
    touched = conn.execute(update(cases_t).where(cases_t.c.case_id == case_id).values(updated_at=now))
    if touched.rowcount == 0:
        raise CaseNotFound(case_id)
    row = conn.execute(
        select(cases_t.c.paid_total, cases_t.c.amount_due, cases_t.c.status).where(cases_t.c.case_id == case_id)
    ).one()
    paid_total = cents(row.paid_total + amount)
    amount_due = cents(row.amount_due)
    status = CASE_STATUS_OF[row.status]
    conn.execute(insert(payments_t).values(case_id=case_id, amount=amount, at=now, recorded_by=by))
    events = [
        event_values(EventKind.PAYMENT_RECORDED, now, case_id=case_id, actor=by, amount=str(amount),
                     paid_total=str(paid_total))
    ]
    values: dict[str, Any] = {"paid_total": paid_total}
    closed = paid_total >= amount_due and status not in CLOSED_STATUSES
    if closed:
        status = CaseStatus.PAID
        values["status"] = status.value
    conn.execute(update(cases_t).where(cases_t.c.case_id == case_id).values(**values))
    insert_events(conn, events)
    cancelled: tuple[int, ...] = ()
    if closed:
        cancelled = closing.case_closed(conn, case_id, status, lifecycle.PAID_IN_FULL, by, now)
    elif paid_total >= amount_due:
        cancelled = closing.cancel_queued(conn, case_id, now, reason="case_closed")
    return PaymentOutcome(case_id, amount, paid_total, amount_due, status, closed, cancelled)


def settle_case(conn: Executor, case_id: str, by: str | None, now: dt.datetime, reason: str) -> bool:
    """Close an active case as `settled` (e.g. a kept plan's waiver covers the rest):
    `store.closing.case_closed`; False if it was not active."""
    conn = _conn(conn)
    changed = conn.execute(
        update(cases_t).where(cases_t.c.case_id == case_id, cases_t.c.status == CaseStatus.ACTIVE.value)
        .values(status=CaseStatus.SETTLED.value, updated_at=now)
    ).rowcount
    if not changed:
        return False
    closing.case_closed(conn, case_id, CaseStatus.SETTLED, reason, by, now)
    return True


# ------------------------------------------------------------------------- escalation


def mark_escalated(conn: Executor, case_id: str, stage: str, now: dt.datetime, *, invalidates: bool = True) -> bool:
    """Record the legal hand-off of a case in `stage`; True only the first time. The
    planner passes `invalidates=False`: it accounts for the hand-off itself."""
    return (case_id, stage) in mark_escalated_many(conn, [(case_id, stage)], now, invalidates=invalidates)


def mark_escalated_many(conn: Executor, pairs: Iterable[tuple[str, str]], now: dt.datetime, *,
                        invalidates: bool = True) -> set[tuple[str, str]]:
    """`mark_escalated` for many (case, stage) pairs in a few statements (a planning batch
    escalates thousands of cases at once on its first run); returns the pairs escalated
    for the first time. `CaseNotFound` for an unknown case."""
    conn = _conn(conn)
    wanted = sorted(set(pairs))
    if not wanted:
        return set()
    ids = sorted({case_id for case_id, _ in wanted})
    current: dict[str, str] = {}
    for start in range(0, len(ids), 5000):
        current.update(conn.execute(select(cases_t.c.case_id, cases_t.c.escalated_stages)
                                    .where(cases_t.c.case_id.in_(ids[start:start + 5000]))).all())
    for case_id in ids:
        if case_id not in current:
            raise CaseNotFound(case_id)
    e = escalations_t.c
    newly: set[tuple[str, str]] = set()
    for start in range(0, len(wanted), 500):
        stmt = _dialect_insert(conn, escalations_t).values(
            [{"case_id": c, "stage": st, "at": now} for c, st in wanted[start:start + 500]])
        stmt = stmt.on_conflict_do_nothing(index_elements=[e.case_id, e.stage]).returning(e.case_id, e.stage)
        newly.update((r[0], r[1]) for r in conn.execute(stmt))
    # The column mirrors the escalations table, so snapshots need no extra query.
    stale = sorted({c for c, st in wanted if (c, st) in newly or st not in split_list(current[c])})
    if stale:
        stages: dict[str, set[str]] = {c: set() for c in stale}
        for start in range(0, len(stale), 5000):
            chunk = stale[start:start + 5000]
            for case_id, stage in conn.execute(select(e.case_id, e.stage).where(e.case_id.in_(chunk))):
                stages[case_id].add(stage)
        conn.execute(
            update(cases_t).where(cases_t.c.case_id == bindparam("b_id"))
            .values(escalated_stages=bindparam("b_stages"), updated_at=now),
            [{"b_id": c, "b_stages": ",".join(sorted(stages[c]))} for c in stale])
    insert_events(conn, [event_values(EventKind.ESCALATED, now, case_id=c, stage=st) for c, st in sorted(newly)],
                  invalidates=invalidates)
    return newly


# ------------------------------------------------------------------ contact addresses


def set_opt_out(
    conn: Executor, channel: Channel | str, address: str, opted_out: bool, now: dt.datetime, source: str,
    **why: Any,
) -> list[str]:
    """Opt `address` out of (or back into) `channel` on every case that has it.

    Returns the ids of all cases with that address on that channel; an event is recorded
    for each case whose flag changed, with `why` in its data (e.g. the revocation phrase)."""
    conn = _conn(conn)
    ch = Channel(channel)
    address = _normalise_address(ch, address)
    match = and_(contacts_t.c.channel == ch.value, contacts_t.c.address == address)
    case_ids = sorted(set(conn.execute(select(contacts_t.c.case_id).where(match)).scalars()))
    changed = conn.execute(
        update(contacts_t)
        .where(match, contacts_t.c.opted_out != opted_out)
        .values(opted_out=opted_out, updated_at=now)
        .returning(contacts_t.c.case_id)
    ).scalars().all()
    kind = EventKind.OPTED_OUT if opted_out else EventKind.OPTED_IN
    insert_events(conn, [event_values(kind, now, case_id=case_id, channel=ch.value, source=source, **why)
                         for case_id in sorted(changed)])
    return case_ids


def mark_address_invalid(conn: Executor, channel: Channel | str, address: str, now: dt.datetime) -> list[str]:
    """Mark `address` undeliverable on `channel` for every case that has it (a hard
    bounce, an invalid number); returns the ids of the cases whose flag changed."""
    conn = _conn(conn)
    ch = Channel(channel)
    address = _normalise_address(ch, address)
    changed = sorted(
        conn.execute(
            update(contacts_t)
            .where(contacts_t.c.channel == ch.value, contacts_t.c.address == address,
                   contacts_t.c.invalid.is_(False))
            .values(invalid=True, updated_at=now)
            .returning(contacts_t.c.case_id)
        ).scalars()
    )
    insert_events(conn, [event_values(EventKind.ADDRESS_INVALID, now, case_id=case_id, channel=ch.value)
                         for case_id in changed])
    return changed
