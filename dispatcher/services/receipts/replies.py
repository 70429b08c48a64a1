"""The automatic SMS replies, queued as `system` messages.

A confirmation of STOP or START, the answer to HELP and the payment link a caller asked
for are rendered here from their approved templates (`sms/replies/<name>`, see
`dispatcher.templates.replies`) in the debtor's locale, or their profile's default, and
queued once per idempotency key in the caller's transaction. The sender sends a
`system` message as stored, without the debt-template gate: the debtor asked for it.

A reply whose template is missing or not approved in either locale is not sent: the
webhook's other effects (the opt-out itself) still apply, a `reply_not_sent` event goes
on the case and a warning to the log. Start-up lint reports such a tree, so in practice
this does not happen; it must never fail a webhook.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from dispatcher.config import Config
from dispatcher.domain import Channel, MessageStatus
from dispatcher.services.receipts.actors import ACTOR_SYSTEM
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.tables import messages_t
from dispatcher.templates.rendering import RenderedMessage, TemplateSet, TemplateSetError, pick_locale
from dispatcher.templates.replies import ReplySpec, build_reply_context
from dispatcher.templates.segments import sms_segments

log = logging.getLogger("dispatcher.receipts")


class AutoReplies:
    """Renders and queues the automatic SMS replies."""

    def __init__(self, config: Config, templates: TemplateSet) -> None:
        self.config = config
        self.templates = templates

    def render(self, spec: ReplySpec, jurisdiction: str | None, locale: str,
               payment_link: str | None = None) -> RenderedMessage:
        """The reply in `locale` (else the profile's default locale), from its approved
        file. Raises `TemplateSetError` when neither exists approved, or it fails to render."""
        profile = self.config.jurisdictions.get(jurisdiction or "")
        default = profile.default_locale if profile else locale
        chosen = pick_locale(self.templates, spec.template_id, locale, default, approved_only=True)
        context = build_reply_context(self.config, jurisdiction, chosen, payment_link=payment_link)
        return self.templates.render(spec.template_id, chosen, context, require_approved=True)

    def queue(
        self,
        conn: Connection,
        spec: ReplySpec,
        *,
        case_id: str,
        to: str,
        jurisdiction: str | None,
        locale: str,
        key: str,
        now: dt.datetime,
        reason: str,
        payment_link: str | None = None,
    ) -> int | None:
        """Queue the reply once per idempotency `key`; its message id (the existing one
        for a repeated key), or None when it cannot be sent (see the module docstring)."""
        existing = _message_with_key(conn, key)
        if existing is not None:
            return existing
        try:
            rendered = self.render(spec, jurisdiction, locale, payment_link)
        except TemplateSetError as exc:
            log.warning("automatic reply %s not sent on case %s: %s", spec.template_id, case_id, exc)
            record_event(conn, EventKind.REPLY_NOT_SENT, now, case_id=case_id, actor=ACTOR_SYSTEM,
                         template=spec.template_id, reason=reason, error=str(exc)[:300])
            return None
        message_id = _insert_system_sms(conn, case_id, to, rendered, key, now)
        if message_id is None:  # a concurrent delivery queued it first (and committed)
            return _message_with_key(conn, key)
        record_event(conn, EventKind.MESSAGE_QUEUED, now, case_id=case_id, message_id=message_id,
                     channel=Channel.SMS.value, message_kind="system", reason=reason, template=spec.template_id)
        return message_id


def _message_with_key(conn: Connection, key: str) -> int | None:
    found = conn.execute(select(messages_t.c.id).where(messages_t.c.idempotency_key == key)).scalar()
    return None if found is None else int(found)


def _insert_system_sms(conn: Connection, case_id: str, to: str, rendered: RenderedMessage, key: str,
                       now: dt.datetime) -> int | None:
    """INSERT the message unless its idempotency key exists (`ON CONFLICT DO NOTHING`:
    a concurrent duplicate waits for the first one's commit, then finds it)."""
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(messages_t).values(
        case_id=case_id,
        channel=Channel.SMS.value,
        kind="system",
        template_id=rendered.template_id,
        variant=rendered.variant,
        locale=rendered.locale,
        content_hash=rendered.content_hash,
        template_version=rendered.version,
        to_address=to,
        body=rendered.text,
        segments=sms_segments(rendered.text).segments,
        status=MessageStatus.QUEUED.value,
        idempotency_key=key,
        scheduled_at=now,
        created_at=now,
        created_by=ACTOR_SYSTEM,
    )
    row = conn.execute(
        stmt.on_conflict_do_nothing(index_elements=[messages_t.c.idempotency_key]).returning(messages_t.c.id)
    ).first()
    return None if row is None else int(row[0])
