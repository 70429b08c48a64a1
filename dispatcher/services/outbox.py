"""The sender: claims due outbox rows, re-checks each against the compliance gate just
before sending, renders it, and hands it to its channel — at most once.

At-most-once protocol, per claimed batch:
1. claim: `queued` -> `sending` in one statement (`FOR UPDATE SKIP LOCKED` on
   PostgreSQL; SQLite has a single writer), stamped with `claimed_by`/`claimed_at`;
2. gate + render every row; one transaction records the rendered content;
3. the provider calls run concurrently under the per-sender rate limits. Each message,
   once its turn at the rate limiter comes, goes back to the queue instead if the case's
   contact window has closed since the gate, if the claim's lease (2 x provider timeout)
   has run out, or if the instance is stopping; otherwise its own "in flight" stamp
   (`status_at`, `attempts` + 1) is committed (`services.stamps`) and only then is the
   provider called: from then on "the provider may have it". A crash leaves in flight
   only the messages whose call had begun;
4. one transaction records every result. An ambiguous result (timeout, reset, 5xx) is
   reconciled with the provider first (the window starting at the message's own stamp);
   only a provider with no trace of the message lets it be retried; an SMTP server that
   may have accepted it makes it `sent_unconfirmed` (counted as sent, never resent).
Rows a crash left in `sending` are settled by `reconcile_stale`: rows never stamped once
their claim's lease is over (simply re-queued), stamped rows once their own call and its
reconcile are over (3 x provider timeout after the stamp) — by then no live owner can
still call the provider. They are reconciled concurrently (`[sending]
reconcile_concurrency`), each committed as it settles.
A provider whose circuit is open (`channels.guarded`) is not claimed for: its messages
wait in the queue, and one it could not reach goes back there without spending an attempt.
Every write is guarded by the claim (`claimed_by`, `claimed_at`) it was made under, so
a writer that lost its claim can never re-queue or overwrite a row someone else owns.
The next batch is claimed as soon as most calls of the current one have begun, so the
rate limiter does not idle between batches. Retries go back through the gate, so a
retry never leaves the contact window.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from dispatcher.channels.base import ChannelAdapter, OutboundMessage, SendResult
from dispatcher.channels.guarded import paused_channels, probe_due
from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.domain import PLAN_STAGE, Action, CaseSnapshot, Channel, Decision, MessageStatus
from dispatcher.links import LinkSigner
from dispatcher.logs import mask
from dispatcher.policy import Gate
from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.policy.caps import history_for_recheck
from dispatcher.policy.window import windows_for
from dispatcher.services.claims import Claimed, SendSummary, Writes, stale_rows
from dispatcher.services.compose import Composer
from dispatcher.services.pacing import SenderLimits
from dispatcher.services.stamps import StampQueue
from dispatcher.store.events import EventKind, event_values
from dispatcher.store.snapshots import iter_snapshots
from dispatcher.store.tables import MessageRow
from dispatcher.templates import TemplateSet
from dispatcher.templates.replies import REQUESTED_LINKS

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
_STALE_PAGE = 1000  # stale rows read at a time
_LEAVE_IN_FLIGHT = object()  # reconcile could not reach the provider
_WINDOW_CLOSED = object()  # its turn at the rate limiter came after the contact window closed
_CLAIM_EXPIRED = object()  # its turn came after the claim's lease: another instance may reconcile it
_STOPPING = object()  # the instance began to stop before its turn
_NOT_STAMPED = object()  # its stamp could not be committed: never handed over
#: never handed over: back in the queue, due now, and why
_NOT_HANDED_OVER = {
    _WINDOW_CLOSED: "the contact window closed before its turn at the rate limiter",
    _CLAIM_EXPIRED: "its claim expired before its turn at the rate limiter",
    _STOPPING: "the instance stopped before its turn; back in the queue",
    _NOT_STAMPED: "the store failed before its provider call; back in the queue",
}


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
        self.compose = Composer(config, templates, signer, public_url)
        self.instance_id = instance_id
        self.limits = SenderLimits(dict(config.sending.rate_per_second))
        self.stamps = StampQueue(engine, clock.now)
        self._semaphore = asyncio.Semaphore(config.sending.concurrency)
        self._stopping = False
        self._stop = asyncio.Event()  # ends the waits at the rate limiter
        self._calendars: dict[str, WorkingCalendar] = {}
        timeout = dt.timedelta(seconds=config.sending.provider_timeout_seconds)
        #: A claimed message is handed to the provider only this long after its claim;
        #: later (still waiting at the rate limiter), it goes back to the queue. A row
        #: claimed longer ago and never stamped is re-queued by `reconcile_stale`.
        self.claim_lease = 2 * timeout
        #: A stamped row older than this belongs to an instance that is gone: its call
        #: has answered (or timed out) and been reconciled by then (one timeout each, and
        #: one more of margin), so `reconcile_stale` cannot race a live owner.
        self.stamp_grace = 3 * timeout
        #: the longest a row of a live instance stays in flight
        self.stale_after = max(self.claim_lease, self.stamp_grace)

    def stop_claiming(self) -> None:
        """Graceful shutdown: claim nothing new, hand no more messages to the providers
        (those waiting for their turn go back to the queue); the calls under way finish
        and their results are recorded."""
        self._stopping = True
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- claiming ----------------------------------------------------------------

    def claim(self, limit: int, only_ids: list[int] | None = None) -> list[Claimed]:
        """Move up to `limit` due rows from queued to sending, for this instance only."""
        now = self.clock.now()
        due = select(col(MessageRow.id)).where(
            and_(col(MessageRow.status) == MessageStatus.QUEUED.value, col(MessageRow.scheduled_at) <= now)
        )
        if only_ids is not None:
            due = due.where(col(MessageRow.id).in_(only_ids))
        if paused := [c.value for c in paused_channels(self.channels)]:  # circuit open: they wait untouched
            due = due.where(col(MessageRow.channel).not_in(paused))
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
        self.compose.new_pass()
        batch = self.config.sending.batch_size
        in_flight: set[asyncio.Task[None]] = set()
        await probe_due(self.channels)  # an open circuit's provider asked whether it is back
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
        attempts = await asyncio.gather(*(self._call(item, outbound, closes, one_started, lease_ends)
                                          for item, outbound, closes in ready))
        results = [result for result, _stamp in attempts]
        settled = await asyncio.gather(
            *(self._reconcile_if_ambiguous(item, outbound, result, stamp) for (item, outbound, _c), (result, stamp)
              in zip(ready, attempts, strict=True))
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

    async def _call(self, item: Claimed, outbound: OutboundMessage, window_closes: float | None,
                    on_start: Callable[[], None] | None = None, lease_ends: float | None = None,
                    ) -> tuple[SendResult | object, dt.datetime | None]:
        """The message's provider call, after its turn at the rate limiter and its own stamp;
        with the stamp's instant (None: never handed over)."""
        async with self._semaphore:
            bucket = self.limits.bucket(outbound.channel.value, outbound.sender)
            turn = not self._stopping and await bucket.acquire(self._stop)
            if on_start is not None:
                on_start()
            if not turn:
                return _STOPPING, None
            now = self.clock.now().timestamp()
            if lease_ends is not None and now >= lease_ends:
                return _CLAIM_EXPIRED, None
            if window_closes is not None and now >= window_closes:
                return _WINDOW_CLOSED, None
            try:
                stamp = await self.stamps.stamp(item)
            except Exception as exc:  # noqa: BLE001 - the store failed: nothing was handed over
                log.warning("message %s: could not stamp it in flight (%s); not sent", item.id, type(exc).__name__)
                return _NOT_STAMPED, None
            if stamp is None:  # re-queued or settled by another instance meanwhile: not ours
                return _LEAVE_IN_FLIGHT, None
            try:
                result = await self.channels[outbound.channel].send(outbound)
            except Exception as exc:  # an adapter bug: the outcome is unknown, treat it as ambiguous
                log.exception("message %s: channel raised", outbound.message_id)
                return SendResult(None, MessageStatus.FAILED, retryable=True, ambiguous=True,
                                  error=f"channel error: {type(exc).__name__}"), stamp
            if result.retry_after:
                # the provider throttles this sender: the other messages waiting at the same
                # bucket pause too, instead of each meeting its own 429
                bucket.penalise(min(result.retry_after, self.config.sending.rate_limit_pause_max_seconds))
            return result, stamp

    async def _reconcile_if_ambiguous(self, item: Claimed, outbound: OutboundMessage,
                                      result: SendResult | object, since: dt.datetime | None,
                                      ) -> SendResult | object | None:
        """The result to record; None when the provider proved it never got the message
        (safe to retry); `_LEAVE_IN_FLIGHT` when it could not be asked. `since` is the
        message's own "in flight" stamp: the provider cannot have it from before."""
        if not isinstance(result, SendResult) or not result.ambiguous:
            return result
        try:
            found = await self.channels[item.channel].reconcile(outbound, since or item.claimed_at)
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
            # the debtor asked for them, so no debt-template gate; the body is stored. A
            # link asked for on a call passes the gate again, as it did at the keypress.
            if item.template_id in REQUESTED_LINKS and self._held_back(
                    item, self.gate.decide_requested(snapshot, now, item.channel, item.template_id), now, writes,
                    summary):
                return None
            return self.compose.system_outbound(item, snapshot)
        others = history_for_recheck(snapshot.history, item.id)
        decision = self.gate.decide_channel(
            replace(snapshot, history=others),
            self.compose.catalog(),
            now,
            item.channel,
            apply_cadence=False,
            template=item.template_id if item.kind == "one_off" else None,
            plan_reminder=item.stage == PLAN_STAGE,
        )
        if self._held_back(item, decision, now, writes, summary) or decision.template is None:
            return None
        try:
            return self.compose.render(item, snapshot, decision.template, decision.stage, now, writes)
        except Exception as exc:  # noqa: BLE001 - never reached the provider: fail it visibly
            self._finish(item, MessageStatus.FAILED, f"could not render {decision.template}: {exc}", now, writes,
                         summary)
            return None

    def _held_back(self, item: Claimed, decision: Decision, now: dt.datetime, writes: Writes,
                   summary: SendSummary) -> bool:
        """Requeue a deferred row for its `not_before`, cancel a refused one; False: send it."""
        if decision.action is Action.DEFER and decision.not_before is not None:
            self._requeue(item, decision.not_before, f"{decision.reason}: {decision.detail}", now, writes)
            summary.deferred += 1
            return True
        if decision.action is not Action.SEND or decision.template is None:
            self._finish(item, MessageStatus.CANCELLED, f"{decision.reason}: {decision.detail}", now, writes,
                         summary, event=EventKind.MESSAGE_CANCELLED)
            return True
        return False

    # -- recording ---------------------------------------------------------------

    def _outcome(self, item: Claimed, outbound: OutboundMessage, result: SendResult | object | None,
                 now: dt.datetime, writes: Writes, summary: SendSummary, *,
                 attempt_error: str | None = None) -> None:
        if result is _LEAVE_IN_FLIGHT:
            return
        why = _NOT_HANDED_OVER.get(result)
        if why is not None:
            # Never handed over (never stamped either): back in the queue, due now (the
            # gate defers it to the next legal moment if the window closed).
            self._requeue(item, now, why, now, writes)
            summary.deferred += 1
            return
        if result is None:  # the provider has no trace of it: a retry cannot duplicate
            # Keep what the attempt saw (e.g. the 503), or a give-up would not say why.
            why = "provider has no trace of the ambiguous attempt"
            self._retry(item, f"{attempt_error}; {why}" if attempt_error else why, None, now, writes, summary)
            return
        assert isinstance(result, SendResult)
        if result.unreachable and not result.ambiguous:  # provider down, nothing sent: wait, attempt not spent
            writes.refund.append({"b_id": item.id})
            self._requeue(item, now + dt.timedelta(seconds=self.config.sending.breaker.probe_seconds),
                          result.error or "provider unreachable", now, writes)
            summary.deferred += 1
            return
        if result.error == "reconciled":
            summary.reconciled += 1
        if result.status is MessageStatus.SENT_UNCONFIRMED:
            # The provider may have it and cannot be asked (SMTP after DATA): never resent,
            # counted as sent for cadence and caps, and the timeline says it is unconfirmed.
            writes.sent.append({"b_id": item.id, "b_status": result.status.value, "b_provider": result.provider_id,
                                "b_now": now, "b_error": result.error})
            writes.events.append(event_values(
                EventKind.MESSAGE_SENT_UNCONFIRMED, now, case_id=item.case_id, message_id=item.id,
                channel=item.channel.value, provider_id=result.provider_id, to=mask(outbound.to),
                why=result.error or "outcome unknown"))
            summary.unconfirmed += 1
            log.warning("message %s via %s to %s: sent, unconfirmed (%s)", item.id, item.channel.value,
                        mask(outbound.to), result.error)
            return
        failed = result.status in {MessageStatus.FAILED, MessageStatus.UNDELIVERED}
        if result.status in _ACCEPTED or (result.provider_id and not failed):
            status = result.status if result.status in _ACCEPTED else MessageStatus.SENT
            writes.sent.append({"b_id": item.id, "b_status": status.value, "b_provider": result.provider_id,
                                "b_now": now, "b_error": None})
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
    def _requeue(item: Claimed, when: dt.datetime, why: str, now: dt.datetime, writes: Writes, *,
                 unstamped: bool = False) -> None:
        row = {"b_id": item.id, "b_when": when, "b_error": why}
        if unstamped:  # only while it is still unstamped (`Writes.apply_stale`)
            row["b_unstamped"] = True
        writes.requeue.append(row)
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
        """Settle the rows a crashed (or stopped) instance left in `sending`: those never
        stamped, once their claim's lease is over, are re-queued at once; those stamped,
        once their own call is surely over (`stamp_grace` after the stamp), are reconciled
        with their provider — concurrently, at most `[sending] reconcile_concurrency` at a
        time, each committed as soon as it settles, so that the sender and the planner
        carry on meanwhile. Returns the number of rows settled."""
        now = self.clock.now()
        lease_cut = now - (older_than or self.claim_lease)
        stamp_cut = now - (older_than or self.stamp_grace)
        lookups = asyncio.Semaphore(self.config.sending.reconcile_concurrency)
        settled, after = 0, 0
        while not self._stopping:
            rows = await asyncio.to_thread(stale_rows, self.engine, lease_cut, stamp_cut, after, _STALE_PAGE)
            if not rows:
                return settled
            after = rows[-1].id
            writes = Writes()
            started = []
            for r in rows:
                if Claimed.stamped(r):
                    started.append(r)
                    continue
                item = Claimed.in_flight(r)
                writes.claim(item)
                self._requeue(item, now, "claimed but never sent (instance stopped); re-queued", now, writes,
                              unstamped=True)
            if writes.requeue:
                settled += len(await asyncio.to_thread(self._apply_stale, writes))
            settled += sum(await asyncio.gather(*(self._settle_stale(r, lookups) for r in started)))
            if len(rows) < _STALE_PAGE:
                return settled
        return settled

    def _apply_stale(self, writes: Writes) -> set[int]:
        with self.engine.begin() as conn:
            return writes.apply_stale(conn)

    async def _settle_stale(self, r: Any, lookups: asyncio.Semaphore) -> int:
        """One stamped row: asked of its provider (the window from its own stamp), recorded."""
        item = Claimed.in_flight(r)
        # The e-mail's Message-ID is ours and deterministic: the record must name the
        # one the SMTP server was given (bounces and the sink are matched by it).
        message_ref = (f"<dispatcher-{r.id}@{self.config.organisation.bounce_domain}>"
                       if r.channel == Channel.EMAIL.value else None)
        outbound = OutboundMessage(message_id=r.id, case_id=r.case_id, channel=item.channel,
                                   to=r.to_address or "", body=r.body or "", idempotency_key=f"m{r.id}",
                                   subject=r.subject, message_ref=message_ref)
        async with lookups:
            if self._stopping:  # shutting down: the next instance settles it
                return 0
            result = await self._reconcile_if_ambiguous(
                item, outbound, SendResult(None, MessageStatus.SENDING, retryable=True, ambiguous=True,
                                           error="left in flight"), r.status_at)
        if result is _LEAVE_IN_FLIGHT:
            return 0
        writes = Writes()
        writes.claim(item)
        self._outcome(item, outbound, result, self.clock.now(), writes, SendSummary())
        try:
            return len(await asyncio.to_thread(self._apply_stale, writes))
        except Exception as exc:  # noqa: BLE001 - the store failed: the row stays for the next pass
            log.warning("message %s: could not record its reconcile (%s)", r.id, type(exc).__name__)
            return 0
