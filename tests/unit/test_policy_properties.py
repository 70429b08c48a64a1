"""Property tests of the decision core against independent, naive oracles.

For random cases (cn/us, due dates, zones, holds, contacts), random histories and random
instants in 2026-2027:
- every `send` happens at an instant that is legal (wall clock + `holidays` directly, in
  every zone) and that no cap forbids (caps recomputed naively from the history);
- every `not_before` is legal, caps-satisfying, later than now, in the primary zone, and
  the earliest such instant at one-second resolution;
- decisions are deterministic and inputs are not mutated.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
from collections import Counter
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dispatcher.config import Jurisdiction, load_config
from dispatcher.domain import (
    CLOSED_STATUSES,
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
from dispatcher.policy import Gate, resolve_zones

CONFIG = load_config(Path(__file__).resolve().parents[2] / "config" / "dispatcher.toml")
STAGES = [s.name for s in CONFIG.stages]
CATALOG = {
    (ch, stage.name, locale): [f"{ch.value}/{stage.name}/v{i}" for i in range(1, 4)]
    for stage in CONFIG.stages
    for ch in stage.channels
    for locale in ("zh-CN", "en-US")
}
#: one gate for the whole module, as in a long-running process: its caches are warm
GATE = Gate(CONFIG)
US_ALL = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
#: zones and phones per profile family (`cn-bank` is of the `cn` family)
ZONE_SETS = {
    "cn": [(), ("Asia/Shanghai",), ("Asia/Shanghai", "Asia/Tokyo"), ("Asia/Urumqi",)],
    "us": [
        (),
        ("America/Los_Angeles",),
        ("America/New_York",),
        US_ALL,
        ("Pacific/Honolulu",),
        ("America/Phoenix", "America/Denver"),
    ],
}
PHONES = {"cn": ["+8613812345678"], "us": ["+13105550100", "+12125550100", "+18005550100"]}
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- oracles -----------------------------------------------------------------------


@functools.cache
def _country(code: str, year: int) -> holidays.HolidayBase:
    return holidays.country_holidays(code, years=year)


def oracle_legal(instant: dt.datetime, zones: tuple[str, ...], profile: Jurisdiction) -> bool:
    for zone in zones:
        local = instant.astimezone(ZoneInfo(zone))
        if profile.days == "working" and not _country(profile.calendar, local.year).is_working_day(local.date()):
            return False
        if not profile.hours[0] <= local.time() < profile.hours[1]:
            return False
    return True


def oracle_caps_ok(
    history: tuple[SentMessage, ...], channel: Channel, profile: Jurisdiction, zone: str, instant: dt.datetime
) -> bool:
    caps = profile.caps_for(channel)
    tz = ZoneInfo(zone)
    day = instant.astimezone(tz).date()
    counted = [
        m for m in history if m.channel == channel and m.status not in (MessageStatus.CANCELLED, MessageStatus.FAILED)
    ]
    per_day = Counter(m.at.astimezone(tz).date() for m in counted)
    one = dt.timedelta(days=1)
    if per_day[day] >= caps.per_day:
        return False
    if caps.per_7_days is not None and sum(per_day[day - k * one] for k in range(7)) >= caps.per_7_days:
        return False
    if caps.max_consecutive_days is not None and caps.rest_days is not None:
        for r in range(1, caps.rest_days + 1):
            end = day - r * one
            if all(per_day[end - k * one] > 0 for k in range(caps.max_consecutive_days)):
                return False
    if caps.after_conversation_days is not None:
        for m in counted:
            if m.conversation:
                c = m.at.astimezone(tz).date()
                if c <= day <= c + (caps.after_conversation_days - 1) * one:
                    return False
    if caps.connected_per_day is not None:
        answered = sum(1 for m in counted if oracle_connected(m) and m.at.astimezone(tz).date() == day)
        if answered >= caps.connected_per_day:
            return False
    for shared in profile.shared_caps:
        if channel not in shared.channels:
            continue
        together = Counter(
            m.at.astimezone(tz).date() for m in history
            if m.channel in shared.channels and m.status not in (MessageStatus.CANCELLED, MessageStatus.FAILED)
        )
        if shared.per_day is not None and together[day] >= shared.per_day:
            return False
        if shared.per_7_days is not None and sum(together[day - k * one] for k in range(7)) >= shared.per_7_days:
            return False
    return True


def oracle_connected(m: SentMessage) -> bool:
    """A call answered by a person (AnsweredBy not a machine or fax), or one that may yet be."""
    if m.channel is not Channel.VOICE:
        return False
    if m.conversation or m.status in (MessageStatus.SENDING, MessageStatus.SENT, MessageStatus.RINGING):
        return True
    machine = (m.answered_by or "").startswith("machine") or m.answered_by == "fax"
    return m.status in (MessageStatus.IN_PROGRESS, MessageStatus.COMPLETED) and not machine


# -- strategies --------------------------------------------------------------------

NOW = st.datetimes(
    min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2027, 12, 31, 23, 59), timezones=st.just(dt.UTC)
)
likely = st.sampled_from([True, True, True, True, False])
unlikely = st.sampled_from([False, False, False, False, True])


@st.composite
def contact_points(draw: st.DrawFn, phone: str) -> tuple[ContactPoint, ...]:
    points = []
    clean = draw(st.booleans())  # half the cases can be reached on every channel
    for ch in Channel:
        if clean:
            points.append(ContactPoint(ch, phone if ch is not Channel.EMAIL else "debtor@example.com", consent=True))
            continue
        if not draw(likely):
            continue
        address = (phone if ch is not Channel.EMAIL else "debtor@example.com") if draw(likely) else None
        points.append(ContactPoint(ch, address, consent=draw(likely), opted_out=draw(unlikely), invalid=draw(unlikely)))
    return tuple(points)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[CaseSnapshot, dt.datetime]:
    now = draw(NOW)
    jurisdiction = draw(st.sampled_from(sorted(CONFIG.jurisdictions)))
    family = jurisdiction.split("-")[0]
    if draw(st.booleans()):  # half the instants during the local day, where caps matter
        home = ZoneInfo("Asia/Shanghai" if family == "cn" else "America/New_York")
        local = now.astimezone(home)
        minute = draw(st.integers(10 * 60, 19 * 60 + 59))
        now = local.replace(hour=minute // 60, minute=minute % 60).astimezone(dt.UTC)
    phone = draw(st.sampled_from(PHONES[family]))
    due = now.date() - dt.timedelta(days=draw(st.integers(-10, 150)))
    case = Case(
        case_id=draw(st.sampled_from(["C1", "C2", "case-x"])), name="Pat Lee", jurisdiction=jurisdiction,
        locale=draw(st.sampled_from(["zh-CN", "en-US"])), currency="CNY",
        principal=Decimal("100.00"), interest=Decimal("1.00"), penalty=Decimal("0.50"), fees=Decimal("0"),
        amount_due=Decimal("101.50"), due_date=due, phone=phone,
        status=draw(st.sampled_from([CaseStatus.ACTIVE] * 8 + [CaseStatus.PAID])),
    )
    holds = tuple(
        Hold(reason, None if hours is None else now + dt.timedelta(hours=hours))
        for reason, hours in draw(
            st.lists(st.tuples(st.sampled_from(HOLD_REASONS), st.none() | st.integers(-72, 72)), max_size=2)
        )
    )
    if draw(likely):
        holds = ()
    history = tuple(
        SentMessage(
            channel=ch,
            at=now + dt.timedelta(minutes=minutes),
            status=status,
            stage=stage,
            template=None if variant is None else f"{ch.value}/{stage or 'dpd60'}/v{variant}",
            conversation=conversation,
            answered_by=answered_by if ch is Channel.VOICE else None,
        )
        for ch, minutes, status, stage, variant, conversation, answered_by in draw(
            st.lists(
                st.tuples(
                    st.sampled_from([Channel.VOICE, Channel.VOICE, Channel.SMS, Channel.EMAIL]),
                    st.integers(-12 * 24 * 60, 24 * 60),
                    st.sampled_from(list(MessageStatus)),
                    st.sampled_from([*STAGES, None]),
                    st.none() | st.integers(1, 3),
                    unlikely,
                    st.sampled_from([None, "human", "human", "machine_end_beep", "fax"]),
                ),
                max_size=8,
            )
        )
    )
    # a run of daily calls ending a few days ago: exercises rests and 7-day windows
    run_end = draw(st.sampled_from([0, 1, 1, 2, 3]))
    run_length = draw(st.sampled_from([0, 2, 3, 3, 4, 6, 7]))
    history += tuple(
        SentMessage(
            channel=Channel.VOICE,
            at=now - dt.timedelta(days=run_end + k, minutes=draw(st.integers(0, 600))),
            status=draw(st.sampled_from([MessageStatus.COMPLETED, MessageStatus.NO_ANSWER])),
            stage=None,
            conversation=draw(unlikely),
            answered_by=draw(st.sampled_from([None, "human", "machine_end_beep"])),
        )
        for k in range(run_length)
    )
    snapshot = CaseSnapshot(
        case=case,
        contacts=draw(contact_points(phone)),
        holds=holds,
        history=history,
        escalated_stages=draw(st.sampled_from([frozenset(), frozenset({"dpd90"})])),
        zones=draw(st.sampled_from(ZONE_SETS[family])),
    )
    return snapshot, now


# -- checks ------------------------------------------------------------------------


def check_decision(d: Decision, snapshot: CaseSnapshot, now: dt.datetime) -> None:
    profile = CONFIG.jurisdictions[snapshot.case.jurisdiction]
    zones = snapshot.zones or resolve_zones(snapshot.case, profile)
    primary = zones[0]
    case_blocked = snapshot.case.status in CLOSED_STATUSES or any(h.active_at(now) for h in snapshot.holds)
    assert d.case_id == snapshot.case.case_id
    assert d.detail
    if d.action is Action.SEND:
        assert d.channel is not None and d.reason is Reason.DUE and d.template is not None
        assert not case_blocked
        assert oracle_legal(now, zones, profile)
        assert oracle_caps_ok(snapshot.history, d.channel, profile, primary, now)
        assert d.not_before is None
    elif d.action is Action.DEFER:
        assert d.channel is not None and d.template is not None and d.not_before is not None
        assert not case_blocked
        nb = d.not_before
        assert nb > now
        assert oracle_legal(nb, zones, profile)
        assert oracle_caps_ok(snapshot.history, d.channel, profile, primary, nb)
        # expressed in the primary zone
        assert nb.utcoffset() == nb.astimezone(ZoneInfo(primary)).utcoffset()
        assert str(nb.tzinfo) == primary
        # and the earliest such instant
        before = nb - dt.timedelta(seconds=1)
        if before > now:
            assert not (
                oracle_legal(before, zones, profile)
                and oracle_caps_ok(snapshot.history, d.channel, profile, primary, before)
            )
        if d.reason in (Reason.NON_WORKING_DAY, Reason.OUTSIDE_HOURS):
            assert not oracle_legal(now, zones, profile)
        else:
            assert d.reason in (Reason.FREQUENCY_CAP, Reason.REST_PERIOD)
            assert oracle_legal(now, zones, profile)
            assert not oracle_caps_ok(snapshot.history, d.channel, profile, primary, now)
    elif d.action is Action.ESCALATE:
        assert not case_blocked and d.channel is None and d.reason is Reason.LEGAL_HANDOFF
    else:
        assert d.template is None and d.not_before is None


@SETTINGS
@given(scenarios())
def test_decide_case_sends_and_defers_only_to_legal_moments(scenario: tuple[CaseSnapshot, dt.datetime]) -> None:
    snapshot, now = scenario
    snapshot_before = copy.deepcopy(snapshot)
    catalog_before = copy.deepcopy(CATALOG)
    config_before = CONFIG.model_dump()

    first = GATE.decide_case(snapshot, CATALOG, now)
    again = GATE.decide_case(snapshot, CATALOG, now)
    assert first == again
    # a fresh gate (cold caches) decides what the long-lived one does
    assert Gate(CONFIG).decide_case(snapshot, CATALOG, now) == first
    # the same instant in another offset decides the same
    assert GATE.decide_case(snapshot, CATALOG, now.astimezone(ZoneInfo("Asia/Tokyo"))) == first

    assert snapshot == snapshot_before
    assert catalog_before == CATALOG
    assert CONFIG.model_dump() == config_before

    stage_lines = [d for d in first if d.action is not Action.ESCALATE]
    assert len({d.channel for d in stage_lines}) == len(stage_lines)
    assert sum(d.action is Action.ESCALATE for d in first) <= 1
    planned: tuple[SentMessage, ...] = ()
    for d in first:
        event(f"{snapshot.case.jurisdiction} {d.action.value}:{d.reason.value}")
        # the lines decided before this one count as messages (a shared cap spans channels)
        check_decision(d, replace(snapshot, history=snapshot.history + planned), now)
        if d.channel is not None and d.action in (Action.SEND, Action.DEFER):
            planned += (SentMessage(d.channel, d.not_before or now, MessageStatus.QUEUED),)


@SETTINGS
@given(scenarios(), st.sampled_from(list(Channel)))
def test_one_off_gate_sends_and_defers_only_to_legal_moments(
    scenario: tuple[CaseSnapshot, dt.datetime], channel: Channel
) -> None:
    snapshot, now = scenario
    d = GATE.decide_channel(snapshot, CATALOG, now, channel, apply_cadence=False)
    assert d == GATE.decide_channel(snapshot, CATALOG, now, channel, apply_cadence=False)
    assert d == Gate(CONFIG).decide_channel(snapshot, CATALOG, now, channel, apply_cadence=False)
    assert d.channel is channel
    assert d.reason is not Reason.NOT_DUE
    event(f"{snapshot.case.jurisdiction} {d.action.value}:{d.reason.value}")
    check_decision(d, snapshot, now)
