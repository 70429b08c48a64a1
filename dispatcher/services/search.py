"""Finding a case (SPEC section 14): by a case id prefix (any case), a name substring
(any script: 张, Morgan), the last 4 digits of a phone, or an e-mail local part.

One query per kind, each answerable by an index on PostgreSQL (migration 0006: `lower(
case_id) text_pattern_ops`, a trigram GIN index on the name, `right(address, 4)` of SMS
contact points, `address text_pattern_ops` of e-mail contact points), each with the
limit; the hits are merged (id matches first, then phone, e-mail, name) and returned
masked: a search result shows who is meant, never a full name, number or address (the
case page does, to those allowed). SQLite runs the same queries without those indexes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.engine import Connection

from dispatcher.domain import Channel
from dispatcher.logs import mask, mask_name
from dispatcher.store.tables import cases_t, contacts_t
from dispatcher.store.values import cents

#: The longest query looked at (a case id is at most 64 characters, an address 320).
QUERY_MAX = 120
LIMIT_MAX = 100
_LAST4 = re.compile(r"^\d{4}$")
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9._%+\-]+@?[A-Za-z0-9.\-]*$")
#: the order kinds are listed in
KINDS = ("case_id", "phone_last4", "email", "name")


class SearchError(ValueError):
    """The query cannot be searched; the message says what to type."""


@dataclass(frozen=True, slots=True)
class CaseHit:
    case_id: str
    name: str  # masked: 张**, A**** M*****
    phone: str | None  # masked: +86138****8001
    email: str | None  # masked: z***@example.com
    status: str
    jurisdiction: str
    currency: str
    outstanding: Decimal
    matched: tuple[str, ...]  # which of KINDS found it

    def as_json(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "name": self.name, "phone": self.phone, "email": self.email,
                "status": self.status, "jurisdiction": self.jurisdiction, "currency": self.currency,
                "outstanding": str(self.outstanding), "matched": list(self.matched)}


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _last4(conn: Connection) -> ColumnElement[Any]:
    address = contacts_t.c.address
    # PostgreSQL: the expression of ix_search_contacts_last4; SQLite has no right()
    return func.right(address, 4) if conn.dialect.name == "postgresql" else func.substr(address, -4)


def _queries(conn: Connection, q: str, limit: int) -> dict[str, Any]:
    pattern = _like_escape(q)
    queries: dict[str, Any] = {
        "case_id": select(cases_t.c.case_id)
        .where(func.lower(cases_t.c.case_id).like(pattern.lower() + "%", escape="\\"))
        .order_by(func.lower(cases_t.c.case_id)).limit(limit),
    }
    if _LAST4.match(q):
        queries["phone_last4"] = (
            select(contacts_t.c.case_id)
            .where(contacts_t.c.channel == Channel.SMS.value, _last4(conn) == q).limit(limit)
        )
    if _EMAIL_LOCAL.match(q) and not q.isdigit():
        queries["email"] = (
            select(contacts_t.c.case_id)
            .where(contacts_t.c.channel == Channel.EMAIL.value,
                   contacts_t.c.address.like(pattern.lower() + ("" if "@" in q else "%@") + "%", escape="\\"))
            .limit(limit)
        )
    if not q.isdigit():
        queries["name"] = (
            select(cases_t.c.case_id).where(cases_t.c.name.ilike(f"%{pattern}%", escape="\\")).limit(limit)
        )
    return queries


def search_cases(conn: Connection, query: str, limit: int = 20) -> list[CaseHit]:
    """The cases `query` finds (see the module docstring), at most `limit`, masked.
    `SearchError` for an empty or over-long query."""
    q = " ".join(query.split())
    if not q:
        raise SearchError("type part of a case id, a name, the last 4 digits of a phone or an e-mail name")
    if len(q) > QUERY_MAX:
        raise SearchError(f"a search is at most {QUERY_MAX} characters")
    limit = max(1, min(limit, LIMIT_MAX))
    found: dict[str, list[str]] = {}
    for kind, stmt in _queries(conn, q, limit).items():
        for case_id in sorted(set(conn.execute(stmt).scalars())):
            found.setdefault(case_id, []).append(kind)
    ids = list(found)[:limit]
    if not ids:
        return []
    c = cases_t.c
    rows = {r.case_id: r for r in conn.execute(
        select(c.case_id, c.name, c.status, c.jurisdiction, c.currency, c.amount_due, c.paid_total)
        .where(c.case_id.in_(ids)))}
    addresses: dict[tuple[str, str], str] = {
        (r.case_id, r.channel): r.address for r in conn.execute(
            select(contacts_t.c.case_id, contacts_t.c.channel, contacts_t.c.address)
            .where(contacts_t.c.case_id.in_(ids), contacts_t.c.channel.in_([Channel.SMS.value, Channel.EMAIL.value]),
                   contacts_t.c.address.is_not(None)))
    }
    hits = []
    for case_id in ids:
        row = rows[case_id]
        phone, email = addresses.get((case_id, Channel.SMS.value)), addresses.get((case_id, Channel.EMAIL.value))
        hits.append(CaseHit(
            case_id=case_id, name=mask_name(row.name), phone=mask(phone) if phone else None,
            email=mask(email) if email else None, status=row.status, jurisdiction=row.jurisdiction,
            currency=row.currency, outstanding=cents(row.amount_due - row.paid_total),
            matched=tuple(found[case_id]),
        ))
    return hits
