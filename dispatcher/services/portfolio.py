"""A generated, realistic-looking portfolio of cases in the import format (SPEC section 3),
for the demo, benchmarks and tests. Deterministic for a given seed. Names, numbers and
addresses are synthetic (reserved example.com domain, valid-format test numbers)."""

from __future__ import annotations

import csv
import datetime as dt
import random
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

COLUMNS = [
    "case_id", "name", "jurisdiction", "locale", "timezone", "phone", "email",
    "sms_consent", "voice_consent", "email_consent", "currency",
    "principal", "interest", "penalty", "fees", "amount_due", "penalty_rate_daily",
    "due_date", "status", "product",
]

_CN_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_CN_GIVEN = [
    "伟",
    "芳",
    "娜",
    "敏",
    "静",
    "丽",
    "强",
    "磊",
    "军",
    "洋",
    "勇",
    "艳",
    "杰",
    "娟",
    "涛",
    "明",
    "超",
    "秀英",
    "建华",
    "志强",
]
_US_FIRST = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
             "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Maria", "Carlos"]
_US_LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
            "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Lee"]
# Area codes with a single time zone each: New York, Chicago, Denver, Los Angeles.
_US_AREAS = ["212", "312", "303", "310", "646", "415"]
_CN_PREFIXES = ["138", "139", "137", "150", "186", "135"]
CENT = Decimal("0.01")
_STATE_AREAS = {"us-ma": "617", "us-wa": "206", "us-nyc": "212"}

#: A collections book is mostly early delinquency, with a thinning tail (roll rates).
REALISTIC_DPD_BUCKETS = [(-10, 0, 0.30), (1, 29, 0.35), (30, 59, 0.13), (60, 89, 0.10), (90, 150, 0.12)]


def generate_cases(
    n: int,
    today: dt.date,
    *,
    seed: int = 7,
    dpd_range: tuple[int, int] = (-10, 130),
    cn_share: float = 0.6,
    prefix: str = "C",
    dpd_buckets: list[tuple[int, int, float]] | None = None,
    other_profiles: float = 0.0,
) -> Iterator[dict[str, str]]:
    """Yield `n` import rows whose days past due at `today` spread over `dpd_range`
    uniformly, or over `dpd_buckets` ((low, high, weight), ...) when given.

    `other_profiles` is the share of cases put under the other shipped profiles
    (`cn-bank`, `cn-internet`; `us-ma`, `us-wa`, `us-nyc` with a number of that place);
    drawn from a generator of its own, so the rest of the portfolio is the same."""
    rng = random.Random(seed)
    placer = random.Random(seed + 1)
    for i in range(n):
        cn = rng.random() < cn_share
        if dpd_buckets:
            low, high, _ = rng.choices(dpd_buckets, [w for _, _, w in dpd_buckets])[0]
            dpd = rng.randint(low, high)
        else:
            dpd = rng.randint(*dpd_range)
        due = today - dt.timedelta(days=dpd)
        principal = Decimal(rng.randrange(50_000, 5_000_000)) / 100
        rate = rng.choice([Decimal("0.0005"), Decimal("0.0003"), Decimal("0.0007"), None])
        overdue_days = max(dpd, 0)
        penalty = (principal * rate * overdue_days).quantize(CENT, ROUND_HALF_UP) if rate else Decimal("0.00")
        interest = (principal * Decimal("0.0002") * overdue_days).quantize(CENT, ROUND_HALF_UP)
        fees = rng.choice([Decimal("0.00"), Decimal("0.00"), Decimal("25.00")])
        amount_due = principal + interest + penalty + fees
        if cn:
            name = rng.choice(_CN_SURNAMES) + rng.choice(_CN_GIVEN)
            phone = "+86" + rng.choice(_CN_PREFIXES) + f"{rng.randrange(10**8):08d}"
            juris, locale, currency, tz = "cn", "zh-CN", "CNY", ""
        else:
            name = f"{rng.choice(_US_FIRST)} {rng.choice(_US_LAST)}"
            phone = "+1" + rng.choice(_US_AREAS) + "555" + f"{rng.randrange(100, 200):03d}{rng.randrange(10)}"
            juris, locale, currency = "us", "en-US", "USD"
            tz = rng.choice(["", "", "", "America/Chicago"])
            if rng.random() < 0.1:
                phone = ""  # unknown zone: the intersection of the profile's zones applies
        has_email = rng.random() < 0.85
        if other_profiles and placer.random() < other_profiles:
            juris = placer.choice(["cn-bank", "cn-internet"] if cn else ["us-ma", "us-wa", "us-nyc"])
            if phone and not cn:  # a number of that place: Boston, Seattle, Manhattan
                phone = "+1" + _STATE_AREAS[juris] + phone[5:]
                tz = ""
        yield {
            "case_id": f"{prefix}{i:07d}",
            "name": name,
            "jurisdiction": juris,
            "locale": locale,
            "timezone": tz,
            "phone": phone,
            "email": f"debtor{i}@example.com" if has_email else "",
            "sms_consent": "true" if cn or rng.random() < 0.8 else "false",
            "voice_consent": "true" if cn or rng.random() < 0.7 else "false",
            "email_consent": "true",
            "currency": currency,
            "principal": str(principal),
            "interest": str(interest),
            "penalty": str(penalty),
            "fees": str(fees),
            "amount_due": str(amount_due),
            "penalty_rate_daily": str(rate) if rate else "",
            "due_date": due.isoformat(),
            "status": "active",
            "product": rng.choice(["credit_card", "loan", "credit_card"]),
        }


def write_csv(path: Path, rows: Iterator[dict[str, str]]) -> int:
    """Write rows as an import CSV; returns the number written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    return count
