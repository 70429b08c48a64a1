"""The outbox rows a sender claimed, and the writes it makes to them — each guarded by
the claim (`claimed_by`, `claimed_at`) it was made under, so a writer that lost its claim
can never re-queue or overwrite a row someone else owns (see `services.outbox`); and the
summary of a send pass."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, or_, select, update
from sqlalchemy.engine import Connection, Engine

from dispatcher.domain import Channel, MessageStatus
from dispatcher.services.links import insert_tokens
from dispatcher.store import repository
from dispatcher.store.events import insert_events
from dispatcher.store.tables import MessageRow, messages_t


def unstamped() -> ColumnElement[bool]:
    """SQL: the row carries no "in flight" stamp of its current claim (the provider call
    of that claim never started): `status_at` unset or older than the claim."""
    m = messages_t.c
    return or_(m.status_at.is_(None), m.status_at < m.claimed_at)


@dataclass
class SendSummary:
    """What one pass of the sender did, by outcome and by channel."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    deferred: int = 0
    cancelled: int = 0
    reconciled: int = 0
    unconfirmed: int = 0  # sent_unconfirmed: the provider may have it, it could not say
    by_channel: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Claimed:
    """A row the sender claimed: what it needs to send it, and the claim it holds."""

    id: int
    case_id: str
    channel: Channel
    stage: str | None
    template_id: str | None
    kind: str
    attempts: int  # before this attempt
    claimed_at: dt.datetime
    to_address: str | None = None
    body: str | None = None
    claimed_by: str | None = None  # with claimed_at: the claim every write of ours must still match

    @staticmethod
    def stamped(row: Any) -> bool:
        """Does a row read by `stale_rows` carry the "in flight" stamp of its claim?"""
        return row.status_at is not None and row.status_at >= row.claimed_at

    @classmethod
    def in_flight(cls, row: Any) -> Claimed:
        """A row read by `stale_rows`, under the claim it was left with."""
        attempts = max(row.attempts - 1, 0) if cls.stamped(row) else row.attempts  # before its last attempt
        return cls(row.id, row.case_id, Channel(row.channel), row.stage, row.template_id, row.kind, attempts,
                   row.claimed_at, row.to_address, row.body, row.claimed_by)


def stale_rows(engine: Engine, lease_cut: dt.datetime, stamp_cut: dt.datetime, after: int, limit: int) -> list[Any]:
    """Rows left in flight: never stamped and claimed before `lease_cut`, or stamped before
    `stamp_cut`; by id, after `after`."""
    m = messages_t.c
    with engine.connect() as conn:
        return list(conn.execute(
            select(m.id, m.case_id, m.channel, m.stage, m.template_id, m.kind, m.attempts, m.claimed_at,
                   m.status_at, m.to_address, m.body, m.subject, m.claimed_by)
            .where(m.status == MessageStatus.SENDING.value, m.id > after,
                   or_(and_(unstamped(), m.claimed_at < lease_cut), and_(~unstamped(), m.status_at < stamp_cut)))
            .order_by(m.id).limit(limit)
        ).all())


@dataclass
class Writes:
    """Row updates and events collected for one transaction."""

    requeue: list[dict[str, Any]] = field(default_factory=list)
    #: stamped, but the provider could not be reached: the attempt is given back
    refund: list[dict[str, Any]] = field(default_factory=list)
    finish: list[dict[str, Any]] = field(default_factory=list)
    rendered: list[dict[str, Any]] = field(default_factory=list)
    #: short payment-link tokens minted while rendering (`services.links`)
    links: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[tuple[str, str, dt.datetime, int]] = field(default_factory=list)
    #: message id -> (claimed_by, claimed_at): a row is written only while it still carries
    #: that claim, so a writer that lost it (another instance's reconcile re-queued it, and
    #: maybe someone sent it since) can never put it back in the queue or overwrite it.
    claims: dict[int, tuple[str | None, dt.datetime]] = field(default_factory=dict)

    def claim(self, item: Claimed) -> None:
        self.claims[item.id] = (item.claimed_by, item.claimed_at)

    def apply(self, conn: Connection) -> None:
        """The sender's own batch: one executemany per kind of write, each guarded by the claim.
        Re-queueing and finishing also need the row still in flight: another instance's
        reconcile may have settled it (sent, under the same claim) meanwhile."""
        m = messages_t.c
        by_id = and_(m.id == bindparam("b_id"), m.claimed_by.is_not_distinct_from(bindparam("b_owner")),
                     m.claimed_at == bindparam("b_claimed"))
        in_flight = and_(by_id, m.status == MessageStatus.SENDING.value)
        for rows in (self.requeue, self.refund, self.finish, self.rendered, self.sent):
            for row in rows:
                row["b_owner"], row["b_claimed"] = self.claims[row["b_id"]]
        if self.refund:
            conn.execute(update(MessageRow).where(in_flight).values(attempts=m.attempts - 1), self.refund)
        if self.requeue:
            conn.execute(update(MessageRow).where(in_flight).values(
                status=MessageStatus.QUEUED.value, scheduled_at=bindparam("b_when"), claimed_by=None,
                last_error=bindparam("b_error")), self.requeue)
        if self.finish:
            conn.execute(update(MessageRow).where(in_flight).values(
                status=bindparam("b_status"), status_at=bindparam("b_now"), last_error=bindparam("b_error"),
                provider_id=bindparam("b_provider")), self.finish)
        # The rendered content; each message's "in flight" stamp is committed apart, just
        # before its own provider call (`services.stamps`).
        # before the provider is called: a link is clickable as soon as its SMS arrives
        insert_tokens(conn, self.links)
        if self.rendered:
            conn.execute(update(MessageRow).where(by_id).values(
                template_id=bindparam("b_template"), variant=bindparam("b_variant"), locale=bindparam("b_locale"),
                stage=bindparam("b_stage"), content_hash=bindparam("b_hash"), subject=bindparam("b_subject"),
                body=bindparam("b_body"), html=bindparam("b_html"), parts=bindparam("b_parts"),
                to_address=bindparam("b_to"), segments=bindparam("b_segments"),
                template_version=bindparam("b_version")), self.rendered)
        if self.sent:
            conn.execute(update(MessageRow).where(by_id).values(
                # A status callback may already have moved it on (e.g. delivered):
                # never move a status backwards.
                status=case((m.status == MessageStatus.SENDING.value, bindparam("b_status")), else_=m.status),
                provider_id=bindparam("b_provider"), sent_at=bindparam("b_now"), last_error=bindparam("b_error")),
                self.sent)
        insert_events(conn, self.events)
        for channel, address, at, _message_id in self.invalid:
            repository.mark_address_invalid(conn, channel, address, at)

    def apply_stale(self, conn: Connection) -> set[int]:
        """Another instance's abandoned rows (`reconcile_stale`): row by row, each only if it
        is still in flight under the claim that was read, events only for the rows written.
        Two instances reconciling the same rows at once therefore settle each row once.
        Returns the ids written."""
        m = messages_t.c
        written: set[int] = set()

        def guarded(row: dict[str, Any], *, in_flight: bool) -> Any:
            owner, claimed_at = self.claims[row["b_id"]]
            condition = and_(m.id == row["b_id"], m.claimed_by.is_not_distinct_from(owner),
                             m.claimed_at == claimed_at)
            if in_flight:
                condition = and_(condition, m.status == MessageStatus.SENDING.value)
            return update(MessageRow).where(condition)

        for row in self.requeue:
            # "never started" re-queues need the row still unstamped: a stamp committed by
            # a live owner after it was read means its provider call is under way
            query = guarded(row, in_flight=True)
            if row.get("b_unstamped"):
                query = query.where(unstamped())
            if conn.execute(query.values(
                    status=MessageStatus.QUEUED.value, scheduled_at=row["b_when"], claimed_by=None,
                    last_error=row["b_error"])).rowcount:
                written.add(row["b_id"])
        for row in self.finish:
            if conn.execute(guarded(row, in_flight=True).values(
                    status=row["b_status"], status_at=row["b_now"], last_error=row["b_error"],
                    provider_id=row["b_provider"])).rowcount:
                written.add(row["b_id"])
        for row in self.sent:
            if conn.execute(guarded(row, in_flight=False).values(
                    status=case((m.status == MessageStatus.SENDING.value, row["b_status"]), else_=m.status),
                    provider_id=row["b_provider"], sent_at=row["b_now"], last_error=row["b_error"])).rowcount:
                written.add(row["b_id"])
        insert_events(conn, [e for e in self.events if e.get("message_id") in written])
        for channel, address, at, message_id in self.invalid:
            if message_id in written:
                repository.mark_address_invalid(conn, channel, address, at)
        return written
