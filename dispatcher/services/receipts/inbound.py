"""Inbound SMS: keywords and free text from debtors (SPEC section 6).

The rules are in `policy.replies.classify_reply`; this module applies them, once per
`MessageSid`: the transaction first claims the key `sms-in:<MessageSid>`
(`store.dedupe`) and applies everything else only if the claim is new, so a duplicate
delivery, even a concurrent one, changes nothing. Every case with the sending number
gets the reply event; STOP / START opt the number out of / back into SMS; PAID and
DISPUTE place holds and open collector tasks (`verify_payment_claim`, `review_dispute`),
free text opens a `read_reply` task (`services.tasks`, one per case and MessageSid).
The automatic reply (confirmation or HELP) is queued with the idempotency key `reply:<MessageSid>`.

Free text with a revocation phrase in it (`policy.revocation`, SPEC section 13: "please
stop texting", "不要再打电话") opts the number out at once: of SMS, and of voice too when
a phrase is about calls. The `opted_out` events name the phrase, one confirmation is
queued (`sms/replies/opt_out` or, with calls, `opt_out_calls`; none when the number was
already out of those channels), and a `review_revocation` task goes to a collector, who
reads the text and may undo a false opt-out.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.domain import Channel, Reason
from dispatcher.logs import mask
from dispatcher.policy.replies import ReplyIntent, classify_reply
from dispatcher.policy.revocation import Revocation, find_revocation
from dispatcher.services.receipts.actors import ACTOR_SMS
from dispatcher.services.receipts.replies import AutoReplies
from dispatcher.services.tasks import TaskKind, open_task
from dispatcher.store import repository
from dispatcher.store.dedupe import INBOUND_SMS, claim, dedupe_key
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.tables import cases_t, contacts_t, messages_t
from dispatcher.templates import replies as reply_templates

log = logging.getLogger("dispatcher.receipts")

_MAX_TEXT = 1600  # characters of a reply kept on the timeline (10 SMS segments)

#: The automatic answer to each keyword that gets one.
_ANSWERS = {
    ReplyIntent.OPT_OUT: reply_templates.OPT_OUT,
    ReplyIntent.OPT_IN: reply_templates.OPT_IN,
    ReplyIntent.HELP: reply_templates.HELP,
}


@dataclass(frozen=True, slots=True)
class InboundOutcome:
    """What one inbound SMS did: its intent, the cases of its number, the automatic
    reply queued (if any), and whether it was a duplicate delivery (nothing done)."""

    intent: ReplyIntent
    case_ids: tuple[str, ...]
    reply_message_id: int | None
    duplicate: bool = False
    #: the revocation phrase found in free text, if any
    revocation: Revocation | None = None


class InboundSms:
    """Applies inbound SMS. Thread-safe (each call uses its own connection)."""

    def __init__(self, engine: Engine, config: Config, clock: Clock, replies: AutoReplies) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self.replies = replies

    def apply(self, sid: str, from_number: str, body: str) -> InboundOutcome:
        """Act on an inbound SMS once per `MessageSid` (see the module docstring)."""
        intent = classify_reply(body)
        revocation = find_revocation(body) if intent is ReplyIntent.FREE_TEXT else None
        if revocation is not None:
            intent = ReplyIntent.REVOCATION
        now = self.clock.now()
        number = from_number.strip()
        with self.engine.begin() as conn:
            # the claim is the transaction's first write: on SQLite it takes the write lock
            first = claim(conn, dedupe_key(INBOUND_SMS, sid), now)
            case_ids = tuple(sorted(set(conn.execute(
                select(contacts_t.c.case_id).where(contacts_t.c.channel == Channel.SMS.value,
                                                   contacts_t.c.address == number)
            ).scalars())))
            if not first:
                return InboundOutcome(intent, case_ids, None, duplicate=True, revocation=revocation)
            reply_id = self._apply(conn, sid, number, body, intent, case_ids, now, revocation)
        log.info("inbound sms %s from %s: %s, %d case(s)", sid[:40], mask(number), intent.value, len(case_ids))
        return InboundOutcome(intent, case_ids, reply_id, revocation=revocation)

    def _apply(self, conn: Connection, sid: str, number: str, body: str, intent: ReplyIntent,
               case_ids: tuple[str, ...], now: dt.datetime, revocation: Revocation | None = None) -> int | None:
        free = intent in (ReplyIntent.FREE_TEXT, ReplyIntent.REVOCATION)
        kind = EventKind.REPLY_RECEIVED if free else EventKind.KEYWORD_RECEIVED
        text_kept = body[:_MAX_TEXT]
        found: dict[str, Any] = {} if revocation is None else {"phrase": revocation.phrase}
        if not case_ids:
            record_event(conn, kind, now, actor=ACTOR_SMS, sid=sid, intent=intent.value, text=text_kept,
                         matched=False, **found)
        for case_id in case_ids:
            record_event(conn, kind, now, case_id=case_id, actor=ACTOR_SMS, sid=sid, intent=intent.value,
                         text=text_kept, **found)
        if revocation is not None:
            return self._revoke(conn, sid, number, text_kept, revocation, case_ids, now)

        if intent is ReplyIntent.OPT_OUT and number:
            repository.set_opt_out(conn, Channel.SMS, number, True, now, source=ACTOR_SMS)
        elif intent is ReplyIntent.OPT_IN and number:
            repository.set_opt_out(conn, Channel.SMS, number, False, now, source=ACTOR_SMS)
        elif intent is ReplyIntent.PAID:
            until = now + dt.timedelta(days=self.config.replies.payment_claimed_hold_days)
            for case_id in case_ids:
                repository.place_hold(conn, case_id, Reason.PAYMENT_CLAIMED, until, ACTOR_SMS, now,
                                      note=f"sms {sid}")
                open_task(conn, self.config, case_id, TaskKind.VERIFY_PAYMENT_CLAIM, now, source=f"sms:{sid}",
                          detail=text_kept, actor=ACTOR_SMS, sid=sid, text=text_kept)
        elif intent is ReplyIntent.DISPUTE:
            for case_id in case_ids:
                repository.place_hold(conn, case_id, Reason.DISPUTE_HOLD, None, ACTOR_SMS, now, note=f"sms {sid}")
                open_task(conn, self.config, case_id, TaskKind.REVIEW_DISPUTE, now, source=f"sms:{sid}",
                          detail=text_kept, actor=ACTOR_SMS, sid=sid, text=text_kept)
        elif intent is ReplyIntent.FREE_TEXT:
            for case_id in case_ids:  # a person reads it and answers or records what it says
                open_task(conn, self.config, case_id, TaskKind.READ_REPLY, now, source=f"sms:{sid}",
                          detail=text_kept, actor=ACTOR_SMS, sid=sid, text=text_kept)

        answer = _ANSWERS.get(intent)
        if answer is None or not case_ids or not number:
            return None
        reply_case, locale, jurisdiction = self._reply_case(conn, case_ids, number)
        return self.replies.queue(conn, answer, case_id=reply_case, to=number, jurisdiction=jurisdiction,
                                  locale=locale, key=f"reply:{sid}", now=now, reason=intent.value)

    def _revoke(self, conn: Connection, sid: str, number: str, text: str, revocation: Revocation,
                case_ids: tuple[str, ...], now: dt.datetime) -> int | None:
        """A revocation phrase: opt out of its channels at once, open a review task for a
        collector, queue one confirmation (see the module docstring)."""
        channels = [ch for ch in Channel if ch in revocation.channels]
        why = {"phrase": revocation.phrase, "matched": revocation.matched, "sid": sid}
        # confirmed once: a debtor who repeats the phrase is already out and gets no second text
        still_in = bool(number) and conn.execute(
            select(contacts_t.c.id).where(contacts_t.c.address == number, contacts_t.c.opted_out.is_(False),
                                          contacts_t.c.channel.in_([ch.value for ch in channels])).limit(1)
        ).first() is not None
        if number:
            for channel in channels:
                repository.set_opt_out(conn, channel, number, True, now, source=ACTOR_SMS, **why)
        for case_id in case_ids:
            open_task(conn, self.config, case_id, TaskKind.REVIEW_REVOCATION, now, source=f"sms:{sid}",
                      detail=text, actor=ACTOR_SMS, sid=sid, text=text, phrase=revocation.phrase,
                      channels=[ch.value for ch in channels])
        if not case_ids or not still_in:
            return None
        answer = reply_templates.OPT_OUT_CALLS if revocation.about_calls else reply_templates.OPT_OUT
        reply_case, locale, jurisdiction = self._reply_case(conn, case_ids, number)
        return self.replies.queue(conn, answer, case_id=reply_case, to=number, jurisdiction=jurisdiction,
                                  locale=locale, key=f"reply:{sid}", now=now, reason=ReplyIntent.REVOCATION.value)

    @staticmethod
    def _reply_case(conn: Connection, case_ids: tuple[str, ...], number: str) -> tuple[str, str, str]:
        """The case a reply is filed under: the one we texted last from this number's
        cases (the conversation the debtor is answering), else the first."""
        latest = conn.execute(
            select(messages_t.c.case_id)
            .where(messages_t.c.case_id.in_(case_ids), messages_t.c.channel == Channel.SMS.value,
                   messages_t.c.to_address == number)
            .order_by(messages_t.c.scheduled_at.desc(), messages_t.c.id.desc())
            .limit(1)
        ).scalar()
        chosen = latest or case_ids[0]
        row = conn.execute(
            select(cases_t.c.locale, cases_t.c.jurisdiction).where(cases_t.c.case_id == chosen)
        ).one()
        return chosen, row.locale or "en-US", row.jurisdiction
