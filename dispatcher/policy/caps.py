"""Per-channel frequency caps, counted per case on calendar days of the primary zone.

Which history entries count: every message of the channel whose status is neither
`cancelled` nor `failed` — queued and in-flight messages included (they will go out),
`sent_unconfirmed` included (the debtor may well have it: an e-mail whose SMTP
connection was lost after its data went out), and a placed call counts even when nobody
answered (busy, no-answer, completed ...).
Future-dated queued messages count on their own day.

Rules for placing one more message on local day D (all are backward-looking; the
sender re-checks each message at send time, so the timeline actually sent satisfies
them in full):

- ``per_day`` (default 1 when the profile lists no caps): fewer than N counted on D.
- ``per_7_days``: fewer than N counted on D-6 .. D.
- ``max_consecutive_days`` M + ``rest_days`` R: if the M days E-M+1 .. E all have
  messages, days E+1 .. E+R are blocked (calls Mon, Tue, Wed -> none Thu, Fri).
- ``after_conversation_days`` N: a conversation on day C blocks C .. C+N-1 (Regulation F
  counts the conversation day as day 1).

- ``connected_per_day`` N (voice): fewer than N calls answered by a person on D. A call
  counts as answered when its status is `in-progress` or `completed` and Twilio's
  AnsweredBy is not a machine or fax; a call still in flight (`sending`, `sent`,
  `ringing`) counts too, since it may yet be answered (the safe side). `per_day` counts
  every attempt, answered or not.

Shared caps (``[[jurisdictions.<key>.shared_caps]]``) count every message on any of their
channels together, one-offs included (system replies the debtor asked for never reach
the history): ``per_day`` on D, ``per_7_days`` on D-6 .. D. A channel's own caps are
checked first, then each shared cap it belongs to (`ChannelCapRules`).

Reason codes: ``per_day`` / ``per_7_days`` / ``connected_per_day`` and shared caps ->
`frequency_cap`; the rest after a run and the quiet period after a conversation ->
`rest_period`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dispatcher.config import ChannelCaps, Jurisdiction, SharedCap
from dispatcher.domain import Channel, MessageStatus, Reason, SentMessage
from dispatcher.policy.replies import is_machine
from dispatcher.policy.zones import zone_info

#: Statuses that do not count for caps, cadence or rotation: the message never left.
NOT_COUNTED: frozenset[MessageStatus] = frozenset({MessageStatus.CANCELLED, MessageStatus.FAILED})


#: A person picked up (unless AnsweredBy says machine or fax).
_ANSWERED: frozenset[MessageStatus] = frozenset({MessageStatus.IN_PROGRESS, MessageStatus.COMPLETED})
#: Dialled and not finished: it may yet be answered, so it counts as connected.
_IN_FLIGHT: frozenset[MessageStatus] = frozenset({MessageStatus.SENDING, MessageStatus.SENT, MessageStatus.RINGING})


def counts(message: SentMessage) -> bool:
    """Does this history entry count (caps, cadence, rotation)?"""
    return message.status not in NOT_COUNTED


def is_connected(message: SentMessage) -> bool:
    """Does this call count for `connected_per_day`: answered by a person, or still in
    flight (it may yet be)?"""
    if message.channel is not Channel.VOICE:
        return False
    if message.conversation or message.status in _IN_FLIGHT:
        return True
    return message.status in _ANSWERED and not is_machine(message.answered_by)


@dataclass(slots=True)
class ChannelUsage:
    """One channel's counted history of a case, by local date ordinal of the primary zone."""

    per_day: dict[int, int] = field(default_factory=dict)
    conversations: list[int] = field(default_factory=list)
    #: calls answered by a person (or still in flight) per day
    connected: dict[int, int] = field(default_factory=dict)

    def add(self, ordinal: int, conversation: bool = False, connected: bool = False) -> None:
        self.per_day[ordinal] = self.per_day.get(ordinal, 0) + 1
        if conversation:
            self.conversations.append(ordinal)
        if connected:
            self.connected[ordinal] = self.connected.get(ordinal, 0) + 1

    def copy(self) -> ChannelUsage:
        return ChannelUsage(dict(self.per_day), list(self.conversations), dict(self.connected))

    @classmethod
    def from_history(cls, history: Iterable[SentMessage], channel: Channel, zone: str) -> ChannelUsage:
        tz = zone_info(zone)
        usage = cls()
        for message in history:
            if message.channel == channel and message.status not in NOT_COUNTED:
                usage.add(message.at.astimezone(tz).toordinal(), message.conversation, is_connected(message))
        return usage


_NO_USAGE = ChannelUsage()


@dataclass(frozen=True, slots=True)
class CapBlock:
    """Why a cap forbids one more message on a day."""

    reason: Reason
    detail: str


def _day(ordinal: int) -> str:
    return dt.date.fromordinal(ordinal).isoformat()


class FrequencyCap:
    """The caps of one channel of a profile (`profile.caps_for(channel)`)."""

    __slots__ = ("channel", "per_day", "per_7_days", "max_consecutive_days", "rest_days", "after_conversation_days",
                 "connected_per_day")

    def __init__(self, caps: ChannelCaps, channel: Channel) -> None:
        self.channel = channel
        self.per_day = caps.per_day
        self.per_7_days = caps.per_7_days
        self.max_consecutive_days = caps.max_consecutive_days
        self.rest_days = caps.rest_days
        self.after_conversation_days = caps.after_conversation_days
        self.connected_per_day = caps.connected_per_day

    @classmethod
    def for_profile(cls, profile: Jurisdiction, channel: Channel) -> FrequencyCap:
        return cls(profile.caps_for(channel), channel)

    def allows(self, usage: ChannelUsage, ordinal: int) -> bool:
        return self.check(usage, ordinal) is None

    def check(self, usage: ChannelUsage, ordinal: int) -> CapBlock | None:
        """None if one more message may be placed on local day `ordinal`, else why not."""
        per_day = usage.per_day
        if not per_day:
            return None
        ch = self.channel
        n = per_day.get(ordinal, 0)
        if n >= self.per_day:
            what = "call attempts" if ch is Channel.VOICE else ch
            return CapBlock(
                Reason.FREQUENCY_CAP,
                f"{n} {what} already counted on {_day(ordinal)} (at most {self.per_day} a day)",
            )
        if self.connected_per_day is not None:
            answered = usage.connected.get(ordinal, 0)
            if answered >= self.connected_per_day:
                return CapBlock(
                    Reason.FREQUENCY_CAP,
                    f"{answered} calls answered by a person (or still ringing) on {_day(ordinal)}"
                    f" (at most {self.connected_per_day} connected calls a day; {n} attempts)",
                )
        if self.per_7_days is not None:
            total = sum(per_day.get(ordinal - k, 0) for k in range(7))
            if total >= self.per_7_days:
                return CapBlock(
                    Reason.FREQUENCY_CAP,
                    f"{total} {ch} counted on {_day(ordinal - 6)}..{_day(ordinal)}"
                    f" (at most {self.per_7_days} in 7 days)",
                )
        if self.max_consecutive_days is not None and self.rest_days is not None:
            run = self.max_consecutive_days
            # latest run end first: it gives the longest rest
            for end in range(ordinal - 1, ordinal - self.rest_days - 1, -1):
                if all(per_day.get(end - k, 0) > 0 for k in range(run)):
                    return CapBlock(
                        Reason.REST_PERIOD,
                        f"{ch} on {run} consecutive days {_day(end - run + 1)}..{_day(end)}:"
                        f" rest {self.rest_days} days through {_day(end + self.rest_days)}",
                    )
        if self.after_conversation_days is not None and usage.conversations:
            quiet = self.after_conversation_days
            recent = [c for c in usage.conversations if ordinal - quiet < c <= ordinal]
            if recent:
                last = max(recent)
                return CapBlock(
                    Reason.REST_PERIOD,
                    f"conversation on {_day(last)}: no {ch} for {quiet} days through"
                    f" {_day(last + quiet - 1)}",
                )
        return None


class SharedFrequencyCap:
    """One cap over several channels together (`SharedCap`)."""

    __slots__ = ("cap", "channels", "label", "what")

    def __init__(self, cap: SharedCap) -> None:
        self.cap = cap
        self.channels = tuple(cap.channels)
        self.label = cap.label
        plus = "+".join(c.value for c in self.channels)
        self.what = f"shared cap {self.label}" if self.label == plus else f"shared cap {self.label} ({plus})"
        if cap.source:
            self.what += f", {cap.source}"

    def check(self, usages: Mapping[Channel, ChannelUsage], ordinal: int) -> CapBlock | None:
        """None if one more message on any of the channels may go on local day `ordinal`."""
        days = [usages[ch].per_day for ch in self.channels if ch in usages]
        if not any(days):
            return None
        together = "/".join(c.value for c in self.channels)
        if self.cap.per_day is not None:
            n = sum(d.get(ordinal, 0) for d in days)
            if n >= self.cap.per_day:
                return CapBlock(
                    Reason.FREQUENCY_CAP,
                    f"{self.what}: {n} {together} counted on {_day(ordinal)} (at most {self.cap.per_day} a day"
                    " across these channels, one-offs included)",
                )
        if self.cap.per_7_days is not None:
            n = sum(d.get(ordinal - k, 0) for d in days for k in range(7))
            if n >= self.cap.per_7_days:
                return CapBlock(
                    Reason.FREQUENCY_CAP,
                    f"{self.what}: {n} {together} counted on {_day(ordinal - 6)}..{_day(ordinal)}"
                    f" (at most {self.cap.per_7_days} in 7 days across these channels, one-offs included)",
                )
        return None


class ChannelCapRules:
    """Every cap that applies to one more message on a channel: its own caps
    (`FrequencyCap`), then each shared cap it belongs to."""

    __slots__ = ("channel", "own", "shared", "watched")

    def __init__(self, profile: Jurisdiction, channel: Channel) -> None:
        self.channel = channel
        self.own = FrequencyCap.for_profile(profile, channel)
        self.shared = tuple(SharedFrequencyCap(c) for c in profile.shared_caps if channel in c.channels)
        #: the channels whose history matters for this channel's caps
        self.watched = tuple(dict.fromkeys([channel, *(ch for s in self.shared for ch in s.channels)]))

    def active(self, usages: Mapping[Channel, ChannelUsage]) -> bool:
        """Is there any counted history these caps look at (else every day is allowed)?"""
        return any(ch in usages and usages[ch].per_day for ch in self.watched)

    def check(self, usages: Mapping[Channel, ChannelUsage], ordinal: int) -> CapBlock | None:
        """None if one more message on the channel may go on local day `ordinal`, else why not."""
        block = self.own.check(usages.get(self.channel, _NO_USAGE), ordinal)
        if block is not None:
            return block
        for shared in self.shared:
            block = shared.check(usages, ordinal)
            if block is not None:
                return block
        return None


_PENDING = frozenset({MessageStatus.QUEUED, MessageStatus.SENDING})


def history_for_recheck(history: tuple[SentMessage, ...], message_id: int) -> tuple[SentMessage, ...]:
    """The history a message is re-checked against: without itself (it is in the
    snapshot, status sending), and without the messages still pending *behind* it in
    (time, id) order. Those are re-checked when their turn comes and count this one
    then; counting each other both ways, two messages claimed together that a cap allows
    only one of (a one-off and a scheduled message; an SMS and a call under a shared cap)
    would defer each other to the same moment again and again."""
    own = next((h for h in history if h.message_id == message_id), None)
    if own is None:
        return tuple(h for h in history if h.message_id != message_id)
    place = (own.at, message_id)
    return tuple(
        h for h in history
        if h.message_id != message_id
        and not (h.status in _PENDING and h.message_id is not None and (h.at, h.message_id) > place)
    )
