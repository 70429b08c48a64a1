"""What a debtor does on a call: answers, keypresses and the options of the IVR menu.

Each step that must take effect once per call is keyed (`store.dedupe`), in the
transaction of its effects: the identity confirmation (`ivr-identity:<message id>`),
the promise to pay (`ivr-promise:<message id>`); the payment-link SMS and the
self-service-link SMS are decided once per call (`ivr-request:<its message key>`) and
queued by their messages' idempotency keys (`ivr-link:<message id>`,
`ivr-self-service:<message id>`). A keypress that sends something goes through the
compliance gate first (`Gate.decide_requested`), as every message does. Both links are
short links minted for the call's message (`services.links`).

A call is a "conversation" when a person confirmed their identity *and* the call
completed. Both facts are committed first and the flag is then set by one statement
that checks both (`settle_conversation`), run after each of them, so whichever commits
last sets it, in any order.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.engine import Engine

from dispatcher.clock import Clock
from dispatcher.config import Config, Jurisdiction
from dispatcher.domain import Action, Channel, MessageStatus, Reason
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.policy.window import is_legal
from dispatcher.policy.zones import local_date, primary_zone, promise_hold_until, promise_window
from dispatcher.services.links import link_url, links_base_url, mint
from dispatcher.services.receipts.actors import ACTOR_IVR
from dispatcher.services.receipts.replies import AutoReplies
from dispatcher.services.tasks import TaskKind, open_task
from dispatcher.store import repository
from dispatcher.store.dedupe import IVR_IDENTITY, IVR_LINK, IVR_PROMISE, claim, dedupe_key
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.plan_state import invalidate
from dispatcher.store.repository import CaseNotFound
from dispatcher.store.snapshots import get_snapshot
from dispatcher.store.tables import cases_t, dedupe_keys_t, holds_t, messages_t
from dispatcher.templates.replies import PAYMENT_LINK, SELF_SERVICE, ReplySpec


@dataclass(frozen=True, slots=True)
class CallContext:
    """What the voice flow needs to know about the call's message."""

    message_id: int
    case_id: str
    locale: str
    to_address: str | None
    parts: dict[str, str]
    profile: Jurisdiction | None
    zones: tuple[str, ...]
    org_name: str
    support_phone: str
    jurisdiction: str | None = None


def _clip(value: str | None, limit: int) -> str | None:
    return None if value is None else value[:limit]


def settle_conversation(engine: Engine, message_id: int) -> None:
    """Set `conversation` when the call completed and a person confirmed identity,
    whichever of the two was committed last (see the module docstring)."""
    m = messages_t.c
    confirmed = exists().where(dedupe_keys_t.c.key == dedupe_key(IVR_IDENTITY, message_id))
    with engine.begin() as conn:
        settled = conn.execute(
            update(messages_t)
            .where(m.id == message_id, m.status == MessageStatus.COMPLETED.value, m.conversation.is_(False),
                   confirmed)
            .values(conversation=True, answered_by="human")
            .returning(m.case_id)
        ).scalars().all()
        invalidate(conn, settled)  # a conversation changes the caps (no event of its own)


class IvrActions:
    """The call's steps. Thread-safe (each call uses its own connection)."""

    def __init__(self, engine: Engine, config: Config, clock: Clock, signer: LinkSigner, public_url: str,
                 replies: AutoReplies, gate: Gate) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self.links_base = links_base_url(config, public_url)
        self.replies = replies
        self.gate = gate

    def call_context(self, message_id: int | None) -> CallContext | None:
        """The call's message, case and profile; None for an unknown message."""
        if message_id is None:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                select(messages_t.c.id, messages_t.c.case_id, messages_t.c.locale, messages_t.c.parts,
                       messages_t.c.to_address, cases_t.c.locale.label("case_locale"), cases_t.c.jurisdiction,
                       cases_t.c.zones)
                .join_from(messages_t, cases_t, messages_t.c.case_id == cases_t.c.case_id)
                .where(messages_t.c.id == message_id, messages_t.c.channel == Channel.VOICE.value)
            ).first()
        if row is None:
            return None
        try:
            parts: Any = json.loads(row.parts) if row.parts else {}
        except ValueError:
            parts = {}
        if not isinstance(parts, dict):
            parts = {}
        locale = row.locale or row.case_locale or "en-US"
        profile = self.config.jurisdictions.get(row.jurisdiction)
        zones = tuple(z for z in (row.zones or "").split(",") if z) or (
            tuple(profile.default_timezones) if profile else ()
        )
        return CallContext(
            message_id=row.id,
            case_id=row.case_id,
            locale=locale,
            to_address=row.to_address,
            parts={str(k): str(v) for k, v in parts.items()},
            profile=profile,
            zones=zones,
            org_name=self.config.organisation.name_for(locale),
            support_phone=profile.support_phone if profile else "",
            jurisdiction=row.jurisdiction,
        )

    def record_answer(self, ctx: CallContext, call_sid: str | None, answered_by: str | None, outcome: str) -> None:
        """The call was picked up (by a person or a machine): `call_answered` event."""
        now = self.clock.now()
        m = messages_t.c
        values: dict[str, Any] = {}
        if answered_by:
            values["answered_by"] = func.coalesce(m.answered_by, answered_by[:32])
        if call_sid:
            values["provider_id"] = func.coalesce(m.provider_id, call_sid[:128])
        with self.engine.begin() as conn:
            if values:
                conn.execute(update(messages_t).where(m.id == ctx.message_id).values(**values))
            record_event(conn, EventKind.CALL_ANSWERED, now, case_id=ctx.case_id, message_id=ctx.message_id,
                         answered_by=_clip(answered_by, 32), outcome=outcome, sid=_clip(call_sid, 64))

    def record_keypress(self, ctx: CallContext, step: str, digits: str, *, identity_confirmed: bool = False) -> None:
        """A keypress event; a confirmed identity is also keyed for the conversation."""
        now = self.clock.now()
        data: dict[str, Any] = {"step": step[:16], "digits": digits[:8]}
        if identity_confirmed:
            data["identity_confirmed"] = True
        with self.engine.begin() as conn:
            if identity_confirmed:
                claim(conn, dedupe_key(IVR_IDENTITY, ctx.message_id), now)  # taken before: the same fact
            record_event(conn, EventKind.KEYPRESS, now, case_id=ctx.case_id, message_id=ctx.message_id,
                         actor=ACTOR_IVR, **data)
        if identity_confirmed:
            settle_conversation(self.engine, ctx.message_id)

    def send_payment_link(self, ctx: CallContext) -> int | None:
        """Option 1: queue a system SMS with this call's payment link, once per call, if
        the gate lets it through (`_requested_sms`); None when it is not queued."""
        return self._requested_sms(ctx, PAYMENT_LINK, f"ivr-link:{ctx.message_id}", "payment_link")

    def promise_window(self, ctx: CallContext) -> tuple[dt.date, dt.date]:
        """Option 2's window: the first and last date a caller may promise, in the
        debtor's own calendar (today to today + `[replies] promise_to_pay_days`)."""
        today = local_date(self.clock.now(), primary_zone(ctx.zones, ctx.profile))
        return promise_window(today, self.config.replies.promise_to_pay_days, first_day=0)

    def promise_to_pay(self, ctx: CallContext, day: dt.date) -> dt.date | None:
        """Option 2, confirmed: a `promise_to_pay` hold until the end of `day` (00:00 of the
        next day in the debtor's zone), once per call. Returns the promised date (the
        first one for a repeated step); None when `day` is outside the window now."""
        first, last = self.promise_window(ctx)
        if not first <= day <= last:
            return None
        now = self.clock.now()
        zone = primary_zone(ctx.zones, ctx.profile)
        until = promise_hold_until(day, zone)
        note = f"ivr call message {ctx.message_id}"
        with self.engine.begin() as conn:
            if claim(conn, dedupe_key(IVR_PROMISE, ctx.message_id), now):
                repository.place_hold(conn, ctx.case_id, Reason.PROMISE_TO_PAY, until, ACTOR_IVR, now, note=note)
                return day
            existing = conn.execute(
                select(holds_t.c.until).where(holds_t.c.case_id == ctx.case_id, holds_t.c.note == note,
                                              holds_t.c.reason == Reason.PROMISE_TO_PAY.value)
                .order_by(holds_t.c.id).limit(1)
            ).scalar()
        if existing is None:
            return day
        return local_date(existing, zone) - dt.timedelta(days=1)

    def send_self_service_link(self, ctx: CallContext) -> int | None:
        """Option 4: queue an SMS with the self-service link (the debtor's page, where they
        can pay, promise a date or choose a plan), once per call, if the gate lets it
        through (`_requested_sms`); None when it is not queued."""
        return self._requested_sms(ctx, SELF_SERVICE, f"ivr-self-service:{ctx.message_id}", "self_service")

    def _requested_sms(self, ctx: CallContext, spec: ReplySpec, key: str, reason: str) -> int | None:
        """Queue the SMS with a link that the caller asked for by a keypress, through the
        compliance gate like any message (`Gate.decide_requested`: a closed case, holds
        that stop contact, the SMS contact's address, consent and opt-out, the contact
        window). Decided once per call (`key`): the first delivery of the keypress queues
        the link, or records the refusal (a `reply_not_sent` event with the gate's reason
        and detail) and queues nothing; a repeated one gets the same answer."""
        if not ctx.to_address:
            return None
        now = self.clock.now()
        with self.engine.connect() as conn:
            queued = conn.execute(select(messages_t.c.id).where(messages_t.c.idempotency_key == key)).scalar()
        if queued is not None:
            return int(queued)
        try:
            snapshot = get_snapshot(self.engine, ctx.case_id, now)
        except CaseNotFound:
            return None
        if ctx.profile is None:
            refused: tuple[str, str] | None = (Reason.NO_CONTACT.value, "the case's profile is not configured")
        else:
            decision = self.gate.decide_requested(snapshot, now, Channel.SMS, spec.template_id)
            refused = None if decision.action is Action.SEND else (decision.reason.value, decision.detail)
        expires = now + dt.timedelta(days=self.config.links.payment_link_days)
        with self.engine.begin() as conn:
            # a concurrent delivery of the same keypress waits here for the first one's commit
            if not claim(conn, dedupe_key(IVR_LINK, key), now):
                found = conn.execute(select(messages_t.c.id).where(messages_t.c.idempotency_key == key)).scalar()
                return None if found is None else int(found)
            if refused is not None:
                record_event(conn, EventKind.REPLY_NOT_SENT, now, case_id=ctx.case_id, actor=ACTOR_IVR,
                             message_id=ctx.message_id, template=spec.template_id, reason=refused[0],
                             error=refused[1][:300])
                return None
            link = link_url(self.links_base, mint(conn, ctx.message_id, ctx.case_id, now, expires))
            return self.replies.queue(conn, spec, case_id=ctx.case_id, to=ctx.to_address,
                                      jurisdiction=ctx.jurisdiction, locale=ctx.locale, key=key, now=now,
                                      reason=reason, payment_link=link)

    def stop_calls(self, ctx: CallContext) -> None:
        """Option 9: opt the called number out of voice (every case with it). Repeating
        it changes nothing: only a contact whose flag changes gets an event."""
        if not ctx.to_address:
            return
        now = self.clock.now()
        with self.engine.begin() as conn:
            repository.set_opt_out(conn, Channel.VOICE, ctx.to_address, True, now, source=ACTOR_IVR)

    def request_call_back(self, ctx: CallContext) -> int | None:
        """Option 3 outside the agents' hours: a `call_back` task for a collector (once
        per call). Returns the new task's id, None when this call opened one already."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            return open_task(conn, self.config, ctx.case_id, TaskKind.CALL_BACK, now,
                             source=f"ivr:{ctx.message_id}", actor=ACTOR_IVR, message_id=ctx.message_id,
                             detail="asked for an agent on the call outside the agents' hours")

    def agent_available(self, ctx: CallContext) -> bool:
        """Option 3 connects only inside the profile's contact window."""
        if ctx.profile is None or not ctx.zones or not ctx.support_phone:
            return False
        try:
            return is_legal(self.clock.now(), ctx.zones, ctx.profile, WorkingCalendar.for_profile(ctx.profile))
        except ValueError:
            return False
