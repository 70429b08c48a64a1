"""The snapshot read model: every case with its contact points, active holds, recent
history, broken promise and repayment plan in force, streamed as `CaseSnapshot`s for the policy.

Why it is a module of its own, written the way it is: the planner reads *every* case on
every run (and the sender the cases of every batch it sends), so this is the store's
hottest read. Through plain SQLAlchemy, the per-value result processing
(type decorators, row mappings) was most of the cost of a row. So the columns come
through unprocessed (`type_coerce(..., NullType())`, see `_raw`) and are decoded once
per backend (`_Decoders`); rows are unpacked and domain objects built *positionally*
(field order checked at import, `_POSITIONAL_FIELDS`); a keyset batch's related rows are
read by range, one query each; enum and list values are looked up, not constructed.
Everything else in the store (`store.repository`, `store.timeline`) is plain Core SQL.

Benchmark: `bench/plan_bench.py`, the `plan` section of BENCHMARKS.md (the snapshot
stream went from 28 to 18 µs CPU per case there). `case_row_to_domain` is the plain
reading of a case row, which the fast path must agree with (tested).

Readers take an `Engine` and run their own short read transactions, one per batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Numeric, and_, any_, bindparam, cast, exists, func, or_, select, true, type_coerce
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.sqltypes import NullType

from dispatcher.domain import Case, CaseSnapshot, Channel, ContactPoint, Hold, Reason, RepaymentPlan, SentMessage
from dispatcher.store.plans import plans_in_force
from dispatcher.store.repository import BROKEN_PROMISE_NOTE, CaseNotFound
from dispatcher.store.tables import cases_t, contacts_t, holds_t, messages_t, payments_t
from dispatcher.store.values import (
    CASE_STATUS_OF,
    CHANNEL_OF,
    MESSAGE_STATUS_OF,
    PRODUCT_OF,
    REASON_OF,
    cents,
    plain_rate,
    split_list,
)

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
    cases_t.c.paid_total,
)


_MONEY_AMOUNTS = ("principal", "interest", "penalty", "fees", "amount_due", "paid_total")


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
    return None if text is None else plain_rate(Decimal(text))


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
        # Amounts are stored with exactly two decimals (`values.exact_cents`); casting the
        # NUMERIC(18, 8) back to two decimals in SQL spares a quantize per value.
        amount = {name: cast(c[name], Numeric(18, 2)) for name in _MONEY_AMOUNTS}
        return _Decoders(
            money=_same, rate=plain_rate, date=_same, instant=_utc, flag=_same,
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
        principal=cents(m["principal"]),
        interest=cents(m["interest"]),
        penalty=cents(m["penalty"]),
        fees=cents(m["fees"]),
        amount_due=cents(m["amount_due"]),
        due_date=m["due_date"],
        timezone=m["timezone"],
        phone=phone,
        email=email,
        penalty_rate_daily=plain_rate(m["penalty_rate_daily"]),
        status=CASE_STATUS_OF[m["status"]],
        product=PRODUCT_OF[m["product"]],
        paid_total=cents(m["paid_total"]) if "paid_total" in m else Decimal("0.00"),
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
    plans: dict[str, RepaymentPlan]  # repayment plans in force, by case id


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
        channels = CHANNEL_OF

        holds: dict[str, list[Hold]] = defaultdict(list)
        reasons = REASON_OF
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
        statuses = MESSAGE_STATUS_OF
        m = messages_t.c
        at = func.coalesce(m.sent_at, m.scheduled_at)
        for case_id, channel, when, status, stage, template, conversation, message_id, answered_by in conn.execute(
            select(m.case_id, m.channel, _raw(at, "at"), m.status, m.stage, m.template_id,
                   _raw(m.conversation, "conversation"), m.id, m.answered_by)
            # System replies (STOP/HELP confirmations, a requested link) were asked for by
            # the debtor: they count for neither cadence nor caps.
            .where(in_batch(m.case_id), at >= self.cutoff, m.kind != "system")
            .order_by(m.case_id, at, m.id)
        ).all():
            history[case_id].append(
                SentMessage(channels[channel], instant(when), statuses[status], stage, template,  # type: ignore[arg-type]
                            flag(conversation), message_id, answered_by)
            )
        return _Batch(case_rows, holds, history, broken_promises, plans_in_force(conn, in_batch))

    def snapshots(self, batch: _Batch) -> Iterator[CaseSnapshot]:
        """The snapshot of each case row, in row order. Pure: the rows are already read."""
        holds, history, broken, plans = batch.holds, batch.history, batch.broken, batch.plans
        decode = self.decode
        flag, money, rate_of, date_of = decode.flag, decode.money, decode.rate, decode.date
        sms, email_ch, voice = _JOINED_CHANNELS
        case_statuses, products = CASE_STATUS_OF, PRODUCT_OF
        zone_values, stage_values = self.zone_values, self.stage_values
        no_items: tuple[Any, ...] = ()
        new_case, new_snapshot, new_contact = Case, CaseSnapshot, ContactPoint
        for (case_id, name, jurisdiction, locale, currency, principal, interest, penalty, fees, amount_due,
             due_date, timezone, rate, status, product, zones, escalated, paid_total,
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
                zone_tuple = zone_values[zones] = split_list(zones)
            stages = stage_values.get(escalated)
            if stages is None:
                stages = stage_values[escalated] = frozenset(split_list(escalated))
            case_holds, case_history = holds.get(case_id), history.get(case_id)
            # positional: field order checked by _POSITIONAL_FIELDS at import
            yield new_snapshot(
                new_case(case_id, name, jurisdiction, locale, currency, money(principal), money(interest),
                         money(penalty), money(fees), money(amount_due), date_of(due_date), timezone, phone,
                         email, rate_of(rate), case_statuses[status], products[product], money(paid_total)),
                tuple(contacts),
                no_items if case_holds is None else tuple(case_holds),
                no_items if case_history is None else tuple(case_history),
                stages,
                zone_tuple,
                case_id in broken,
                plans.get(case_id) if plans else None,
            )
        for values in (zone_values, stage_values):
            if len(values) > 10_000:  # distinct values are few; never let them grow without bound
                values.clear()


#: `_BatchReader.snapshots` builds these positionally (a third cheaper than keywords on
#: this path); a reordered dataclass must fail loudly here, not silently swap fields.
_POSITIONAL_FIELDS = {
    Case: ("case_id", "name", "jurisdiction", "locale", "currency", "principal", "interest", "penalty", "fees",
           "amount_due", "due_date", "timezone", "phone", "email", "penalty_rate_daily", "status", "product",
           "paid_total"),
    CaseSnapshot: ("case", "contacts", "holds", "history", "escalated_stages", "zones", "promise_broken", "plan"),
    ContactPoint: ("channel", "address", "consent", "opted_out", "invalid"),
    SentMessage: ("channel", "at", "status", "stage", "template", "conversation", "message_id", "answered_by"),
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

