"""`Gate.decide_requested`: a message the debtor asked for on a call (the IVR's payment or
self-service link) passes the one-off gate without stage, cadence or stage templates:
a closed case, holds that stop contact, the contact's address, consent and opt-out, the
contact window refuse it; the caps, a promise to pay or a payment claim do not."""

from __future__ import annotations

import datetime as dt

import pytest
from test_policy_decide import CATALOG, GATE, SMS, VOICE, contacts, make_case, sent, sh, snap

from dispatcher.domain import HOLD_REASONS, Action, CaseStatus, ContactPoint, Hold, MessageStatus, Reason
from dispatcher.policy.evaluate import REQUESTED_DESPITE

LINK = "sms/replies/payment_link"
DUE = dt.date(2026, 10, 8)  # DPD 60 on Mon 2026-12-07
NOW = sh(2026, 12, 7, 15)  # a working day, 15:00 in Shanghai


def test_a_requested_link_is_sent_without_stage_cadence_or_stage_template() -> None:
    d = GATE.decide_requested(snap(make_case(DUE)), NOW, SMS, LINK)
    assert (d.action, d.reason, d.template, d.stage) == (Action.SEND, Reason.DUE, LINK, "dpd60")
    assert "asked for by the debtor" in d.detail
    # not overdue yet (no stage): asking for a link is no reason to refuse it
    d = GATE.decide_requested(snap(make_case(dt.date(2026, 12, 20))), NOW, SMS, LINK)
    assert (d.action, d.stage) == (Action.SEND, None)


def test_a_closed_case_gets_nothing() -> None:
    d = GATE.decide_requested(snap(make_case(DUE, status=CaseStatus.PAID)), NOW, SMS, LINK)
    assert (d.action, d.reason) == (Action.SKIP, Reason.CASE_CLOSED)


@pytest.mark.parametrize("hold", HOLD_REASONS)
def test_holds(hold: Reason) -> None:
    d = GATE.decide_requested(snap(make_case(DUE), holds=(Hold(hold),)), NOW, SMS, LINK)
    if hold in REQUESTED_DESPITE:  # the debtor means to pay: the link helps
        assert d.action is Action.SEND
    else:
        assert (d.action, d.reason) == (Action.SKIP, hold)
    # a hold that stops contact wins over one that does not
    both = snap(make_case(DUE), holds=(Hold(Reason.PROMISE_TO_PAY), Hold(Reason.DISPUTE_HOLD)))
    assert GATE.decide_requested(both, NOW, SMS, LINK).reason is Reason.DISPUTE_HOLD


@pytest.mark.parametrize(("point", "reason"), [
    (ContactPoint(SMS, "+8613812345678", consent=True, opted_out=True), Reason.OPTED_OUT),
    (ContactPoint(SMS, "+8613812345678", consent=True, invalid=True), Reason.INVALID_ADDRESS),
    (None, Reason.NO_CONTACT),
])
def test_the_sms_contact_must_allow_it(point: ContactPoint | None, reason: Reason) -> None:
    d = GATE.decide_requested(snap(make_case(DUE), points=contacts(sms=point)), NOW, SMS, LINK)
    assert (d.action, d.reason) == (Action.SKIP, reason)


def test_no_recorded_consent_where_the_profile_needs_it() -> None:
    case = make_case(DUE, jurisdiction="us-nyc", locale="en-US", currency="USD", phone="+12125550100")
    points = contacts(phone="+12125550100", sms=ContactPoint(SMS, "+12125550100", consent=False))
    d = GATE.decide_requested(snap(case, points=points), dt.datetime(2026, 12, 7, 15, tzinfo=dt.UTC), SMS, LINK)
    assert (d.action, d.reason) == (Action.SKIP, Reason.NO_CONSENT)


def test_outside_the_window_it_is_not_sent_now() -> None:
    d = GATE.decide_requested(snap(make_case(DUE)), sh(2026, 12, 7, 21, 5), SMS, LINK)
    assert (d.action, d.reason) == (Action.DEFER, Reason.OUTSIDE_HOURS)


def test_the_caps_do_not_apply() -> None:
    """Caps limit the contacts we start; a reply the debtor asks for counts for none
    (the snapshot leaves system replies out) and is limited by none."""
    # cn: one SMS a day (the default cap); this morning's reminder used it
    d = GATE.decide_requested(snap(make_case(DUE), history=(sent(SMS, sh(2026, 12, 7, 9)),)), NOW, SMS, LINK)
    assert d.action is Action.SEND and "caps limit what we send, not what the debtor asks for" in d.detail
    # us-ma: calls and texts together at most 2 in 7 days; two calls this week
    case = make_case(DUE, jurisdiction="us-ma", locale="en-US", currency="USD", phone="+16175550100")
    boston = dt.datetime(2026, 12, 7, 20, tzinfo=dt.UTC)  # 15:00 in Boston
    calls = (sent(VOICE, boston - dt.timedelta(days=3), status=MessageStatus.COMPLETED),
             sent(VOICE, boston - dt.timedelta(minutes=5), status=MessageStatus.COMPLETED))
    history = snap(case, points=contacts(phone="+16175550100"), history=calls)
    assert GATE.decide_channel(history, CATALOG, boston, SMS, apply_cadence=False).reason is Reason.FREQUENCY_CAP
    assert GATE.decide_requested(history, boston, SMS, LINK).action is Action.SEND
    # outside the window, a deferral names the time rule only
    d = GATE.decide_requested(snap(make_case(DUE), history=(sent(SMS, sh(2026, 12, 7, 9)),)), sh(2026, 12, 7, 22),
                              SMS, LINK)
    assert (d.action, d.reason) == (Action.DEFER, Reason.OUTSIDE_HOURS) and "sms already counted" not in d.detail
