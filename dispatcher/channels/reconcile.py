"""Did an ambiguous send reach the provider? A pure decision over the evidence.

A send is ambiguous when the request may have been processed although no answer came
back (timeout, reset, 5xx). Before any retry the channel gathers evidence and `decide`
answers one of three things:

- **found** — a provider record is ours (the caller records it as sent);
- **absent** — the provider has no record that could be ours (a retry cannot duplicate);
- **unknown** — the evidence cannot rule a send out. The message is failed with the
  reason rather than resent: at most once beats at least once.

What identifies *our* message, and nobody else's:

1. Our own webhooks. Every status callback and TwiML request Twilio makes carries our
   `?m=<message id>` and the SID, so the ledger (our store) may already know our SID
   (`LedgerView.own_sid`), and knows which SIDs belong to our *other* messages
   (`LedgerView.owners`): those are never ours, however alike they look. Twilio's API
   does not return a message's StatusCallback or a call's Url, so the `m=` can only
   come back this way.
2. The record's features: the destination, our sender (From, or the Messaging Service),
   and for SMS the exact body (sent with Smart Encoding and link shortening off, so
   Twilio stores what we sent).
3. Time, on the provider's clock: a record created before our attempt began cannot be
   ours. The attempt's stamp is on our clock; `ClockSkew` (measured from the HTTP
   `Date` header of the provider's answers) carries it onto the provider's.

A record that passes 2 and 3 but that 1 does not attribute could still be another
message of ours to the same number whose SID we never learned (a shared phone number:
two cases, one debtor's phone). The ledger counts such messages (`rivals`); while any
exists, a match is "unknown", never "found": one case must never take another's SID.

"Absent" needs complete evidence: the walks saw every record the provider holds for
the number since the attempt, including records not yet sent (no DateSent / no
StartTime), which a date filter may hide and whose place in the list Twilio does not
document. A walk cut short by its bound, or no clock evidence at all, is "unknown".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from dispatcher.domain import Channel

#: Slack around the skew-corrected stamp: the provider's timestamps have second
#: resolution, and our clock may be stepped (NTP) between the stamp and the reconcile.
TOLERANCE = dt.timedelta(seconds=10)
#: The skew assumed when no answer carried a usable `Date` header.
MAX_UNMEASURED_SKEW = dt.timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class ClockSkew:
    """The provider's clock minus ours, as an interval in seconds.

    An answer's `Date` header is the provider's clock, truncated to the second, at some
    moment between our sending the request and receiving the answer, so the skew lies in
    `[date − received, date + 1 − sent]`."""

    low: float
    high: float

    @classmethod
    def measure(cls, date_header: dt.datetime, sent_at: dt.datetime, received_at: dt.datetime) -> ClockSkew:
        """The interval one answer proves."""
        return cls((date_header - received_at).total_seconds(), (date_header - sent_at).total_seconds() + 1.0)

    @property
    def estimate(self) -> float:
        return (self.low + self.high) / 2

    def earliest_on_provider(self, ours: dt.datetime) -> dt.datetime:
        """The earliest provider-clock instant that can correspond to `ours`."""
        return ours + dt.timedelta(seconds=self.low)


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """One record of the provider's list, reduced to what identifies it."""

    sid: str
    to: str
    sender: str | None  # From
    service: str | None  # MessagingServiceSid (SMS)
    body: str | None  # SMS text; None for calls
    created: dt.datetime | None  # the provider's clock
    dated: bool  # has a DateSent (SMS) / StartTime (call): a date filter can see it
    status: str | None = None
    error_code: int | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """The ambiguous attempt: what we sent, and when (our clock, stamped before the call)."""

    message_id: int
    channel: Channel
    to: str
    stamped_at: dt.datetime
    body: str | None = None  # compared exactly for SMS; None for calls
    sender: str | None = None  # None: unknown (not compared)
    service: str | None = None  # Messaging Service SID, instead of a sender


@dataclass(frozen=True, slots=True)
class LedgerView:
    """What our own records say about the candidates (see the module docstring)."""

    own_sid: str | None = None  # the SID our webhooks learned for this message
    owners: Mapping[str, int] = field(default_factory=dict)  # SID -> our message that owns it
    rivals: int = 0  # other messages of ours that could own a matching record, SID unknown


class Ledger(Protocol):
    """Our store's side of the evidence (implemented in `dispatcher.services.ledger`)."""

    async def view(self, attempt: Attempt, since: dt.datetime, sids: Collection[str]) -> LedgerView:
        """Our SID for the attempt's message if a webhook taught it; the owners of `sids`
        among our messages; and how many of our other messages with the attempt's
        features, attempted at or after `since` (our clock), have no SID on record."""
        ...


class NoLedger:
    """No store to ask: nothing known about SIDs, no rivals known. Only for a channel
    used on its own (tests, tools); the daemon always passes the store's ledger."""

    async def view(self, attempt: Attempt, since: dt.datetime, sids: Collection[str]) -> LedgerView:
        return LedgerView()


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything `decide` weighs."""

    records: Sequence[ProviderRecord]
    complete: bool  # the walks saw every record that could be ours (none cut short)
    skew: ClockSkew | None  # None: no answer carried a Date header
    ledger: LedgerView = LedgerView()
    incomplete_because: str = "the provider's list was not read to its end"


class Outcome(StrEnum):
    FOUND = "found"
    ABSENT = "absent"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Verdict:
    """`decide`'s answer. FOUND carries the SID (and the record when the list had it)."""

    outcome: Outcome
    reason: str
    sid: str | None = None
    record: ProviderRecord | None = None


def earliest_created(attempt: Attempt, skew: ClockSkew | None) -> dt.datetime:
    """The provider-clock instant before which no record can be the attempt's."""
    if skew is None:
        return attempt.stamped_at - MAX_UNMEASURED_SKEW - TOLERANCE
    return skew.earliest_on_provider(attempt.stamped_at) - TOLERANCE


def looks_like(attempt: Attempt, record: ProviderRecord) -> bool:
    """Whether the record has the attempt's features (destination, sender, SMS body)."""
    if record.to != attempt.to:
        return False
    if attempt.service is not None:
        if record.service != attempt.service:
            return False
    elif attempt.sender is not None and record.sender != attempt.sender:
        return False
    return attempt.body is None or record.body == attempt.body


def candidates(attempt: Attempt, records: Sequence[ProviderRecord], skew: ClockSkew | None) -> list[ProviderRecord]:
    """Records with the attempt's features created since it began (provider clock),
    each SID once, oldest first."""
    floor = earliest_created(attempt, skew)
    seen: dict[str, ProviderRecord] = {}
    for record in records:
        if record.sid in seen or not looks_like(attempt, record):
            continue
        if record.created is not None and record.created < floor:
            continue
        seen[record.sid] = record
    return sorted(seen.values(), key=lambda r: (r.created is None, r.created or dt.datetime.min, r.sid))


def decide(attempt: Attempt, evidence: Evidence) -> Verdict:
    """Found, absent or unknown (see the module docstring). Pure."""
    ledger = evidence.ledger
    records = {r.sid: r for r in evidence.records}
    if ledger.own_sid is not None:
        return Verdict(Outcome.FOUND, "our status webhook named the SID", ledger.own_sid, records.get(ledger.own_sid))
    mine = [r for r in candidates(attempt, evidence.records, evidence.skew)
            if ledger.owners.get(r.sid, attempt.message_id) == attempt.message_id]
    owned = [r for r in mine if ledger.owners.get(r.sid) == attempt.message_id]
    if owned:
        return Verdict(Outcome.FOUND, "our records name the SID", owned[0].sid, owned[0])
    if not mine:
        if evidence.skew is None:
            return Verdict(Outcome.UNKNOWN, "the provider's answers carried no Date header to place the attempt "
                                            "on its clock")
        if not evidence.complete:
            return Verdict(Outcome.UNKNOWN, evidence.incomplete_because)
        return Verdict(Outcome.ABSENT, "no provider record since the attempt has its destination, sender"
                                       + (" and body" if attempt.body is not None else ""))
    if ledger.rivals:
        return Verdict(Outcome.UNKNOWN, f"{len(mine)} provider record(s) match, and {ledger.rivals} other "
                                        "message(s) to the same number without a known SID could own them")
    note = "matched on destination, sender" + (", body" if attempt.body is not None else "") + " and time"
    if len(mine) > 1:
        note += f"; {len(mine)} records match (the earliest taken)"
    return Verdict(Outcome.FOUND, note, mine[0].sid, mine[0])
