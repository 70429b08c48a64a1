"""The sender: claims due outbox rows, re-checks each against the compliance gate just
before sending, renders it, and hands it to its channel — at most once.

At-most-once protocol:
1. claim: `queued` -> `sending` in one statement (`FOR UPDATE SKIP LOCKED` on
   PostgreSQL; SQLite has a single writer), stamped with `claimed_by`/`claimed_at`;
2. gate + render; then `status_at` is stamped and committed *before* the provider call,
   which marks the message as "the provider may have it";
3. the result is recorded. An ambiguous result (timeout, reset, 5xx) is reconciled with
   the provider before any retry; a crash leaves the row in `sending`, and the
   reconcile job treats stale rows the same way (rows whose provider call never started
   are simply re-queued).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from sqlalchemy import and_, case, select, update
from sqlalchemy.engine import Engine

from dispatcher.channels.base import ChannelAdapter, OutboundMessage, SendResult
from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.domain import Action, CaseSnapshot, Channel, MessageStatus
from dispatcher.links import LinkSigner
from dispatcher.policy import decide_channel
from dispatcher.services.pacing import SenderLimits
from dispatcher.services.planner import zone_info
from dispatcher.store import repository
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.tables import MessageRow
from dispatcher.templates import TemplateSet, build_context, opt_out_text, pick_locale

log = logging.getLogger("dispatcher.outbox")

#: Provider statuses meaning "the provider accepted it".
_ACCEPTED = {
    MessageStatus.SENT,
    MessageStatus.DELIVERED,
    MessageStatus.READ,
    MessageStatus.RINGING,
    MessageStatus.IN_PROGRESS,
    MessageStatus.COMPLETED,
}


def mask(address: str | None) -> str:
    """Mask an address for logs: +86138****5678, a***@example.com."""
    if not address:
        return "-"
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}***@{domain}"
    return address[:6] + "****" + address[-4:] if len(address) > 10 else "****" + address[-2:]


@dataclass
class SendSummary:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    deferred: int = 0
    cancelled: int = 0
    reconciled: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Claimed:
    id: int
    case_id: str
    channel: Channel
    stage: str | None
    template_id: str | None
    kind: str
    attempts: int
    claimed_at: dt.datetime


class Sender:
    """Sends what is due, through the channels it was given."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        templates: TemplateSet,
        channels: Mapping[Channel, ChannelAdapter],
        clock: Clock,
        signer: LinkSigner,
        public_url: str,
        instance_id: str,
    ) -> None:
        self.engine = engine
        self.config = config
        self.templates = templates
        self.channels = channels
        self.clock = clock
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self.instance_id = instance_id
        self.limits = SenderLimits(dict(config.sending.rate_per_second))
        self._semaphore = asyncio.Semaphore(config.sending.concurrency)
        self._stopping = False
        self._catalog_cache: Mapping[tuple[Channel, str, str], tuple[str, ...]] | None = None

    def _catalog(self) -> Mapping[tuple[Channel, str, str], tuple[str, ...]]:
        """The approved templates, read once per pass (it hashes every template file)."""
        if self._catalog_cache is None:
            self._catalog_cache = self.templates.approved_catalog()
        return self._catalog_cache

    def stop_claiming(self) -> None:
        """Graceful shutdown: finish what is in flight, claim nothing new."""
        self._stopping = True

    # -- claiming ----------------------------------------------------------------

    def claim(self, limit: int, only_ids: list[int] | None = None) -> list[_Claimed]:
        """Move up to `limit` due rows from queued to sending, for this instance only."""
        now = self.clock.now()
        due = select(MessageRow.id).where(
            and_(MessageRow.status == MessageStatus.QUEUED.value, MessageRow.scheduled_at <= now)
        )
        if only_ids is not None:
            due = due.where(MessageRow.id.in_(only_ids))
        due = due.order_by(MessageRow.scheduled_at, MessageRow.id).limit(limit).with_for_update(skip_locked=True)
        stmt = (
            update(MessageRow)
            .where(MessageRow.id.in_(due.scalar_subquery()))
            .where(MessageRow.status == MessageStatus.QUEUED.value)
            .values(
                status=MessageStatus.SENDING.value,
                claimed_by=self.instance_id,
                claimed_at=now,
            )
            .returning(
                MessageRow.id,
                MessageRow.case_id,
                MessageRow.channel,
                MessageRow.stage,
                MessageRow.template_id,
                MessageRow.kind,
                MessageRow.attempts,
            )
        )
        with self.engine.begin() as conn:
            rows = conn.execute(stmt).all()
        return [
            _Claimed(r.id, r.case_id, Channel(r.channel), r.stage, r.template_id, r.kind, r.attempts, now)
            for r in rows
        ]

    # -- the pass ----------------------------------------------------------------

    async def send_due(self, *, max_messages: int | None = None, only_ids: list[int] | None = None) -> SendSummary:
        """Claim and send everything due now (in batches), until nothing is left."""
        summary = SendSummary()
        self._catalog_cache = None  # templates may have been edited or approved since the last pass
        batch = self.config.sending.batch_size
        while not self._stopping:
            limit = batch if max_messages is None else min(batch, max_messages - summary.claimed)
            if limit <= 0:
                break
            claimed = self.claim(limit, only_ids)
            if not claimed:
                break
            summary.claimed += len(claimed)
            snapshots = {
                s.case.case_id: s
                for s in repository.iter_snapshots(
                    self.engine, case_ids=sorted({c.case_id for c in claimed}), now=self.clock.now()
                )
            }
            await asyncio.gather(*(self._process(c, snapshots.get(c.case_id), summary) for c in claimed))
        return summary

    async def _process(self, item: _Claimed, snapshot: CaseSnapshot | None, summary: SendSummary) -> None:
        async with self._semaphore:
            try:
                await self._process_one(item, snapshot, summary)
            except Exception:  # a bug must not lose the message: put it back for a later pass
                log.exception("message %s: unexpected error; left for reconciliation", item.id)

    async def _process_one(self, item: _Claimed, snapshot: CaseSnapshot | None, summary: SendSummary) -> None:
        now = self.clock.now()
        if snapshot is None:
            self._finish(item, MessageStatus.CANCELLED, error="case no longer exists", summary=summary)
            return
        if item.kind == "system":
            # Transactional replies (opt-out confirmation, HELP, a requested payment link):
            # the debtor asked for them, so no debt-template gate; the body is stored.
            await self._send_system(item, summary)
            return
        # The message itself is in the snapshot's history (status sending): leave it out.
        others = tuple(h for h in snapshot.history if h.message_id != item.id)
        gate_view = replace(snapshot, history=others)
        one_off = item.kind == "one_off"
        decision = decide_channel(
            gate_view,
            self.config,
            self._catalog(),
            now,
            item.channel,
            apply_cadence=False,
            template=item.template_id if one_off else None,
        )
        if decision.action is Action.DEFER and decision.not_before is not None:
            self._requeue(item, decision.not_before, f"{decision.reason}: {decision.detail}", summary, deferred=True)
            return
        if decision.action is not Action.SEND or decision.template is None:
            self._finish(item, MessageStatus.CANCELLED, error=f"{decision.reason}: {decision.detail}",
                         summary=summary, event=EventKind.MESSAGE_CANCELLED)
            return
        try:
            outbound = self._render(item, snapshot, decision.template, decision.stage, now)
        except Exception as exc:  # noqa: BLE001 - never reached the provider: fail it visibly
            self._finish(item, MessageStatus.FAILED, error=f"could not render {decision.template}: {exc}",
                         summary=summary)
            return
        adapter = self.channels[item.channel]
        await self.limits.bucket(item.channel.value, outbound.sender).acquire()
        with self.engine.begin() as conn:
            # The provider may have it from here on: stamped and committed before the call.
            conn.execute(
                update(MessageRow)
                .where(MessageRow.id == item.id)
                .values(status_at=self.clock.now(), attempts=MessageRow.attempts + 1)
            )
        result = await adapter.send(outbound)
        await self._settle(item, adapter, outbound, result, summary)

    async def _settle(
        self, item: _Claimed, adapter: ChannelAdapter, outbound: OutboundMessage, result: SendResult,
        summary: SendSummary,
    ) -> None:
        """Record a provider answer; an ambiguous one is reconciled before any retry."""
        if result.ambiguous:
            found = await self._safe_reconcile(adapter, outbound, item.claimed_at)
            if found is False:  # provider unreachable: stays in flight for the reconcile job
                return
            if found is None:  # the provider has no trace of it: a retry cannot duplicate
                self._retry(item, result, summary)
                return
            summary.reconciled += 1
            result = found
        self._record(item, outbound, result, summary)

    def _render(
        self, item: _Claimed, snapshot: CaseSnapshot, template_id: str, stage: str | None, now: dt.datetime
    ) -> OutboundMessage:
        case = snapshot.case
        profile = self.config.jurisdictions[case.jurisdiction]
        zone = snapshot.zones[0] if snapshot.zones else profile.default_timezones[0]
        today = now.astimezone(zone_info(zone)).date()
        expires = now + dt.timedelta(days=self.config.links.payment_link_days)
        payment_link = f"{self.public_url}/p/{self.signer.payment_token(item.id, expires)}"
        unsubscribe_url = f"{self.public_url}/email/unsubscribe/{self.signer.unsubscribe_token(item.id)}"
        locale = pick_locale(self.templates, template_id, case.locale, profile.default_locale, approved_only=True)
        context = build_context(
            case,
            config=self.config,
            channel=item.channel,
            today=today,
            payment_link=payment_link,
            opt_out=opt_out_text(item.channel, locale, unsubscribe_url if item.channel is Channel.EMAIL else None),
            locale=locale,
            unsubscribe_url=unsubscribe_url if item.channel is Channel.EMAIL else None,
        )
        rendered = self.templates.render(template_id, locale, context, require_approved=True)
        to = next((c.address for c in snapshot.contacts if c.channel is item.channel), None) or ""
        headers: dict[str, str] = {}
        sender: str | None
        return_path = None
        message_ref = None
        status_callback = None
        voice_url = None
        if item.channel is Channel.EMAIL:
            sender = self.config.organisation.email_from
            headers = {
                "List-Unsubscribe": f"<{unsubscribe_url}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            }
            return_path = self.signer.verp_address(item.id, self.config.organisation.bounce_domain)
            message_ref = f"<dispatcher-{item.id}@{self.config.organisation.bounce_domain}>"
        elif item.channel is Channel.SMS:
            sender = profile.sms_from or None
            status_callback = f"{self.public_url}/twilio/sms/status?m={item.id}"
        else:
            sender = profile.voice_from or None
            status_callback = f"{self.public_url}/twilio/voice/status?m={item.id}"
            voice_url = f"{self.public_url}/twilio/voice/answer?m={item.id}"
        with self.engine.begin() as conn:
            conn.execute(
                update(MessageRow)
                .where(MessageRow.id == item.id)
                .values(
                    template_id=template_id,
                    variant=rendered.variant,
                    locale=locale,
                    stage=stage or item.stage,
                    content_hash=rendered.content_hash,
                    subject=rendered.subject,
                    body=rendered.text,
                    html=rendered.html,
                    parts=json.dumps(dict(rendered.blocks), ensure_ascii=False) if rendered.blocks else None,
                    to_address=to,
                )
            )
        return OutboundMessage(
            message_id=item.id,
            case_id=case.case_id,
            channel=item.channel,
            to=to,
            body=rendered.text,
            idempotency_key=f"m{item.id}",
            locale=locale,
            subject=rendered.subject,
            html=rendered.html,
            sender=sender,
            messaging_service_sid=profile.messaging_service_sid or None,
            status_callback=status_callback,
            voice_url=voice_url,
            headers=headers,
            return_path=return_path,
            message_ref=message_ref,
        )

    async def _send_system(self, item: _Claimed, summary: SendSummary) -> None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(MessageRow.to_address, MessageRow.body, MessageRow.case_id).where(MessageRow.id == item.id)
            ).one()
        snapshot = None
        profile = None
        for snap in repository.iter_snapshots(self.engine, case_ids=[row.case_id], now=self.clock.now()):
            snapshot = snap
            profile = self.config.jurisdictions.get(snap.case.jurisdiction)
        outbound = OutboundMessage(
            message_id=item.id,
            case_id=item.case_id,
            channel=item.channel,
            to=row.to_address or "",
            body=row.body or "",
            idempotency_key=f"m{item.id}",
            locale=snapshot.case.locale if snapshot else "en-US",
            sender=(profile.sms_from or None) if profile else None,
            messaging_service_sid=(profile.messaging_service_sid or None) if profile else None,
            status_callback=f"{self.public_url}/twilio/sms/status?m={item.id}",
        )
        adapter = self.channels[item.channel]
        await self.limits.bucket(item.channel.value, outbound.sender).acquire()
        with self.engine.begin() as conn:
            conn.execute(
                update(MessageRow)
                .where(MessageRow.id == item.id)
                .values(status_at=self.clock.now(), attempts=MessageRow.attempts + 1)
            )
        await self._settle(item, adapter, outbound, await adapter.send(outbound), summary)

    async def _safe_reconcile(
        self, adapter: ChannelAdapter, outbound: OutboundMessage, since: dt.datetime
    ) -> SendResult | None | bool:
        try:
            return await adapter.reconcile(outbound, since)
        except Exception as exc:  # provider unreachable: leave it in flight for the reconcile job
            log.warning("message %s: reconcile failed (%s); left in flight", outbound.message_id, type(exc).__name__)
            return False

    # -- recording ---------------------------------------------------------------

    def _record(self, item: _Claimed, outbound: OutboundMessage, result: SendResult, summary: SendSummary) -> None:
        now = self.clock.now()
        if result.status in _ACCEPTED or (result.provider_id and result.status not in {MessageStatus.FAILED, MessageStatus.UNDELIVERED}):
            with self.engine.begin() as conn:
                conn.execute(
                    update(MessageRow)
                    .where(MessageRow.id == item.id)
                    .values(
                        # A status callback may already have moved it on (e.g. delivered):
                        # never move a status backwards.
                        status=case(
                            (MessageRow.status == MessageStatus.SENDING.value, MessageStatus.SENT.value),
                            else_=MessageRow.status,
                        ),
                        provider_id=result.provider_id,
                        sent_at=now,
                        last_error=None,
                    )
                )
                record_event(conn, EventKind.MESSAGE_SENT, now, case_id=item.case_id, message_id=item.id,
                             channel=item.channel.value, template=item.template_id,
                             provider_id=result.provider_id, to=mask(outbound.to))
            summary.sent += 1
            summary.by_channel[item.channel.value] = summary.by_channel.get(item.channel.value, 0) + 1
            log.info("message %s sent via %s to %s", item.id, item.channel.value, mask(outbound.to))
            return
        if result.retryable:
            self._retry(item, result, summary)
            return
        self._finish(item, MessageStatus.FAILED, error=result.error or "provider refused", summary=summary,
                     provider_id=result.provider_id)
        error = (result.error or "").lower()
        if "invalid address" in error or "hard bounce" in error:
            with self.engine.begin() as conn:
                repository.mark_address_invalid(conn, item.channel.value, outbound.to, now)

    def _retry(self, item: _Claimed, result: SendResult, summary: SendSummary) -> None:
        attempts = item.attempts + 1
        if attempts >= self.config.sending.max_attempts:
            self._finish(item, MessageStatus.FAILED, error=f"gave up after {attempts} attempts: {result.error}",
                         summary=summary)
            return
        backoff = self.config.sending.retry_backoff_seconds * (2 ** (attempts - 1))
        if result.retry_after:
            backoff = max(backoff, result.retry_after)
        when = self.clock.now() + dt.timedelta(seconds=backoff)
        self._requeue(item, when, result.error or "retryable provider error", summary, deferred=False)

    def _requeue(self, item: _Claimed, when: dt.datetime, why: str, summary: SendSummary, *, deferred: bool) -> None:
        now = self.clock.now()
        with self.engine.begin() as conn:
            conn.execute(
                update(MessageRow)
                .where(MessageRow.id == item.id)
                .values(status=MessageStatus.QUEUED.value, scheduled_at=when, claimed_by=None, last_error=why)
            )
            record_event(conn, EventKind.MESSAGE_DEFERRED, now, case_id=item.case_id, message_id=item.id,
                         channel=item.channel.value, not_before=when.isoformat(), why=why)
        if deferred:
            summary.deferred += 1
        else:
            summary.retried += 1

    def _finish(self, item: _Claimed, status: MessageStatus, *, error: str, summary: SendSummary,
                event: EventKind = EventKind.MESSAGE_FAILED, provider_id: str | None = None) -> None:
        now = self.clock.now()
        with self.engine.begin() as conn:
            conn.execute(
                update(MessageRow)
                .where(MessageRow.id == item.id)
                .values(status=status.value, status_at=now, last_error=error, provider_id=provider_id)
            )
            record_event(conn, event, now, case_id=item.case_id, message_id=item.id,
                         channel=item.channel.value, error=error)
        if status is MessageStatus.CANCELLED:
            summary.cancelled += 1
        else:
            summary.failed += 1

    # -- reconciliation of stale in-flight rows -----------------------------------

    async def reconcile_stale(self, older_than: dt.timedelta | None = None) -> int:
        """Settle rows left in `sending` by a crash or a failed reconcile."""
        now = self.clock.now()
        cutoff = now - (older_than or dt.timedelta(seconds=self.config.sending.provider_timeout_seconds * 2))
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(MessageRow.id, MessageRow.case_id, MessageRow.channel, MessageRow.stage,
                       MessageRow.template_id, MessageRow.kind, MessageRow.attempts, MessageRow.claimed_at,
                       MessageRow.status_at, MessageRow.to_address, MessageRow.body, MessageRow.subject)
                .where(MessageRow.status == MessageStatus.SENDING.value, MessageRow.claimed_at < cutoff)
                .with_for_update(skip_locked=True)
            ).all()
        settled = 0
        for r in rows:
            item = _Claimed(r.id, r.case_id, Channel(r.channel), r.stage, r.template_id, r.kind, r.attempts - 1,
                            r.claimed_at)
            started = r.status_at is not None and r.status_at >= r.claimed_at
            summary = SendSummary()
            if not started:
                self._requeue(item, now, "claimed but never sent (instance stopped); re-queued", summary, deferred=False)
                settled += 1
                continue
            outbound = OutboundMessage(message_id=r.id, case_id=r.case_id, channel=Channel(r.channel),
                                       to=r.to_address or "", body=r.body or "", idempotency_key=f"m{r.id}",
                                       subject=r.subject)
            found = await self._safe_reconcile(self.channels[Channel(r.channel)], outbound, r.claimed_at)
            if found is False:
                continue
            if found is None:
                self._requeue(item, now, "provider has no trace of the attempt; re-queued", summary, deferred=False)
            else:
                self._record(item, outbound, found, summary)
            settled += 1
        return settled

