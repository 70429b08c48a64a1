"""E-mail receipts: one-click unsubscribes, bounces, and payment-link clicks.

An unsubscribe opts the address out of e-mail on every case with it; repeating it
changes nothing (only a contact whose flag changes gets an event), and it is a state,
not a step keyed once: a debtor who opted back in may unsubscribe again from the same
message. A hard bounce marks the message undelivered (never moving a status backwards)
and the address invalid on every case with it; a soft bounce is only logged; a bounce
that matches no message is kept as an orphan event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from dispatcher.clock import Clock
from dispatcher.domain import Channel, MessageStatus
from dispatcher.links import LinkSigner
from dispatcher.logs import mask
from dispatcher.services.receipts.actors import ACTOR_EMAIL
from dispatcher.services.receipts.hot_path import ranks_below
from dispatcher.store import repository
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.tables import contacts_t, messages_t

log = logging.getLogger("dispatcher.receipts")


@dataclass(frozen=True, slots=True)
class BounceOutcome:
    """What a bounce did: `hard`, `soft` or `orphan`, and the cases whose address it
    marked invalid."""

    result: str  # "hard" | "soft" | "orphan"
    message_id: int | None = None
    case_ids: tuple[str, ...] = ()


class EmailReceipts:
    """Applies e-mail receipts and link clicks. Thread-safe."""

    def __init__(self, engine: Engine, clock: Clock, signer: LinkSigner) -> None:
        self.engine = engine
        self.clock = clock
        self.signer = signer

    def unsubscribe(self, message_id: int) -> tuple[str, ...] | None:
        """RFC 8058 one-click: opt the message's address out of e-mail on every case
        with it. Returns the case ids, or None if the message is unknown."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(messages_t.c.case_id, messages_t.c.to_address, messages_t.c.channel)
                .where(messages_t.c.id == message_id)
            ).first()
            if row is None:
                return None
            address = row.to_address
            if not address or row.channel != Channel.EMAIL.value:
                address = conn.execute(
                    select(contacts_t.c.address).where(contacts_t.c.case_id == row.case_id,
                                                       contacts_t.c.channel == Channel.EMAIL.value)
                ).scalar()
            if not address:
                return (row.case_id,)
            cases = repository.set_opt_out(conn, Channel.EMAIL, address, True, now, source=ACTOR_EMAIL)
        log.info("e-mail unsubscribe for %s (message %s)", mask(address), message_id)
        return tuple(cases) or (row.case_id,)

    def message_for_link(self, message_id: int) -> tuple[str, str] | None:
        """(case_id, channel) of a message, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(messages_t.c.case_id, messages_t.c.channel).where(messages_t.c.id == message_id)
            ).first()
        return None if row is None else (row.case_id, row.channel)

    def record_click(self, message_id: int) -> str | None:
        """Log a payment-link click on the case; returns the case id (None: unknown message)."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(messages_t.c.case_id, messages_t.c.channel).where(messages_t.c.id == message_id)
            ).first()
            if row is None:
                return None
            record_event(conn, EventKind.LINK_CLICKED, now, case_id=row.case_id, message_id=message_id,
                         channel=row.channel)
        return str(row.case_id)

    def bounce(self, return_path: str, kind: str, diagnostic: str | None) -> BounceOutcome:
        """A bounce matched by its VERP return path: hard marks the e-mail address
        invalid (every case with it), soft is logged. Unmatched ones are orphans."""
        now = self.clock.now()
        message_id = self.signer.parse_verp(return_path)
        hard = kind.strip().lower() == "hard"
        diag = None if diagnostic is None else diagnostic[:500]
        with self.engine.begin() as conn:
            row = None
            if message_id is not None:
                row = conn.execute(
                    select(messages_t.c.case_id, messages_t.c.to_address, messages_t.c.channel)
                    .where(messages_t.c.id == message_id)
                ).first()
            if row is None:
                record_event(conn, EventKind.ORPHAN_CALLBACK, now, channel=Channel.EMAIL.value, source="bounce",
                             type=kind[:8], diagnostic=diag, m=message_id)
                return BounceOutcome("orphan", message_id)
            record_event(conn, EventKind.BOUNCE, now, case_id=row.case_id, message_id=message_id,
                         actor=ACTOR_EMAIL, type="hard" if hard else "soft", diagnostic=diag)
            changed: list[str] = []
            if hard:
                conn.execute(
                    update(messages_t)
                    .where(messages_t.c.id == message_id, ranks_below(MessageStatus.UNDELIVERED))
                    .values(status=MessageStatus.UNDELIVERED.value, status_at=now)
                )
                # the address the message went to; for a row without one (written before
                # the sender recorded it), the case's e-mail address
                address = row.to_address if row.channel == Channel.EMAIL.value else None
                address = address or conn.execute(
                    select(contacts_t.c.address).where(contacts_t.c.case_id == row.case_id,
                                                       contacts_t.c.channel == Channel.EMAIL.value)
                ).scalar()
                if address:
                    changed = repository.mark_address_invalid(conn, Channel.EMAIL, address, now)
        log.info("%s bounce for message %s (%s)", "hard" if hard else "soft", message_id, mask(row.to_address))
        return BounceOutcome("hard" if hard else "soft", message_id, tuple(changed))
