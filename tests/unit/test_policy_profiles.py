"""The seven shipped profiles (SPEC section 12), rule by rule, through the gate with the
shipped configuration: shared caps across channels (one-offs and scheduled messages
alike), attempted vs connected calls, Washington's 07:30, cn-bank's 22:00, NYC consent,
the quiet week after a conversation; and the configuration's validation of the new
rule shapes."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dispatcher.config import ConfigError, load_config
from dispatcher.domain import Action, Case, CaseSnapshot, Channel, ContactPoint, MessageStatus, Reason, SentMessage
from dispatcher.policy import Gate

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_config(ROOT / "config" / "dispatcher.toml")
GATE = Gate(CONFIG)
SH = ZoneInfo("Asia/Shanghai")
LA = ZoneInfo("America/Los_Angeles")
NY = ZoneInfo("America/New_York")
SMS, EMAIL, VOICE = Channel.SMS, Channel.EMAIL, Channel.VOICE
CATALOG = {
    (ch, stage.name, locale): [f"{ch.value}/{stage.name}/v{i}" for i in (1, 2)]
    for stage in CONFIG.stages
    for ch in stage.channels
    for locale in ("zh-CN", "en-US")
}
PHONES = {"cn": "+8613812345678", "us": "+12125550100"}
ZONES = {"cn": "Asia/Shanghai", "cn-bank": "Asia/Shanghai", "cn-internet": "Asia/Shanghai",
         "us": "America/New_York", "us-ma": "America/New_York", "us-nyc": "America/New_York",
         "us-wa": "America/Los_Angeles"}


def snapshot(jurisdiction: str, now: dt.datetime, *, dpd: int = 70, history: tuple[SentMessage, ...] = (),
             consent: bool = True) -> CaseSnapshot:
    family = jurisdiction.split("-")[0]
    zone = ZONES[jurisdiction]
    due = now.astimezone(ZoneInfo(zone)).date() - dt.timedelta(days=dpd)
    phone = PHONES[family]
    case = Case(
        case_id="P1", name="Pat Lee", jurisdiction=jurisdiction, locale="zh-CN" if family == "cn" else "en-US",
        currency="CNY" if family == "cn" else "USD", principal=Decimal("900.00"), interest=Decimal("80.00"),
        penalty=Decimal("20.00"), fees=Decimal("0"), amount_due=Decimal("1000.00"), due_date=due, phone=phone,
        email="debtor@example.com",
    )
    points = (ContactPoint(SMS, phone, consent), ContactPoint(EMAIL, "debtor@example.com", consent),
              ContactPoint(VOICE, phone, consent))
    return CaseSnapshot(case=case, contacts=points, history=history, zones=(zone,))


def sent(channel: Channel, at: dt.datetime, status: MessageStatus = MessageStatus.DELIVERED, *,
         answered_by: str | None = None, conversation: bool = False, template: str | None = None) -> SentMessage:
    return SentMessage(channel, at, status, None, template, conversation, None, answered_by)


def one_off(snap: CaseSnapshot, now: dt.datetime, channel: Channel):  # type: ignore[no-untyped-def]
    return GATE.decide_channel(snap, CATALOG, now, channel, apply_cadence=False)


def line(decisions: list, channel: Channel):  # type: ignore[no-untyped-def,type-arg]
    return next(d for d in decisions if d.channel is channel)


# -- the shipped set ----------------------------------------------------------------


def test_the_seven_profiles_are_shipped_with_their_sources() -> None:
    assert set(CONFIG.jurisdictions) == {"cn", "cn-bank", "cn-internet", "us", "us-ma", "us-wa", "us-nyc"}
    text = (ROOT / "config" / "dispatcher.toml").read_text(encoding="utf-8")
    for key, cited in {
        "cn-bank": "China Banking Association", "cn-internet": "GB/T 45251-2025", "us": "12 CFR 1006",
        "us-ma": "940 CMR 7.04", "us-wa": "RCW 19.16.250", "us-nyc": "DCWP",
    }.items():
        assert cited in CONFIG.jurisdictions[key].source
        block = text[text.index(f"[jurisdictions.{key}]") - 400 : text.index(f"[jurisdictions.{key}]")]
        assert "# Source:" in block and cited.split()[0] in block  # cited in a comment above the table


# -- Massachusetts: calls and texts together at most 2 in 7 days ---------------------


def test_ma_shared_cap_counts_a_one_off_sms_and_a_scheduled_call_together() -> None:
    now = dt.datetime(2026, 12, 10, 10, 0, tzinfo=NY)  # Thu: the SMS cadence (every 3 days) is due again
    history = (
        sent(SMS, dt.datetime(2026, 12, 7, 11, 0, tzinfo=NY)),  # a collector's one-off on Mon
        sent(VOICE, dt.datetime(2026, 12, 8, 11, 0, tzinfo=NY), MessageStatus.NO_ANSWER),  # scheduled, Tue
    )
    snap = snapshot("us-ma", now, history=history)
    plan = GATE.decide_case(snap, CATALOG, now)
    for channel in (SMS, VOICE):  # the planner's line and a one-off alike
        for d in (line(plan, channel), one_off(snap, now, channel)):
            assert d.action is Action.DEFER and d.reason is Reason.FREQUENCY_CAP, d
            assert "shared cap calls_and_texts (sms+voice), Massachusetts 940 CMR 7.04(1)(f)" in d.detail
            assert "2 sms/voice counted on 2026-12-04..2026-12-10 (at most 2 in 7 days" in d.detail
            # Monday's SMS leaves the window on the next Monday
            if d is not line(plan, VOICE):
                assert d.not_before == dt.datetime(2026, 12, 14, 8, 0, tzinfo=NY)
    # the plan defers its SMS to Monday, which fills the window again: its call waits a day more
    assert line(plan, VOICE).not_before == dt.datetime(2026, 12, 15, 8, 0, tzinfo=NY)
    # e-mail is not part of it
    assert one_off(snap, now, EMAIL).action is Action.SEND


def test_ma_one_counted_leaves_room_for_one_more_and_the_plan_counts_its_own_lines() -> None:
    now = dt.datetime(2026, 12, 9, 10, 0, tzinfo=NY)
    snap = snapshot("us-ma", now, history=(sent(EMAIL, dt.datetime(2026, 12, 8, 9, 0, tzinfo=NY)),
                                           sent(VOICE, dt.datetime(2026, 12, 4, 9, 0, tzinfo=NY),
                                                MessageStatus.NO_ANSWER)))
    assert one_off(snap, now, SMS).action is Action.SEND
    assert one_off(snap, now, VOICE).action is Action.SEND
    decisions = GATE.decide_case(snap, CATALOG, now)  # dpd60: sms, email, voice all due
    assert line(decisions, SMS).action is Action.SEND
    voice = line(decisions, VOICE)
    # the SMS this plan sends is the second of the 7 days: the call must wait
    assert voice.action is Action.DEFER and voice.reason is Reason.FREQUENCY_CAP
    assert "calls_and_texts" in voice.detail
    assert voice.not_before == dt.datetime(2026, 12, 11, 8, 0, tzinfo=NY)  # Friday's call leaves the window


def test_cancelled_and_failed_messages_do_not_count_for_a_shared_cap() -> None:
    now = dt.datetime(2026, 12, 9, 10, 0, tzinfo=NY)
    history = (sent(SMS, now - dt.timedelta(days=1), MessageStatus.CANCELLED),
               sent(VOICE, now - dt.timedelta(days=2), MessageStatus.FAILED),
               sent(SMS, now - dt.timedelta(days=3)))
    assert one_off(snapshot("us-ma", now, history=history), now, VOICE).action is Action.SEND


# -- Washington: 07:30 to 21:00, all contacts together at most 3 in 7 days -----------


def test_wa_opens_at_0730_local() -> None:
    early = dt.datetime(2026, 12, 9, 7, 29, tzinfo=LA)
    d = one_off(snapshot("us-wa", early), early, SMS)
    assert d.action is Action.DEFER and d.reason is Reason.OUTSIDE_HOURS
    assert d.not_before == dt.datetime(2026, 12, 9, 7, 30, tzinfo=LA)
    assert "outside the contact hours 07:30-21:00 (us-wa: Washington RCW 19.16.250)" in d.detail
    at = dt.datetime(2026, 12, 9, 7, 30, tzinfo=LA)
    assert one_off(snapshot("us-wa", at), at, SMS).action is Action.SEND
    late = dt.datetime(2026, 12, 9, 21, 0, tzinfo=LA)
    d = one_off(snapshot("us-wa", late), late, VOICE)
    assert d.reason is Reason.OUTSIDE_HOURS and d.not_before == dt.datetime(2026, 12, 10, 7, 30, tzinfo=LA)
    # the plain us profile still opens at 08:00 (every possible zone)
    assert one_off(snapshot("us", at.astimezone(NY)), at, SMS).action is Action.SEND  # 10:30 in New York


def test_wa_counts_email_sms_and_calls_together() -> None:
    now = dt.datetime(2026, 12, 9, 10, 0, tzinfo=LA)
    history = (sent(EMAIL, dt.datetime(2026, 12, 4, 9, 0, tzinfo=LA)),
               sent(SMS, dt.datetime(2026, 12, 6, 9, 0, tzinfo=LA)),
               sent(VOICE, dt.datetime(2026, 12, 8, 9, 0, tzinfo=LA), MessageStatus.BUSY))
    snap = snapshot("us-wa", now, history=history)
    for channel in Channel:
        d = one_off(snap, now, channel)
        assert d.action is Action.DEFER and d.reason is Reason.FREQUENCY_CAP
        assert "shared cap all_contacts (sms+email+voice), Washington RCW 19.16.250" in d.detail
        assert d.not_before == dt.datetime(2026, 12, 11, 7, 30, tzinfo=LA)  # the e-mail of 4 Dec drops out


# -- cn-bank: every day 08:00-22:00, at most 6 call attempts a day -------------------


def test_cn_bank_window_is_every_day_until_2200() -> None:
    sunday = dt.datetime(2026, 12, 6, 21, 59, tzinfo=SH)
    assert one_off(snapshot("cn-bank", sunday), sunday, SMS).action is Action.SEND  # weekends are allowed
    ten = dt.datetime(2026, 12, 6, 22, 0, tzinfo=SH)
    d = one_off(snapshot("cn-bank", ten), ten, SMS)
    assert d.action is Action.DEFER and d.reason is Reason.OUTSIDE_HOURS
    assert "08:00-22:00 (cn-bank: China Banking Association consumer-loan collection guideline (2026))" in d.detail
    assert d.not_before == dt.datetime(2026, 12, 7, 8, 0, tzinfo=SH)
    # the procedures' profile is closed on that Sunday and at 21:00
    assert one_off(snapshot("cn", sunday), sunday, SMS).reason is Reason.NON_WORKING_DAY
    national_day = dt.datetime(2026, 10, 1, 8, 0, tzinfo=SH)
    assert one_off(snapshot("cn-bank", national_day), national_day, SMS).action is Action.SEND


def test_cn_bank_six_attempts_a_day_answered_or_not() -> None:
    now = dt.datetime(2026, 12, 7, 15, 0, tzinfo=SH)
    five = tuple(sent(VOICE, now - dt.timedelta(hours=h), MessageStatus.NO_ANSWER) for h in range(1, 6))
    assert one_off(snapshot("cn-bank", now, history=five), now, VOICE).action is Action.SEND
    six = (*five, sent(VOICE, now - dt.timedelta(minutes=30), MessageStatus.BUSY))
    d = one_off(snapshot("cn-bank", now, history=six), now, VOICE)
    assert d.action is Action.DEFER and d.reason is Reason.FREQUENCY_CAP
    assert "6 call attempts already counted on 2026-12-07 (at most 6 a day)" in d.detail
    assert d.not_before == dt.datetime(2026, 12, 8, 8, 0, tzinfo=SH)


# -- cn-internet: at most 3 connected calls a day ------------------------------------


def test_cn_internet_counts_calls_answered_by_a_person_not_attempts() -> None:
    now = dt.datetime(2026, 12, 7, 15, 0, tzinfo=SH)
    h = lambda n: now - dt.timedelta(hours=n)  # noqa: E731
    unanswered = (sent(VOICE, h(1), MessageStatus.NO_ANSWER), sent(VOICE, h(2), MessageStatus.BUSY),
                  sent(VOICE, h(3), MessageStatus.COMPLETED, answered_by="machine_end_beep"),
                  sent(VOICE, h(4), MessageStatus.COMPLETED, answered_by="human"),
                  sent(VOICE, h(5), MessageStatus.COMPLETED, answered_by="human"))
    # 5 attempts, 2 answered by a person: one more is allowed
    assert one_off(snapshot("cn-internet", now, history=unanswered), now, VOICE).action is Action.SEND
    third = (*unanswered[1:], sent(VOICE, h(6), MessageStatus.COMPLETED))  # no AnsweredBy: a person, safe side
    d = one_off(snapshot("cn-internet", now, history=third), now, VOICE)
    assert d.action is Action.DEFER and d.reason is Reason.FREQUENCY_CAP
    assert "3 calls answered by a person (or still ringing) on 2026-12-07 (at most 3 connected calls a day" in d.detail
    assert d.detail.count("(cn-internet: GB/T 45251-2025)") == 1
    assert d.not_before == dt.datetime(2026, 12, 8, 8, 0, tzinfo=SH)
    # a call still ringing may yet be answered: it counts
    ringing = (*unanswered[1:], sent(VOICE, h(0), MessageStatus.RINGING))
    assert one_off(snapshot("cn-internet", now, history=ringing), now, VOICE).reason is Reason.FREQUENCY_CAP
    # and the attempts ceiling still holds on its own
    six = tuple(sent(VOICE, h(n), MessageStatus.NO_ANSWER) for n in range(1, 7))
    assert "6 call attempts" in one_off(snapshot("cn-internet", now, history=six), now, VOICE).detail


# -- us: none within 7 days after a conversation -------------------------------------


def test_us_quiet_week_after_a_conversation() -> None:
    talk = dt.datetime(2026, 12, 7, 11, 0, tzinfo=NY)
    history = (sent(VOICE, talk, MessageStatus.COMPLETED, answered_by="human", conversation=True),)
    for key in ("us", "us-ma", "us-wa", "us-nyc"):
        zone = ZoneInfo(ZONES[key])
        now = dt.datetime(2026, 12, 13, 12, 0, tzinfo=zone)
        d = one_off(snapshot(key, now, history=history), now, VOICE)
        assert d.action is Action.DEFER and d.reason is Reason.REST_PERIOD, key
        assert "conversation on 2026-12-07: no voice for 7 days through 2026-12-13" in d.detail
        assert d.not_before == dt.datetime(2026, 12, 14, 8 if key != "us-wa" else 7, 0 if key != "us-wa" else 30,
                                           tzinfo=zone)


# -- NYC: SMS and e-mail only with recorded consent ----------------------------------


def test_nyc_needs_recorded_consent_for_sms_and_email() -> None:
    now = dt.datetime(2026, 12, 9, 10, 0, tzinfo=NY)
    nyc = CONFIG.jurisdictions["us-nyc"].consent_default
    assert (nyc.sms, nyc.email) == (False, False)
    for channel in (SMS, EMAIL):
        d = one_off(snapshot("us-nyc", now, consent=False), now, channel)
        assert d.action is Action.SKIP and d.reason is Reason.NO_CONSENT
        assert f"no recorded consent to contact by {channel.value}: profile us-nyc needs the debtor's prior" in d.detail
        assert "New York City DCWP" in d.detail
        assert one_off(snapshot("us-nyc", now, consent=True), now, channel).action is Action.SEND
    # the plain us profile takes e-mail consent by default: the detail says only that it is missing
    d = one_off(snapshot("us", now, consent=False), now, EMAIL)
    assert d.reason is Reason.NO_CONSENT and d.detail.endswith("no consent to contact by email")


# -- configuration validation --------------------------------------------------------


def _load_with(tmp_path: Path, extra: str) -> str:
    text = (ROOT / "config" / "dispatcher.toml").read_text(encoding="utf-8")
    cut = text.index("[[stages]]")
    path = tmp_path / "dispatcher.toml"
    path.write_text(text[:cut] + extra + "\n" + text[cut:], encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


BASE = '''[jurisdictions.xx]
default_timezones = ["America/New_York"]
calendar = "US"
days = "all"
default_locale = "en-US"
default_currency = "USD"
default_region = "US"
'''


@pytest.mark.parametrize(("extra", "expected"), [
    (BASE + 'hours = ["7:30", "21:00"]', 'jurisdictions.xx.hours: hours must be two "HH:MM" times'),
    (BASE + 'hours = ["07:30", "24:00"]', 'hours must be two "HH:MM" times, e.g. ["07:30", "21:00"]; got'),
    (BASE + 'hours = ["21:00", "07:30"]', "the start must be before the end"),
    (BASE + 'hours = ["08:00"]', 'hours must be two "HH:MM" times, e.g. ["07:30", "21:00"]; got [\'08:00\']'),
    (BASE + 'hours = "08:00-21:00"', 'hours must be two "HH:MM" times'),
    (BASE + 'hours = [8, 21]', 'hours must be two "HH:MM" times'),
    (BASE + 'hours = ["08:00", "21:00"]\n[[jurisdictions.xx.shared_caps]]\nchannels = ["sms"]\nper_day = 1',
     "jurisdictions.xx.shared_caps.0.channels: List should have at least 2 items"),
    (BASE + 'hours = ["08:00", "21:00"]\n[[jurisdictions.xx.shared_caps]]\nchannels = ["sms", "fax"]\nper_day = 1',
     "jurisdictions.xx.shared_caps.0.channels.1: Input should be 'sms', 'email' or 'voice'"),
    (BASE + 'hours = ["08:00", "21:00"]\n[[jurisdictions.xx.shared_caps]]\nchannels = ["sms", "sms"]\nper_day = 1',
     "each channel once"),
    (BASE + 'hours = ["08:00", "21:00"]\n[[jurisdictions.xx.shared_caps]]\nchannels = ["sms", "voice"]',
     "a shared cap needs per_day or per_7_days"),
    (BASE + 'hours = ["08:00", "21:00"]\n[[jurisdictions.xx.shared_caps]]\nchannels = ["sms", "voice"]\n'
     "per_7_days = 0", "jurisdictions.xx.shared_caps.0.per_7_days: Input should be greater than or equal to 1"),
    (BASE + 'hours = ["08:00", "21:00"]\n[[jurisdictions.xx.shared_caps]]\nchannels = ["sms", "voice"]\n'
     "per_week = 2", "jurisdictions.xx.shared_caps.0.per_week: unknown key"),
    (BASE + 'hours = ["08:00", "21:00"]\n[[jurisdictions.xx.shared_caps]]\nchannels = ["sms", "voice"]\nper_day = 1'
     '\n[[jurisdictions.xx.shared_caps]]\nchannels = ["sms", "voice"]\nper_7_days = 2',
     "shared_caps: names must be unique (repeated: sms+voice)"),
    (BASE + 'hours = ["08:00", "21:00"]\n[jurisdictions.xx.caps.sms]\nconnected_per_day = 1\nper_day = 2',
     "caps.sms.connected_per_day: only voice calls are answered"),
    (BASE + 'hours = ["08:00", "21:00"]\n[jurisdictions.xx.caps.voice]\nconnected_per_day = 3\nper_day = 3',
     "connected_per_day = 3 never binds: per_day = 3"),
])
def test_bad_profile_values_are_clear_errors(tmp_path: Path, extra: str, expected: str) -> None:
    message = _load_with(tmp_path, extra)
    assert message.startswith(f"{tmp_path / 'dispatcher.toml'}: invalid configuration")
    assert expected in message, message
    assert "Traceback" not in message


# -- properties: the timeline the gate lets through keeps every profile's caps -------

OUTCOMES = {
    "human": (MessageStatus.COMPLETED, "human"),
    "machine": (MessageStatus.COMPLETED, "machine_end_beep"),
    "no-answer": (MessageStatus.NO_ANSWER, None),
    "busy": (MessageStatus.BUSY, None),
}


@st.composite
def attempts(draw: st.DrawFn, zone: str, days: int) -> list[tuple[dt.datetime, Channel, bool, str]]:
    """Sorted (instant, channel, one-off?, call outcome) within `days` local days."""
    start = dt.datetime(2026, 12, 7, 0, 0, tzinfo=ZoneInfo(zone))
    out = draw(st.lists(
        st.tuples(st.integers(0, days * 24 * 60 - 1), st.sampled_from(list(Channel)), st.booleans(),
                  st.sampled_from(sorted(OUTCOMES))),
        min_size=1, max_size=40,
    ))
    return sorted((start + dt.timedelta(minutes=m), ch, one, outcome) for m, ch, one, outcome in out)


def _simulate(jurisdiction: str, tries: list[tuple[dt.datetime, Channel, bool, str]]) -> list[SentMessage]:
    """Ask the gate at each try (a one-off, or the planner's line for the channel) and
    record what it lets through, as the sender would."""
    history: list[SentMessage] = []
    for at, channel, is_one_off, outcome in tries:
        snap = snapshot(jurisdiction, at, history=tuple(history))
        d = one_off(snap, at, channel) if is_one_off else line(GATE.decide_case(snap, CATALOG, at), channel)
        if d.action is Action.SEND:
            status, answered_by = OUTCOMES[outcome] if channel is VOICE else (MessageStatus.DELIVERED, None)
            history.append(sent(channel, at, status, answered_by=answered_by, template=d.template))
    return history


def _per_day(history: list[SentMessage], zone: str, which: Callable[[SentMessage], bool]) -> Counter[dt.date]:
    tz = ZoneInfo(zone)
    return Counter(m.at.astimezone(tz).date() for m in history if which(m))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["us-ma", "us-wa"]), st.data())
def test_shared_caps_hold_over_one_offs_and_scheduled_messages(jurisdiction: str, data: st.DataObject) -> None:
    zone = ZONES[jurisdiction]
    history = _simulate(jurisdiction, data.draw(attempts(zone, 21)))
    shared = CONFIG.jurisdictions[jurisdiction].shared_caps[0]
    days = _per_day(history, zone, lambda m: m.channel in shared.channels)
    assert shared.per_7_days is not None
    fullest = 0
    for day in days:
        window = sum(days[day - dt.timedelta(days=k)] for k in range(7))
        assert window <= shared.per_7_days, (day, history)
        fullest = max(fullest, window)
    event(f"{jurisdiction}: fullest 7 days {fullest} of {shared.per_7_days}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_connected_calls_and_attempts_are_capped_apart(data: st.DataObject) -> None:
    zone = ZONES["cn-internet"]
    tries = [(at, VOICE, True, outcome) for at, _, _, outcome in data.draw(attempts(zone, 3))]
    history = _simulate("cn-internet", tries)
    caps = CONFIG.jurisdictions["cn-internet"].caps_for(VOICE)
    assert caps.connected_per_day is not None
    tried = _per_day(history, zone, lambda m: True)
    answered = _per_day(history, zone, lambda m: m.answered_by == "human")
    assert all(n <= caps.per_day for n in tried.values())
    assert all(n <= caps.connected_per_day for n in answered.values())
    # a refused call was refused by a cap that really was full
    tz = ZoneInfo(zone)
    for at, _, _, _ in tries:
        if any(m.at == at for m in history):
            continue
        local = at.astimezone(tz)
        if not dt.time(8) <= local.time() < dt.time(22):
            continue
        day = local.date()
        before = [m for m in history if m.at < at and m.at.astimezone(tz).date() == day]
        assert len(before) >= caps.per_day or sum(m.answered_by == "human" for m in before) >= caps.connected_per_day
