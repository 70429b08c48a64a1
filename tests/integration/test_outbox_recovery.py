"""Issue 10, findings "a crash fails e-mails that were never attempted" and "recovery is
slow and serial", against the real SMTP client and Twilio SDK and the in-thread sandbox
(the `world` of test_outbox_sender, on SQLite).

1. A sender dies while a rate-limited batch of e-mails is going out. Only the e-mails
   whose SMTP conversation had begun are left "in flight" (each is stamped just before
   its own call); the survivor re-queues the others and sends them once, records the
   attempted ones `sent_unconfirmed` (never resent, never failed), the timeline says so,
   and the next day's plan counts them: no second e-mail inside the stage's cadence.
2. Fifty SMS left in flight by a crash, with a provider answering every request after
   1 s: the survivor reconciles them concurrently (seconds, not the 100+ s of one lookup
   after another), commits each as it settles, and sends other due messages meanwhile;
   rows become recoverable a time proportional to the provider timeout after their stamp.
3. An owner whose row another instance recorded sent never re-queues or fails it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from dataclasses import replace

from sqlalchemy import select, update

from dispatcher.domain import Channel
from dispatcher.services.claims import Writes
from dispatcher.services.outbox import Sender
from dispatcher.store.tables import MessageRow, events_t
from dispatcher.store.timeline import case_timeline
from tests.integration import test_outbox_sender as outbox_world
from tests.integration.test_outbox_sender import DUE_DPD30, World, cn_case, wait_until

# the sender's world (SQLite, the sandbox, our web app) and its configuration
world = outbox_world.world
test_config = outbox_world.test_config


async def test_a_crash_leaves_in_flight_only_the_emails_it_attempted(world: World) -> None:
    cases = 12
    world.add_cases(*(cn_case(n, due=DUE_DPD30) for n in range(1, cases + 1)))
    world.plan()
    email_ids = [r.id for r in world.rows(channel="email")]
    assert len(email_ids) == cases
    slow = world.config.model_copy(update={"sending": world.config.sending.model_copy(update={
        "rate_per_second": {"sms": 1000.0, "voice": 1000.0, "email": 2.0}, "provider_timeout_seconds": 5.0})})
    # Each e-mail is held by the mail server for a moment before its 250: the crash finds
    # some conversations under way, some done (and not yet recorded), most not begun.
    world.sandbox.options = replace(world.sandbox.options, smtp_latency_ms=300)
    doomed = world.sender("doomed", config=slow)
    task = asyncio.create_task(doomed.send_due(only_ids=email_ids))
    await wait_until(lambda: len(world.sandbox.emails()) >= 3, what="the first e-mails to reach the server")
    task.cancel()  # the crash (SIGKILL: nothing after this point runs)
    await asyncio.gather(task, return_exceptions=True)
    world.sandbox.options = replace(world.sandbox.options, smtp_latency_ms=0)

    rows = world.rows(channel="email")
    in_flight = [r for r in rows if r.status == "sending"]
    stamped = [r for r in in_flight if r.status_at is not None]
    received = {e["message_id"] for e in world.sandbox.emails()}
    # Only what was attempted carries the stamp: every e-mail the server has, and at
    # most the few conversations under way besides (the rate limit lets 2 a second
    # through; on a loaded machine an SMTP conversation may take a second or more).
    assert len(in_flight) == cases
    assert len(received) <= len(stamped) <= len(received) + 3, (len(received), len(stamped))
    assert len(stamped) < cases / 2, "the whole batch was stamped before its calls"

    survivor = world.sender("survivor")
    world.clock.advance(survivor.stale_after + dt.timedelta(seconds=1))
    assert await survivor.reconcile_stale() == cases
    after = {r.id: r for r in world.rows(channel="email")}
    unconfirmed = [r for r in after.values() if r.status == "sent_unconfirmed"]
    assert {r.id for r in unconfirmed} == {r.id for r in stamped}
    assert not [r for r in after.values() if r.status == "failed"], "an e-mail was failed"
    assert all(r.status == "queued" and r.attempts == 0 for r in after.values() if r.status != "sent_unconfirmed")
    for row in unconfirmed:
        assert row.provider_id == f"<dispatcher-{row.id}@{world.config.organisation.bounce_domain}>"
        assert "outcome unknown" in row.last_error and row.sent_at is not None

    summary = await survivor.send_due(only_ids=email_ids)
    assert summary.sent == cases - len(unconfirmed)
    per_message = Counter(e["message_id"] for e in world.sandbox.emails())
    assert all(count == 1 for count in per_message.values()), "an e-mail was sent twice"
    assert set(per_message) <= {f"<dispatcher-{i}@{world.config.organisation.bounce_domain}>" for i in email_ids}
    assert len(per_message) >= cases - len(unconfirmed) + len(received)

    # The timeline says what happened to an unconfirmed e-mail, in words.
    case_id = unconfirmed[0].case_id
    with world.engine.connect() as conn:
        timeline = case_timeline(conn, case_id)
    (shown,) = [m for m in timeline["messages"] if m["id"] == unconfirmed[0].id]
    assert shown["status"] == "sent_unconfirmed" and "counted as sent, never resent" in shown["note"]
    assert any(e["kind"] == "message_sent_unconfirmed" and e["message_id"] == unconfirmed[0].id
               for e in timeline["events"])

    # The next day: every case had its dpd30 e-mail (every 5 days), sent or unconfirmed.
    world.clock.advance(days=1)
    world.plan()
    emails_per_case = Counter(r.case_id for r in world.rows(channel="email"))
    assert set(emails_per_case.values()) == {1}, "an unconfirmed e-mail re-opened the cadence"


async def test_fifty_stranded_messages_recover_concurrently_while_others_are_sent(world: World) -> None:
    cases = 50
    world.add_cases(*(cn_case(n, due=DUE_DPD30) for n in range(1, cases + 1)))
    world.plan()
    sms_ids = [r.id for r in world.rows(channel="sms")]
    email_ids = [r.id for r in world.rows(channel="email")]
    patient = world.config.model_copy(update={"sending": world.config.sending.model_copy(update={
        "provider_timeout_seconds": 4.0, "reconcile_concurrency": 16})})
    # A crashed instance had claimed and stamped every SMS, its calls under way; the
    # provider never got them.
    world.sender("crashed").claim(cases, only_ids=sms_ids)
    with world.engine.begin() as conn:
        for n, message_id in enumerate(sms_ids, start=1):
            conn.execute(update(MessageRow).where(MessageRow.id == message_id).values(
                status_at=MessageRow.claimed_at, attempts=MessageRow.attempts + 1,
                to_address=f"+86138{n:08d}", body=f"reminder {n}"))

    survivor = world.sender("survivor", config=patient)
    # Recoverable a time proportional to the provider timeout after the stamp, not before.
    assert survivor.stamp_grace == dt.timedelta(seconds=3 * 4.0)
    world.clock.advance(survivor.stamp_grace - dt.timedelta(seconds=1))
    assert await survivor.reconcile_stale() == 0
    world.clock.advance(seconds=2)

    world.sandbox.options = replace(world.sandbox.options, latency_ms=1000)  # every Twilio answer: 1 s
    started = time.monotonic()
    recovery = asyncio.create_task(survivor.reconcile_stale())
    sending = asyncio.create_task(world.sender("other", config=patient).send_due(only_ids=email_ids))
    # Committed as they settle: some rows are back in the queue while others are still asked about.
    await wait_until(lambda: any(r.status == "queued" for r in world.rows(channel="sms")), within=30,
                     what="the first recovered row")
    assert not recovery.done(), "nothing was committed before the whole recovery ended"
    sent = await sending
    emails_done_at = time.monotonic() - started
    settled = await recovery
    took = time.monotonic() - started
    world.sandbox.options = replace(world.sandbox.options, latency_ms=0)

    assert settled == cases
    # At least one list request per row, 1 s each: one after another that is over 50 s.
    print(f"\nrecovered {settled} stranded rows in {took:.1f} s (1 s per provider answer); other sends done at "
          f"{emails_done_at:.1f} s")
    assert took < 20, f"recovery took {took:.1f} s"
    assert sent.sent == cases and emails_done_at < took, "sending waited for the recovery"
    rows = world.rows(channel="sms")
    assert all(r.status == "queued" and "no trace" in r.last_error for r in rows)
    with world.engine.connect() as conn:
        events = Counter(conn.execute(select(events_t.c.message_id).where(
            events_t.c.kind == "message_deferred", events_t.c.message_id.in_(sms_ids))).scalars())
    assert set(events.values()) == {1} and len(events) == cases
    assert not world.sandbox.messages()
    assert {r.channel for r in world.rows(status="sent")} == {Channel.EMAIL.value}


async def test_an_owner_never_requeues_or_fails_a_row_someone_else_recorded_sent(world: World) -> None:
    """Another instance's reconcile found the provider's record of a slow owner's message
    and recorded it sent under the same claim; the owner, still believing the send failed,
    must not put it back in the queue (it would be sent twice) nor fail it."""
    world.add_cases(cn_case(1, due=DUE_DPD30), cn_case(2, due=DUE_DPD30))
    world.plan()
    first, second = (world.message_id(f"cn-000{n}", Channel.SMS) for n in (1, 2))
    owner = world.sender("owner")
    claimed = {c.id: c for c in owner.claim(10, only_ids=[first, second])}
    with world.engine.begin() as conn:  # the other instance's verdict, under the owner's claim
        conn.execute(update(MessageRow).where(MessageRow.id.in_([first, second])).values(
            status="sent", provider_id="SMfound", sent_at=world.clock.now()))
    writes = Writes()
    for item in claimed.values():
        writes.claim(item)
    Sender._requeue(claimed[first], world.clock.now(), "the provider has no trace of it", world.clock.now(), writes)
    writes.finish.append({"b_id": second, "b_status": "failed", "b_now": world.clock.now(), "b_error": "x",
                          "b_provider": None})
    with world.engine.begin() as conn:
        writes.apply(conn)
    assert {world.row(first).status, world.row(second).status} == {"sent"}
    assert world.row(first).provider_id == "SMfound"
