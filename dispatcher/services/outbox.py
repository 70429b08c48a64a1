"""The sender: claims due outbox rows, re-checks each against the compliance gate just
before sending, renders it, and hands it to its channel — at most once.

At-most-once protocol, per claimed batch:
1. claim: `queued` -> `sending` in one statement (`FOR UPDATE SKIP LOCKED` on
   PostgreSQL; SQLite has a single writer), stamped with `claimed_by`/`claimed_at`;
2. gate + render every row; one transaction records the rendered content and stamps
   `status_at` *before* any provider call: from then on "the provider may have it";
3. the provider calls run concurrently under the per-sender rate limits. Just before
   each call (its turn at the rate limiter may come seconds later) the row goes back
   to the queue instead if the case's contact window has closed since the gate, or if
   the claim's lease (2 x provider timeout) has run out;
4. one transaction records every result. An ambiguous result (timeout, reset, 5xx) is
   reconciled with the provider first; only a provider with no trace of the message
   lets it be retried. A crash leaves rows in `sending`; the reconcile job settles
   rows older than lease + 3 x timeout the same way (rows whose provider call never
   started are simply re-queued) — by then no live owner can still call the provider.
Every write is guarded by the claim (`claimed_by`, `claimed_at`) it was made under, so
a writer that lost its claim can never re-queue or overwrite a row someone else owns.
The next batch is claimed as soon as every call of the current one has begun, so the
rate limiter does not idle between batches. Retries go back through the gate, so a
retry never leaves the contact window.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from dispatcher.channels.base import ChannelAdapter, OutboundMessage, SendResult
from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.domain import Action, CaseSnapshot, Channel, MessageStatus
from dispatcher.links import LinkSigner
from dispatcher.logs import mask
from dispatcher.policy import Gate
from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.policy.caps import history_for_recheck
from dispatcher.policy.window import windows_for
from dispatcher.services.claims import Claimed, SendSummary, Writes
from dispatcher.services.pacing import SenderLimits
from dispatcher.services.planner import zone_info
from dispatcher.store.events import EventKind, event_values
from dispatcher.store.snapshots import iter_snapshots
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
_LEAVE_IN_FLIGHT = object()  # reconcile could not reach the provider
_WINDOW_CLOSED = object()  # its turn at the rate limiter came after the contact window closed
_CLAIM_EXPIRED = object()  # its turn came after the claim's lease: another instance may reconcile it


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
        *,
        gate: Gate | None = None,
    ) -> None:
        if gate is not None and gate.config is not config:
            raise ValueError("the sender's gate must be built from the sender's configuration")
        self.engine = engine
        self.config = config
        #: the compliance gate of the last-moment re-check (shared with the planner when
        #: the composition root passes one; its caches serve both)
        self.gate = gate if gate is not None else Gate(config)
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
        self._calendars: dict[str, WorkingCalendar] = {}
        timeout = dt.timedelta(seconds=config.sending.provider_timeout_seconds)
        #: A claimed message is handed to the provider only this long after its claim;
        #: later (still waiting at the rate limiter), it goes back to the queue.
        self.claim_lease = 2 * timeout
        #: Rows in flight longer than this belong to an instance that is gone: a call
        #: started within the lease has answered (or timed out) and been reconciled
        #: (another timeout) by then, so `reconcile_stale` cannot race a live owner.
        self.stale_after = self.claim_lease + 3 * timeout

    def _catalog(self) -> Mapping[tuple[Channel, str, str], tuple[str, ...]]:
        """The approved templates, read once per pass (it hashes every template file)."""
        if self._catalog_cache is None:
            self._catalog_cache = self.templates.approved_catalog()
        return self._catalog_cache

    def stop_claiming(self) -> None:
        """Graceful shutdown: finish what is in flight, claim nothing new."""
        self._stopping = True

    # -- claiming ----------------------------------------------------------------

    def claim(self, limit: int, only_ids: list[int] | None = None) -> list[Claimed]:
        """Move up to `limit` due rows from queued to sending, for this instance only."""
        now = self.clock.now()
        due = select(col(MessageRow.id)).where(
            and_(col(MessageRow.status) == MessageStatus.QUEUED.value, col(MessageRow.scheduled_at) <= now)
        )
        if only_ids is not None:
            due = due.where(col(MessageRow.id).in_(only_ids))
        due = (due.order_by(col(MessageRow.scheduled_at), col(MessageRow.id)).limit(limit)
               .with_for_update(skip_locked=True))
        if self.engine.dialect.name == "postgresql":
            # A materialized CTE runs the locking LIMIT query exactly once. As `id IN
            # (subquery)` PostgreSQL may pick a nested loop that re-runs the subquery per
            # outer row (it does when statistics are stale, e.g. right after the planner
            # filled the outbox): each re-run locks more rows, so one instance claimed the
            # whole outbox instead of `limit` rows, in seconds of CPU. The rows come back
            # locked and re-checked as queued, so the join is by primary key only.
            due_rows = due.cte("due").prefix_with("MATERIALIZED")
            picked = col(MessageRow.id) == due_rows.c.id
        else:  # SQLite: one writer; the status guard makes a lost race claim nothing
            picked = and_(col(MessageRow.id).in_(due.scalar_subquery()),
                          col(MessageRow.status) == MessageStatus.QUEUED.value)
        stmt = (
            update(MessageRow)
            .where(picked)
            .values(status=MessageStatus.SENDING.value, claimed_by=self.instance_id, claimed_at=now)
            .returning(col(MessageRow.id), col(MessageRow.case_id), col(MessageRow.channel), col(MessageRow.stage),
                       col(MessageRow.template_id), col(MessageRow.kind), col(MessageRow.attempts),
                       col(MessageRow.to_address), col(MessageRow.body))
        )
        with self.engine.begin() as conn:
            rows = conn.execute(stmt).all()
        return [
            Claimed(r.id, r.case_id, Channel(r.channel), r.stage, r.template_id, r.kind, r.attempts, now,
                     r.to_address, r.body, self.instance_id)
            for r in sorted(rows, key=lambda r: r.id)
        ]

    # -- the pass ----------------------------------------------------------------

    async def send_due(self, *, max_messages: int | None = None, only_ids: list[int] | None = None) -> SendSummary:
        """Claim and send everything due now (in batches), until nothing is left."""
        summary = SendSummary()
        self._catalog_cache = None  # templates may have been edited or approved since the last pass
        batch = self.config.sending.batch_size
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                limit = batch if max_messages is None else min(batch, max_messages - summary.claimed)
                if limit <= 0:
                    break
                # In a worker thread, as the snapshot read below: the event loop keeps handing
                # the previous batch's calls to the provider meanwhile.
                claimed = await asyncio.to_thread(self.claim, limit, only_ids)
                if not claimed:
                    if not in_flight:
                        break
                    # A batch still in flight may put rows back that are due now (its
                    # window closed at the rate limiter): claim again once it is recorded.
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    self._collect(in_flight)
                    continue
                summary.claimed += len(claimed)
                started = asyncio.Event()
                task = asyncio.create_task(self._send_batch(claimed, summary, started))
                in_flight.add(task)
                # The next claim waits until most provider calls of this batch have begun
                # (see `_send_batch_calls`): only this batch's tail overlaps the next
                # batch's gate and render, so the gate stays fresh and the rate limiter
                # does not idle between batches.
                waiter = asyncio.ensure_future(started.wait())
                try:
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    await asyncio.gather(waiter, return_exceptions=True)
                self._collect(in_flight)
            await asyncio.gather(*in_flight)
        except BaseException:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            raise
        return summary

    def _apply(self, writes: Writes) -> None:
        """One transaction (run in a worker thread: the loop keeps the calls flowing)."""
        with self.engine.begin() as conn:
            writes.apply(conn)

    @staticmethod
    def _collect(in_flight: set[asyncio.Task[None]]) -> None:
        for done in [t for t in in_flight if t.done()]:
            in_flight.discard(done)
            done.result()  # a failed batch stops the pass (its rows stay in flight)

    async def _send_batch(self, claimed: list[Claimed], summary: SendSummary,
                          started: asyncio.Event | None = None) -> None:
        try:
            await self._send_batch_calls(claimed, summary, started)
        finally:
            if started is not None:
                started.set()

    async def _send_batch_calls(self, claimed: list[Claimed], summary: SendSummary,
                                started: asyncio.Event | None) -> None:
        now = self.clock.now()
        case_ids = sorted({c.case_id for c in claimed})
        snapshots = await asyncio.to_thread(
            lambda: {s.case.case_id: s for s in iter_snapshots(self.engine, case_ids=case_ids, now=now)})
        writes = Writes()
        for item in claimed:
            writes.claim(item)
        ready: list[tuple[Claimed, OutboundMessage, float | None]] = []
        for index, item in enumerate(claimed):
            if index % 16 == 15:
                # Gate and render take ~0.5 ms a message: let the previous batch's last
                # calls go out meanwhile, so the rate limiter does not idle.
                await asyncio.sleep(0)
            snapshot = snapshots.get(item.case_id)
            outbound = self._prepare(item, snapshot, now, writes, summary)
            if outbound is not None:
                assert snapshot is not None
                closes = None if item.kind == "system" else self._window_closes(snapshot, now)
                ready.append((item, outbound, closes))
                if item.kind == "system":  # a rendered message is stamped with its render row
                    writes.stamped.append({"b_id": item.id, "b_now": now})
        await asyncio.to_thread(self._apply, writes)
        waiting = len(ready)
        # The next batch is prepared while the second half of this one's calls wait for
        # their turn at the rate limiter (claiming it any earlier would only age its gate).
        next_batch_at = len(ready) // 2

        def one_started() -> None:
            nonlocal waiting
            waiting -= 1
            if waiting <= next_batch_at and started is not None:
                started.set()

        if not ready and started is not None:
            started.set()
        lease_ends = (claimed[0].claimed_at + self.claim_lease).timestamp() if claimed else None
        results = await asyncio.gather(*(self._call(outbound, closes, one_started, lease_ends)
                                         for _item, outbound, closes in ready))
        settled = await asyncio.gather(
            *(self._reconcile_if_ambiguous(item, outbound, result) for (item, outbound, _c), result in zip(
                ready, results, strict=True))
        )
        writes = Writes()
        for item, _outbound, _c in ready:
            writes.claim(item)
        done_at = self.clock.now()
        for (item, outbound, _c), raw, result in zip(ready, results, settled, strict=True):
            attempt_error = raw.error if isinstance(raw, SendResult) else None
            self._outcome(item, outbound, result, done_at, writes, summary, attempt_error=attempt_error)
        await asyncio.to_thread(self._apply, writes)

    def _window_closes(self, snapshot: CaseSnapshot, now: dt.datetime) -> float | None:
        """When the case's contact window (every one of its zones) closes, as POSIX seconds.

        The gate ran at `now`, but a rate-limited batch reaches the provider over seconds
        (at 5 calls/s, 200 calls take 40 s): `_call` checks this just before the call."""
        profile = self.config.jurisdictions.get(snapshot.case.jurisdiction)
        if profile is None:
            return None
        calendar = self._calendars.get(snapshot.case.jurisdiction)
        if calendar is None:
            calendar = self._calendars[snapshot.case.jurisdiction] = WorkingCalendar.for_profile(profile)
        ts = now.timestamp()
        closes = []
        for window in windows_for(snapshot.zones or tuple(profile.default_timezones), profile, calendar):
            bounds = window.bounds(window.ordinal(ts))
            if bounds is None or not bounds[0] <= ts < bounds[1]:
                return ts  # not legal now (the gate would not have let it through)
            closes.append(bounds[1])
        return float(min(closes))

    async def _call(self, outbound: OutboundMessage, window_closes: float | None,
                    on_start: Callable[[], None] | None = None, lease_ends: float | None = None) -> SendResult | object:
        async with self._semaphore:
            bucket = self.limits.bucket(outbound.channel.value, outbound.sender)
            await bucket.acquire()
            if on_start is not None:
                on_start()
            now = self.clock.now().timestamp()
            if lease_ends is not None and now >= lease_ends:
                return _CLAIM_EXPIRED
            if window_closes is not None and now >= window_closes:
                return _WINDOW_CLOSED
            try:
                result = await self.channels[outbound.channel].send(outbound)
            except Exception as exc:  # an adapter bug: the outcome is unknown, treat it as ambiguous
                log.exception("message %s: channel raised", outbound.message_id)
                return SendResult(None, MessageStatus.FAILED, retryable=True, ambiguous=True,
                                  error=f"channel error: {type(exc).__name__}")
            if result.retry_after:
                # the provider throttles this sender: the other messages waiting at the same
                # bucket pause too, instead of each meeting its own 429
                bucket.penalise(min(result.retry_after, self.config.sending.rate_limit_pause_max_seconds))
            return result

    async def _reconcile_if_ambiguous(self, item: Claimed, outbound: OutboundMessage,
                                      result: SendResult | object) -> SendResult | object | None:
        """The result to record; None when the provider proved it never got the message
        (safe to retry); `_LEAVE_IN_FLIGHT` when it could not be asked."""
        if not isinstance(result, SendResult) or not result.ambiguous:
            return result
        try:
            found = await self.channels[item.channel].reconcile(outbound, item.claimed_at)
        except Exception as exc:  # noqa: BLE001 - provider unreachable: the reconcile job retries
            log.warning("message %s: reconcile failed (%s); left in flight", item.id, type(exc).__name__)
            return _LEAVE_IN_FLIGHT
        if found is None:
            return None
        return replace(found, ambiguous=False, error=found.error or "reconciled")

    # -- gate and render ---------------------------------------------------------

    def _prepare(self, item: Claimed, snapshot: CaseSnapshot | None, now: dt.datetime, writes: Writes,
                 summary: SendSummary) -> OutboundMessage | None:
        if snapshot is None:
            self._finish(item, MessageStatus.CANCELLED, "case no longer exists", now, writes, summary)
            return None
        if item.kind == "system":
            # Transactional replies (opt-out confirmation, HELP, a requested payment link):
            # the debtor asked for them, so no debt-template gate; the body is stored.
            return self._system_outbound(item, snapshot)
        others = history_for_recheck(snapshot.history, item.id)
        decision = self.gate.decide_channel(
            replace(snapshot, history=others),
            self._catalog(),
            now,
            item.channel,
            apply_cadence=False,
            template=item.template_id if item.kind == "one_off" else None,
        )
        if decision.action is Action.DEFER and decision.not_before is not None:
            self._requeue(item, decision.not_before, f"{decision.reason}: {decision.detail}", now, writes)
            summary.deferred += 1
            return None
        if decision.action is not Action.SEND or decision.template is None:
            self._finish(item, MessageStatus.CANCELLED, f"{decision.reason}: {decision.detail}", now, writes,
                         summary, event=EventKind.MESSAGE_CANCELLED)
            return None
        try:
            return self._render(item, snapshot, decision.template, decision.stage, now, writes)
        except Exception as exc:  # noqa: BLE001 - never reached the provider: fail it visibly
            self._finish(item, MessageStatus.FAILED, f"could not render {decision.template}: {exc}", now, writes,
                         summary)
            return None

    def _system_outbound(self, item: Claimed, snapshot: CaseSnapshot) -> OutboundMessage:
        profile = self.config.jurisdictions.get(snapshot.case.jurisdiction)
        return OutboundMessage(
            message_id=item.id,
            case_id=item.case_id,
            channel=item.channel,
            to=item.to_address or "",
            body=item.body or "",
            idempotency_key=f"m{item.id}",
            locale=snapshot.case.locale,
            sender=(profile.sms_from or None) if profile else None,
            messaging_service_sid=(profile.messaging_service_sid or None) if profile else None,
            status_callback=f"{self.public_url}/twilio/sms/status?m={item.id}",
        )

    def _approved_locale(self, channel: Channel, template_id: str, case_locale: str, default: str) -> str:
        """`pick_locale(..., approved_only=True)` answered from this pass's approved
        catalog (it otherwise stats, reads and hashes the template file per message);
        `render(require_approved=True)` still checks the file it renders."""
        stage = template_id.split("/")[1] if template_id.count("/") == 2 else ""
        catalog = self._catalog()
        for locale in dict.fromkeys((case_locale, default)):
            if locale and template_id in catalog.get((channel, stage, locale), ()):
                return locale
        return pick_locale(self.templates, template_id, case_locale, default, approved_only=True)

    def _render(self, item: Claimed, snapshot: CaseSnapshot, template_id: str, stage: str | None,
                now: dt.datetime, writes: Writes) -> OutboundMessage:
        case_ = snapshot.case
        profile = self.config.jurisdictions[case_.jurisdiction]
        zone = snapshot.zones[0] if snapshot.zones else profile.default_timezones[0]
        today = now.astimezone(zone_info(zone)).date()
        expires = now + dt.timedelta(days=self.config.links.payment_link_days)
        payment_link = f"{self.public_url}/p/{self.signer.payment_token(item.id, expires)}"
        email = item.channel is Channel.EMAIL
        unsubscribe_url = (f"{self.public_url}/email/unsubscribe/{self.signer.unsubscribe_token(item.id)}"
                           if email else None)
        locale = self._approved_locale(item.channel, template_id, case_.locale, profile.default_locale)
        context = build_context(
            case_,
            config=self.config,
            channel=item.channel,
            today=today,
            payment_link=payment_link,
            opt_out=opt_out_text(item.channel, locale, unsubscribe_url),
            locale=locale,
            unsubscribe_url=unsubscribe_url,
        )
        rendered = self.templates.render(template_id, locale, context, require_approved=True)
        to = next((c.address for c in snapshot.contacts if c.channel is item.channel), None) or ""
        headers: dict[str, str] = {}
        return_path = message_ref = status_callback = voice_url = None
        sender: str | None
        if email:
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
        writes.rendered.append({
            "b_id": item.id, "b_now": now, "b_template": template_id, "b_variant": rendered.variant, "b_locale": locale,
            "b_stage": stage or item.stage, "b_hash": rendered.content_hash, "b_subject": rendered.subject,
            "b_body": rendered.text, "b_html": rendered.html,
            # the IVR needs the voice blocks (identity, script, voicemail) when the call is
            # answered; an SMS or e-mail is all in body/subject/html already
            "b_parts": (json.dumps(dict(rendered.blocks), ensure_ascii=False)
                        if item.channel is Channel.VOICE and rendered.blocks else None),
            "b_to": to,
        })
        return OutboundMessage(
            message_id=item.id,
            case_id=case_.case_id,
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

    # -- recording ---------------------------------------------------------------

    def _outcome(self, item: Claimed, outbound: OutboundMessage, result: SendResult | object | None,
                 now: dt.datetime, writes: Writes, summary: SendSummary, *,
                 attempt_error: str | None = None) -> None:
        if result is _LEAVE_IN_FLIGHT:
            return
        if result is _WINDOW_CLOSED or result is _CLAIM_EXPIRED:
            # Never handed over: back in the queue, due now (the gate defers it to the next
            # legal moment if the window closed), and the stamp's attempt does not count.
            why = ("the contact window closed before its turn at the rate limiter" if result is _WINDOW_CLOSED
                   else "its claim expired before its turn at the rate limiter")
            writes.unstamp.append({"b_id": item.id})
            self._requeue(item, now, why, now, writes)
            summary.deferred += 1
            return
        if result is None:  # the provider has no trace of it: a retry cannot duplicate
            # Keep what the attempt saw (e.g. the 503), or a give-up would not say why.
            why = "provider has no trace of the ambiguous attempt"
            self._retry(item, f"{attempt_error}; {why}" if attempt_error else why, None, now, writes, summary)
            return
        assert isinstance(result, SendResult)
        if result.error == "reconciled":
            summary.reconciled += 1
        failed = result.status in {MessageStatus.FAILED, MessageStatus.UNDELIVERED}
        if result.status in _ACCEPTED or (result.provider_id and not failed):
            status = result.status if result.status in _ACCEPTED else MessageStatus.SENT
            writes.sent.append({"b_id": item.id, "b_status": status.value, "b_provider": result.provider_id,
                                "b_now": now})
            writes.events.append(event_values(
                EventKind.MESSAGE_SENT, now, case_id=item.case_id, message_id=item.id, channel=item.channel.value,
                provider_id=result.provider_id, to=mask(outbound.to)))
            summary.sent += 1
            summary.by_channel[item.channel.value] = summary.by_channel.get(item.channel.value, 0) + 1
            log.info("message %s sent via %s to %s", item.id, item.channel.value, mask(outbound.to))
            return
        if result.retryable:
            self._retry(item, result.error or "retryable provider error", result.retry_after, now, writes, summary)
            return
        self._finish(item, MessageStatus.FAILED, result.error or "provider refused", now, writes, summary,
                     provider_id=result.provider_id)
        error = (result.error or "").lower()
        if "invalid address" in error or "hard bounce" in error:
            writes.invalid.append((item.channel.value, outbound.to, now, item.id))

    def _retry(self, item: Claimed, error: str, retry_after: float | None, now: dt.datetime, writes: Writes,
               summary: SendSummary) -> None:
        attempts = item.attempts + 1
        if attempts >= self.config.sending.max_attempts:
            self._finish(item, MessageStatus.FAILED, f"gave up after {attempts} attempts: {error}", now, writes,
                         summary)
            return
        backoff = self.config.sending.retry_backoff_seconds * (2 ** (attempts - 1))
        if retry_after:
            backoff = max(backoff, retry_after)
        self._requeue(item, now + dt.timedelta(seconds=backoff), error, now, writes)
        summary.retried += 1

    @staticmethod
    def _requeue(item: Claimed, when: dt.datetime, why: str, now: dt.datetime, writes: Writes) -> None:
        writes.requeue.append({"b_id": item.id, "b_when": when, "b_error": why})
        writes.events.append(event_values(
            EventKind.MESSAGE_DEFERRED, now, case_id=item.case_id, message_id=item.id, channel=item.channel.value,
            not_before=when.isoformat(), why=why))

    @staticmethod
    def _finish(item: Claimed, status: MessageStatus, error: str, now: dt.datetime, writes: Writes,
                summary: SendSummary, *, event: EventKind = EventKind.MESSAGE_FAILED,
                provider_id: str | None = None) -> None:
        writes.finish.append({"b_id": item.id, "b_status": status.value, "b_now": now, "b_error": error,
                              "b_provider": provider_id})
        writes.events.append(event_values(event, now, case_id=item.case_id, message_id=item.id,
                                          channel=item.channel.value, error=error))
        if status is MessageStatus.CANCELLED:
            summary.cancelled += 1
        else:
            summary.failed += 1

    # -- reconciliation of stale in-flight rows -----------------------------------

    async def reconcile_stale(self, older_than: dt.timedelta | None = None) -> int:
        """Settle rows left in `sending` by a crash or a failed reconcile."""
        now = self.clock.now()
        cutoff = now - (older_than or self.stale_after)
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(col(MessageRow.id), col(MessageRow.case_id), col(MessageRow.channel), col(MessageRow.stage),
                       col(MessageRow.template_id), col(MessageRow.kind), col(MessageRow.attempts),
                       col(MessageRow.claimed_at), col(MessageRow.status_at), col(MessageRow.to_address),
                       col(MessageRow.body), col(MessageRow.subject), col(MessageRow.claimed_by))
                .where(col(MessageRow.status) == MessageStatus.SENDING.value, col(MessageRow.claimed_at) < cutoff)
                .with_for_update(skip_locked=True)
            ).all()
        writes = Writes()
        summary = SendSummary()
        for r in rows:
            item = Claimed(r.id, r.case_id, Channel(r.channel), r.stage, r.template_id, r.kind,
                            max(r.attempts - 1, 0), r.claimed_at, r.to_address, r.body, r.claimed_by)
            writes.claim(item)
            started = r.status_at is not None and r.status_at >= r.claimed_at
            if not started:
                self._requeue(item, now, "claimed but never sent (instance stopped); re-queued", now, writes)
                continue
            # The e-mail's Message-ID is ours and deterministic: the record must name the
            # one the SMTP server was given (bounces and the sink are matched by it).
            message_ref = (f"<dispatcher-{r.id}@{self.config.organisation.bounce_domain}>"
                           if r.channel == Channel.EMAIL.value else None)
            outbound = OutboundMessage(message_id=r.id, case_id=r.case_id, channel=Channel(r.channel),
                                       to=r.to_address or "", body=r.body or "", idempotency_key=f"m{r.id}",
                                       subject=r.subject, message_ref=message_ref)
            result = await self._reconcile_if_ambiguous(
                item, outbound, SendResult(None, MessageStatus.SENDING, retryable=True, ambiguous=True,
                                           error="left in flight"))
            if result is _LEAVE_IN_FLIGHT:
                continue
            self._outcome(item, outbound, result, now, writes, summary)
        with self.engine.begin() as conn:
            settled = len(writes.apply_stale(conn))
        return settled

