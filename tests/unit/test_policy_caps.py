"""FrequencyCap rules on day counts, and which history entries count."""

from __future__ import annotations

import datetime as dt

import pytest

from dispatcher.config import ChannelCaps
from dispatcher.domain import Channel, MessageStatus, Reason, SentMessage
from dispatcher.policy import ChannelUsage, FrequencyCap

MON = dt.date(2026, 12, 7).toordinal()  # Mon 7 Dec 2026


def usage(days: dict[int, int], conversations: tuple[int, ...] = ()) -> ChannelUsage:
    u = ChannelUsage()
    for ordinal, n in days.items():
        for _ in range(n):
            u.add(ordinal)
    for ordinal in conversations:
        u.add(ordinal, conversation=True)
    return u


def cap(**kw: int) -> FrequencyCap:
    return FrequencyCap(ChannelCaps(**kw), Channel.VOICE)


def test_unset_caps_mean_one_per_day() -> None:
    c = FrequencyCap(ChannelCaps(), Channel.SMS)
    assert c.check(usage({}), MON) is None
    assert c.check(usage({MON - 1: 1}), MON) is None
    block = c.check(usage({MON: 1}), MON)
    assert block is not None
    assert block.reason is Reason.FREQUENCY_CAP
    assert "at most 1 a day" in block.detail


def test_per_day_counts_up_to_the_limit() -> None:
    c = cap(per_day=3)
    assert c.allows(usage({MON: 2}), MON)
    assert not c.allows(usage({MON: 3}), MON)


def test_per_7_days_window_is_today_and_the_six_days_before() -> None:
    c = cap(per_day=3, per_7_days=7)
    seven = {MON - 6: 2, MON - 5: 1, MON - 4: 1, MON - 3: 1, MON - 2: 1, MON - 1: 1}
    block = c.check(usage(seven), MON)
    assert block is not None
    assert block.reason is Reason.FREQUENCY_CAP
    assert "7 voice counted on 2026-12-01..2026-12-07 (at most 7 in 7 days)" in block.detail
    # the oldest day drops out tomorrow: 5 left in the window
    assert c.allows(usage(seven), MON + 1)
    # six calls in the window leave room for the seventh
    six = {MON - 6: 1, MON - 5: 1, MON - 4: 1, MON - 3: 1, MON - 2: 1, MON - 1: 1}
    assert c.allows(usage(six), MON)
    # seven calls, the earliest a week ago (D-7): outside the window
    shifted = {MON - 7: 2, MON - 5: 1, MON - 4: 1, MON - 3: 1, MON - 2: 1, MON - 1: 1}
    assert c.allows(usage(shifted), MON)


def test_three_consecutive_days_then_two_days_rest() -> None:
    c = cap(per_day=1, max_consecutive_days=3, rest_days=2)
    run = usage({MON: 1, MON + 1: 1, MON + 2: 1})
    for day in (MON + 3, MON + 4):
        block = c.check(run, day)
        assert block is not None
        assert block.reason is Reason.REST_PERIOD
        assert block.detail == "voice on 3 consecutive days 2026-12-07..2026-12-09: rest 2 days through 2026-12-11"
    assert c.allows(run, MON + 5)
    assert c.allows(run, MON + 6)


def test_two_consecutive_days_or_a_gap_do_not_trigger_the_rest() -> None:
    c = cap(per_day=1, max_consecutive_days=3, rest_days=2)
    assert c.allows(usage({MON: 1, MON + 1: 1}), MON + 2)
    assert c.allows(usage({MON: 1, MON + 1: 1, MON + 3: 1}), MON + 4)
    # a 4th consecutive day is never allowed
    assert not c.allows(usage({MON: 1, MON + 1: 1, MON + 2: 1}), MON + 3)


def test_a_longer_run_rests_after_its_last_day() -> None:
    c = cap(per_day=2, max_consecutive_days=3, rest_days=2)
    run = usage({MON + k: 1 for k in range(5)})  # e.g. one-offs on top of scheduled calls
    assert not c.allows(run, MON + 5)
    assert not c.allows(run, MON + 6)
    assert c.allows(run, MON + 7)


def test_after_conversation_blocks_the_conversation_day_and_six_more() -> None:
    c = cap(per_day=1, per_7_days=7, after_conversation_days=7)
    u = usage({}, conversations=(MON,))
    for k in range(1, 7):
        block = c.check(u, MON + k)
        assert block is not None
        assert block.reason is Reason.REST_PERIOD
        assert block.detail == "conversation on 2026-12-07: no voice for 7 days through 2026-12-13"
    assert c.allows(u, MON + 7)


def test_after_conversation_uses_the_latest_conversation() -> None:
    c = cap(per_day=1, after_conversation_days=7)
    u = usage({}, conversations=(MON, MON + 3))
    block = c.check(u, MON + 7)
    assert block is not None
    assert "through 2026-12-16" in block.detail
    assert c.allows(u, MON + 10)


def test_reason_precedence_frequency_before_rest() -> None:
    c = cap(per_day=1, max_consecutive_days=3, rest_days=2)
    block = c.check(usage({MON: 1, MON + 1: 1, MON + 2: 1, MON + 3: 1}), MON + 3)
    assert block is not None
    assert block.reason is Reason.FREQUENCY_CAP


SH = dt.timezone(dt.timedelta(hours=8))


def msg(status: MessageStatus, at: dt.datetime, channel: Channel = Channel.VOICE, **kw: object) -> SentMessage:
    return SentMessage(channel=channel, at=at, status=status, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "status",
    [
        MessageStatus.QUEUED, MessageStatus.SENDING, MessageStatus.SENT, MessageStatus.DELIVERED,
        MessageStatus.UNDELIVERED, MessageStatus.COMPLETED, MessageStatus.NO_ANSWER,
        MessageStatus.BUSY, MessageStatus.RINGING, MessageStatus.IN_PROGRESS, MessageStatus.READ,
    ],
)
def test_placed_and_queued_messages_count(status: MessageStatus) -> None:
    u = ChannelUsage.from_history(
        [msg(status, dt.datetime(2026, 12, 7, 10, tzinfo=SH))], Channel.VOICE, "Asia/Shanghai"
    )
    assert u.per_day == {MON: 1}


@pytest.mark.parametrize("status", [MessageStatus.CANCELLED, MessageStatus.FAILED])
def test_cancelled_and_failed_messages_do_not_count(status: MessageStatus) -> None:
    u = ChannelUsage.from_history(
        [msg(status, dt.datetime(2026, 12, 7, 10, tzinfo=SH))], Channel.VOICE, "Asia/Shanghai"
    )
    assert u.per_day == {}


def test_counts_are_per_channel_on_primary_zone_days() -> None:
    history = [
        msg(MessageStatus.SENT, dt.datetime(2026, 12, 6, 17, 0, tzinfo=dt.UTC)),  # Mon 01:00 in Shanghai
        msg(MessageStatus.SENT, dt.datetime(2026, 12, 7, 10, tzinfo=SH), channel=Channel.SMS),
        msg(MessageStatus.COMPLETED, dt.datetime(2026, 12, 8, 10, tzinfo=SH), conversation=True),
    ]
    u = ChannelUsage.from_history(history, Channel.VOICE, "Asia/Shanghai")
    assert u.per_day == {MON: 1, MON + 1: 1}
    assert u.conversations == [MON + 1]
    # the same instant is a Sunday in Los Angeles
    u_la = ChannelUsage.from_history(history[:1], Channel.VOICE, "America/Los_Angeles")
    assert u_la.per_day == {MON - 1: 1}
