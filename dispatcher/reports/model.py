"""What a report holds, and its JSON (SPEC section 16, field names exactly).

JSON types, one rule: **anything computed from money is an exact decimal written as a
string** (`amount_at_entry`, `amount_recovered`, `recovery_rate`, `cost`,
`cost_per_recovered`, weekly `recovered`); counts are integers; proportions and
statistics (`cure_rate`, `roll_rate`, `delivery_rate`, `conversion`,
`conversion_ci`, `p_value`, `complaints_per_1000`, `first_contact_hours_p50`) are JSON
numbers rounded to 4 decimal places. A figure that cannot be computed (nothing to
divide by, a channel without receipts, no price configured) is `null`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

CENT = Decimal("0.01")
RATIO = Decimal("0.0001")


def rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def money_ratio(numerator: Decimal | None, denominator: Decimal | None) -> Decimal | None:
    if numerator is None or not denominator:
        return None
    return (numerator / denominator).quantize(RATIO)


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


@dataclass
class StageKpi:
    stage: str
    jurisdiction: str
    currency: str
    cases_entered: int = 0
    contacted: int = 0
    right_party_contacts: int = 0
    first_contact_hours_p50: float | None = None
    promises: int = 0
    promises_kept: int = 0
    cured: int = 0
    rolled_forward: int = 0
    #: False for the last stage: there is no next stage to roll into
    has_next_stage: bool = True
    amount_at_entry: Decimal = Decimal("0.00")
    amount_recovered: Decimal = Decimal("0.00")
    messages: int = 0
    segments: int = 0
    emails: int = 0
    call_minutes: int = 0
    cost: Decimal | None = None
    complaints: int = 0
    opt_outs: int = 0

    @property
    def cure_rate(self) -> float | None:
        return rate(self.cured, self.cases_entered)

    @property
    def roll_rate(self) -> float | None:
        return rate(self.rolled_forward, self.cases_entered) if self.has_next_stage else None

    @property
    def recovery_rate(self) -> Decimal | None:
        return money_ratio(self.amount_recovered, self.amount_at_entry)

    @property
    def cost_per_recovered(self) -> Decimal | None:
        return money_ratio(self.cost, self.amount_recovered)

    @property
    def complaints_per_1000(self) -> float | None:
        return round(1000 * self.complaints / self.contacted, 4) if self.contacted else None

    def as_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "jurisdiction": self.jurisdiction, "currency": self.currency,
            "cases_entered": self.cases_entered, "contacted": self.contacted,
            "right_party_contacts": self.right_party_contacts,
            "first_contact_hours_p50": self.first_contact_hours_p50,
            "promises": self.promises, "promises_kept": self.promises_kept, "cured": self.cured,
            "rolled_forward": self.rolled_forward, "cure_rate": self.cure_rate, "roll_rate": self.roll_rate,
            "amount_at_entry": _money(self.amount_at_entry), "amount_recovered": _money(self.amount_recovered),
            "recovery_rate": _money(self.recovery_rate), "messages": self.messages, "segments": self.segments,
            "cost": _money(self.cost), "cost_per_recovered": _money(self.cost_per_recovered),
            "complaints": self.complaints, "complaints_per_1000": self.complaints_per_1000,
            "opt_outs": self.opt_outs,
        }


@dataclass
class VariantKpi:
    template: str
    stage: str
    channel: str
    locale: str
    sent: int = 0
    delivered: int | None = 0
    clicks: int = 0
    payments_7d: int = 0
    #: messages of this template sent while the case was in another stage (one-offs
    #: chosen by a collector, a message deferred across a stage boundary)
    off_stage: int = 0
    conversion_ci: tuple[float, float] | None = None

    @property
    def variant(self) -> str:
        return self.template.rsplit("/", 1)[-1]

    @property
    def delivery_rate(self) -> float | None:
        return None if self.delivered is None else rate(self.delivered, self.sent)

    @property
    def conversion(self) -> float | None:
        return rate(self.payments_7d, self.sent)

    def as_json(self) -> dict[str, Any]:
        ci = None if self.conversion_ci is None else [round(self.conversion_ci[0], 4), round(self.conversion_ci[1], 4)]
        return {
            "template": self.template, "stage": self.stage, "channel": self.channel, "locale": self.locale,
            "sent": self.sent, "delivered": self.delivered, "delivery_rate": self.delivery_rate,
            "clicks": self.clicks, "payments_7d": self.payments_7d, "conversion": self.conversion,
            "conversion_ci": ci, "off_stage": self.off_stage,
        }


@dataclass
class Experiment:
    stage: str
    channel: str
    locale: str
    variants: list[VariantKpi]
    p_value: float | None = None
    chi2: float | None = None
    leader: str | None = None

    @property
    def significant(self) -> bool:
        from dispatcher.reports.stats import ALPHA

        return self.p_value is not None and self.p_value < ALPHA

    def as_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "channel": self.channel, "locale": self.locale,
            "variants": [v.template for v in self.variants],
            "sent": sum(v.sent for v in self.variants), "payments_7d": sum(v.payments_7d for v in self.variants),
            "chi2": None if self.chi2 is None else round(self.chi2, 4),
            "p_value": None if self.p_value is None else round(self.p_value, 6),
            "leader": self.leader, "significant": self.significant,
        }


@dataclass
class Week:
    start: dt.date
    sent: int = 0
    contacts: int = 0
    payments: int = 0
    recovered: dict[str, Decimal] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"week": self.start.isoformat(), "sent": self.sent, "contacts": self.contacts,
                "payments": self.payments, "recovered": {k: str(v) for k, v in sorted(self.recovered.items())}}


@dataclass
class OutboxTotals:
    """Messages by what happened to them; `sent` = accepted by the provider."""

    by_channel: dict[str, dict[str, int]] = field(default_factory=dict)

    def total(self, what: str) -> int:
        return sum(v.get(what, 0) for v in self.by_channel.values())

    def as_json(self) -> dict[str, Any]:
        keys = ("sent", "delivered", "failed", "rejected", "queued", "cancelled")
        channels = {ch: {k: v.get(k, 0) for k in keys} for ch, v in sorted(self.by_channel.items())}
        return {"by_channel": channels, **{k: self.total(k) for k in keys}}


@dataclass
class Balance:
    """What a jurisdiction's debtors owe now, in one currency (never summed across
    currencies): `outstanding = amount_due - paid_total` per case (never below 0), at
    the report's generation, whatever its period."""

    jurisdiction: str
    currency: str
    cases: int = 0
    open_cases: int = 0  # not paid, settled or closed
    amount_due: Decimal = Decimal("0.00")
    paid_total: Decimal = Decimal("0.00")
    outstanding: Decimal = Decimal("0.00")

    def as_json(self) -> dict[str, Any]:
        return {"jurisdiction": self.jurisdiction, "currency": self.currency, "cases": self.cases,
                "open_cases": self.open_cases, "amount_due": str(self.amount_due),
                "paid_total": str(self.paid_total), "outstanding": str(self.outstanding)}


@dataclass
class PlanKpi:
    """Repayment plans debtors took in the period, per jurisdiction, and where they stand
    at the report's generation: still in force, kept to the end, or broken."""

    jurisdiction: str
    taken: int = 0
    active: int = 0
    completed: int = 0
    broken: int = 0

    @property
    def keep_rate(self) -> float | None:
        """Plans completed among those that ended (None while none has)."""
        ended = self.completed + self.broken
        return None if ended == 0 else round(self.completed / ended, 4)

    def as_json(self) -> dict[str, Any]:
        return {"jurisdiction": self.jurisdiction, "taken": self.taken, "active": self.active,
                "completed": self.completed, "broken": self.broken, "keep_rate": self.keep_rate}


@dataclass
class Report:
    since: dt.date
    until: dt.date
    timezone: str
    generated_at: dt.datetime
    currency: dict[str, list[str]]
    stages: list[StageKpi]
    variants: list[VariantKpi]
    experiments: list[Experiment]
    weeks: list[Week]
    messages: OutboxTotals
    notes: list[str] = field(default_factory=list)
    balances: list[Balance] = field(default_factory=list)
    plans: list[PlanKpi] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(), "until": self.until.isoformat(), "timezone": self.timezone,
            "generated_at": self.generated_at.isoformat(), "currency": self.currency,
            "stages": [s.as_json() for s in self.stages],
            "variants": [v.as_json() for v in self.variants],
            "experiments": [e.as_json() for e in self.experiments],
            "weeks": [w.as_json() for w in self.weeks],
            "messages": self.messages.as_json(),
            "notes": self.notes,
            "balances": [b.as_json() for b in self.balances],
            "plans": [p.as_json() for p in self.plans],
        }
