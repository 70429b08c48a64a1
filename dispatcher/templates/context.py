"""The variables a template sees (SPEC section 7), built from a case.

Everything here is pure: money is `Decimal`, dates and the payment link are passed in,
and formatting follows the template's locale through `babel`. Templates never see the
debtor's phone number or e-mail address.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from babel.dates import format_date, format_skeleton

from dispatcher.config import Config
from dispatcher.domain import Case, Channel, Product
from dispatcher.templates.money import babel_locale, format_money

__all__ = [
    "CONTEXT_KEYS", "SUPPORTED_LOCALES", "build_context", "days_past_due", "format_day", "format_money",
    "instalment_context", "opt_out_text", "penalty_explanation",
]

#: Locales the shipped templates and the sentences below are written for.
SUPPORTED_LOCALES = ("en-US", "zh-CN")

_CENT = Decimal("0.01")

_PRODUCT_NAMES = {
    "en-US": {Product.CREDIT_CARD: "credit card account", Product.LOAN: "loan account", Product.OTHER: "account"},
    "zh-CN": {Product.CREDIT_CARD: "信用卡账户", Product.LOAN: "贷款账户", Product.OTHER: "账户"},
}


def _is_zh(locale: str) -> bool:
    return locale.lower().startswith("zh")


@functools.lru_cache(maxsize=4096)
def format_day(day: dt.date, locale: str) -> str:
    """A localised long date: `November 7, 2026` / `2026年11月7日` (due dates repeat: cached)."""
    return format_date(day, format="long", locale=babel_locale(locale))


@functools.lru_cache(maxsize=4096)
def format_short_day(day: dt.date, locale: str) -> str:
    """A localised day without the year, for SMS: `Dec 10` / `12月10日`."""
    return format_skeleton("MMMd", day, locale=babel_locale(locale))


def days_past_due(case: Case, today: dt.date) -> int:
    """DPD on the debtor's local `today`; zero or negative before the due date passes."""
    return (today - case.due_date).days


def _cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _percent(rate: Decimal) -> str:
    # 0.0005 -> "0.05%": exact, no float, no exponent notation.
    return f"{(rate * 100).normalize():f}%"


def penalty_explanation(case: Case, locale: str, today: dt.date, *, spoken: bool = False,
                        terse: bool = False) -> str:
    """One localised sentence explaining how interest and late charges are calculated.

    Overdue with a daily rate: the worked calculation principal x rate x DPD, rounded
    half-up to the cent. Overdue without a rate: the interest and charges as stated by
    the lender. Not yet overdue: what will accrue per day after the due date. After a
    payment, one more clause reconciles it with the outstanding amount the message
    states: "Of 1,055.00 due, 300.00 is paid: 755.00 outstanding".
    `spoken` (voice) writes the operators as words, which text-to-speech reads well;
    `terse` (SMS) says the same in the fewest characters (`_explain_sms`).
    """
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        explanation = _explain_sms(case, locale, today) if terse else _explain(case, locale, today, spoken)
    paid = _payments_sentence(case, locale, spoken, terse)
    if not paid:
        return explanation
    return explanation + paid if _is_zh(locale) else f"{explanation} {paid}"


def _explain(case: Case, locale: str, today: dt.date, spoken: bool) -> str:
    zh = _is_zh(locale)
    dpd = days_past_due(case, today)
    rate = case.penalty_rate_daily

    def money(value: Decimal) -> str:
        return format_money(value, case.currency, locale)

    if dpd <= 0:
        due = format_day(case.due_date, locale)
        if rate is not None:
            per_day = money(_cents(case.principal * rate))
            if zh:
                return f"如{due}后仍未还款，将按本金每日{_percent(rate)}（{per_day}）计收逾期罚息。"
            return (
                f"If unpaid after {due}, late charges of {_percent(rate)} of the principal"
                f" ({per_day}) accrue per day."
            )
        if zh:
            return f"如{due}后仍未还款，将按合同约定计收逾期罚息和利息。"
        return f"If unpaid after {due}, late charges and interest may apply under your agreement."

    if rate is not None:
        total = money(_cents(case.principal * rate * dpd))
        pct, principal = _percent(rate), money(case.principal)
        if zh:
            # Labels each factor and stays short: a Chinese SMS has 201 characters in 3 parts.
            if spoken:
                return f"逾期罚息按逾期本金{principal}乘以日罚息率{pct}，再乘以{dpd}天计算，共{total}。"
            return f"逾期罚息：逾期本金{principal}×日罚息率{pct}×{dpd}天={total}。"
        days = "1 day" if dpd == 1 else f"{dpd} days"
        if spoken:
            return (
                f"Late charges accrue at {pct} of the overdue principal per day:"
                f" {principal} times {pct} times {days} comes to {total}."
            )
        # "x", not "×": the multiplication sign is not in GSM-7 and would turn an English
        # SMS into UCS-2, cutting each segment from 153 to 67 characters.
        return (
            f"Late charges accrue at {pct} of the overdue principal per day:"
            f" {principal} x {pct} x {days} = {total}."
        )

    interest, penalty = money(case.interest), money(case.penalty)
    if zh:
        fees = f"、费用{money(case.fees)}" if case.fees else ""
        return f"应还金额含利息{interest}、逾期罚息{penalty}{fees}，按您的合同约定计算。"
    if case.fees:
        parts = f"interest of {interest}, late charges of {penalty} and fees of {money(case.fees)}"
    else:
        parts = f"interest of {interest} and late charges of {penalty}"
    return f"The amount due includes {parts}, calculated under your agreement."


def _explain_sms(case: Case, locale: str, today: dt.date) -> str:
    """The same facts as `_explain`, in the fewest characters: a reminder fits in 2 SMS
    segments (a Chinese one has 134 characters, with a link, the support number and the
    opt-out), so the labels are short and the worked calculation is a formula."""
    zh = _is_zh(locale)
    dpd = days_past_due(case, today)
    rate = case.penalty_rate_daily

    def money(value: Decimal) -> str:
        return format_money(value, case.currency, locale)

    if dpd <= 0:
        if rate is not None:
            per_day, pct = money(_cents(case.principal * rate)), _percent(rate)
            if zh:
                return f"逾期每日罚息{per_day}（本金×{pct}）。"
            return f"If paid late, late charges of {per_day} ({pct} of the principal) accrue per day."
        if zh:
            return "逾期将按合同计收罚息和利息。"
        return "If paid late, late charges and interest may apply under your agreement."
    if rate is not None:
        total, pct, principal = money(_cents(case.principal * rate * dpd)), _percent(rate), money(case.principal)
        if zh:
            # the formula and its result; the principal itself is on the debtor's page and
            # in the e-mail (with it, a reminder to a US$ case in Chinese needs 3 segments)
            return f"罚息=本金×日{pct}×{dpd}天={total}。"
        days = "1 day" if dpd == 1 else f"{dpd} days"
        # "x", not "×": the multiplication sign is not in GSM-7 (see `_explain`)
        return f"Late charges: principal {principal} x {pct} a day x {days} = {total}."
    interest, penalty = money(case.interest), money(case.penalty)
    if zh:
        fees = f"、费用{money(case.fees)}" if case.fees else ""
        return f"含利息{interest}、罚息{penalty}{fees}，按合同计。"
    if case.fees:
        return (f"Includes interest of {interest}, late charges of {penalty} and fees of"
                f" {money(case.fees)}, per your agreement.")
    return f"Includes interest of {interest} and late charges of {penalty}, per your agreement."


def _payments_sentence(case: Case, locale: str, spoken: bool, terse: bool) -> str:
    """How the charges above become what is owed now, once payments came in (SPEC 11):
    the imported amount, less what was paid, is the outstanding amount the message states."""
    if case.paid_total <= 0:
        return ""

    def money(value: Decimal) -> str:
        return format_money(value, case.currency, locale)

    total, paid, owed = money(case.amount_due), money(case.paid_total), money(case.outstanding)
    if terse:  # SMS: every character counts, and the text states the outstanding amount itself
        return f"已还{paid}。" if _is_zh(locale) else f"Less {paid} paid."
    if _is_zh(locale):
        if spoken:
            return f"原应还{total}，已还{paid}，尚欠{owed}。"
        return f"原应还{total}-已还{paid}=尚欠{owed}。"
    if spoken:
        return f"Of the {total} that was due, you have paid {paid}, so {owed} is outstanding."
    return f"Of {total} due, {paid} is paid: {owed} outstanding."


def opt_out_text(channel: Channel, locale: str, unsubscribe_url: str | None) -> str:
    """The channel's opt-out instruction in `locale` (e-mail: with the unsubscribe URL)."""
    zh = _is_zh(locale)
    channel = Channel(channel)
    if channel is Channel.SMS:
        return "回TD退订" if zh else "Reply STOP to opt out"
    if channel is Channel.EMAIL:
        if not unsubscribe_url:
            raise ValueError("an e-mail opt-out needs the message's unsubscribe URL")
        if zh:
            return f"如不希望再收到此类邮件，请点击链接退订：{unsubscribe_url}"
        return f"To stop receiving these e-mails, unsubscribe here: {unsubscribe_url}"
    return "如不希望再接到此类来电，请按9" if zh else "To stop these calls, press 9"


def build_context(
    case: Case,
    *,
    config: Config,
    channel: Channel,
    today: dt.date,
    payment_link: str,
    opt_out: str,
    locale: str | None = None,
    unsubscribe_url: str | None = None,
    instalment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The template variables for `case` (SPEC section 7).

    `instalment` (instalment reminders, templates `<channel>/plan/`): the next instalment
    of the case's repayment plan, from `instalment_context`.

    `locale` is the locale of the template file being rendered (after `pick_locale`);
    it defaults to the case's. `today` is the debtor's local date. E-mail needs
    `unsubscribe_url` (the HTML body links it).
    """
    locale = locale or case.locale
    channel = Channel(channel)
    try:
        profile = config.jurisdictions[case.jurisdiction]
    except KeyError:
        raise ValueError(
            f"case {case.case_id}: jurisdiction {case.jurisdiction!r} is not configured"
            f" (known: {sorted(config.jurisdictions)})"
        ) from None
    if channel is Channel.EMAIL and not unsubscribe_url:
        raise ValueError("e-mail context needs unsubscribe_url for the body's unsubscribe link")
    dpd = days_past_due(case, today)

    def money(value: Decimal) -> str:
        return format_money(value, case.currency, locale)

    product = Product(case.product)
    names = _PRODUCT_NAMES["zh-CN" if _is_zh(locale) else "en-US"]
    return {
        "case": {
            "case_id": case.case_id,
            "name": case.name,
            "first_name": case.first_name,
            "product": product.value,
            "product_name": names[product],
        },
        "locale": locale,
        "currency": case.currency,
        # SPEC 11: what is owed now. `amount_due` is SPEC 7's name for the same amount,
        # so a template written with either never states the imported amount after a payment.
        "outstanding": money(case.outstanding),
        "amount_due": money(case.outstanding),
        "original_amount": money(case.amount_due),
        "paid_total": money(case.paid_total),
        "has_payments": case.paid_total > 0,
        "principal": money(case.principal),
        "interest": money(case.interest),
        "penalty": money(case.penalty),
        "fees": money(case.fees),
        "days_past_due": dpd,
        "days_until_due": max(-dpd, 0),
        "due_date": format_day(case.due_date, locale),
        "due_day": format_short_day(case.due_date, locale),
        "penalty_explanation": penalty_explanation(case, locale, today, spoken=channel is Channel.VOICE,
                                                   terse=channel is Channel.SMS),
        "payment_link": payment_link,
        "support_phone": profile.support_phone,
        "org_name": config.organisation.name_for(locale),
        "opt_out": opt_out,
        "unsubscribe_url": unsubscribe_url or "",
        "instalment": instalment or {},
    }


def instalment_context(number: int, count: int, due: dt.date, remaining: Decimal, currency: str,
                       locale: str) -> dict[str, Any]:
    """The `instalment` variable of an instalment reminder: which one (`number` of
    `count`), what is left to pay on it, and its date (long and short forms)."""
    short = f"{due.month}月{due.day}日" if _is_zh(locale) else format_date(due, format="MMM d",
                                                                          locale=babel_locale(locale))
    return {"number": number, "count": count, "amount": format_money(remaining, currency, locale),
            "due": format_day(due, locale), "due_short": short}


#: Every name `build_context` provides; the linter flags any other free name.
CONTEXT_KEYS = frozenset(
    {
        "case",
        "locale",
        "currency",
        "outstanding",
        "amount_due",
        "original_amount",
        "paid_total",
        "has_payments",
        "principal",
        "interest",
        "penalty",
        "fees",
        "days_past_due",
        "days_until_due",
        "due_date",
        "due_day",
        "penalty_explanation",
        "payment_link",
        "support_phone",
        "org_name",
        "opt_out",
        "unsubscribe_url",
        "instalment",
    }
)
