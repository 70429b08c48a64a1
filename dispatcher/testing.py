"""In-package fakes and samples: `FakeClock`, sample cases, sample links, and a copy of
the shipped configuration that works from any folder.

The template linter and previews render with these cases, and tests build on them, so
they are realistic: both jurisdictions, amounts that add up, names and amounts of
typical length. Nothing here is a real person or a real link.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from dispatcher.clock import FakeClock
from dispatcher.config import Config, Stage
from dispatcher.domain import Case, Product

__all__ = [
    "SAMPLE_CASES",
    "SHIPPED_CONFIG",
    "SAMPLE_PAYMENT_LINK",
    "SAMPLE_TOKEN",
    "SAMPLE_TODAY",
    "SAMPLE_UNSUBSCRIBE_URL",
    "FakeClock",
    "copy_shipped_config",
    "partly_paid",
    "sample_case",
    "sample_cases_for_plans",
    "sample_instalment",
    "sample_cases_for_stage",
    "sample_payment_link",
]

#: The day sample cases are evaluated on (a Monday, the SPEC's worked example).
SAMPLE_TODAY = dt.date(2026, 12, 7)

#: Clearly fake links of production length. A real payment link is `[links] base_url`
#: (default: the public URL) + ``/p/`` + a 16-character random token
#: (`services.links.new_token`); the linter renders `sample_payment_link(base_url)`,
#: exactly as long as a real one under the same base. Without a configured base it
#: assumes ``https://pay.bank.example`` (keep DISPATCHER_PUBLIC_URL about this short).
SAMPLE_TOKEN = "SAMPLE-notreal00"
SAMPLE_LINK_BASE = "https://pay.bank.example"
SAMPLE_PAYMENT_LINK = f"{SAMPLE_LINK_BASE}/p/{SAMPLE_TOKEN}"


def sample_payment_link(base_url: str | None = None) -> str:
    """The sample payment link under `base_url` (`[links] base_url`), default `SAMPLE_PAYMENT_LINK`."""
    return f"{(base_url or SAMPLE_LINK_BASE).rstrip('/')}/p/{SAMPLE_TOKEN}"


SAMPLE_UNSUBSCRIBE_URL = "https://pay.bank.example/email/unsubscribe/SAMPLE-not-a-real-link-" + "0" * 20

_CENT = Decimal("0.01")

_PROFILES: dict[str, dict[str, Any]] = {
    "cn": {
        "name": "张伟",
        "locale": "zh-CN",
        "currency": "CNY",
        "principal": Decimal("10000.00"),
        "interest": Decimal("120.00"),
        "flat_penalty": Decimal("150.00"),
        "phone": "+8613800138000",
        "email": "zhang.wei@example.com",
        "product": Product.CREDIT_CARD,
    },
    "us": {
        "name": "Alex Morgan",
        "locale": "en-US",
        "currency": "USD",
        "principal": Decimal("2400.00"),
        "interest": Decimal("36.00"),
        "flat_penalty": Decimal("35.00"),
        "phone": "+13105550123",
        "email": "alex.morgan@example.com",
        "product": Product.LOAN,
    },
}

_RATE = Decimal("0.0005")  # 0.05 % a day
_AMOUNT_FIELDS = ("principal", "interest", "penalty", "fees")


def sample_case(
    jurisdiction: str = "cn",
    *,
    dpd: int = 30,
    today: dt.date = SAMPLE_TODAY,
    with_rate: bool = True,
    **overrides: Any,
) -> Case:
    """A consistent sample case `dpd` days past due on `today` (negative: not yet due).

    With a daily rate the penalty is principal x rate x DPD, as the lender would have
    charged it. Overriding an amount without `amount_due` recomputes `amount_due`.
    """
    try:
        profile = _PROFILES[jurisdiction]
    except KeyError:
        raise ValueError(f"no sample profile {jurisdiction!r}; use one of {sorted(_PROFILES)}") from None
    overdue_days = max(dpd, 0)
    if with_rate:
        penalty = (profile["principal"] * _RATE * overdue_days).quantize(_CENT, rounding=ROUND_HALF_UP)
    else:
        penalty = profile["flat_penalty"] if dpd > 0 else Decimal("0.00")
    fees = Decimal("0.00")
    case = Case(
        case_id=f"sample-{jurisdiction}-dpd{dpd}-{'rate' if with_rate else 'norate'}",
        name=profile["name"],
        jurisdiction=jurisdiction,
        locale=profile["locale"],
        currency=profile["currency"],
        principal=profile["principal"],
        interest=profile["interest"],
        penalty=penalty,
        fees=fees,
        amount_due=profile["principal"] + profile["interest"] + penalty + fees,
        due_date=today - dt.timedelta(days=dpd),
        phone=profile["phone"],
        email=profile["email"],
        penalty_rate_daily=_RATE if with_rate else None,
        product=profile["product"],
    )
    if overrides:
        if "amount_due" not in overrides and any(f in overrides for f in _AMOUNT_FIELDS):
            merged = {f: overrides.get(f, getattr(case, f)) for f in _AMOUNT_FIELDS}
            overrides["amount_due"] = sum(merged.values(), Decimal("0"))
        case = dataclasses.replace(case, **overrides)
    return case


def partly_paid(case: Case, share: Decimal = Decimal("0.3")) -> Case:
    """`case` after a payment of about `share` of its amount (an odd number of cents, so
    the outstanding amount never looks like any other amount of the case)."""
    paid = (case.amount_due * share).quantize(Decimal("1")) + Decimal("0.37")
    return dataclasses.replace(case, case_id=f"{case.case_id}-partpaid", paid_total=paid)


def _grid(dpds: tuple[int, ...], today: dt.date) -> tuple[Case, ...]:
    full = tuple(
        sample_case(j, dpd=dpd, today=today, with_rate=with_rate)
        for j in ("cn", "us")
        for dpd in dpds
        for with_rate in (True, False)
    )
    # and after a partial payment: the texts must state the outstanding amount (SPEC 11)
    return full + tuple(partly_paid(c) for c in full)


#: Both jurisdictions, pre-due and overdue, with and without a daily penalty rate,
#: unpaid and partly paid.
SAMPLE_CASES: tuple[Case, ...] = _grid((-3, 45), SAMPLE_TODAY)


def sample_cases_for_stage(stage: Stage, today: dt.date = SAMPLE_TODAY) -> tuple[Case, ...]:
    """Sample cases at both DPD ends of a stage (an open stage: up to a year overdue)."""
    upper = stage.dpd_max if stage.dpd_max is not None else max(stage.dpd_min, 365)
    return _grid(tuple(sorted({stage.dpd_min, upper})), today)


def sample_cases_for_plans(config: Config) -> tuple[Case, ...]:
    """Sample cases an instalment reminder may be written for: a plan is made in a stage
    its offer names (any, without names), and days past due only grow from there."""
    offered = {n for o in config.self_service.plans for n in o.stages or [s.name for s in config.stages]}
    first = min((s for s in config.stages if s.name in offered), key=lambda s: s.dpd_min, default=None)
    if first is None:
        return ()
    return tuple(c for s in config.stages if s.dpd_min >= first.dpd_min for c in sample_cases_for_stage(s))


def sample_instalment(case: Case, locale: str, today: dt.date = SAMPLE_TODAY) -> dict[str, object]:
    """An instalment reminder's sample `instalment` variable: the first of three, a third
    of what the case owes, due in three days."""
    from dispatcher.templates.context import instalment_context

    return instalment_context(1, 3, today + dt.timedelta(days=3), (case.outstanding / 3).quantize(Decimal("0.01")),
                              case.currency, locale)

#: The configuration shipped in the repository (`config/dispatcher.toml`).
SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "config" / "dispatcher.toml"
#: The settings whose relative paths are relative to the configuration file's folder.
_PATH_KEYS = ("directory", "forbidden_phrases")


def copy_shipped_config(folder: Path, edit: Callable[[str], str] | None = None, *,
                        source: Path = SHIPPED_CONFIG, name: str = "dispatcher.toml") -> Path:
    """Write the shipped configuration (its text changed by `edit`, if given) to
    `folder/name` and return the new file's path. The template folder and the forbidden
    phrases, relative to the shipped file's folder, are made absolute, so that the copy
    finds them from anywhere (a temporary folder, another process's working directory)."""
    text = source.read_text(encoding="utf-8")
    if edit is not None:
        text = edit(text)
    base = source.resolve().parent
    for key in _PATH_KEYS:
        def absolute(match: re.Match[str], key: str = key) -> str:
            return f'{key} = "{(base / match.group(1)).resolve()}"'

        text = re.sub(rf'(?m)^{key} = "([^"]*)"', absolute, text)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path
