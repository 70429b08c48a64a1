"""`Receipts`: the one object the web layer holds, delegating to the parts of this package.

Its public methods are the webhooks' vocabulary (status callbacks, inbound SMS, the
call's steps, e-mail receipts, metrics); each is answered by the module that owns it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.domain import Channel
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.services.receipts.email import BounceOutcome, EmailReceipts
from dispatcher.services.receipts.inbound import InboundOutcome, InboundSms
from dispatcher.services.receipts.ivr import CallContext, IvrActions
from dispatcher.services.receipts.replies import AutoReplies
from dispatcher.services.receipts.status import StatusOutcome, StatusReceipts
from dispatcher.store.tables import messages_t
from dispatcher.templates.rendering import TemplateSet


class Receipts:
    """Applies what comes back to the store. One instance per app; thread-safe (each
    call uses its own connection). `templates` renders the automatic replies; by
    default the tree the configuration names. `gate` checks what a caller asks the IVR
    to send (by default one of its own for `config`)."""

    def __init__(self, engine: Engine, config: Config, clock: Clock, signer: LinkSigner, public_url: str,
                 *, templates: TemplateSet | None = None, gate: Gate | None = None) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        if templates is None:
            templates = TemplateSet(config.resolve(config.templates.directory), config)
        replies = AutoReplies(config, templates)
        self._status = StatusReceipts(engine, clock)
        self._ivr = IvrActions(engine, config, clock, signer, public_url, replies, gate or Gate(config))
        self._inbound = InboundSms(engine, config, clock, replies)
        self._email = EmailReceipts(engine, clock, signer)

    def close(self) -> None:
        """Release the connections of the status hot path (PostgreSQL) at once, for a
        caller off the event loop (a server run without lifespan, a blocking test)."""
        self._status.sql.close()

    async def aclose(self) -> None:
        """Shut the status hot path's pool down on its own loop, tasks and all: what a
        lifespan's end or an async test's teardown calls (see `hot_path.LoopPool`)."""
        await self._status.sql.aclose()

    # -- status callbacks ----------------------------------------------------------

    def apply_status(self, channel: Channel, sid: str, provider_status: str, message_id: int | None = None, *,
                     answered_by: str | None = None, error_code: str | None = None,
                     duration: str | None = None) -> StatusOutcome:
        """Apply one SMS or call status callback. Blocking."""
        return self._status.apply(channel, sid, provider_status, message_id, answered_by=answered_by,
                                  error_code=error_code, duration=duration)

    async def apply_status_async(self, channel: Channel, sid: str, provider_status: str,
                                 message_id: int | None = None, *, answered_by: str | None = None,
                                 error_code: str | None = None, duration: str | None = None) -> StatusOutcome:
        """`apply_status` on the event loop: one statement on PostgreSQL in the common case."""
        return await self._status.apply_async(channel, sid, provider_status, message_id, answered_by=answered_by,
                                              error_code=error_code, duration=duration)

    # -- voice ---------------------------------------------------------------------

    def call_context(self, message_id: int | None) -> CallContext | None:
        """The call's message, case and profile; None for an unknown message."""
        return self._ivr.call_context(message_id)

    def record_answer(self, ctx: CallContext, call_sid: str | None, answered_by: str | None, outcome: str) -> None:
        """The call was picked up: `call_answered` event."""
        self._ivr.record_answer(ctx, call_sid, answered_by, outcome)

    def record_keypress(self, ctx: CallContext, step: str, digits: str, *, identity_confirmed: bool = False) -> None:
        """A keypress on the call (and a confirmed identity, once per call)."""
        self._ivr.record_keypress(ctx, step, digits, identity_confirmed=identity_confirmed)

    def send_payment_link(self, ctx: CallContext) -> int | None:
        """Option 1: the payment link by SMS, once per call."""
        return self._ivr.send_payment_link(ctx)

    def send_self_service_link(self, ctx: CallContext) -> int | None:
        """Option 4: the self-service link by SMS, once per call."""
        return self._ivr.send_self_service_link(ctx)

    def promise_window(self, ctx: CallContext) -> tuple[dt.date, dt.date]:
        """Option 2: the first and last date a caller may promise (the debtor's dates)."""
        return self._ivr.promise_window(ctx)

    def promise_to_pay(self, ctx: CallContext, day: dt.date) -> dt.date | None:
        """Option 2, confirmed: a promise to pay by `day`, once per call; the promised date."""
        return self._ivr.promise_to_pay(ctx, day)

    def stop_calls(self, ctx: CallContext) -> None:
        """Option 9: opt the number out of voice."""
        self._ivr.stop_calls(ctx)

    def agent_available(self, ctx: CallContext) -> bool:
        """Option 3: whether an agent may be connected now."""
        return self._ivr.agent_available(ctx)

    def request_call_back(self, ctx: CallContext) -> int | None:
        """Option 3 outside the agents' hours: a `call_back` task (once per call)."""
        return self._ivr.request_call_back(ctx)

    # -- inbound SMS ---------------------------------------------------------------

    def inbound_sms(self, sid: str, from_number: str, body: str) -> InboundOutcome:
        """Act on an inbound SMS once per `MessageSid`."""
        return self._inbound.apply(sid, from_number, body)

    # -- e-mail and links ----------------------------------------------------------

    def unsubscribe_email(self, message_id: int) -> tuple[str, ...] | None:
        """RFC 8058 one-click unsubscribe; the case ids, or None for an unknown message."""
        return self._email.unsubscribe(message_id)

    def message_for_link(self, message_id: int) -> tuple[str, str] | None:
        """(case_id, channel) of a message, or None."""
        return self._email.message_for_link(message_id)

    def record_click(self, message_id: int) -> str | None:
        """Log a payment-link click; the case id, or None for an unknown message."""
        return self._email.record_click(message_id)

    def bounce(self, return_path: str, kind: str, diagnostic: str | None) -> BounceOutcome:
        """A bounce matched by its VERP return path."""
        return self._email.bounce(return_path, kind, diagnostic)

    # -- metrics -------------------------------------------------------------------

    def message_counts(self) -> list[tuple[str, str, int]]:
        """(channel, status, count) over the outbox."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(messages_t.c.channel, messages_t.c.status, func.count())
                .group_by(messages_t.c.channel, messages_t.c.status)
            ).all()
        return [(r[0], r[1], int(r[2])) for r in rows]

    def ping(self) -> None:
        """Raise if the store is unreachable."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
