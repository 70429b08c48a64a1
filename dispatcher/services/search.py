"""Finding a case (SPEC section 14): by a case id prefix (any case), a name substring
(any script: 张, Morgan; see `SUBSTRING_MIN` for one or two characters), the last 4
digits of a phone, or an e-mail local part (or its beginning).

One query per kind, each answerable by an index on PostgreSQL (migration 0007: `lower(
case_id) COLLATE "C"`, a trigram GIN index on the name, `right(address, 4)` of SMS
contact points, `address text_pattern_ops` of e-mail contact points), each with the
limit, all in one statement (`UNION ALL`); the hits are merged (id matches first, then
phone, e-mail, name) and returned masked: a search result shows who is meant, never a
full name, number or address (the case page does, to those allowed). SQLite runs the same queries without those indexes.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, literal, or_, select, union_all
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
#: A name query this long matches anywhere in the name; a shorter one matches the
#: name's start (one character: the surname, 张) or its start or end (two: 张伟, 小明).
#: Why: a trigram index answers a substring of 3 or more characters, and the start and
#: end of a name through its padded edge trigrams, but nothing answers "these 1-2
#: characters anywhere" but a scan of every case (a second and more at 1,000,000).
SUBSTRING_MIN = 3
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
    case_key: Any = func.lower(cases_t.c.case_id)
    if conn.dialect.name == "postgresql":  # the expression of ix_search_cases_id: prefix and order in one scan
        case_key = case_key.collate("C")
    queries: dict[str, Any] = {
        "case_id": select(cases_t.c.case_id)
        .where(case_key.like(pattern.lower() + "%", escape="\\"))
        .order_by(case_key).limit(limit),
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
        name = cases_t.c.name
        matches: ColumnElement[bool]
        if len(q) >= SUBSTRING_MIN:
            matches = name.ilike(f"%{pattern}%", escape="\\")
        elif len(q) == 2:  # a surname and a given character, or a given name: 张伟, 小明
            matches = or_(name.ilike(f"{pattern}%", escape="\\"), name.ilike(f"%{pattern}", escape="\\"))
        else:  # one character: a surname, 张
            matches = name.ilike(f"{pattern}%", escape="\\")
        queries["name"] = select(cases_t.c.case_id).where(matches).limit(limit)
    return queries


def search_statement(conn: Connection, q: str, limit: int) -> Any:
    """Every kind's query as one statement, rows (kind, case_id): one round trip, each
    branch its own index scan and limit (`q` normalised, see `search_cases`)."""
    parts = [select(literal(kind).label("kind"), sub.c.case_id)
             for kind, sub in ((k, stmt.subquery()) for k, stmt in _queries(conn, q, limit).items())]
    return union_all(*parts)


def _run(conn: Connection, statement: Any, q: str) -> list[Any]:
    """The search statement's rows. For a one- or two-character query on PostgreSQL,
    with sequential scans off, in a savepoint rolled back afterwards (which undoes the
    `SET LOCAL`): the planner cannot estimate how many names start or end with 1-2
    characters, and with a LIMIT it sometimes bets on a sequential scan finding 20 rows
    early; when the bet is wrong it reads the whole table (0.2 s and more at 1,000,000
    cases), while the trigram index answers in milliseconds. Longer queries keep the
    planner's choice (its estimates are good there, and a scan that finds a common name
    at once is cheaper than a large bitmap). PostgreSQL has no per-query planner hint;
    this is the narrowest way to give one."""
    if conn.dialect.name != "postgresql" or len(q) >= SUBSTRING_MIN:
        return list(conn.execute(statement).all())
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return list(conn.execute(statement).all())
    finally:
        savepoint.rollback()


def search_cases(conn: Connection, query: str, limit: int = 20) -> list[CaseHit]:
    """The cases `query` finds (see the module docstring), at most `limit`, masked.
    `SearchError` for an empty or over-long query."""
    q = " ".join(query.split())
    if not q:
        raise SearchError("type part of a case id, a name, the last 4 digits of a phone or an e-mail name")
    if len(q) > QUERY_MAX:
        raise SearchError(f"a search is at most {QUERY_MAX} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in q):
        raise SearchError("a search cannot contain control characters")
    limit = max(1, min(limit, LIMIT_MAX))
    found: dict[str, list[str]] = {}
    rows = _run(conn, search_statement(conn, q, limit), q)
    ordered = sorted(rows, key=lambda r: (KINDS.index(r.kind), r.case_id))
    for kind, case_id in ordered:
        if kind not in found.setdefault(case_id, []):
            found[case_id].append(kind)
    ids = list(found)[:limit]
    if not ids:
        return []
    c = cases_t.c
    sms, email = contacts_t.alias("sms"), contacts_t.alias("email")
    details = {r.case_id: r for r in conn.execute(
        select(c.case_id, c.name, c.status, c.jurisdiction, c.currency, c.amount_due, c.paid_total,
               sms.c.address.label("phone"), email.c.address.label("email"))
        .outerjoin(sms, (sms.c.case_id == c.case_id) & (sms.c.channel == Channel.SMS.value))
        .outerjoin(email, (email.c.case_id == c.case_id) & (email.c.channel == Channel.EMAIL.value))
        .where(c.case_id.in_(ids)))}
    hits = []
    for case_id in ids:
        row = details[case_id]
        hits.append(CaseHit(
            case_id=case_id, name=mask_name(row.name), phone=mask(row.phone) if row.phone else None,
            email=mask(row.email) if row.email else None, status=row.status, jurisdiction=row.jurisdiction,
            currency=row.currency, outstanding=cents(row.amount_due - row.paid_total),
            matched=tuple(found[case_id]),
        ))
    return hits
