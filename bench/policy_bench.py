"""Cost of the pure decision core: microseconds per case for `Gate.decide_case`.

    .venv/bin/python bench/policy_bench.py [--cases 20000] [--repeat 7]

A generated portfolio at one `now` (as in a plan run): two thirds China, one third US
(one zone each, as stored by the importer), due dates spread over every stage, all
channels reachable, 0-4 past messages per case. Prints the best of --repeat passes and
the mix of decisions. No database: this is the policy's share of the plan budget.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

from dispatcher.config import load_config
from dispatcher.domain import Case, CaseSnapshot, Channel, ContactPoint, MessageStatus, SentMessage
from dispatcher.policy import Gate

ROOT = Path(__file__).resolve().parent.parent


def portfolio(n: int, now: dt.datetime, stages: list[str]) -> list[CaseSnapshot]:
    rnd = random.Random(7)
    out = []
    for i in range(n):
        us = i % 3 == 0
        due = now.date() - dt.timedelta(days=rnd.randint(-5, 120))
        phone = "+12125550100" if us else "+8613812345678"
        case = Case(
            case_id=f"C{i:07d}", name="Li Lei", jurisdiction="us" if us else "cn",
            locale="en-US" if us else "zh-CN", currency="USD" if us else "CNY",
            principal=Decimal("900"), interest=Decimal("80"), penalty=Decimal("20"), fees=Decimal("0"),
            amount_due=Decimal("1000"), due_date=due, phone=phone, email="debtor@example.com",
        )
        contacts = tuple(
            ContactPoint(ch, "debtor@example.com" if ch is Channel.EMAIL else phone, consent=True) for ch in Channel
        )
        history = tuple(
            SentMessage(
                channel=rnd.choice(list(Channel)),
                at=(now - dt.timedelta(days=rnd.randint(1, 10), hours=rnd.randint(0, 5))).astimezone(dt.UTC),
                status=MessageStatus.DELIVERED,
                stage=rnd.choice(stages),
                template=None,
            )
            for _ in range(rnd.randint(0, 4))
        )
        zones = ("America/New_York",) if us else ("Asia/Shanghai",)
        out.append(CaseSnapshot(case, contacts, (), history, frozenset(), zones))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    config = load_config(ROOT / "config" / "dispatcher.toml")
    catalog = {
        (ch, stage.name, locale): [f"{ch.value}/{stage.name}/v{k}" for k in (1, 2, 3)]
        for stage in config.stages
        for ch in stage.channels
        for locale in ("zh-CN", "en-US")
    }
    # Thu 2026-12-10 10:00 in Shanghai (21:00 the day before in New York)
    now = dt.datetime(2026, 12, 10, 2, 0, tzinfo=dt.UTC)
    snapshots = portfolio(args.cases, now, [s.name for s in config.stages])
    gate = Gate(config)

    mix: Counter[str] = Counter()
    lines = 0
    for snapshot in snapshots:  # warm the caches, as the first batch of a plan run does
        for d in gate.decide_case(snapshot, catalog, now):
            mix[f"{d.action.value}:{d.reason.value}"] += 1
            lines += 1
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.process_time()
        for snapshot in snapshots:
            gate.decide_case(snapshot, catalog, now)
        best = min(best, time.process_time() - t0)
    per_case = best / len(snapshots) * 1e6
    print(f"Gate.decide_case: {per_case:.1f} us/case ({len(snapshots) / best:,.0f} cases/s on one core, CPU time),"
          f" {lines / len(snapshots):.2f} lines/case")
    for key, count in mix.most_common():
        print(f"  {key:28} {count / lines:6.1%}")


if __name__ == "__main__":
    main()
