"""Repository functions over the store: the only place that maps rows to domain objects.

Core SQL throughout (no ORM objects on the hot paths). Every function takes an open
`Connection` (or an ORM `Session`, whose connection is used) and runs inside the
caller's transaction, except the readers that take an `Engine` and manage their own
short read transactions (`iter_snapshots`, `get_snapshot`).

Every state change appends an event (STYLE principle 9); event data never carries
addresses or names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import json
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Numeric,
    Table,
    and_,
    any_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    or_,
    select,
    true,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.sqltypes import NullType
from sqlmodel import Session

from dispatcher.domain import (
    ADDRESS_KIND,
    CLOSED_STATUSES,
    HOLD_REASONS,
    Case,
    CaseSnapshot,
    CaseStatus,
    Channel,
    ContactPoint,
    Hold,
    MessageStatus,
    Product,
    Reason,
    SentMessage,
)
from dispatcher.store.events import EventKind, _encode
from dispatcher.store.tables import (
    cases_t,
    contacts_t,
    escalations_t,
    events_t,
    holds_t,
    messages_t,
    payments_t,
)

#: The note on a promise_to_pay hold released because the promise was broken.
BROKEN_PROMISE_NOTE = "promise_broken"


Executor = Connection | Session

CENT = Decimal("0.01")

# Enum lookups by value: a dict hit is several times cheaper than `Enum(value)`, and
# `iter_snapshots` does millions of them.
_CHANNELS = {c.value: c for c in Channel}
_CASE_STATUSES = {s.value: s for s in CaseStatus}
_PRODUCTS = {p.value: p for p in Product}
_MESSAGE_STATUSES = {s.value: s for s in MessageStatus}
_REASONS = {r.value: r for r in Reason}


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


def _exact_cents(value: Decimal, what: str) -> Decimal:
    """Money on its way in: exactly two decimals, so every backend stores and returns
    the same text (`1025.75`, `0.00`); refuses anything that would need rounding."""
    if not isinstance(value, Decimal):
        raise TypeError(f"{what} must be Decimal, got {type(value).__name__}")
    cents = value.quantize(CENT)
    if cents != value:
        raise ValueError(f"{what} {value} has more than 2 decimals")
    return cents if cents else Decimal("0.00")  # never "-0.00"


def _cents(value: Decimal) -> Decimal:
    """Money with two decimals on every backend (PostgreSQL returns NUMERIC(18, 8) as
    `12.50000000`, SQLite the text as written); never rounds a value away."""
    quantized = value.quantize(CENT)
    return quantized if quantized == value else value


@functools.lru_cache(maxsize=4096)  # few distinct rates; normalize() is slow
def _plain(value: Decimal | None) -> Decimal | None:
    """A rate without the storage's trailing zeros (`0.00050000` -> `0.0005`)."""
    if value is None:
        return None
    value = value.normalize()
    return value.quantize(Decimal(1)) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]


def _split(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    parts = text.split(",")
    return tuple(parts) if "" not in parts else tuple(p for p in parts if p)


def _event(kind: EventKind, at: dt.datetime, case_id: str | None, *, actor: str | None = None,
           message_id: int | None = None, **data: Any) -> dict[str, Any]:
    """Values for one events row, as `record_event` writes them (for batched inserts)."""
    return {
        "case_id": case_id,
        "message_id": message_id,
        "at": at,
        "kind": str(kind),
        "actor": actor,
        "data": _encode(data),
    }


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


def _insert_events(conn: Connection, events: list[dict[str, Any]]) -> None:
    if len(events) > 1:
        _bulk_insert(conn, events_t, events)
    elif events:
        conn.execute(insert(events_t), events)


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
    stages and the paid total. A case we closed as paid stays paid while the paid total
    covers the imported amount due.
    """
    conn = _conn(conn)
    if not rows:
        return 0, 0
    ids = list(dict.fromkeys(r.case.case_id for r in rows))
    paid_totals: dict[str, Decimal] = dict(
        conn.execute(  # type: ignore[arg-type]
            select(cases_t.c.case_id, cases_t.c.paid_total).where(cases_t.c.case_id.in_(ids))
        ).all()
    )

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
            _event(kind, now, c.case_id, actor="import", status=c.status.value, currency=c.currency,
                   amount_due=str(c.amount_due), due_date=c.due_date.isoformat())
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
    for case_id, row in latest.items():
        c = row.case
        status = c.status.value
        paid = paid_totals.get(case_id)
        if c.status is CaseStatus.ACTIVE and paid is not None and paid > 0 and paid >= c.amount_due:
            status = CaseStatus.PAID.value
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
                "principal": _exact_cents(c.principal, "principal"),
                "interest": _exact_cents(c.interest, "interest"),
                "penalty": _exact_cents(c.penalty, "penalty"),
                "fees": _exact_cents(c.fees, "fees"),
                "amount_due": _exact_cents(c.amount_due, "amount_due"),
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
    _insert_events(conn, events)
    return inserted, updated


# -------------------------------------------------------------------------- snapshots


_SNAPSHOT_CASE_COLUMNS = (
    cases_t.c.case_id,
    cases_t.c.name,
    cases_t.c.jurisdiction,
    cases_t.c.locale,
    cases_t.c.currency,
    cases_t.c.principal,
    cases_t.c.interest,
    cases_t.c.penalty,
    cases_t.c.fees,
    cases_t.c.amount_due,
    cases_t.c.due_date,
    cases_t.c.timezone,
    cases_t.c.penalty_rate_daily,
    cases_t.c.status,
    cases_t.c.product,
    cases_t.c.zones,
    cases_t.c.escalated_stages,
)


_MONEY_AMOUNTS = ("principal", "interest", "penalty", "fees", "amount_due")


def _raw(expr: Any, name: str) -> Any:
    """A select column the driver's value comes through unprocessed (decoded by
    `_Decoders`): SQLAlchemy's per-value result processing is most of the cost of a
    row, and this path reads millions of rows."""
    return type_coerce(expr, NullType()).label(name)


@dataclass(frozen=True, slots=True)
class _Decoders:
    """Driver values -> domain values, per backend. SQLite hands back text for money,
    dates and datetimes (as stored by `Money` and `UTCDateTime`) and 0/1 for booleans;
    psycopg hands back Decimal, date, aware datetime and bool already."""

    money: Callable[[Any], Decimal]
    rate: Callable[[Any], Decimal | None]
    date: Callable[[Any], dt.date]
    instant: Callable[[Any], dt.datetime | None]
    flag: Callable[[Any], bool]
    case_columns: tuple[Any, ...]

    def cases_query(self, which: Callable[[Any], ColumnElement[bool]]) -> Any:
        """The snapshot's case query for the cases `which(case_id column)` selects: the
        case row with its contact point of each channel joined in, so one row per case
        carries everything but holds and history. The condition is repeated on each
        joined table: PostgreSQL does not carry a range across a join, and its merge
        join would otherwise read the contact index from the start for every batch."""
        columns = list(self.case_columns)
        source: Any = cases_t
        for channel, cp in zip(_JOINED_CHANNELS, _contact_aliases(), strict=True):
            source = source.outerjoin(
                cp, and_(cp.c.case_id == cases_t.c.case_id, cp.c.channel == channel.value, which(cp.c.case_id))
            )
            columns += [
                cp.c.address.label(f"{channel.value}_address"),
                _raw(cp.c.consent, f"{channel.value}_consent"),
                _raw(cp.c.opted_out, f"{channel.value}_opted_out"),
                _raw(cp.c.invalid, f"{channel.value}_invalid"),
            ]
        return select(*columns).select_from(source).where(which(cases_t.c.case_id)).order_by(cases_t.c.case_id)


#: Channels in the order their contact-point columns follow the case columns.
_JOINED_CHANNELS = tuple(Channel)


@functools.cache
def _contact_aliases() -> tuple[Any, ...]:
    """The contact-point table aliased once per joined channel. Made once: building an
    alias copies every column, and the sender asks for a batch's snapshots every few
    hundred messages (the same aliases also keep the statement cache key stable)."""
    return tuple(contacts_t.alias(f"cp_{channel.value}") for channel in _JOINED_CHANNELS)


@functools.lru_cache(maxsize=4096)
def _rate_from_text(text: str | None) -> Decimal | None:
    return None if text is None else _plain(Decimal(text))


def _utc_from_text(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.astimezone(dt.UTC)


def _same(value: Any) -> Any:
    return value


@functools.cache
def _decoders(dialect: str) -> _Decoders:
    c = cases_t.c
    if dialect == "postgresql":
        # Amounts are stored with exactly two decimals (`_exact_cents`); casting the
        # NUMERIC(18, 8) back to two decimals in SQL spares a quantize per value.
        amount = {name: cast(c[name], Numeric(18, 2)) for name in _MONEY_AMOUNTS}
        return _Decoders(
            money=_same, rate=_plain, date=_same, instant=_utc, flag=_same,
            case_columns=tuple(_raw(amount.get(col.name, col), col.name) for col in _SNAPSHOT_CASE_COLUMNS),
        )
    return _Decoders(
        money=Decimal, rate=_rate_from_text, date=dt.date.fromisoformat, instant=_utc_from_text, flag=bool,
        case_columns=tuple(_raw(col, col.name) for col in _SNAPSHOT_CASE_COLUMNS),
    )


def case_row_to_domain(row: Any, *, phone: str | None = None, email: str | None = None) -> Case:
    """A `Case` from a row of the cases table (any row with its column names)."""
    m = row._mapping if hasattr(row, "_mapping") else row
    return Case(
        case_id=m["case_id"],
        name=m["name"],
        jurisdiction=m["jurisdiction"],
        locale=m["locale"],
        currency=m["currency"],
        principal=_cents(m["principal"]),
        interest=_cents(m["interest"]),
        penalty=_cents(m["penalty"]),
        fees=_cents(m["fees"]),
        amount_due=_cents(m["amount_due"]),
        due_date=m["due_date"],
        timezone=m["timezone"],
        phone=phone,
        email=email,
        penalty_rate_daily=_plain(m["penalty_rate_daily"]),
        status=_CASE_STATUSES[m["status"]],
        product=_PRODUCTS[m["product"]],
    )


def iter_snapshots(
    engine: Engine,
    *,
    case_ids: Sequence[str] | None = None,
    batch_size: int = 5000,
    history_days: int = 60,
    now: dt.datetime,
) -> Generator[CaseSnapshot, None, None]:
    """Stream a `CaseSnapshot` for every case (or the named ones), in case_id order.

    Cases are read in keyset batches (`case_id > last ORDER BY case_id LIMIT n`); each
    batch's contact points, active holds and message history (messages sent or
    scheduled within `history_days` before `now`, or later) come from one query each.
    Memory stays bounded by `batch_size`, whatever the number of cases. Named ids that
    do not exist are skipped (`missing_case_ids` finds them).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    reader = _BatchReader(_decoders(engine.dialect.name), now, now - dt.timedelta(days=history_days))
    if case_ids is None:
        with contextlib.closing(_scan(engine, reader, batch_size)) as batches:
            for batch in batches:  # a consumer that stops early ends the scan at once
                yield from reader.snapshots(batch)
        return
    decode = reader.decode
    among = _among_for(engine.dialect.name)
    with engine.connect() as conn:
        wanted = sorted(set(case_ids))
        # the id list is bound once per joined table: stay far below SQLite's 32766
        # and PostgreSQL's 65535 parameters per statement
        step = min(batch_size, 1000)
        for start in range(0, len(wanted), step):
            chunk = wanted[start : start + step]
            rows = conn.execute(decode.cases_query(functools.partial(_among_ids, among, chunk))).all()
            if not rows:
                conn.rollback()
                continue
            found = [r[0] for r in rows]
            batch = reader.read(conn, rows, functools.partial(_among_ids, among, found))
            conn.rollback()  # end the read transaction between batches
            yield from reader.snapshots(batch)


def _among_for(dialect: str) -> Callable[[Any, Sequence[str]], ColumnElement[bool]]:
    """`column IN (ids)`. On PostgreSQL as `column = ANY(:array)`: one parameter instead
    of one per id, so the statement text stays the same whatever the ids, and psycopg
    converts it once instead of re-parsing a query of thousands of placeholders for
    every batch of the sender."""
    if dialect == "postgresql":
        return lambda col, ids: col == any_(bindparam(None, list(ids), type_=ARRAY(col.type)))
    return lambda col, ids: col.in_(list(ids))


def _among_ids(among: Callable[[Any, Sequence[str]], ColumnElement[bool]], ids: Sequence[str],
               col: Any) -> ColumnElement[bool]:
    return among(col, ids)


def _scan(engine: Engine, reader: _BatchReader, batch_size: int) -> Generator[_Batch, None, None]:
    """Every case in keyset batches (`case_id > last ORDER BY case_id LIMIT n`), each
    read in its own short transaction."""
    decode = reader.decode
    with engine.connect() as conn:
        last: str | None = None
        while True:
            rows = conn.execute(decode.cases_query(_after(last)).limit(batch_size)).all()
            if not rows:
                conn.rollback()
                return
            # The batch is a contiguous case_id range, so the related rows are a range too:
            # cheaper than an IN list of thousands of ids, and served by the case_id indexes.
            low, high = last, rows[-1][0]

            def in_batch(col: Any, low: str | None = low, high: str = high) -> ColumnElement[bool]:
                return col <= high if low is None else and_(col > low, col <= high)

            batch = reader.read(conn, rows, in_batch)
            conn.rollback()  # end the read transaction between batches
            yield batch
            last = high


def _after(last: str | None) -> Callable[[Any], ColumnElement[bool]]:
    """The keyset condition `case_id > last` (everything for the first batch)."""
    if last is None:
        return lambda col: true()
    return lambda col: col > last


@dataclass(frozen=True, slots=True)
class _Batch:
    """One batch of case rows (contact points joined in) and everything else read with it."""

    rows: Sequence[Any]
    holds: dict[str, list[Hold]]
    history: dict[str, list[SentMessage]]
    broken: set[str]  # case ids with a broken promise to pay and no payment since


class _BatchReader:
    """Reads the holds and history of one batch of case rows (which carry their contact
    points) with one query each, then builds the batch's snapshots one at a time as they
    are consumed, so only one batch of raw rows is held, not a batch of object graphs.
    Interns the zones and escalated-stages values, whose few distinct values repeat
    across cases."""

    def __init__(self, decode: _Decoders, now: dt.datetime, cutoff: dt.datetime) -> None:
        self.decode = decode
        self.now = now
        self.cutoff = cutoff
        self.zone_values: dict[str, tuple[str, ...]] = {}
        self.stage_values: dict[str, frozenset[str]] = {}

    def read(self, conn: Connection, case_rows: Sequence[Any], in_batch: Any) -> _Batch:
        """The batch's case rows with their active holds, recent history and broken
        promises, read by `in_batch` (a condition on a case_id column)."""
        decode = self.decode
        flag, instant = decode.flag, decode.instant
        channels = _CHANNELS

        holds: dict[str, list[Hold]] = defaultdict(list)
        reasons = _REASONS
        h = holds_t.c
        active = and_(h.released_at.is_(None), or_(h.until.is_(None), h.until > self.now))
        # A promise to pay released as broken, with no payment since: the case gets firmer
        # templates until it pays (SPEC section 6; see receipts.resume_broken_promises).
        broken = and_(
            h.reason == Reason.PROMISE_TO_PAY.value, h.note == BROKEN_PROMISE_NOTE, h.released_at >= self.cutoff,
            ~exists().where(payments_t.c.case_id == h.case_id, payments_t.c.at >= h.released_at),
        )
        broken_promises: set[str] = set()
        for case_id, reason, until, released in conn.execute(
            select(h.case_id, h.reason, _raw(h.until, "until"), h.released_at.is_not(None))
            .where(in_batch(h.case_id), or_(active, broken))
            .order_by(h.case_id, h.placed_at, h.id)
        ).all():
            if released:
                broken_promises.add(case_id)
            else:
                holds[case_id].append(Hold(reasons[reason], instant(until)))

        history: dict[str, list[SentMessage]] = defaultdict(list)
        statuses = _MESSAGE_STATUSES
        m = messages_t.c
        at = func.coalesce(m.sent_at, m.scheduled_at)
        for case_id, channel, when, status, stage, template, conversation, message_id in conn.execute(
            select(m.case_id, m.channel, _raw(at, "at"), m.status, m.stage, m.template_id,
                   _raw(m.conversation, "conversation"), m.id)
            # System replies (STOP/HELP confirmations, a requested link) were asked for by
            # the debtor: they count for neither cadence nor caps.
            .where(in_batch(m.case_id), at >= self.cutoff, m.kind != "system")
            .order_by(m.case_id, at, m.id)
        ).all():
            history[case_id].append(
                SentMessage(channels[channel], instant(when), statuses[status], stage, template,  # type: ignore[arg-type]
                            flag(conversation), message_id)
            )
        return _Batch(case_rows, holds, history, broken_promises)

    def snapshots(self, batch: _Batch) -> Iterator[CaseSnapshot]:
        """The snapshot of each case row, in row order. Pure: the rows are already read."""
        holds, history, broken = batch.holds, batch.history, batch.broken
        decode = self.decode
        flag, money, rate_of, date_of = decode.flag, decode.money, decode.rate, decode.date
        sms, email_ch, voice = _JOINED_CHANNELS
        case_statuses, products = _CASE_STATUSES, _PRODUCTS
        zone_values, stage_values = self.zone_values, self.stage_values
        no_items: tuple[Any, ...] = ()
        new_case, new_snapshot, new_contact = Case, CaseSnapshot, ContactPoint
        for (case_id, name, jurisdiction, locale, currency, principal, interest, penalty, fees, amount_due,
             due_date, timezone, rate, status, product, zones, escalated,
             sms_address, sms_consent, sms_opted_out, sms_invalid,
             email_address, email_consent, email_opted_out, email_invalid,
             voice_address, voice_consent, voice_opted_out, voice_invalid) in batch.rows:
            # A NULL consent means the outer join found no contact point for the channel.
            # Phone: the voice address when there is one, else the SMS address.
            contacts = []
            phone = email = None
            if sms_consent is not None:
                contacts.append(new_contact(sms, sms_address, flag(sms_consent), flag(sms_opted_out),
                                            flag(sms_invalid)))
                if sms_address:
                    phone = sms_address
            if email_consent is not None:
                contacts.append(new_contact(email_ch, email_address, flag(email_consent), flag(email_opted_out),
                                            flag(email_invalid)))
                if email_address:
                    email = email_address
            if voice_consent is not None:
                contacts.append(new_contact(voice, voice_address, flag(voice_consent), flag(voice_opted_out),
                                            flag(voice_invalid)))
                if voice_address:
                    phone = voice_address
            zone_tuple = zone_values.get(zones)
            if zone_tuple is None:
                zone_tuple = zone_values[zones] = _split(zones)
            stages = stage_values.get(escalated)
            if stages is None:
                stages = stage_values[escalated] = frozenset(_split(escalated))
            case_holds, case_history = holds.get(case_id), history.get(case_id)
            # positional: field order checked by _POSITIONAL_FIELDS at import
            yield new_snapshot(
                new_case(case_id, name, jurisdiction, locale, currency, money(principal), money(interest),
                         money(penalty), money(fees), money(amount_due), date_of(due_date), timezone, phone,
                         email, rate_of(rate), case_statuses[status], products[product]),
                tuple(contacts),
                no_items if case_holds is None else tuple(case_holds),
                no_items if case_history is None else tuple(case_history),
                stages,
                zone_tuple,
                case_id in broken,
            )
        for values in (zone_values, stage_values):
            if len(values) > 10_000:  # distinct values are few; never let them grow without bound
                values.clear()


#: `_BatchReader.snapshots` builds these positionally (a third cheaper than keywords on
#: this path); a reordered dataclass must fail loudly here, not silently swap fields.
_POSITIONAL_FIELDS = {
    Case: ("case_id", "name", "jurisdiction", "locale", "currency", "principal", "interest", "penalty", "fees",
           "amount_due", "due_date", "timezone", "phone", "email", "penalty_rate_daily", "status", "product"),
    CaseSnapshot: ("case", "contacts", "holds", "history", "escalated_stages", "zones", "promise_broken"),
    ContactPoint: ("channel", "address", "consent", "opted_out", "invalid"),
    SentMessage: ("channel", "at", "status", "stage", "template", "conversation", "message_id"),
    Hold: ("reason", "until"),
}
for _cls, _names in _POSITIONAL_FIELDS.items():
    if tuple(f.name for f in dataclasses.fields(_cls)) != _names:  # pragma: no cover - a domain change
        raise ImportError(f"{_cls.__name__} fields changed: update _BatchReader.snapshots positional calls")


def get_snapshot(engine: Engine, case_id: str, now: dt.datetime, *, history_days: int = 60) -> CaseSnapshot:
    """The snapshot of one case; `CaseNotFound` if there is none."""
    with contextlib.closing(
        iter_snapshots(engine, case_ids=[case_id], now=now, history_days=history_days)
    ) as stream:
        for snapshot in stream:
            return snapshot
    raise CaseNotFound(case_id)


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
    hold_reason = _REASONS.get(str(reason))
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
    _insert_events(
        conn,
        [_event(EventKind.HOLD_PLACED, now, case_id, actor=by, hold_id=hold_id, reason=hold_reason.value,
                until=None if until is None else until.isoformat(), note=note)],
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
    return [Hold(_REASONS[r.reason], r.until) for r in conn.execute(_active_holds_query(case_id, now))]


def release_holds(
    conn: Executor, case_id: str, reason: Reason | str | None, by: str | None, now: dt.datetime
) -> int:
    """Release the case's holds in force (all, or those with `reason`); returns how many."""
    conn = _conn(conn)
    _require_case(conn, case_id)
    query = _active_holds_query(case_id, now)
    if reason is not None:
        query = query.where(holds_t.c.reason == str(reason))
    held = conn.execute(query).all()
    if not held:
        return 0
    conn.execute(
        update(holds_t)
        .where(holds_t.c.id.in_([h.id for h in held]), holds_t.c.released_at.is_(None))
        .values(released_at=now, released_by=by)
    )
    _insert_events(
        conn, [_event(EventKind.HOLD_RELEASED, now, case_id, actor=by, hold_id=h.id, reason=h.reason) for h in held]
    )
    return len(held)


# --------------------------------------------------------------------------- payments


def _cancel_queued(conn: Connection, case_id: str, now: dt.datetime, reason: str) -> tuple[int, ...]:
    """Cancel the case's messages still waiting in the outbox (not those in flight)."""
    cancelled = conn.execute(
        update(messages_t)
        .where(messages_t.c.case_id == case_id, messages_t.c.status == MessageStatus.QUEUED.value)
        .values(status=MessageStatus.CANCELLED.value, status_at=now, last_error=reason)
        .returning(messages_t.c.id, messages_t.c.channel)
    ).all()
    _insert_events(
        conn,
        [_event(EventKind.MESSAGE_CANCELLED, now, case_id, message_id=mid, channel=channel, reason=reason)
         for mid, channel in cancelled],
    )
    return tuple(sorted(mid for mid, _ in cancelled))


def record_payment(
    conn: Executor, case_id: str, amount: Decimal, by: str | None, now: dt.datetime
) -> PaymentOutcome:
    """Add a payment to the case's paid total; a fully paid active case becomes `paid`
    and its queued messages are cancelled."""
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
    paid_total = _cents(row.paid_total + amount)
    amount_due = _cents(row.amount_due)
    status = _CASE_STATUSES[row.status]
    conn.execute(insert(payments_t).values(case_id=case_id, amount=amount, at=now, recorded_by=by))
    events = [
        _event(EventKind.PAYMENT_RECORDED, now, case_id, actor=by, amount=str(amount), paid_total=str(paid_total))
    ]
    values: dict[str, Any] = {"paid_total": paid_total}
    closed = False
    cancelled: tuple[int, ...] = ()
    if paid_total >= amount_due and status not in CLOSED_STATUSES:
        status, closed = CaseStatus.PAID, True
        values["status"] = status.value
        events.append(_event(EventKind.CASE_CLOSED, now, case_id, actor=by, status=status.value,
                             reason="paid_in_full"))
    conn.execute(update(cases_t).where(cases_t.c.case_id == case_id).values(**values))
    _insert_events(conn, events)
    if paid_total >= amount_due:
        cancelled = _cancel_queued(conn, case_id, now, reason="case_closed")
    return PaymentOutcome(case_id, amount, paid_total, amount_due, status, closed, cancelled)


# ------------------------------------------------------------------------- escalation


def mark_escalated(conn: Executor, case_id: str, stage: str, now: dt.datetime) -> bool:
    """Record the legal hand-off of a case in `stage`; True only the first time."""
    conn = _conn(conn)
    current = _require_case(conn, case_id)
    stmt = _dialect_insert(conn, escalations_t).values(case_id=case_id, stage=stage, at=now)
    stmt = stmt.on_conflict_do_nothing(index_elements=[escalations_t.c.case_id, escalations_t.c.stage])
    newly = conn.execute(stmt.returning(escalations_t.c.id)).first() is not None
    if newly or stage not in _split(current.escalated_stages):
        # The column mirrors the escalations table, so snapshots need no extra query.
        stages = conn.execute(select(escalations_t.c.stage).where(escalations_t.c.case_id == case_id)).scalars()
        conn.execute(
            update(cases_t)
            .where(cases_t.c.case_id == case_id)
            .values(escalated_stages=",".join(sorted(set(stages))), updated_at=now)
        )
    if newly:
        _insert_events(conn, [_event(EventKind.ESCALATED, now, case_id, stage=stage)])
    return newly


# ------------------------------------------------------------------ contact addresses


def set_opt_out(
    conn: Executor, channel: Channel | str, address: str, opted_out: bool, now: dt.datetime, source: str
) -> list[str]:
    """Opt `address` out of (or back into) `channel` on every case that has it.

    Returns the ids of all cases with that address on that channel; an event is recorded
    for each case whose flag changed."""
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
    _insert_events(conn, [_event(kind, now, case_id, channel=ch.value, source=source) for case_id in sorted(changed)])
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
    _insert_events(conn, [_event(EventKind.ADDRESS_INVALID, now, case_id, channel=ch.value) for case_id in changed])
    return changed


# --------------------------------------------------------------------------- timeline


def _iso(value: dt.datetime | dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def case_timeline(conn: Executor, case_id: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """The case's timeline, the JSON shape of `dispatcher case show --format json`:
    `case_id`, `status`, `holds` [{reason, until}], `messages` [{id, channel, template,
    status, provider_id, body}], `events` [{at, kind, ...}], oldest first. Holds are
    those not released (and, given `now`, not expired)."""
    conn = _conn(conn)
    row = conn.execute(select(cases_t).where(cases_t.c.case_id == case_id)).first()
    if row is None:
        raise CaseNotFound(case_id)
    hold_filter = [holds_t.c.case_id == case_id, holds_t.c.released_at.is_(None)]
    if now is not None:
        hold_filter.append(or_(holds_t.c.until.is_(None), holds_t.c.until > now))
    holds = [
        {"reason": h.reason, "until": _iso(h.until), "placed_at": _iso(h.placed_at), "placed_by": h.placed_by,
         "note": h.note}
        for h in conn.execute(select(holds_t).where(*hold_filter).order_by(holds_t.c.placed_at, holds_t.c.id))
    ]
    m = messages_t.c
    messages = [
        {
            "id": r.id,
            "channel": r.channel,
            "template": r.template_id,
            "status": r.status,
            "provider_id": r.provider_id,
            "body": r.body,
            "subject": r.subject,
            "stage": r.stage,
            "kind": r.kind,
            "scheduled_at": _iso(r.scheduled_at),
            "sent_at": _iso(r.sent_at),
            "status_at": _iso(r.status_at),
        }
        for r in conn.execute(select(messages_t).where(m.case_id == case_id).order_by(m.scheduled_at, m.id))
    ]
    events = []
    for e in conn.execute(
        select(events_t).where(events_t.c.case_id == case_id).order_by(events_t.c.at, events_t.c.id)
    ):
        item: dict[str, Any] = {"at": _iso(e.at), "kind": e.kind}
        if e.actor is not None:
            item["actor"] = e.actor
        if e.message_id is not None:
            item["message_id"] = e.message_id
        for key, value in json.loads(e.data or "{}").items():
            item.setdefault(key, value)
        events.append(item)
    return {
        "case_id": row.case_id,
        "status": row.status,
        "jurisdiction": row.jurisdiction,
        "currency": row.currency,
        "amount_due": str(_cents(row.amount_due)),
        "paid_total": str(_cents(row.paid_total)),
        "due_date": _iso(row.due_date),
        "zones": list(_split(row.zones)),
        "escalated_stages": list(_split(row.escalated_stages)),
        "holds": holds,
        "messages": messages,
        "events": events,
    }
