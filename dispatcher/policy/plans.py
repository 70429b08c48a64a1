"""Repayment plans: offers, instalment schedules, payments applied in order, and whether
a plan is kept, broken or completed. Pure: dates are the debtor's local dates, money is
`Decimal`, nothing here reads a clock or a store.

- An offer (`[[self_service.plans]]`) is open to a case in one of its stages whose
  outstanding amount is within its bounds and large enough that no instalment falls
  below its minimum.
- The plan's total is the outstanding amount, less the outstanding penalty when the
  offer waives it (the waiver holds only if every instalment is paid). It is split into
  equal instalments in cents; the cents that do not divide go to the first ones, so the
  instalments sum to the total exactly. Instalment k is due `k * every_days` days after
  the day the plan was accepted.
- Payments recorded after the plan was made apply to the instalments in order: the
  first is paid off before anything counts for the second (early payments included).
- The plan is broken when an instalment is still not fully paid more than `grace_days`
  days after its date (grace 3: due on the 10th, broken from the 14th if unpaid), and
  completed when the payments since it was made cover its total.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum

from dispatcher.config import PlanOffer
from dispatcher.domain import Case, Instalment, RepaymentPlan

_CENT = Decimal("0.01")
_ZERO = Decimal("0.00")


class PlanStatus(StrEnum):
    KEPT = "kept"  # every instalment due so far is paid, or still within its grace days
    BROKEN = "broken"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class InstalmentStanding:
    """One instalment with what has been paid towards it."""

    instalment: Instalment
    paid: Decimal

    @property
    def remaining(self) -> Decimal:
        return self.instalment.amount - self.paid

    @property
    def settled(self) -> bool:
        return self.paid >= self.instalment.amount


@dataclass(frozen=True, slots=True)
class PlanStanding:
    """Where a plan stands on one local day."""

    status: PlanStatus
    instalments: tuple[InstalmentStanding, ...]
    paid: Decimal  # paid since the plan was made, capped at its total
    #: the first instalment not fully paid (None when completed)
    next_unpaid: InstalmentStanding | None
    #: the instalment whose grace ran out (BROKEN only)
    missed: InstalmentStanding | None = None


def plan_terms(case: Case, offer: PlanOffer) -> tuple[Decimal, Decimal]:
    """(total to pay in instalments, penalty waived if the plan is kept)."""
    outstanding = case.outstanding
    waived = min(case.penalty, outstanding) if offer.waive_penalty else _ZERO
    return outstanding - waived, waived


def split_amount(total: Decimal, count: int) -> tuple[Decimal, ...]:
    """`total` in `count` instalments of whole cents, the first ones a cent larger when it
    does not divide evenly; they sum to `total` exactly."""
    if count < 1:
        raise ValueError("a plan needs at least one instalment")
    if total != total.quantize(_CENT) or total < 0:
        raise ValueError(f"plan total {total} must be a non-negative amount in cents")
    base = (total / count).quantize(_CENT, rounding=ROUND_DOWN)
    extra_cents = int((total - base * count) / _CENT)
    return tuple(base + _CENT if i < extra_cents else base for i in range(count))


def offer_open(offer: PlanOffer, case: Case, stage: str | None) -> str | None:
    """None when `case` (in `stage`) may take `offer`, else why not (for people)."""
    if offer.stages and stage not in offer.stages:
        return f"offered in stages {', '.join(offer.stages)} only"
    outstanding = case.outstanding
    if outstanding <= 0:
        return "nothing is outstanding"
    if outstanding < offer.min_outstanding:
        return f"needs an outstanding amount of at least {offer.min_outstanding}"
    if offer.max_outstanding is not None and outstanding > offer.max_outstanding:
        return f"needs an outstanding amount of at most {offer.max_outstanding}"
    total, _ = plan_terms(case, offer)
    if min(split_amount(total, offer.instalments)) < offer.min_instalment:
        return f"an instalment would be below the minimum of {offer.min_instalment}"
    return None


def eligible_offers(offers: Sequence[PlanOffer], case: Case, stage: str | None) -> list[PlanOffer]:
    """The offers open to `case` in `stage`, in configuration order."""
    return [o for o in offers if offer_open(o, case, stage) is None]


def schedule(offer: PlanOffer, total: Decimal, accepted_on: dt.date) -> tuple[Instalment, ...]:
    """The instalments of `offer` for `total`, accepted on the debtor's local date."""
    return tuple(
        Instalment(k, accepted_on + dt.timedelta(days=k * offer.every_days), amount)
        for k, amount in enumerate(split_amount(total, offer.instalments), start=1)
    )


def apply_payments(instalments: Sequence[Instalment], paid: Decimal) -> tuple[InstalmentStanding, ...]:
    """`paid` applied to the instalments in order (any excess is ignored here)."""
    left = max(paid, _ZERO)
    out = []
    for instalment in instalments:
        part = min(left, instalment.amount)
        left -= part
        out.append(InstalmentStanding(instalment, part))
    return tuple(out)


def paid_towards(plan: RepaymentPlan, paid_total: Decimal) -> Decimal:
    """What the case paid since the plan was made."""
    return max(paid_total - plan.paid_at_start, _ZERO)


def plan_standing(plan: RepaymentPlan, paid_total: Decimal, today: dt.date, grace_days: int) -> PlanStanding:
    """The plan on the debtor's local `today`, given the case's paid total now."""
    paid = paid_towards(plan, paid_total)
    standings = apply_payments(plan.instalments, paid)
    capped = min(paid, plan.total)
    next_unpaid = next((s for s in standings if not s.settled), None)
    if next_unpaid is None:
        return PlanStanding(PlanStatus.COMPLETED, standings, capped, None)
    # instalments are paid in order, so the first unpaid one is the oldest that can be late
    if today > next_unpaid.instalment.due + dt.timedelta(days=grace_days):
        return PlanStanding(PlanStatus.BROKEN, standings, capped, next_unpaid, next_unpaid)
    return PlanStanding(PlanStatus.KEPT, standings, capped, next_unpaid)


def reminder_due(standing: PlanStanding, today: dt.date, reminder_days: Sequence[int]) -> InstalmentStanding | None:
    """The instalment to remind the debtor of today (`reminder_days` before its date),
    or None. Only a kept plan's next unpaid instalment is reminded of."""
    nxt = standing.next_unpaid
    if standing.status is not PlanStatus.KEPT or nxt is None:
        return None
    return nxt if (nxt.instalment.due - today).days in reminder_days else None
