"""The evidence walk the Twilio SMS and voice channels share before `reconcile.decide`.

Twilio's Messages list is sorted by DateSent, newest first, and a message not yet sent
has no DateSent; the Calls list likewise has no StartTime for a call not yet dialled
(queued behind the account's calls-per-second limit). Where Twilio puts such records in
a list, and whether a date filter shows them, is not documented. So the walk never
stops on a time bound and never relies on the order:

1. **unfiltered** — every record to the number (from our sender), to its end, bounded
   by `limit`: this is where a record without a date can be seen;
2. **date-filtered** — `DateSent>=` / `StartTime>=` the provider-clock day before the
   attempt's earliest possible record (a date: Twilio filters by date), to its end.

Walk 2 runs after walk 1 and closes the race of a record that gets its date while walk 1
is under way (and may move to a part of the list walk 1 has passed). Either walk cut
short by `limit` makes the evidence incomplete: "absent" is then never concluded.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dispatcher.channels.base import OUTCOME_UNKNOWN, OutboundMessage, SendResult
from dispatcher.channels.reconcile import (
    TOLERANCE,
    Attempt,
    ClockSkew,
    Evidence,
    Ledger,
    Outcome,
    ProviderRecord,
    Verdict,
    candidates,
    decide,
    earliest_created,
)
from dispatcher.domain import MessageStatus
from dispatcher.logs import mask

log = logging.getLogger("dispatcher.channels.reconcile")

#: Our other messages attempted this long before the attempt may still own a record
#: created after it began: a claimed batch waits at the rate limiter for up to its lease
#: (2 x provider timeout) and a request may be processed up to a timeout later.
RIVAL_LOOKBACK = dt.timedelta(minutes=10)

Stream = Callable[..., Awaitable[Any]]


async def walk(stream_async: Stream, limit: int, **filters: Any) -> tuple[list[Any], bool]:
    """Every record the filters select, to the list's end or `limit`; and whether the end
    was reached."""
    stream = await stream_async(limit=limit + 1, page_size=min(limit + 1, 1000), **filters)
    found = [record async for record in stream]
    return found[:limit], len(found) <= limit


def day_before(attempt: Attempt, skew: ClockSkew | None) -> dt.date:
    """The provider-clock date of the date-filtered walk: a day before the attempt's
    earliest possible record (Twilio's date filters compare dates, not instants)."""
    return (earliest_created(attempt, skew) - dt.timedelta(days=1)).astimezone(dt.UTC).date()


def rivals_since(attempt: Attempt) -> dt.datetime:
    """Our clock: the earliest attempt of another message whose record could be taken for ours."""
    return attempt.stamped_at - TOLERANCE - RIVAL_LOOKBACK


async def gather_and_decide(
    attempt: Attempt,
    *,
    unfiltered: Callable[[], Awaitable[tuple[list[Any], bool]]],
    dated: Callable[[dt.date], Awaitable[tuple[list[Any], bool]]],
    to_record: Callable[[Any], ProviderRecord],
    skew: Callable[[], ClockSkew | None],
    ledger: Ledger,
    limit: int,
) -> Verdict:
    """Walk, ask the ledger about the candidates, decide. Raises if Twilio cannot be asked."""
    first, first_complete = await unfiltered()
    measured = skew()
    second, second_complete = await dated(day_before(attempt, measured))
    measured = skew() or measured
    records = [to_record(r) for r in [*first, *second]]
    sids = [r.sid for r in candidates(attempt, records, measured)]
    view = await ledger.view(attempt, rivals_since(attempt), sids)
    evidence = Evidence(records, first_complete and second_complete, measured, view,
                        incomplete_because=f"more than {limit} provider records to the number: the list was not read "
                                           "to its end")
    return decide(attempt, evidence)


def record_result(record: ProviderRecord, statuses: Mapping[str, MessageStatus], note: str | None) -> SendResult:
    """A found record as the result of the attempt."""
    status = statuses.get(record.status or "", MessageStatus.SENT)
    error = None if record.error_code is None else f"Twilio {record.error_code}: {record.error_message or ''}"
    return SendResult(provider_id=record.sid, status=status, error=error or note)


def log_verdict(message: OutboundMessage, verdict: Verdict) -> None:
    log.info("reconcile %s %s to %s: %s (%s)", message.channel.value, message.message_id, mask(message.to),
             verdict.outcome.value, verdict.reason)


def unknown_result(verdict: Verdict) -> SendResult:
    """At most once: the message is failed with the reason, never resent."""
    assert verdict.outcome is Outcome.UNKNOWN
    return SendResult(None, MessageStatus.FAILED, error=f"{OUTCOME_UNKNOWN}: {verdict.reason}")


def attempt_for(message: OutboundMessage, since: dt.datetime, *, compare_body: bool) -> Attempt:
    """The attempt as `reconcile.decide` sees it."""
    return Attempt(
        message_id=message.message_id,
        channel=message.channel,
        to=message.to,
        stamped_at=since.astimezone(dt.UTC),
        body=message.body if compare_body else None,
        sender=message.sender if not message.messaging_service_sid else None,
        service=message.messaging_service_sid or None,
    )
