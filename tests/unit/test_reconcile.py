"""The reconcile decision (`channels.reconcile.decide`): examples, then a property over
clock skews of -10..+10 minutes and phone numbers shared between cases."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.channels.reconcile import (
    TOLERANCE,
    Attempt,
    ClockSkew,
    Evidence,
    LedgerView,
    Outcome,
    ProviderRecord,
    candidates,
    decide,
)
from dispatcher.domain import Channel

TO = "+8613800000001"
FROM = "+15005550006"
BODY = "Reminder: 10,270.00 due. Pay: https://pay.example/p/abc Reply STOP to opt out."
#: the attempt's stamp, on our clock
STAMP = dt.datetime(2026, 12, 7, 2, 0, 0, 250000, tzinfo=dt.UTC)


def sms_attempt(**kw: object) -> Attempt:
    fields: dict[str, object] = {"message_id": 1, "channel": Channel.SMS, "to": TO, "stamped_at": STAMP,
                                 "body": BODY, "sender": FROM}
    return Attempt(**{**fields, **kw})  # type: ignore[arg-type]


def record(sid: str, created: dt.datetime, *, body: str | None = BODY, to: str = TO, sender: str | None = FROM,
           service: str | None = None, dated: bool = True) -> ProviderRecord:
    return ProviderRecord(sid=sid, to=to, sender=sender, service=service, body=body,
                          created=created.replace(microsecond=0), dated=dated, status="delivered")


def skew(seconds: float) -> ClockSkew:
    return ClockSkew(seconds - 0.5, seconds + 0.5)


# -- the skew measurement --------------------------------------------------------------


def test_the_date_header_bounds_the_skew_by_the_round_trip_and_its_second() -> None:
    sent = dt.datetime(2026, 12, 7, 2, 0, 0, tzinfo=dt.UTC)
    received = sent + dt.timedelta(milliseconds=300)
    provider = sent + dt.timedelta(minutes=3)  # the provider's clock is 3 minutes ahead
    measured = ClockSkew.measure(provider.replace(microsecond=0), sent, received)
    assert measured.low <= 180 <= measured.high
    assert measured.high - measured.low == pytest.approx(1.3)
    assert measured.earliest_on_provider(sent) == sent + dt.timedelta(seconds=measured.low)


# -- examples ----------------------------------------------------------------------------


def test_a_provider_three_minutes_behind_still_finds_the_message() -> None:
    """The issue's duplicate: our clock 3 minutes ahead; the record's date is 3 minutes
    before our stamp. Measured skew puts it after the attempt on the provider's clock."""
    ours = record("SM-ours", STAMP - dt.timedelta(minutes=3) + dt.timedelta(seconds=1))
    verdict = decide(sms_attempt(), Evidence([ours], True, skew(-180)))
    assert (verdict.outcome, verdict.sid) == (Outcome.FOUND, "SM-ours")


def test_a_record_created_before_the_attempt_on_the_providers_clock_is_not_ours() -> None:
    older = record("SM-older", STAMP + dt.timedelta(minutes=3) - TOLERANCE - dt.timedelta(seconds=2))
    verdict = decide(sms_attempt(), Evidence([older], True, skew(180)))
    assert verdict.outcome is Outcome.ABSENT


def test_a_record_without_a_date_sent_counts_like_any_other() -> None:
    queued = record("SM-queued", STAMP, dated=False)
    assert decide(sms_attempt(), Evidence([queued], True, skew(0))).sid == "SM-queued"


def test_our_webhook_named_sid_wins_even_if_the_list_does_not_show_it() -> None:
    verdict = decide(sms_attempt(), Evidence([], False, None, LedgerView(own_sid="SM-learned")))
    assert (verdict.outcome, verdict.sid, verdict.record) == (Outcome.FOUND, "SM-learned", None)


def test_a_record_another_message_owns_is_never_taken() -> None:
    theirs = record("SM-theirs", STAMP + dt.timedelta(seconds=2))
    ledger = LedgerView(owners={"SM-theirs": 2})
    assert decide(sms_attempt(), Evidence([theirs], True, skew(0), ledger)).outcome is Outcome.ABSENT
    assert decide(sms_attempt(), Evidence([theirs], False, skew(0), ledger)).outcome is Outcome.UNKNOWN


def test_a_shared_number_with_a_rival_of_unknown_sid_is_unknown_not_found() -> None:
    """Two cases, one phone: a call of the other case with no SID on record could be
    the record we see, so we must not take it."""
    call = record("CA-1", STAMP + dt.timedelta(seconds=1), body=None)
    attempt = sms_attempt(channel=Channel.VOICE, body=None)
    verdict = decide(attempt, Evidence([call], True, skew(0), LedgerView(rivals=1)))
    assert verdict.outcome is Outcome.UNKNOWN and "other message" in verdict.reason
    assert decide(attempt, Evidence([call], True, skew(0), LedgerView())).sid == "CA-1"


def test_incomplete_evidence_or_no_clock_is_unknown_never_absent() -> None:
    assert decide(sms_attempt(), Evidence([], False, skew(0))).outcome is Outcome.UNKNOWN
    assert decide(sms_attempt(), Evidence([], True, None)).outcome is Outcome.UNKNOWN
    assert decide(sms_attempt(), Evidence([], True, skew(0))).outcome is Outcome.ABSENT


def test_features_must_all_match() -> None:
    at = STAMP + dt.timedelta(seconds=1)
    others = [record("a", at, body=BODY + "!"), record("b", at, to="+8613800000002"), record("c", at, sender="+1999")]
    assert candidates(sms_attempt(), others, skew(0)) == []
    service = sms_attempt(sender=None, service="MG1")
    assert [r.sid for r in candidates(service, [record("d", at, sender="+1777", service="MG1")], skew(0))] == ["d"]
    # the sender unknown (a stale row): any sender
    assert [r.sid for r in candidates(sms_attempt(sender=None), others[2:], skew(0))] == ["c"]


def test_two_matching_records_of_our_own_take_the_earliest_and_say_so() -> None:
    first, second = record("SM-1", STAMP + dt.timedelta(seconds=1)), record("SM-2", STAMP + dt.timedelta(seconds=9))
    verdict = decide(sms_attempt(), Evidence([second, first], True, skew(0)))
    assert verdict.sid == "SM-1" and "2 records" in verdict.reason


# -- the property ------------------------------------------------------------------------


@dataclass(frozen=True)
class Other:
    """Another case's message to the same number."""

    message_id: int
    same_body: bool
    has_record: bool
    offset_s: int  # its record's creation, from our attempt's start, on the provider's clock
    dated: bool
    sid_known: bool


@dataclass(frozen=True)
class World:
    channel: Channel
    true_skew: float
    error_low: float
    error_high: float
    ours_exists: bool
    ours_delay_s: float
    ours_dated: bool
    own_sid_known: bool
    others: tuple[Other, ...]
    complete: bool
    dropped: frozenset[int]  # indexes of records a cut-short walk did not see


others_st = st.builds(
    Other,
    message_id=st.integers(2, 50),
    same_body=st.booleans(),
    has_record=st.booleans(),
    offset_s=st.integers(-3600, 3600),
    dated=st.booleans(),
    sid_known=st.booleans(),
)

worlds = st.builds(
    World,
    channel=st.sampled_from([Channel.SMS, Channel.VOICE]),
    true_skew=st.floats(-600, 600),
    error_low=st.floats(0, 2),
    error_high=st.floats(0, 2),
    ours_exists=st.booleans(),
    ours_delay_s=st.floats(0, 30),
    ours_dated=st.booleans(),
    own_sid_known=st.booleans(),
    others=st.lists(others_st, max_size=5, unique_by=lambda o: o.message_id).map(tuple),
    complete=st.booleans(),
    dropped=st.frozensets(st.integers(0, 6)),
)


def build(world: World) -> tuple[Attempt, Evidence]:
    """The provider's records as the walks saw them, and our ledger's view."""
    voice = world.channel is Channel.VOICE
    attempt = sms_attempt(channel=world.channel, body=None if voice else BODY)
    on_provider = STAMP + dt.timedelta(seconds=world.true_skew)  # our stamp, on the provider's clock
    records: list[ProviderRecord] = []
    if world.ours_exists:
        records.append(record("OURS", on_provider + dt.timedelta(seconds=world.ours_delay_s),
                              body=None if voice else BODY, dated=world.ours_dated))
    for other in world.others:
        if other.has_record:
            body = None if voice else (BODY if other.same_body else f"{BODY} case {other.message_id}")
            records.append(record(f"OTHER-{other.message_id}", on_provider + dt.timedelta(seconds=other.offset_s),
                                  body=body, dated=other.dated))
    if not world.complete:  # a walk cut short: some records (any) were not seen
        records = [r for i, r in enumerate(records) if i not in world.dropped]
    ledger = LedgerView(
        own_sid="OURS" if world.ours_exists and world.own_sid_known else None,
        owners={f"OTHER-{o.message_id}": o.message_id for o in world.others if o.has_record and o.sid_known},
        rivals=sum(1 for o in world.others if not o.sid_known and (voice or o.same_body)),
    )
    measured = ClockSkew(world.true_skew - world.error_low, world.true_skew + world.error_high)
    return attempt, Evidence(records, world.complete, measured, ledger)


@settings(max_examples=3000, deadline=None)
@given(worlds)
def test_never_another_messages_record_never_absent_when_sent_found_when_evident(world: World) -> None:
    attempt, evidence = build(world)
    verdict = decide(attempt, evidence)
    ours_seen = any(r.sid == "OURS" for r in evidence.records)

    # Never another case's (or anyone else's) record.
    if verdict.outcome is Outcome.FOUND:
        assert world.ours_exists and verdict.sid == "OURS", verdict
    # "Absent" only when nothing was sent: a sent message we cannot see is "unknown".
    if verdict.outcome is Outcome.ABSENT:
        assert not world.ours_exists, verdict
    # Found whenever the evidence shows it and nothing else could own what we see.
    if world.ours_exists and (world.own_sid_known or (ours_seen and evidence.ledger.rivals == 0)):
        assert (verdict.outcome, verdict.sid) == (Outcome.FOUND, "OURS"), verdict
    # Absent whenever nothing was sent, the walks were complete and nothing else could look like it.
    if not world.ours_exists and world.complete and evidence.ledger.rivals == 0:
        assert verdict.outcome is Outcome.ABSENT, verdict


def test_the_property_model_covers_shared_numbers_and_skews() -> None:
    """Sanity of the model itself: a shared number's record of unknown owner within the
    window makes the verdict unknown, at the edges of the skew range."""
    for seconds in (-600.0, 600.0):
        world = World(Channel.VOICE, seconds, 1, 1, False, 0, True, False,
                      (Other(2, True, True, 5, True, False),), True, frozenset())
        attempt, evidence = build(world)
        assert decide(attempt, evidence).outcome is Outcome.UNKNOWN
        attempt, evidence = build(replace(world, others=(replace(world.others[0], sid_known=True),)))
        assert decide(attempt, evidence).outcome is Outcome.ABSENT
