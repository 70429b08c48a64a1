"""Repayment plans in the policy core: schedules, payments applied in order, kept /
broken / completed, the `repayment_plan` case reason (after the holds), instalment
reminders, and collection resuming at the case's own stage once a plan is broken."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from test_policy_decide import CATALOG, CONFIG, make_case, sh, snap

from dispatcher.config import PlanOffer
from dispatcher.domain import Action, Channel, Hold, Instalment, Reason, RepaymentPlan
from dispatcher.policy import Gate
from dispatcher.policy.plans import (
    PlanStatus,
    apply_payments,
    eligible_offers,
    offer_open,
    plan_standing,
    plan_terms,
    reminder_due,
    schedule,
    split_amount,
)

OFFER = PlanOffer(name="three", instalments=3, every_days=30, min_instalment=Decimal("100.00"),
                  waive_penalty=True, stages=["early", "dpd30", "dpd60"])
SS = CONFIG.self_service.model_copy(update={"plans": [OFFER], "plan_grace_days": 3, "plan_reminder_days": [3, 0]})
GATE = Gate(CONFIG.model_copy(update={"self_service": SS}))
PLAN_CATALOG = {**CATALOG, **{(ch, "plan", loc): [f"{ch.value}/plan/v1"]
                              for ch in (Channel.SMS, Channel.EMAIL) for loc in ("zh-CN", "en-US")}}
cents = st.integers(min_value=0, max_value=10**9).map(lambda n: Decimal(n) / 100)


def _plan(accepted: dt.date, total: Decimal = Decimal("980.00"), paid_at_start: Decimal = Decimal("0.00"),
          ) -> RepaymentPlan:
    return RepaymentPlan(7, "three", accepted, schedule(OFFER, total, accepted), paid_at_start, Decimal("20.00"))


# -- schedules and payments --------------------------------------------------------------


def test_schedule_splits_the_total_in_cents_first_instalments_carry_the_remainder() -> None:
    plan = schedule(OFFER, Decimal("100.00"), dt.date(2026, 12, 7))
    assert [i.amount for i in plan] == [Decimal("33.34"), Decimal("33.33"), Decimal("33.33")]
    assert [i.due for i in plan] == [dt.date(2027, 1, 6), dt.date(2027, 2, 5), dt.date(2027, 3, 7)]
    assert [i.number for i in plan] == [1, 2, 3]


@given(cents, st.integers(min_value=1, max_value=24))
def test_split_sums_exactly_and_differs_by_at_most_a_cent(total: Decimal, count: int) -> None:
    parts = split_amount(total, count)
    assert sum(parts, Decimal("0")) == total
    assert max(parts) - min(parts) <= Decimal("0.01")
    assert list(parts) == sorted(parts, reverse=True)


@given(cents, cents)
def test_payments_apply_to_instalments_in_order(total: Decimal, paid: Decimal) -> None:
    standings = apply_payments(schedule(OFFER, total, dt.date(2026, 1, 1)), paid)
    assert sum((s.paid for s in standings), Decimal("0")) == min(paid, total)
    # in order: an instalment gets money only when every earlier one is settled
    for earlier, later in zip(standings, standings[1:], strict=False):
        if later.paid > 0:
            assert earlier.settled


def test_offer_eligibility_by_stage_amount_and_minimum_instalment() -> None:
    case = make_case(dt.date(2026, 11, 7))  # 1000.00 outstanding, penalty 20.00
    assert offer_open(OFFER, case, "dpd30") is None
    assert "stages" in (offer_open(OFFER, case, "dpd90") or "")
    small = dataclasses.replace(case, paid_total=Decimal("750.00"))  # 250 left, 230 after the waiver
    assert "minimum" in (offer_open(OFFER, small, "dpd30") or "")
    capped = OFFER.model_copy(update={"max_outstanding": Decimal("500.00")})
    assert eligible_offers([OFFER, capped], case, "dpd30") == [OFFER]
    assert plan_terms(case, OFFER) == (Decimal("980.00"), Decimal("20.00"))


# -- kept, broken, completed ------------------------------------------------------------


def test_plan_is_kept_until_grace_runs_out_then_broken() -> None:
    plan = _plan(dt.date(2026, 12, 7))  # 326.67, 326.67, 326.66 due 2027-01-06, 02-05, 03-07
    first_due = plan.instalments[0].due
    assert plan_standing(plan, Decimal("0"), first_due, 3).status is PlanStatus.KEPT
    assert plan_standing(plan, Decimal("0"), first_due + dt.timedelta(days=3), 3).status is PlanStatus.KEPT
    broken = plan_standing(plan, Decimal("0"), first_due + dt.timedelta(days=4), 3)
    assert broken.status is PlanStatus.BROKEN and broken.missed is not None
    assert broken.missed.instalment.number == 1
    # a partial payment does not keep it
    assert plan_standing(plan, Decimal("300.00"), first_due + dt.timedelta(days=4), 3).status is PlanStatus.BROKEN
    # paid: kept, the second instalment is next
    kept = plan_standing(plan, Decimal("326.67"), first_due + dt.timedelta(days=10), 3)
    assert kept.status is PlanStatus.KEPT and kept.next_unpaid.instalment.number == 2


def test_early_payment_covers_later_instalments_and_completes() -> None:
    plan = _plan(dt.date(2026, 12, 7), paid_at_start=Decimal("100.00"))
    # 700 paid since the plan: two instalments settled and 46.66 towards the third
    s = plan_standing(plan, Decimal("800.00"), dt.date(2027, 2, 20), 3)
    assert s.status is PlanStatus.KEPT and s.next_unpaid.instalment.number == 3
    assert s.next_unpaid.remaining == Decimal("280.00")
    done = plan_standing(plan, Decimal("1080.00"), dt.date(2027, 9, 1), 3)
    assert done.status is PlanStatus.COMPLETED and done.next_unpaid is None


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=6), st.integers(min_value=0, max_value=120))
def test_broken_exactly_when_an_instalment_is_late_beyond_grace(payments: list[int], day: int) -> None:
    plan = _plan(dt.date(2026, 1, 1))
    paid = Decimal(sum(payments))
    today = dt.date(2026, 1, 1) + dt.timedelta(days=day)
    s = plan_standing(plan, paid, today, 3)
    late = [x for x in apply_payments(plan.instalments, paid)
            if not x.settled and today > x.instalment.due + dt.timedelta(days=3)]
    if paid >= plan.total:
        assert s.status is PlanStatus.COMPLETED
    else:
        assert (s.status is PlanStatus.BROKEN) == bool(late)


def test_reminders_fall_on_the_configured_days_before_the_next_instalment() -> None:
    plan = _plan(dt.date(2026, 12, 7))
    due = plan.instalments[0].due
    days = [d for d in range(-10, 5) if reminder_due(plan_standing(plan, Decimal("0"), due + dt.timedelta(days=d), 3),
                                                     due + dt.timedelta(days=d), [3, 0])]
    assert days == [-3, 0]


# -- the gate ---------------------------------------------------------------------------


def _with_plan(case_due: dt.date, accepted: dt.date, **kw: object) -> object:
    return dataclasses.replace(snap(make_case(case_due)), plan=_plan(accepted), **kw)


def test_kept_plan_skips_collection_with_repayment_plan() -> None:
    now = sh(2026, 12, 7)  # DPD 30, stage dpd30; plan accepted 2026-12-01, first due 2026-12-31
    decisions = GATE.decide_case(_with_plan(dt.date(2026, 11, 7), dt.date(2026, 12, 1)), PLAN_CATALOG, now)
    assert {(d.channel, d.action, d.reason) for d in decisions} == {
        (Channel.SMS, Action.SKIP, Reason.REPAYMENT_PLAN), (Channel.EMAIL, Action.SKIP, Reason.REPAYMENT_PLAN)}
    assert "instalment 1 of 3" in decisions[0].detail
    # one-offs and collection re-checks are refused the same way
    d = GATE.decide_channel(_with_plan(dt.date(2026, 11, 7), dt.date(2026, 12, 1)), PLAN_CATALOG, now, Channel.SMS,
                            apply_cadence=False)
    assert (d.action, d.reason) == (Action.SKIP, Reason.REPAYMENT_PLAN)


def test_instalment_reminder_lines_on_reminder_days() -> None:
    # plan accepted 2026-11-10: first instalment due 2026-12-10; 3 days before = Mon 2026-12-07
    snapshot = _with_plan(dt.date(2026, 11, 7), dt.date(2026, 11, 10))
    decisions = GATE.decide_case(snapshot, PLAN_CATALOG, sh(2026, 12, 7))
    reminders = [d for d in decisions if d.stage == "plan"]
    assert {(d.channel, d.action, d.reason, d.template) for d in reminders} == {
        (Channel.SMS, Action.SEND, Reason.DUE, "sms/plan/v1"),
        (Channel.EMAIL, Action.SEND, Reason.DUE, "email/plan/v1"),
    }
    collection = [d for d in decisions if d.stage != "plan"]
    assert all(d.reason is Reason.REPAYMENT_PLAN for d in collection)
    # the sender's re-check of a queued reminder lets it go; of a collection reminder, not
    d = GATE.decide_channel(snapshot, PLAN_CATALOG, sh(2026, 12, 7), Channel.SMS, apply_cadence=False,
                            plan_reminder=True)
    assert (d.action, d.template) == (Action.SEND, "sms/plan/v1")
    # not on a day that is no reminder day
    assert not [d for d in GATE.decide_case(snapshot, PLAN_CATALOG, sh(2026, 12, 8)) if d.stage == "plan"]


def test_holds_come_before_the_plan() -> None:
    snapshot = _with_plan(dt.date(2026, 11, 7), dt.date(2026, 11, 10), holds=(Hold(Reason.DISPUTE_HOLD),))
    decisions = GATE.decide_case(snapshot, PLAN_CATALOG, sh(2026, 12, 7))
    assert {d.reason for d in decisions} == {Reason.DISPUTE_HOLD}  # no reminder lines either
    d = GATE.decide_channel(snapshot, PLAN_CATALOG, sh(2026, 12, 7), Channel.SMS, plan_reminder=True)
    assert d.reason is Reason.DISPUTE_HOLD


def test_broken_plan_resumes_collection_at_the_cases_own_stage() -> None:
    # first instalment due 2026-12-10, grace 3: broken from 2026-12-14 (a Monday)
    snapshot = _with_plan(dt.date(2026, 11, 7), dt.date(2026, 11, 10))
    decisions = GATE.decide_case(snapshot, PLAN_CATALOG, sh(2026, 12, 14))
    assert {(d.stage, d.action, d.reason) for d in decisions} == {("dpd30", Action.SEND, Reason.DUE)}
    d = GATE.decide_channel(snapshot, PLAN_CATALOG, sh(2026, 12, 14), Channel.SMS, plan_reminder=True)
    assert (d.action, d.reason) == (Action.SKIP, Reason.NOT_DUE)


@given(st.integers(min_value=0, max_value=100), st.integers(min_value=0, max_value=1200))
def test_gate_kept_means_repayment_plan_broken_means_own_stage(day: int, paid: int) -> None:
    accepted = dt.date(2026, 11, 10)
    now = sh(2026, 11, 10) + dt.timedelta(days=day)
    snapshot = dataclasses.replace(
        snap(make_case(dt.date(2026, 11, 7), paid_total=Decimal(paid))), plan=_plan(accepted))
    standing = plan_standing(snapshot.plan, Decimal(paid), now.date(), 3)
    decisions = GATE.decide_case(snapshot, PLAN_CATALOG, now)
    reasons = {d.reason for d in decisions if d.stage != "plan"}
    if Decimal(paid) >= Decimal("1000.00"):
        return  # paid in full: the store closes the case (case_closed)
    if standing.status is PlanStatus.BROKEN:
        assert Reason.REPAYMENT_PLAN not in reasons
    else:
        assert reasons == {Reason.REPAYMENT_PLAN}


def test_instalment_is_a_value() -> None:
    assert Instalment(1, dt.date(2027, 1, 1), Decimal("1.00")).amount == Decimal("1.00")
