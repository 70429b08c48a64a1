"""The plan check: run after each planning pass (the daemon, `dispatcher tick`). Ends
the repayment plans whose standing changed:

- broken (an instalment unpaid `plan_grace_days` after its date): the plan is marked
  `broken`, a `plan_broken` event and a `broken_promise` task for a person; the gate
  already resumes collection at the case's own stage, whether or not this ran yet;
- completed (every instalment paid): `plan_completed`; when the plan waived the
  penalty and only the waived amount is left, the case is closed as `settled`.

Safe on several instances at once: each plan is ended by one conditional update.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, true
from sqlalchemy.engine import Engine

from dispatcher.config import Config
from dispatcher.domain import CaseStatus
from dispatcher.policy import lifecycle
from dispatcher.policy.plans import PlanStatus, plan_standing
from dispatcher.policy.zones import local_date, primary_zone
from dispatcher.services.case_tasks import open_task
from dispatcher.services.receipts import resume_broken_promises
from dispatcher.store import repository
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.plans import BROKEN, COMPLETED, end_plan, plans_in_force
from dispatcher.store.tables import cases_t
from dispatcher.store.values import cents, split_list

log = logging.getLogger("dispatcher.plans")

ACTOR_SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class PlanCheck:
    broken: int = 0
    completed: int = 0


def check_plans(engine: Engine, config: Config, now: dt.datetime) -> PlanCheck:
    """End every plan in force that is now broken or completed (see the module docstring)."""
    grace = config.self_service.plan_grace_days
    with engine.connect() as conn:
        plans = plans_in_force(conn, lambda col: true())
        cases = {
            r.case_id: r for r in conn.execute(
                select(cases_t.c.case_id, cases_t.c.jurisdiction, cases_t.c.zones, cases_t.c.paid_total,
                       cases_t.c.amount_due, cases_t.c.status)
                .where(cases_t.c.case_id.in_(sorted(plans)))
            )
        } if plans else {}
    broken = completed = 0
    for case_id, plan in plans.items():
        row = cases[case_id]
        zone = primary_zone(split_list(row.zones), config.jurisdictions.get(row.jurisdiction))
        standing = plan_standing(plan, cents(row.paid_total), local_date(now, zone), grace)
        if standing.status is PlanStatus.KEPT:
            continue
        with engine.begin() as conn:
            if standing.status is PlanStatus.BROKEN:
                if not end_plan(conn, plan.plan_id, BROKEN, now):
                    continue
                missed = standing.missed
                assert missed is not None
                record_event(conn, EventKind.PLAN_BROKEN, now, case_id=case_id, actor=ACTOR_SYSTEM,
                             plan_id=plan.plan_id, instalment=missed.instalment.number,
                             due=missed.instalment.due.isoformat(), unpaid=str(missed.remaining))
                open_task(conn, config, case_id, "broken_promise", now, actor=ACTOR_SYSTEM,
                          source=f"plan:{plan.plan_id}",
                          detail=f"repayment plan {plan.plan_id}: instalment {missed.instalment.number} due"
                                 f" {missed.instalment.due.isoformat()} unpaid ({missed.remaining} left)",
                          plan_id=plan.plan_id, instalment=missed.instalment.number,
                          due=missed.instalment.due.isoformat())
                broken += 1
                continue
            if not end_plan(conn, plan.plan_id, COMPLETED, now):
                continue
            record_event(conn, EventKind.PLAN_COMPLETED, now, case_id=case_id, actor=ACTOR_SYSTEM,
                         plan_id=plan.plan_id, waived=str(plan.waived))
            left = cents(row.amount_due) - cents(row.paid_total)
            if row.status == CaseStatus.ACTIVE.value and plan.waived > 0 and 0 < left <= plan.waived:
                repository.settle_case(conn, case_id, ACTOR_SYSTEM, now, reason=lifecycle.PLAN_KEPT_PENALTY_WAIVED)
            completed += 1
    if broken or completed:
        log.info("repayment plans: %d broken, %d completed", broken, completed)
    return PlanCheck(broken, completed)


def after_planning(config: Config) -> Callable[[Engine, dt.datetime], None]:
    """The daemon's job after each planning pass: expired promises to pay, then plans."""
    def run(engine: Engine, now: dt.datetime) -> None:
        resume_broken_promises(engine, now, config)
        check_plans(engine, config, now)

    return run
