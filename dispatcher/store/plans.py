"""Repayment plans and agreements in the store: made from the debtor's page, read by the
snapshot (plans in force), ended by the plan check (broken, completed).

Core SQL inside the caller's transaction, like `store.repository`; every change appends
an event on the case.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from dispatcher.domain import Instalment, RepaymentPlan
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.repository import CaseNotFound
from dispatcher.store.tables import agreements_t, cases_t, instalments_t, plans_t
from dispatcher.store.values import cents

ACTIVE, BROKEN, COMPLETED = "active", "broken", "completed"


class PlanExists(ValueError):
    """The case already has a plan in force."""


@dataclass(frozen=True, slots=True)
class Agreement:
    agreement_id: int
    case_id: str
    kind: str
    locale: str
    accepted_at: dt.datetime
    accepted_by: str
    terms: dict[str, Any]
    text: str
    content_hash: str
    plan_id: int | None
    plan_status: str | None


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def create_plan(
    conn: Connection, case_id: str, *, offer: str, instalments: tuple[Instalment, ...], waived: Decimal,
    paid_at_start: Decimal, created_on: dt.date, locale: str, terms: dict[str, Any], text: str, by: str,
    now: dt.datetime, message_id: int | None = None,
) -> tuple[int, int]:
    """Store the agreement (terms and the exact text shown) and its plan; returns
    (plan id, agreement id). `PlanExists` if the case has a plan in force."""
    # touch the case first: its write lock makes "no plan in force" hold until commit
    if conn.execute(update(cases_t).where(cases_t.c.case_id == case_id).values(updated_at=now)).rowcount == 0:
        raise CaseNotFound(case_id)
    if active_plan_id(conn, case_id) is not None:
        raise PlanExists(f"case {case_id} already has a repayment plan in force")
    agreement_id = int(conn.execute(insert(agreements_t).values(
        case_id=case_id, kind="repayment_plan", locale=locale, accepted_at=now, accepted_by=by,
        message_id=message_id, terms=json.dumps(terms, ensure_ascii=False, sort_keys=True, default=str),
        text=text, content_hash=text_hash(text),
    )).inserted_primary_key[0])  # type: ignore[index]
    total = sum((i.amount for i in instalments), Decimal("0.00"))
    plan_id = int(conn.execute(insert(plans_t).values(
        case_id=case_id, agreement_id=agreement_id, offer=offer, status=ACTIVE, created_at=now,
        created_on=created_on, paid_at_start=paid_at_start, total=total, waived=waived,
    )).inserted_primary_key[0])  # type: ignore[index]
    conn.execute(insert(instalments_t), [
        {"plan_id": plan_id, "number": i.number, "due": i.due, "amount": i.amount} for i in instalments
    ])
    record_event(conn, EventKind.PLAN_CREATED, now, case_id=case_id, message_id=message_id, actor=by,
                 plan_id=plan_id, agreement_id=agreement_id, offer=offer, total=str(total), waived=str(waived),
                 instalments=[{"n": i.number, "due": i.due.isoformat(), "amount": str(i.amount)}
                              for i in instalments])
    return plan_id, agreement_id


def active_plan_id(conn: Connection, case_id: str) -> int | None:
    return conn.execute(
        select(plans_t.c.id).where(plans_t.c.case_id == case_id, plans_t.c.status == ACTIVE)
    ).scalar()


def plans_in_force(conn: Connection, which: Callable[[Any], ColumnElement[bool]]) -> dict[str, RepaymentPlan]:
    """The plans in force of the cases `which(case_id column)` selects, by case id."""
    p, i = plans_t.c, instalments_t.c
    rows = conn.execute(
        select(p.id, p.case_id, p.offer, p.created_on, p.paid_at_start, p.waived, i.number, i.due, i.amount)
        .join_from(plans_t, instalments_t, i.plan_id == p.id)
        .where(which(p.case_id), p.status == ACTIVE)
        .order_by(p.case_id, p.id, i.number)
    ).all()
    parts: dict[tuple[int, str], list[Any]] = defaultdict(list)
    for row in rows:
        parts[(row.id, row.case_id)].append(row)
    out: dict[str, RepaymentPlan] = {}
    for (plan_id, case_id), plan_rows in parts.items():
        first = plan_rows[0]
        out[case_id] = RepaymentPlan(
            plan_id, first.offer, _date(first.created_on),
            tuple(Instalment(r.number, _date(r.due), cents(r.amount)) for r in plan_rows),
            cents(first.paid_at_start), cents(first.waived),
        )
    return out


def _date(value: Any) -> dt.date:
    return dt.date.fromisoformat(value) if isinstance(value, str) else value


def end_plan(conn: Connection, plan_id: int, status: str, now: dt.datetime) -> bool:
    """Mark an active plan `broken` or `completed`; False if it was no longer active
    (another instance ended it first)."""
    if status not in (BROKEN, COMPLETED):
        raise ValueError(f"a plan ends as {BROKEN} or {COMPLETED}, not {status!r}")
    return bool(conn.execute(
        update(plans_t).where(plans_t.c.id == plan_id, plans_t.c.status == ACTIVE)
        .values(status=status, ended_at=now)
    ).rowcount)


def get_agreement(conn: Connection, agreement_id: int) -> Agreement | None:
    a = agreements_t.c
    row = conn.execute(
        select(a.id, a.case_id, a.kind, a.locale, a.accepted_at, a.accepted_by, a.terms, a.text, a.content_hash,
               plans_t.c.id.label("plan_id"), plans_t.c.status.label("plan_status"))
        .outerjoin_from(agreements_t, plans_t, plans_t.c.agreement_id == a.id)
        .where(a.id == agreement_id)
    ).first()
    if row is None:
        return None
    return Agreement(row.id, row.case_id, row.kind, row.locale, row.accepted_at, row.accepted_by,
                     json.loads(row.terms), row.text, row.content_hash, row.plan_id, row.plan_status)


def case_agreement_ids(conn: Connection, case_id: str) -> list[int]:
    """The case's agreements, oldest first."""
    return list(conn.execute(
        select(agreements_t.c.id).where(agreements_t.c.case_id == case_id).order_by(agreements_t.c.id)
    ).scalars())


def case_plans(conn: Connection, case_id: str) -> list[dict[str, Any]]:
    """The case's repayment plans, oldest first, for people (the timeline, the API):
    status, agreement, totals and instalments (amounts as strings, dates ISO)."""
    p, i = plans_t.c, instalments_t.c
    plans = conn.execute(select(plans_t).where(p.case_id == case_id).order_by(p.id)).all()
    if not plans:
        return []
    parts: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in conn.execute(select(instalments_t).where(i.plan_id.in_([r.id for r in plans]))
                            .order_by(i.plan_id, i.number)):
        parts[row.plan_id].append({"number": row.number, "due": _date(row.due).isoformat(),
                                   "amount": str(cents(row.amount))})
    return [{"plan_id": r.id, "offer": r.offer, "status": r.status, "agreement_id": r.agreement_id,
             "created_at": r.created_at.isoformat(), "created_on": _date(r.created_on).isoformat(),
             "total": str(cents(r.total)), "waived_if_kept": str(cents(r.waived)),
             "paid_at_start": str(cents(r.paid_at_start)),
             "ended_at": None if r.ended_at is None else r.ended_at.isoformat(), "instalments": parts[r.id]}
            for r in plans]
