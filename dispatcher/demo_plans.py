"""The demo's repayment plans: debtors who took a plan before the simulation (some kept
the first instalment, some did not, so the first tick breaks theirs), and debtors who
take one on their page during it, through the real page and its forms.

Kept apart from `dispatcher.demo` so the simulation reads as what people do.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from dispatcher.config import Config
from dispatcher.domain import CaseStatus
from dispatcher.policy.plans import eligible_offers, plan_terms, schedule
from dispatcher.policy.zones import local_date, primary_zone
from dispatcher.services.agreement_text import agreement_text, plan_terms_data
from dispatcher.store import repository
from dispatcher.store.plans import create_plan
from dispatcher.store.snapshots import iter_snapshots
from dispatcher.store.tables import cases_t

DEMO_DEBTOR = "demo-debtor"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_OFFER = re.compile(r'name="offer" value="([a-z0-9_]+)">\s*<input type="hidden" name="digest" value="(\w+)"')


def seed_plans(engine: Engine, config: Config, now: dt.datetime, rng: random.Random, share: float = 0.05) -> int:
    """Give about `share` of the eligible active cases a plan accepted 35 days ago (its
    first instalment 5 days overdue); half of them paid that instalment. Returns how
    many plans were made."""
    with engine.connect() as conn:
        active = list(conn.execute(select(cases_t.c.case_id).where(cases_t.c.status == CaseStatus.ACTIVE.value)
                                   .order_by(cases_t.c.case_id)).scalars())
    chosen = sorted(rng.sample(active, k=max(1, int(len(active) * share)))) if active else []
    made = 0
    grace = config.self_service.plan_grace_days
    for snapshot in iter_snapshots(engine, case_ids=chosen, now=now):
        case = snapshot.case
        zone = primary_zone(snapshot.zones, config.jurisdictions.get(case.jurisdiction))
        accepted = local_date(now, zone) - dt.timedelta(days=35)
        stage = config.stage_for((accepted - case.due_date).days)
        offers = eligible_offers(config.self_service.plans, case, stage.name if stage else None)
        if not offers:
            continue
        offer = offers[0]
        total, waived = plan_terms(case, offer)
        instalments = schedule(offer, total, accepted)
        locale = "zh-CN" if case.locale.lower().startswith("zh") else "en-US"
        text = agreement_text(case, offer, instalments, waived, organisation=config.organisation.name_for(locale),
                              locale=locale, today=accepted, grace_days=grace)
        at = now - dt.timedelta(days=35)
        with engine.begin() as conn:
            create_plan(conn, case.case_id, offer=offer.name, instalments=instalments, waived=waived,
                        paid_at_start=case.paid_total, created_on=accepted, locale=locale,
                        terms=plan_terms_data(case, offer, instalments, waived, accepted, grace), text=text,
                        by=DEMO_DEBTOR, now=at)
            if rng.random() < 0.5:  # kept: the first instalment came in on time
                repository.record_payment(conn, case.case_id, instalments[0].amount, "demo-payment-feed",
                                          now - dt.timedelta(days=6))
        made += 1
    return made


async def open_links(links: list[str], rng: random.Random, plan_share: float = 0.3) -> int:
    """Debtors open their payment links (the page logs the click); some take the first
    plan they are offered there, through the page's form. Returns the plans taken."""
    import httpx

    taken = 0
    for link in links:
        async with httpx.AsyncClient(follow_redirects=False, timeout=10) as client:
            page = await client.get(link)
            csrf, offer = _CSRF.search(page.text), _OFFER.search(page.text)
            if page.status_code != 200 or csrf is None or offer is None or rng.random() >= plan_share:
                continue
            answer: Any = await client.post(f"{link}/plan", data={"csrf": csrf.group(1), "offer": offer.group(1),
                                                                  "digest": offer.group(2)})
            taken += answer.status_code == 303
    return taken


def plan_counts(kinds: dict[str, int]) -> dict[str, int]:
    """The summary's plan lines, from the count of each event kind."""
    return {
        "repayment plans taken": kinds.get("plan_created", 0),
        "plans broken": kinds.get("plan_broken", 0),
        "plans completed": kinds.get("plan_completed", 0),
    }

