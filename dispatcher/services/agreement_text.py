"""The text of a repayment plan agreement, in the debtor's locale: what their page shows
before they accept, and what is stored verbatim when they do. Pure.

The terms travel with it as data (`plan_terms_data`), so the record holds both what was
agreed (amounts, dates) and how it was put to the debtor.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from typing import Any

from dispatcher.config import PlanOffer
from dispatcher.domain import Case, Instalment
from dispatcher.templates.context import format_day, format_money


def _zh(locale: str) -> bool:
    return locale.lower().startswith("zh")


def agreement_text(case: Case, offer: PlanOffer, instalments: tuple[Instalment, ...], waived: Decimal,
                   *, organisation: str, locale: str, today: dt.date, grace_days: int) -> str:
    """The agreement as plain text (one paragraph per line)."""

    def money(value: Decimal) -> str:
        return format_money(value, case.currency, locale)

    total = sum((i.amount for i in instalments), Decimal("0.00"))
    n = len(instalments)
    if _zh(locale):
        lines = [
            f"{organisation} 分期还款协议",
            f"账户编号：{case.case_id}",
            f"截至{format_day(today, locale)}，尚欠金额：{money(case.outstanding)}。",
            f"您同意分{n}期偿还{money(total)}：",
            *(f"第{i.number}期：{format_day(i.due, locale)}前还款{money(i.amount)}" for i in instalments),
            "还款按期次顺序抵扣，提前还款计入后续期次。",
        ]
        if waived > 0:
            lines.append(f"如每期均按时还清，减免逾期罚息{money(waived)}。")
        lines.append(f"任何一期在到期日后{grace_days}天仍未还清，本计划即告终止，"
                     "全部尚欠金额（含罚息）恢复应还，催收提醒恢复。")
        lines.append(f"接受日期：{format_day(today, locale)}")
        return "\n".join(lines)
    lines = [
        f"{organisation}: repayment plan agreement",
        f"Account reference: {case.case_id}",
        f"Outstanding on {format_day(today, locale)}: {money(case.outstanding)}.",
        f"You agree to pay {money(total)} in {n} instalments:",
        *(f"Instalment {i.number}: {money(i.amount)} by {format_day(i.due, locale)}" for i in instalments),
        "Payments apply to the instalments in order; paying early counts towards the next ones.",
    ]
    if waived > 0:
        lines.append(f"If every instalment is paid by its date, late charges of {money(waived)} are waived.")
    days = "1 day" if grace_days == 1 else f"{grace_days} days"
    lines.append(f"If an instalment is still unpaid {days} after its date, this plan ends: the whole outstanding"
                 " amount, late charges included, is due again and reminders resume.")
    lines.append(f"Accepted on {format_day(today, locale)}")
    return "\n".join(lines)


def plan_terms_data(case: Case, offer: PlanOffer, instalments: tuple[Instalment, ...], waived: Decimal,
                    today: dt.date, grace_days: int) -> dict[str, Any]:
    """The agreed terms as data (stored with the text)."""
    return {
        "offer": offer.name,
        "currency": case.currency,
        "outstanding": str(case.outstanding),
        "total": str(sum((i.amount for i in instalments), Decimal("0.00"))),
        "waived_if_kept": str(waived),
        "grace_days": grace_days,
        "accepted_on": today.isoformat(),
        "instalments": [{"number": i.number, "due": i.due.isoformat(), "amount": str(i.amount)}
                        for i in instalments],
    }


def text_digest(text: str) -> str:
    """A short digest of the text shown: the form sends it back, so the text accepted is
    the text shown (a change in between, e.g. a payment, shows the new terms instead)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
