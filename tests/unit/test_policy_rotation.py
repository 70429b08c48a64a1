"""Template variant rotation."""

from __future__ import annotations

import datetime as dt
import zlib

from dispatcher.domain import Channel, MessageStatus, SentMessage
from dispatcher.policy import choose_template

V = ["sms/dpd30/v1", "sms/dpd30/v2", "sms/dpd30/v3"]
T0 = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)


def sent(
    template: str, days: int, *, channel: Channel = Channel.SMS, status: MessageStatus = MessageStatus.DELIVERED
) -> SentMessage:
    return SentMessage(
        channel=channel, at=T0 + dt.timedelta(days=days), status=status, stage="dpd30", template=template
    )


def test_without_history_the_pick_is_crc32_of_case_channel_stage() -> None:
    expected = V[zlib.crc32(b"C42smsdpd30") % 3]
    assert choose_template(V, (), Channel.SMS, "C42", "dpd30") == expected
    assert choose_template(list(reversed(V)), (), Channel.SMS, "C42", "dpd30") == expected


def test_first_picks_spread_over_the_variants() -> None:
    picks = {choose_template(V, (), Channel.SMS, f"C{i}", "dpd30") for i in range(50)}
    assert picks == set(V)


def test_next_after_the_last_sent_variant_wrapping() -> None:
    assert choose_template(V, [sent(V[0], 0)], Channel.SMS) == V[1]
    assert choose_template(V, [sent(V[0], 0), sent(V[1], 5)], Channel.SMS) == V[2]
    assert choose_template(V, [sent(V[1], 0), sent(V[2], 5)], Channel.SMS) == V[0]


def test_the_most_recent_message_decides_regardless_of_history_order() -> None:
    history = [sent(V[2], 9), sent(V[0], 1), sent(V[1], 4)]
    assert choose_template(V, history, Channel.SMS) == V[0]


def test_cancelled_and_failed_messages_were_never_seen() -> None:
    history = [sent(V[0], 0), sent(V[1], 5, status=MessageStatus.CANCELLED), sent(V[2], 6, status=MessageStatus.FAILED)]
    assert choose_template(V, history, Channel.SMS) == V[1]


def test_queued_messages_count_as_sent() -> None:
    assert choose_template(V, [sent(V[0], 0), sent(V[1], 5, status=MessageStatus.QUEUED)], Channel.SMS) == V[2]


def test_other_channels_do_not_matter() -> None:
    history = [sent(V[0], 0), sent("email/dpd30/v1", 5, channel=Channel.EMAIL)]
    assert choose_template(V, history, Channel.SMS) == V[1]


def test_last_variant_from_another_stage_falls_back_to_the_crc_pick() -> None:
    history = [sent("sms/early/v2", 0)]
    assert choose_template(V, history, Channel.SMS, "C42", "dpd30") == V[zlib.crc32(b"C42smsdpd30") % 3]


def test_single_candidate_is_used_even_if_it_was_the_last() -> None:
    assert (
        choose_template(["voice/dpd60/v1"], [sent("voice/dpd60/v1", 0, channel=Channel.VOICE)], Channel.VOICE)
        == "voice/dpd60/v1"
    )


def test_no_candidate_gives_none() -> None:
    assert choose_template([], [sent(V[0], 0)], Channel.SMS) is None


def test_a_long_run_never_repeats_a_variant_back_to_back() -> None:
    for candidates in (V, V[:2]):
        history: list[SentMessage] = []
        chosen = []
        for day in range(12):
            template = choose_template(candidates, history, Channel.SMS, "C7", "dpd30")
            assert template is not None
            chosen.append(template)
            history.append(sent(template, day))
        assert all(a != b for a, b in zip(chosen, chosen[1:], strict=False))
        assert set(chosen) == set(candidates)
        # deterministic: the same history gives the same choice
        assert choose_template(candidates, history, Channel.SMS, "C7", "dpd30") == choose_template(
            candidates, list(history), Channel.SMS, "C7", "dpd30"
        )
