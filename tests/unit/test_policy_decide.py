"""decide_case / decide_channel: SPEC section 4 worked examples, reason precedence,
cadence, caps, templates and escalation, with the shipped configuration."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dispatcher.config import load_config
from dispatcher.domain import (
    HOLD_REASONS,
    Action,
    Case,
    CaseSnapshot,
    CaseStatus,
    Channel,
    ContactPoint,
    Decision,
    Hold,
    MessageStatus,
    Reason,
    SentMessage,
)
from dispatcher.policy import ChannelUsage, Gate

CONFIG = load_config(Path(__file__).resolve().parents[2] / "config" / "dispatcher.toml")
SH = ZoneInfo("Asia/Shanghai")
LA = ZoneInfo("America/Los_Angeles")
NY = ZoneInfo("America/New_York")
SMS, EMAIL, VOICE = Channel.SMS, Channel.EMAIL, Channel.VOICE


def _catalog() -> dict[tuple[Channel, str, str], list[str]]:
    out = {}
    for stage in CONFIG.stages:
        for ch in stage.channels:
            n = 2 if ch is VOICE else 3
            for locale in ("zh-CN", "en-US"):
                out[(ch, stage.name, locale)] = [f"{ch.value}/{stage.name}/v{i}" for i in range(1, n + 1)]
    return out


CATALOG = _catalog()
GATE = Gate(CONFIG)


def make_case(due: dt.date, *, jurisdiction: str = "cn", **kw: object) -> Case:
    us = jurisdiction == "us"
    base: dict[str, object] = {
        "case_id": "C1", "name": "Li Lei", "jurisdiction": jurisdiction,
        "locale": "en-US" if us else "zh-CN", "currency": "USD" if us else "CNY",
        "principal": Decimal("900.00"), "interest": Decimal("80.00"), "penalty": Decimal("20.00"),
        "fees": Decimal("0"), "amount_due": Decimal("1000.00"), "due_date": due,
        "phone": "+12125550100" if us else "+8613812345678", "email": "debtor@example.com",
    }
    base.update(kw)
    return Case(**base)  # type: ignore[arg-type]


def contacts(
    phone: str = "+8613812345678", mail: str = "debtor@example.com", **changes: ContactPoint | None
) -> tuple[ContactPoint, ...]:
    """Consented contact points for every channel; `sms=`, `email=`, `voice=` replace (None: drop) one."""
    points = {
        "sms": ContactPoint(SMS, phone, consent=True),
        "email": ContactPoint(EMAIL, mail, consent=True),
        "voice": ContactPoint(VOICE, phone, consent=True),
    }
    points.update(changes)  # type: ignore[arg-type]
    return tuple(p for p in points.values() if p is not None)


def snap(case: Case, *, points: tuple[ContactPoint, ...] | None = None, holds: tuple[Hold, ...] = (),
         history: tuple[SentMessage, ...] = (), escalated: frozenset[str] = frozenset(),
         zones: tuple[str, ...] = ()) -> CaseSnapshot:
    if points is None:
        points = contacts(phone=case.phone or "")
    return CaseSnapshot(case, points, holds, history, escalated, zones)


def sh(y: int, m: int, d: int, h: int = 10, mi: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, h, mi, tzinfo=SH)


def sent(
    channel: Channel,
    at: dt.datetime,
    stage: str | None = "dpd60",
    *,
    status: MessageStatus = MessageStatus.DELIVERED,
    template: str | None = None,
    conversation: bool = False,
) -> SentMessage:
    return SentMessage(channel=channel, at=at, status=status, stage=stage, template=template, conversation=conversation)


def lines(decisions: list[Decision]) -> dict[Channel | None, Decision]:
    out = {d.channel: d for d in decisions}
    assert len(out) == len(decisions), "one line per channel"
    return out


def nb(decision: Decision) -> str | None:
    return None if decision.not_before is None else decision.not_before.isoformat()


# -- SPEC section 4 worked examples ------------------------------------------------


DUE_DPD30 = dt.date(2026, 11, 7)
DUE_APR = dt.date(2026, 4, 2)


def test_worked_example_dpd30_send() -> None:
    out = lines(GATE.decide_case(snap(make_case(DUE_DPD30)), CATALOG, sh(2026, 12, 7, 10)))
    assert list(out) == [SMS, EMAIL]
    d = out[SMS]
    assert (d.stage, d.action, d.reason, d.not_before) == ("dpd30", Action.SEND, Reason.DUE, None)
    assert d.template is not None and d.template.startswith("sms/dpd30/")
    assert d.detail.startswith("DPD 30 (due 2026-11-07), stage dpd30")


def test_worked_example_0859_defers_to_0900() -> None:
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD30)), CATALOG, sh(2026, 12, 7, 8, 59)))[SMS]
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.OUTSIDE_HOURS, "2026-12-07T09:00:00+08:00")
    assert d.template is not None and d.template.startswith("sms/dpd30/")


def test_worked_example_labour_day() -> None:
    d = lines(GATE.decide_case(snap(make_case(DUE_APR)), CATALOG, sh(2026, 5, 2, 10)))[EMAIL]
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.NON_WORKING_DAY, "2026-05-06T09:00:00+08:00")
    assert "Sat 2026-05-02 is a statutory holiday in CN (Labor Day)" in d.detail
    assert "next legal moment Wed 2026-05-06 09:00 Asia/Shanghai" in d.detail


def test_worked_example_adjusted_workday_saturday() -> None:
    d = lines(GATE.decide_case(snap(make_case(DUE_APR)), CATALOG, sh(2026, 5, 9, 10)))[EMAIL]
    assert (d.action, d.reason) == (Action.SEND, Reason.DUE)


def test_worked_example_dragon_boat() -> None:
    d = lines(GATE.decide_case(snap(make_case(DUE_APR)), CATALOG, sh(2026, 6, 19, 20)))[SMS]
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.NON_WORKING_DAY, "2026-06-22T09:00:00+08:00")
    assert "Dragon Boat Festival" in d.detail


def test_worked_example_us_los_angeles_spring_forward() -> None:
    case = make_case(dt.date(2026, 2, 1), jurisdiction="us", phone="+13105550100")
    s = snap(case, points=contacts(phone="+13105550100"))  # zones resolved from the phone
    d = lines(GATE.decide_case(s, CATALOG, dt.datetime(2026, 3, 8, 7, 59, tzinfo=LA)))[SMS]
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.OUTSIDE_HOURS, "2026-03-08T08:00:00-07:00")


CALLS_MON_TUE_WED = tuple(sent(VOICE, sh(2026, 12, d, 10), template="voice/dpd60/v1") for d in (7, 8, 9))
DUE_DPD70 = dt.date(2026, 10, 1)  # Thu 2026-12-10 is DPD 70


def test_worked_example_three_on_two_off_into_the_weekend() -> None:
    s = snap(make_case(DUE_DPD70), history=CALLS_MON_TUE_WED)
    out = lines(GATE.decide_case(s, CATALOG, sh(2026, 12, 10, 10)))
    d = out[VOICE]
    assert d.detail.startswith("DPD 70 ")
    assert (d.stage, d.action, d.reason, nb(d)) == (
        "dpd60",
        Action.DEFER,
        Reason.REST_PERIOD,
        "2026-12-14T09:00:00+08:00",
    )
    assert "rest 2 days through 2026-12-11" in d.detail
    assert d.template == "voice/dpd60/v2"
    # Friday: still resting; Monday: call
    d_fri = lines(GATE.decide_case(s, CATALOG, sh(2026, 12, 11, 15)))[VOICE]
    assert (d_fri.reason, nb(d_fri)) == (Reason.REST_PERIOD, "2026-12-14T09:00:00+08:00")
    d_mon = lines(GATE.decide_case(s, CATALOG, sh(2026, 12, 14, 9)))[VOICE]
    assert (d_mon.action, d_mon.reason) == (Action.SEND, Reason.DUE)
    # sms and e-mail are not affected by voice caps
    assert out[SMS].action is Action.SEND and out[EMAIL].action is Action.SEND


def test_worked_example_paid_case_is_closed_on_every_channel() -> None:
    s = snap(make_case(DUE_DPD70, status=CaseStatus.PAID))
    out = GATE.decide_case(s, CATALOG, sh(2026, 12, 10, 10))
    assert [(d.channel, d.action, d.reason, d.template, d.not_before) for d in out] == [
        (ch, Action.SKIP, Reason.CASE_CLOSED, None, None) for ch in (SMS, EMAIL, VOICE)
    ]


# -- China calendar and window through the gate -------------------------------------


@pytest.mark.parametrize(
    ("now", "action", "reason", "not_before"),
    [
        (sh(2026, 10, 1, 10), Action.DEFER, Reason.NON_WORKING_DAY, "2026-10-08T09:00:00+08:00"),
        (sh(2026, 10, 7, 12), Action.DEFER, Reason.NON_WORKING_DAY, "2026-10-08T09:00:00+08:00"),
        (sh(2026, 10, 8, 9), Action.SEND, Reason.DUE, None),
        (sh(2026, 10, 10, 10), Action.SEND, Reason.DUE, None),  # adjusted working Saturday
        (sh(2026, 10, 11, 10), Action.DEFER, Reason.NON_WORKING_DAY, "2026-10-12T09:00:00+08:00"),
        (sh(2026, 10, 9, 21, 30), Action.DEFER, Reason.OUTSIDE_HOURS, "2026-10-10T09:00:00+08:00"),
        (sh(2026, 12, 8, 21, 30), Action.DEFER, Reason.OUTSIDE_HOURS, "2026-12-09T09:00:00+08:00"),
        (sh(2026, 12, 8, 21, 0), Action.DEFER, Reason.OUTSIDE_HOURS, "2026-12-09T09:00:00+08:00"),
        (sh(2026, 12, 8, 20, 59), Action.SEND, Reason.DUE, None),
        (sh(2026, 12, 12, 10), Action.DEFER, Reason.NON_WORKING_DAY, "2026-12-14T09:00:00+08:00"),
    ],
)
def test_china_window(now: dt.datetime, action: Action, reason: Reason, not_before: str | None) -> None:
    due = now.date() - dt.timedelta(days=35)
    d = lines(GATE.decide_case(snap(make_case(due)), CATALOG, now))[SMS]
    assert (d.action, d.reason, nb(d)) == (action, reason, not_before)


def test_national_day_detail_names_the_holiday() -> None:
    d = lines(GATE.decide_case(snap(make_case(dt.date(2026, 8, 20))), CATALOG, sh(2026, 10, 2)))[SMS]
    assert "Fri 2026-10-02 is a statutory holiday in CN (National Day)" in d.detail
    weekend = lines(GATE.decide_case(snap(make_case(dt.date(2026, 8, 20))), CATALOG, sh(2026, 10, 11)))[SMS]
    assert "Sun 2026-10-11 is a weekend day in CN" in weekend.detail


# -- US: unknown zone, DST ----------------------------------------------------------


US_ALL = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")


def us_unknown_zone_case() -> CaseSnapshot:
    case = make_case(dt.date(2026, 5, 1), jurisdiction="us", phone=None)
    return snap(case, points=contacts(phone="", mail="pat@example.com", sms=None, voice=None))


def test_us_case_without_phone_or_zone_uses_every_profile_zone() -> None:
    d = lines(GATE.decide_case(us_unknown_zone_case(), CATALOG, dt.datetime(2026, 6, 15, 8, 30, tzinfo=NY)))[EMAIL]
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.OUTSIDE_HOURS, "2026-06-15T11:00:00-04:00")
    assert (
        "07:30 Mon 2026-06-15 America/Chicago, 06:30 Mon 2026-06-15 America/Denver,"
        " 05:30 Mon 2026-06-15 America/Los_Angeles are outside the contact hours 08:00-21:00"
    ) in d.detail


def test_us_unknown_zone_window_closes_at_2100_eastern() -> None:
    s = us_unknown_zone_case()
    assert lines(GATE.decide_case(s, CATALOG, dt.datetime(2026, 6, 15, 20, 59, tzinfo=NY)))[EMAIL].action is Action.SEND
    d = lines(GATE.decide_case(s, CATALOG, dt.datetime(2026, 6, 15, 21, 0, tzinfo=NY)))[EMAIL]
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.OUTSIDE_HOURS, "2026-06-16T11:00:00-04:00")


def test_stored_zones_are_used_as_given() -> None:
    s = snap(make_case(dt.date(2026, 5, 1), jurisdiction="us"), zones=("America/Los_Angeles",))
    # 08:30 in New York is 05:30 in Los Angeles: the phone (212) is not consulted
    d = lines(GATE.decide_case(s, CATALOG, dt.datetime(2026, 6, 15, 8, 30, tzinfo=NY)))[SMS]
    assert nb(d) == "2026-06-15T08:00:00-07:00"


def test_us_fall_back_morning() -> None:
    s = snap(
        make_case(dt.date(2026, 9, 1), jurisdiction="us", phone="+13105550100"), points=contacts(phone="+13105550100")
    )
    d = lines(GATE.decide_case(s, CATALOG, dt.datetime(2026, 11, 1, 7, 30, tzinfo=LA)))[SMS]
    assert (d.reason, nb(d)) == (Reason.OUTSIDE_HOURS, "2026-11-01T08:00:00-08:00")


def test_non_working_day_in_any_zone_wins_over_outside_hours() -> None:
    # Mon 10:00 in Shanghai is Sun 18:00 in Los Angeles: a weekend there (CN calendar)
    s = snap(make_case(DUE_DPD30), zones=("Asia/Shanghai", "America/Los_Angeles"))
    d = lines(GATE.decide_case(s, CATALOG, sh(2026, 12, 7, 10)))[SMS]
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.NON_WORKING_DAY, "2026-12-08T09:00:00+08:00")
    assert "(local date in America/Los_Angeles)" in d.detail
    # Tue 13:00 in Shanghai is Mon 21:00 in Los Angeles: closed there
    d = lines(GATE.decide_case(s, CATALOG, sh(2026, 12, 8, 13)))[SMS]
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.OUTSIDE_HOURS, "2026-12-09T09:00:00+08:00")


# -- case-level reasons and precedence -----------------------------------------------


NOW = sh(2026, 12, 10, 10)
DUE_DPD100 = dt.date(2026, 9, 1)


@pytest.mark.parametrize("reason", HOLD_REASONS)
def test_each_hold_suppresses_every_channel_and_the_escalation(reason: Reason) -> None:
    s = snap(make_case(DUE_DPD100), holds=(Hold(reason),))
    out = GATE.decide_case(s, CATALOG, NOW)
    assert [(d.channel, d.action, d.reason) for d in out] == [(ch, Action.SKIP, reason) for ch in (SMS, EMAIL, VOICE)]
    assert f"{reason.value} hold active until released" in out[0].detail


@pytest.mark.parametrize("status", [CaseStatus.PAID, CaseStatus.SETTLED, CaseStatus.CLOSED])
def test_closed_statuses(status: CaseStatus) -> None:
    out = GATE.decide_case(snap(make_case(DUE_DPD30, status=status)), CATALOG, NOW)
    assert {(d.action, d.reason) for d in out} == {(Action.SKIP, Reason.CASE_CLOSED)}


def test_closed_wins_over_a_hold() -> None:
    s = snap(make_case(DUE_DPD30, status=CaseStatus.SETTLED), holds=(Hold(Reason.CEASE_COMMUNICATION),))
    assert {d.reason for d in GATE.decide_case(s, CATALOG, NOW)} == {Reason.CASE_CLOSED}


def test_hold_precedence_is_independent_of_hold_order() -> None:
    holds = (Hold(Reason.PROMISE_TO_PAY), Hold(Reason.COLLECTOR_HOLD), Hold(Reason.DISPUTE_HOLD))
    s = snap(make_case(DUE_DPD30), holds=holds)
    assert {d.reason for d in GATE.decide_case(s, CATALOG, NOW)} == {Reason.DISPUTE_HOLD}
    s = snap(make_case(DUE_DPD30), holds=(Hold(Reason.PROMISE_TO_PAY), Hold(Reason.PAYMENT_CLAIMED)))
    assert {d.reason for d in GATE.decide_case(s, CATALOG, NOW)} == {Reason.PAYMENT_CLAIMED}


def test_expired_holds_are_ignored() -> None:
    holds = (Hold(Reason.PAYMENT_CLAIMED, until=NOW - dt.timedelta(hours=1)), Hold(Reason.PROMISE_TO_PAY, until=NOW))
    out = lines(GATE.decide_case(snap(make_case(DUE_DPD30), holds=holds), CATALOG, NOW))
    assert out[SMS].action is Action.SEND


def test_an_expired_higher_hold_does_not_hide_an_active_lower_one() -> None:
    until = NOW + dt.timedelta(days=2)
    holds = (Hold(Reason.DISPUTE_HOLD, until=NOW - dt.timedelta(days=1)), Hold(Reason.PROMISE_TO_PAY, until=until))
    out = GATE.decide_case(snap(make_case(DUE_DPD30), holds=holds), CATALOG, NOW)
    assert {d.reason for d in out} == {Reason.PROMISE_TO_PAY}
    assert f"promise_to_pay hold active until {until.isoformat()}" in out[0].detail


def test_not_overdue_is_one_null_channel_line() -> None:
    out = GATE.decide_case(snap(make_case(dt.date(2026, 12, 20))), CATALOG, NOW)
    assert [(d.stage, d.channel, d.action, d.reason, d.template, d.not_before) for d in out] == [
        (None, None, Action.SKIP, Reason.NOT_OVERDUE, None, None)
    ]
    assert out[0].detail.startswith("DPD -10 (due 2026-12-20), stage none")


def test_pre_due_stage_starts_three_days_before() -> None:
    out = lines(GATE.decide_case(snap(make_case(dt.date(2026, 12, 13))), CATALOG, NOW))
    assert out[SMS].stage == "pre_due" and out[SMS].action is Action.SEND


def test_case_reason_without_a_stage_is_one_null_channel_line() -> None:
    s = snap(make_case(dt.date(2026, 12, 20), status=CaseStatus.CLOSED), holds=(Hold(Reason.LEGAL_HOLD),))
    out = GATE.decide_case(s, CATALOG, NOW)
    assert [(d.stage, d.channel, d.action, d.reason) for d in out] == [(None, None, Action.SKIP, Reason.CASE_CLOSED)]


# -- channel reasons -----------------------------------------------------------------


def test_missing_contact_point_and_missing_address_are_no_contact() -> None:
    points = contacts(sms=None, email=ContactPoint(EMAIL, None, consent=True))
    out = lines(GATE.decide_case(snap(make_case(DUE_DPD70), points=points), CATALOG, NOW))
    assert out[SMS].reason is Reason.NO_CONTACT and out[SMS].action is Action.SKIP
    assert "no phone number on file for sms" in out[SMS].detail
    assert out[EMAIL].reason is Reason.NO_CONTACT
    assert "no e-mail address on file for email" in out[EMAIL].detail
    assert out[VOICE].action is Action.SEND


def test_channel_reason_precedence() -> None:
    points = contacts(
        sms=ContactPoint(SMS, None, consent=False, opted_out=True, invalid=True),
        email=ContactPoint(EMAIL, "x@example.com", consent=False, opted_out=True, invalid=True),
        voice=ContactPoint(VOICE, "+8613812345678", consent=False, opted_out=True),
    )
    out = lines(GATE.decide_case(snap(make_case(DUE_DPD70), points=points), CATALOG, NOW))
    assert [out[ch].reason for ch in (SMS, EMAIL, VOICE)] == [
        Reason.NO_CONTACT,
        Reason.INVALID_ADDRESS,
        Reason.NO_CONSENT,
    ]


def test_opted_out() -> None:
    points = contacts(sms=ContactPoint(SMS, "+8613812345678", consent=True, opted_out=True))
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD30), points=points), CATALOG, NOW))[SMS]
    assert (d.action, d.reason, d.template) == (Action.SKIP, Reason.OPTED_OUT, None)


def test_channel_reasons_come_before_cadence_and_time() -> None:
    points = contacts(sms=ContactPoint(SMS, "+8613812345678", consent=True, opted_out=True))
    history = (sent(SMS, sh(2026, 12, 9), stage="dpd30"),)
    d = lines(
        GATE.decide_case(snap(make_case(DUE_DPD30), points=points, history=history), CATALOG, sh(2026, 12, 12, 23))
    )[SMS]
    assert d.reason is Reason.OPTED_OUT


# -- cadence -------------------------------------------------------------------------


DUE_FOR_DPD30_ON_DEC7 = DUE_DPD30  # DPD 30..59 covers 7 Dec 2026 .. 5 Jan 2027


def test_not_due_until_every_days_have_passed() -> None:
    history = (sent(SMS, sh(2026, 12, 8, 15), stage="dpd30", template="sms/dpd30/v1"),)
    s = snap(make_case(DUE_FOR_DPD30_ON_DEC7), history=history)
    d = lines(GATE.decide_case(s, CATALOG, sh(2026, 12, 10, 10)))[SMS]
    assert (d.action, d.reason, d.template, d.not_before) == (Action.SKIP, Reason.NOT_DUE, None, None)
    assert d.detail == "DPD 33 (due 2026-11-07), stage dpd30; last sms 2026-12-08, every 5 days: next on 2026-12-13"
    # d + every_days: Sun 13 is due (deferred to Monday by the calendar), Mon 14 sends
    d13 = lines(GATE.decide_case(s, CATALOG, sh(2026, 12, 13, 10)))[SMS]
    assert (d13.action, d13.reason, nb(d13)) == (Action.DEFER, Reason.NON_WORKING_DAY, "2026-12-14T09:00:00+08:00")
    d14 = lines(GATE.decide_case(s, CATALOG, sh(2026, 12, 14, 9)))[SMS]
    assert (d14.action, d14.reason, d14.template) == (Action.SEND, Reason.DUE, "sms/dpd30/v2")


def test_cadence_comes_before_time() -> None:
    history = (sent(SMS, sh(2026, 12, 8, 15), stage="dpd30"),)
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD30), history=history), CATALOG, sh(2026, 12, 12, 23)))[SMS]
    assert d.reason is Reason.NOT_DUE


def test_cadence_uses_the_primary_zone_day() -> None:
    # 2026-12-08T17:30Z is Wed 9 Dec 01:30 in Shanghai
    history = (sent(SMS, dt.datetime(2026, 12, 8, 17, 30, tzinfo=dt.UTC), stage="dpd30"),)
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD30), history=history), CATALOG, sh(2026, 12, 11)))[SMS]
    assert d.detail.endswith("last sms 2026-12-09, every 5 days: next on 2026-12-14")


def test_one_off_and_queued_messages_count_for_cadence() -> None:
    one_off = (sent(EMAIL, sh(2026, 12, 9, 11), stage="dpd30", template="email/dpd60/v1"),)
    queued = (sent(EMAIL, sh(2026, 12, 11, 9), stage="dpd30", status=MessageStatus.QUEUED),)
    for history in (one_off, queued):
        d = lines(GATE.decide_case(snap(make_case(DUE_DPD30), history=history), CATALOG, sh(2026, 12, 10)))[EMAIL]
        assert d.reason is Reason.NOT_DUE


def test_an_unconfirmed_email_counts_for_cadence_and_caps() -> None:
    """Issue 10: an e-mail whose SMTP connection was lost after its data went out is
    `sent_unconfirmed`; it most likely reached the debtor, so the stage's cadence holds
    (a dpd30 e-mail on Wed 9 Dec: the next on Mon 14 Dec, not Thu 10 Dec) and the day's cap too."""
    history = (sent(EMAIL, sh(2026, 12, 9, 11), stage="dpd30", status=MessageStatus.SENT_UNCONFIRMED),)
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD30), history=history), CATALOG, sh(2026, 12, 10)))[EMAIL]
    assert d.reason is Reason.NOT_DUE and d.detail.endswith("next on 2026-12-14")
    usage = ChannelUsage.from_history(history, Channel.EMAIL, "Asia/Shanghai")
    assert usage.per_day == {dt.date(2026, 12, 9).toordinal(): 1}


def test_cancelled_and_failed_messages_do_not_count_for_cadence() -> None:
    history = (
        sent(SMS, sh(2026, 12, 9), stage="dpd30", status=MessageStatus.CANCELLED),
        sent(SMS, sh(2026, 12, 9, 12), stage="dpd30", status=MessageStatus.FAILED),
    )
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD30), history=history), CATALOG, sh(2026, 12, 10)))[SMS]
    assert d.action is Action.SEND


def test_a_new_stage_makes_its_first_message_due_at_once() -> None:
    # DPD 29 on Sun 6 Dec: an 'early' sms on Fri 4 Dec; Mon 7 Dec is DPD 30 (dpd30)
    history = (sent(SMS, sh(2026, 12, 4), stage="early", template="sms/early/v1"),)
    s = snap(make_case(DUE_DPD30), history=history)
    d = lines(GATE.decide_case(s, CATALOG, sh(2026, 12, 7, 10)))[SMS]
    assert (d.stage, d.action, d.reason) == ("dpd30", Action.SEND, Reason.DUE)
    assert "no sms yet in this stage" in d.detail
    # the same message with an unknown stage counts as the current stage
    unknown = (sent(SMS, sh(2026, 12, 4), stage=None),)
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD30), history=unknown), CATALOG, sh(2026, 12, 7, 10)))[SMS]
    assert d.reason is Reason.NOT_DUE


def test_caps_still_apply_across_a_stage_change() -> None:
    history = (sent(SMS, sh(2026, 12, 7, 9, 30), stage="early"),)
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD30), history=history), CATALOG, sh(2026, 12, 7, 10)))[SMS]
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.FREQUENCY_CAP, "2026-12-08T09:00:00+08:00")


# -- caps through the gate -------------------------------------------------------------


def test_three_on_two_off_running_into_a_holiday() -> None:
    # calls Mon 27, Tue 28, Wed 29 Apr 2026; rest Thu 30 Apr and Fri 1 May; 1-5 May is Labour Day
    calls = tuple(sent(VOICE, sh(2026, 4, d, 10)) for d in (27, 28, 29))
    s = snap(make_case(dt.date(2026, 2, 20)), history=calls)
    d = lines(GATE.decide_case(s, CATALOG, sh(2026, 4, 30, 10)))[VOICE]
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.REST_PERIOD, "2026-05-06T09:00:00+08:00")


def test_outside_hours_with_caps_pushing_not_before_further() -> None:
    # Wed 9 Dec 22:00 after calls Mon-Wed: the window reason wins, not_before respects the rest
    s = snap(make_case(DUE_DPD70), history=CALLS_MON_TUE_WED)
    d = GATE.decide_channel(s, CATALOG, sh(2026, 12, 9, 22), VOICE, apply_cadence=False)
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.OUTSIDE_HOURS, "2026-12-14T09:00:00+08:00")
    assert "then voice on 3 consecutive days" in d.detail


def test_per_day_cap_for_a_one_off() -> None:
    history = (sent(SMS, sh(2026, 12, 10, 9, 15), stage="dpd30"),)
    d = GATE.decide_channel(
        snap(make_case(DUE_DPD30), history=history), CATALOG, sh(2026, 12, 10, 10), SMS, apply_cadence=False
    )
    assert (d.action, d.reason, nb(d)) == (Action.DEFER, Reason.FREQUENCY_CAP, "2026-12-11T09:00:00+08:00")


US_DPD70_DUE = dt.date(2026, 4, 6)  # Mon 2026-06-15 is DPD 70
D = dt.datetime(2026, 6, 15, 10, tzinfo=NY)


def us_voice(history: tuple[SentMessage, ...]) -> CaseSnapshot:
    return snap(make_case(US_DPD70_DUE, jurisdiction="us"), points=contacts(phone="+12125550100"), history=history)


def calls(*days_back: int, status: MessageStatus = MessageStatus.COMPLETED) -> tuple[SentMessage, ...]:
    return tuple(sent(VOICE, D - dt.timedelta(days=k, hours=1), status=status) for k in days_back)


def test_us_seventh_call_in_seven_days_is_refused() -> None:
    # calls on D-6 .. D-1 and one today: a one-off now would be the 8th in 7 days
    s = us_voice(calls(6, 5, 4, 3, 2, 1, 0))
    d = GATE.decide_channel(s, CATALOG, D, VOICE, apply_cadence=False)
    assert (d.action, d.reason) == (Action.DEFER, Reason.FREQUENCY_CAP)
    assert nb(d) == "2026-06-16T08:00:00-04:00"


def test_us_seven_calls_in_the_previous_six_days_block_today() -> None:
    s = us_voice(calls(6, 6, 5, 4, 3, 2, 1, status=MessageStatus.NO_ANSWER))  # unanswered calls count too
    d = lines(GATE.decide_case(s, CATALOG, D))[VOICE]
    assert (d.action, d.reason) == (Action.DEFER, Reason.FREQUENCY_CAP)
    assert "7 voice counted on 2026-06-09..2026-06-15 (at most 7 in 7 days)" in d.detail
    # tomorrow D-6 (two calls) leaves the window
    assert nb(d) == "2026-06-16T08:00:00-04:00"


def test_us_six_calls_in_seven_days_allow_a_seventh() -> None:
    d = lines(GATE.decide_case(us_voice(calls(6, 5, 4, 3, 2, 1)), CATALOG, D))[VOICE]
    assert (d.action, d.reason) == (Action.SEND, Reason.DUE)


def test_failed_calls_do_not_count() -> None:
    history = calls(6, 5, 4, 3, 2, 1) + calls(6, status=MessageStatus.FAILED) + calls(5, status=MessageStatus.CANCELLED)
    assert lines(GATE.decide_case(us_voice(history), CATALOG, D))[VOICE].action is Action.SEND


def test_us_no_call_within_seven_days_after_a_conversation() -> None:
    talk = (sent(VOICE, D - dt.timedelta(days=3), conversation=True, status=MessageStatus.COMPLETED),)
    d = lines(GATE.decide_case(us_voice(talk), CATALOG, D))[VOICE]
    assert (d.action, d.reason) == (Action.DEFER, Reason.REST_PERIOD)
    # conversation on Fri 12 Jun = day 1; days 1-7 end Thu 18 Jun
    assert nb(d) == "2026-06-19T08:00:00-04:00"
    assert "conversation on 2026-06-12: no voice for 7 days through 2026-06-18" in d.detail
    later = lines(GATE.decide_case(us_voice(talk), CATALOG, dt.datetime(2026, 6, 19, 8, tzinfo=NY)))[VOICE]
    assert later.action is Action.SEND
    # sms is not restricted by the voice conversation
    assert lines(GATE.decide_case(us_voice(talk), CATALOG, D))[SMS].action is Action.SEND


# -- templates -------------------------------------------------------------------------


def test_rotation_moves_past_the_last_variant() -> None:
    history = (sent(SMS, sh(2026, 12, 1), stage="dpd30", template="sms/dpd30/v3"),)
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD30), history=history), CATALOG, sh(2026, 12, 7)))[SMS]
    assert d.template == "sms/dpd30/v1"


def test_no_approved_template_skips() -> None:
    catalog = {k: v for k, v in CATALOG.items() if k[0] is not VOICE}
    out = lines(GATE.decide_case(snap(make_case(DUE_DPD70)), catalog, NOW))
    d = out[VOICE]
    assert (d.action, d.reason, d.template) == (Action.SKIP, Reason.NO_APPROVED_TEMPLATE, None)
    assert "no approved voice template for stage dpd60 in zh-CN" in d.detail
    assert out[SMS].action is Action.SEND


def test_missing_template_does_not_mask_an_earlier_skip_reason() -> None:
    history = (sent(VOICE, sh(2026, 12, 10, 9, 5)),)
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD70), history=history), {}, NOW))[VOICE]
    assert d.reason is Reason.NOT_DUE


def test_locale_falls_back_to_the_profile_default() -> None:
    catalog = {(SMS, "dpd30", "zh-CN"): ["sms/dpd30/v9"]}
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD30, locale="en-US")), catalog, NOW))[SMS]
    assert (d.action, d.template) == (Action.SEND, "sms/dpd30/v9")


def test_deferred_lines_carry_the_template() -> None:
    d = lines(
        GATE.decide_case(snap(make_case(DUE_DPD30)), {(SMS, "dpd30", "zh-CN"): ["sms/dpd30/v2"]}, sh(2026, 12, 12))
    )
    assert (d[SMS].action, d[SMS].template) == (Action.DEFER, "sms/dpd30/v2")
    assert (d[EMAIL].action, d[EMAIL].reason, d[EMAIL].not_before) == (Action.SKIP, Reason.NO_APPROVED_TEMPLATE, None)


# -- one-off sends: decide_channel -----------------------------------------------------


def test_one_off_ignores_cadence_but_not_caps_or_time() -> None:
    history = (sent(SMS, sh(2026, 12, 8), stage="dpd30", template="sms/dpd30/v1"),)
    s = snap(make_case(DUE_DPD30), history=history)
    d = GATE.decide_channel(s, CATALOG, sh(2026, 12, 10), SMS, apply_cadence=False)
    assert (d.action, d.reason, d.template) == (Action.SEND, Reason.DUE, "sms/dpd30/v2")
    assert GATE.decide_channel(s, CATALOG, sh(2026, 12, 10), SMS).reason is Reason.NOT_DUE
    night = GATE.decide_channel(s, CATALOG, sh(2026, 12, 10, 22), SMS, apply_cadence=False)
    assert (night.action, nb(night)) == (Action.DEFER, "2026-12-11T09:00:00+08:00")


def test_one_off_with_an_approved_template_from_any_stage() -> None:
    s = snap(make_case(DUE_DPD30))
    d = GATE.decide_channel(s, CATALOG, NOW, SMS, apply_cadence=False, template="sms/early/v2")
    assert (d.stage, d.action, d.template) == ("dpd30", Action.SEND, "sms/early/v2")


@pytest.mark.parametrize("template", ["sms/dpd30/v7", "email/dpd30/v1"])
def test_one_off_with_an_unapproved_template_is_refused(template: str) -> None:
    d = GATE.decide_channel(snap(make_case(DUE_DPD30)), CATALOG, NOW, SMS, apply_cadence=False, template=template)
    assert (d.action, d.reason, d.template) == (Action.SKIP, Reason.NO_APPROVED_TEMPLATE, None)


def test_one_off_on_a_channel_outside_the_stage() -> None:
    s = snap(make_case(DUE_DPD30))
    d = GATE.decide_channel(s, CATALOG, NOW, VOICE, apply_cadence=False, template="voice/dpd60/v1")
    assert (d.stage, d.channel, d.action, d.template) == ("dpd30", VOICE, Action.SEND, "voice/dpd60/v1")
    # rotation has no voice/dpd30 variants to choose from
    d = GATE.decide_channel(s, CATALOG, NOW, VOICE, apply_cadence=False)
    assert d.reason is Reason.NO_APPROVED_TEMPLATE


def test_one_off_refusals() -> None:
    not_overdue = GATE.decide_channel(snap(make_case(dt.date(2027, 1, 1))), CATALOG, NOW, SMS, apply_cadence=False)
    assert (not_overdue.stage, not_overdue.action, not_overdue.reason) == (None, Action.SKIP, Reason.NOT_OVERDUE)
    held = GATE.decide_channel(
        snap(make_case(DUE_DPD30), holds=(Hold(Reason.COLLECTOR_HOLD),)), CATALOG, NOW, "sms", apply_cadence=False
    )  # type: ignore[arg-type]
    assert (held.channel, held.action, held.reason) == (SMS, Action.SKIP, Reason.COLLECTOR_HOLD)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        GATE.decide_case(snap(make_case(DUE_DPD30)), CATALOG, dt.datetime(2026, 12, 7, 10))


def test_unknown_jurisdiction_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a profile"):
        GATE.decide_case(snap(make_case(DUE_DPD30, jurisdiction="mx")), CATALOG, NOW)


# -- escalation ------------------------------------------------------------------------


def test_entering_dpd90_escalates_once() -> None:
    out = GATE.decide_case(snap(make_case(DUE_DPD100)), CATALOG, NOW)
    assert [(d.channel, d.action) for d in out] == [
        (SMS, Action.SEND), (EMAIL, Action.SEND), (VOICE, Action.SEND), (None, Action.ESCALATE)
    ]
    esc = out[-1]
    assert (esc.stage, esc.reason, esc.template, esc.not_before) == ("dpd90", Reason.LEGAL_HANDOFF, None, None)
    assert "legal department" in esc.detail


def test_escalation_even_when_every_channel_is_deferred() -> None:
    out = GATE.decide_case(snap(make_case(DUE_DPD100)), CATALOG, sh(2026, 12, 12))
    assert out[-1].action is Action.ESCALATE
    assert {d.action for d in out[:-1]} == {Action.DEFER}


def test_no_escalation_once_escalated_or_when_closed_or_before_dpd90() -> None:
    escalated = snap(make_case(DUE_DPD100), escalated=frozenset({"dpd90"}))
    closed = snap(make_case(DUE_DPD100, status=CaseStatus.CLOSED))
    dpd60 = snap(make_case(DUE_DPD70))
    for s in (escalated, closed, dpd60):
        assert all(d.action is not Action.ESCALATE for d in GATE.decide_case(s, CATALOG, NOW))


def test_dpd90_cadence_is_lower() -> None:
    history = (sent(VOICE, sh(2026, 12, 8), stage="dpd90"), sent(SMS, sh(2026, 12, 4), stage="dpd90"))
    out = lines(
        GATE.decide_case(snap(make_case(DUE_DPD100), history=history, escalated=frozenset({"dpd90"})), CATALOG, NOW)
    )
    assert out[VOICE].detail.endswith("last voice 2026-12-08, every 3 days: next on 2026-12-11")
    assert out[SMS].detail.endswith("last sms 2026-12-04, every 7 days: next on 2026-12-11")


def test_json_shape() -> None:
    d = lines(GATE.decide_case(snap(make_case(DUE_DPD30)), CATALOG, sh(2026, 12, 7, 8, 59)))[SMS]
    j = d.as_json()
    assert j["not_before"] == "2026-12-07T09:00:00+08:00"
    assert (j["channel"], j["action"], j["reason"], j["stage"]) == ("sms", "defer", "outside_hours", "dpd30")


def test_naive_history_instants_are_refused() -> None:
    history = (sent(SMS, dt.datetime(2026, 12, 1, 10), stage="dpd30"),)
    with pytest.raises(ValueError, match="no time zone"):
        GATE.decide_case(snap(make_case(DUE_DPD30), history=history), CATALOG, NOW)
