"""Per-channel frequency caps, counted per case on calendar days of the primary zone.

Which history entries count: every message of the channel whose status is neither
`cancelled` nor `failed` — queued and in-flight messages included (they will go out),
and a placed call counts even when nobody answered (busy, no-answer, completed ...).
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

Reason codes: ``per_day`` / ``per_7_days`` -> `frequency_cap`; the rest after a run and
the quiet period after a conversation -> `rest_period`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from dispatcher.config import ChannelCaps, Jurisdiction
from dispatcher.domain import Channel, MessageStatus, Reason, SentMessage
from dispatcher.policy.zones import zone_info

#: Statuses that do not count for caps, cadence or rotation: the message never left.
NOT_COUNTED: frozenset[MessageStatus] = frozenset({MessageStatus.CANCELLED, MessageStatus.FAILED})


def counts(message: SentMessage) -> bool:
    """Does this history entry count (caps, cadence, rotation)?"""
    return message.status not in NOT_COUNTED


@dataclass(slots=True)
class ChannelUsage:
    """One channel's counted history of a case, by local date ordinal of the primary zone."""

    per_day: dict[int, int] = field(default_factory=dict)
    conversations: list[int] = field(default_factory=list)

    def add(self, ordinal: int, conversation: bool = False) -> None:
        self.per_day[ordinal] = self.per_day.get(ordinal, 0) + 1
        if conversation:
            self.conversations.append(ordinal)

    @classmethod
    def from_history(cls, history: Iterable[SentMessage], channel: Channel, zone: str) -> ChannelUsage:
        tz = zone_info(zone)
        usage = cls()
        for message in history:
            if message.channel == channel and message.status not in NOT_COUNTED:
                usage.add(message.at.astimezone(tz).toordinal(), message.conversation)
        return usage


@dataclass(frozen=True, slots=True)
class CapBlock:
    """Why a cap forbids one more message on a day."""

    reason: Reason
    detail: str


def _day(ordinal: int) -> str:
    return dt.date.fromordinal(ordinal).isoformat()


class FrequencyCap:
    """The caps of one channel of a profile (`profile.caps_for(channel)`)."""

    __slots__ = ("channel", "per_day", "per_7_days", "max_consecutive_days", "rest_days", "after_conversation_days")

    def __init__(self, caps: ChannelCaps, channel: Channel) -> None:
        self.channel = channel
        self.per_day = caps.per_day
        self.per_7_days = caps.per_7_days
        self.max_consecutive_days = caps.max_consecutive_days
        self.rest_days = caps.rest_days
        self.after_conversation_days = caps.after_conversation_days

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
            return CapBlock(
                Reason.FREQUENCY_CAP,
                f"{n} {ch} already counted on {_day(ordinal)} (at most {self.per_day} a day)",
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
