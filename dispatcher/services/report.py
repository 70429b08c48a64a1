"""KPIs per stage, channel and template variant (SPEC section 9), as rows, JSON or an
HTML page with charts (inline SVG: no JavaScript, no external assets, opens offline).

Attribution: replies, opt-outs and disputes are attributed to the case's last message
sent before them (on any channel); link clicks to the message whose link was clicked;
a payment to the last contact within the 7 days before it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import html
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from dispatcher.domain import CLOSED_STATUSES
from dispatcher.store.tables import CaseRow, EventRow, HoldRow, MessageRow, PaymentRow
from dispatcher.store.values import cents

CLOSED = {s.value for s in CLOSED_STATUSES}
DELIVERED = {"delivered", "read", "completed"}
FAILED = {"failed", "undelivered", "busy", "no-answer"}
REPLY_KINDS = {"reply_received"}
OPT_OUT_KINDS = {"opted_out"}


@dataclass
class KpiRow:
    stage: str
    channel: str
    template: str
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    replies: int = 0
    opt_outs: int = 0
    clicks: int = 0
    payments_7d: int = 0
    complaints: int = 0
    first_contact_days: list[int] = field(default_factory=list, repr=False)

    @property
    def delivery_rate(self) -> float:
        return self.delivered / self.sent if self.sent else 0.0

    @property
    def avg_days_to_first_contact(self) -> float | None:
        days = self.first_contact_days
        return round(sum(days) / len(days), 2) if days else None

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("first_contact_days")
        data["delivery_rate"] = round(self.delivery_rate, 4)
        data["avg_days_overdue_to_first_delivered"] = self.avg_days_to_first_contact
        return data


@dataclass
class Balance:
    """What a jurisdiction's debtors owe now, in one currency (never summed across
    currencies): `outstanding = amount_due - paid_total` per case (SPEC 11), never below 0."""

    jurisdiction: str
    currency: str
    cases: int = 0
    open_cases: int = 0  # not paid, settled or closed
    amount_due: Decimal = Decimal("0.00")
    paid_total: Decimal = Decimal("0.00")
    outstanding: Decimal = Decimal("0.00")

    def as_json(self) -> dict[str, object]:
        return {"jurisdiction": self.jurisdiction, "currency": self.currency, "cases": self.cases,
                "open_cases": self.open_cases, "amount_due": str(self.amount_due),
                "paid_total": str(self.paid_total), "outstanding": str(self.outstanding)}


@dataclass
class Report:
    since: dt.date | None
    generated_at: dt.datetime
    rows: list[KpiRow]
    balances: list[Balance] = field(default_factory=list)

    def totals(self) -> KpiRow:
        total = KpiRow("all", "all", "all")
        for r in self.rows:
            for name in ("sent", "delivered", "failed", "replies", "opt_outs", "clicks", "payments_7d",
                         "complaints"):
                setattr(total, name, getattr(total, name) + getattr(r, name))
            total.first_contact_days.extend(r.first_contact_days)
        return total

    def as_json(self) -> dict[str, object]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "generated_at": self.generated_at.isoformat(),
            "rows": [r.as_json() for r in self.rows],
            "totals": self.totals().as_json(),
            "balances": [b.as_json() for b in self.balances],
        }


def build_report(engine: Engine, now: dt.datetime, since: dt.date | None = None) -> Report:
    """Compute the KPIs from the message log, events, holds and payments."""
    since_at = dt.datetime.combine(since, dt.time(0), tzinfo=dt.UTC) if since else None
    rows: dict[tuple[str, str, str], KpiRow] = {}
    # per case: sorted (sent_at, message key) for attribution
    contacts: dict[str, list[tuple[dt.datetime, tuple[str, str, str]]]] = defaultdict(list)
    by_message: dict[int, tuple[str, str, str]] = {}
    first_delivered: dict[str, tuple[dt.datetime, tuple[str, str, str]]] = {}
    key: tuple[str, str, str] | None  # (stage, channel, template); None: nothing to attribute to
    with engine.connect() as conn:
        q = select(col(MessageRow.id), col(MessageRow.case_id), col(MessageRow.stage), col(MessageRow.channel),
                   col(MessageRow.template_id), col(MessageRow.status), col(MessageRow.sent_at)).where(
            col(MessageRow.sent_at).is_not(None))
        if since_at:
            q = q.where(col(MessageRow.sent_at) >= since_at)
        for m in conn.execute(q.order_by(col(MessageRow.sent_at))):
            key = (m.stage or "-", m.channel, m.template_id or "(system)")
            row = rows.get(key) or rows.setdefault(key, KpiRow(*key))
            row.sent += 1
            if m.status in DELIVERED:
                row.delivered += 1
                if m.case_id not in first_delivered:
                    first_delivered[m.case_id] = (m.sent_at, key)
            elif m.status in FAILED:
                row.failed += 1
            contacts[m.case_id].append((m.sent_at, key))
            by_message[m.id] = key

        def attribute(case_id: str | None, at: dt.datetime) -> tuple[str, str, str] | None:
            if case_id is None or case_id not in contacts:
                return None
            seq = contacts[case_id]
            i = bisect.bisect_right(seq, (at, ("\uffff",) * 3)) - 1
            return seq[i][1] if i >= 0 else None

        eq = select(col(EventRow.case_id), col(EventRow.message_id), col(EventRow.kind), col(EventRow.at),
                    col(EventRow.data)).where(
            col(EventRow.kind).in_(["reply_received", "opted_out", "link_clicked"]))
        if since_at:
            eq = eq.where(col(EventRow.at) >= since_at)
        for e in conn.execute(eq):
            key = by_message.get(e.message_id) if e.message_id else None
            key = key or attribute(e.case_id, e.at)
            if key is None:
                continue
            if e.kind == "link_clicked":
                rows[key].clicks += 1
            elif e.kind == "opted_out":
                rows[key].opt_outs += 1
            else:
                rows[key].replies += 1
        hq = select(col(HoldRow.case_id), col(HoldRow.placed_at)).where(col(HoldRow.reason) == "dispute_hold")
        for h in conn.execute(hq):
            key = attribute(h.case_id, h.placed_at)
            if key is not None:
                rows[key].complaints += 1
        pq = select(col(PaymentRow.case_id), col(PaymentRow.at))
        for p in conn.execute(pq):
            key = attribute(p.case_id, p.at)
            if key is None:
                continue
            seq = contacts[p.case_id]
            last = max(t for t, k in seq if t <= p.at)
            if p.at - last <= dt.timedelta(days=7):
                rows[key].payments_7d += 1
        if first_delivered:
            due = dict(conn.execute(select(col(CaseRow.case_id), col(CaseRow.due_date))).all())
            for case_id, (at, key) in first_delivered.items():
                due_date = due.get(case_id)
                if due_date is not None and at.date() > due_date:
                    rows[key].first_contact_days.append((at.date() - due_date).days)
        balances = _balances(conn)
    ordered = sorted(rows.values(), key=lambda r: (_stage_order(r.stage), r.channel, r.template))
    return Report(since, now, ordered, balances)


def _balances(conn: Connection) -> list[Balance]:
    """What debtors owe now, per jurisdiction and currency (one pass over the cases)."""
    out: dict[tuple[str, str], Balance] = {}
    zero = Decimal("0.00")
    for jurisdiction, currency, status, amount_due, paid in conn.execute(
        select(col(CaseRow.jurisdiction), col(CaseRow.currency), col(CaseRow.status), col(CaseRow.amount_due),
               col(CaseRow.paid_total))
    ):
        b = out.get((jurisdiction, currency)) or out.setdefault((jurisdiction, currency),
                                                                 Balance(jurisdiction, currency))
        due, paid_total = cents(Decimal(amount_due)), cents(Decimal(paid))
        b.cases += 1
        b.amount_due += due
        b.paid_total += paid_total
        if status not in CLOSED:
            b.open_cases += 1
            b.outstanding += max(due - paid_total, zero)
    return [out[k] for k in sorted(out)]


def _stage_order(stage: str) -> tuple[int, str]:
    order = ["pre_due", "early", "dpd30", "dpd60", "dpd90"]
    return (order.index(stage) if stage in order else len(order), stage)


COLUMNS = ("stage", "channel", "template", "sent", "delivered", "failed", "replies", "opt_outs", "clicks",
           "payments_7d", "complaints")


def report_json(report: Report) -> str:
    return json.dumps(report.as_json(), ensure_ascii=False, indent=2, default=_default)


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def _bar_chart(title: str, items: list[tuple[str, float]], fmt: str = "{:.0%}", max_value: float | None = None) -> str:
    width, bar_h, gap, label_w = 720, 16, 6, 260
    top = max_value if max_value is not None else max((v for _, v in items), default=1) or 1
    height = len(items) * (bar_h + gap) + 30
    parts = [f'<svg role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="12">',
             f'<text x="0" y="14" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, value) in enumerate(items):
        y = 24 + i * (bar_h + gap)
        w = 0 if top == 0 else (width - label_w - 70) * value / top
        parts.append(f'<text x="0" y="{y + 12}">{html.escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#2b6cb0"/>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 12}">{html.escape(fmt.format(value))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def report_html(report: Report) -> str:
    """A self-contained page: KPI table and bar charts per template variant."""
    totals = report.totals()
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in (*COLUMNS, "delivery rate", "days to 1st delivered"))
    body_rows = []
    for r in [*report.rows, totals]:
        cells = [getattr(r, c) for c in COLUMNS]
        cells += [
            f"{r.delivery_rate:.1%}",
            r.avg_days_to_first_contact if r.avg_days_to_first_contact is not None else "-",
        ]
        cls = ' class="total"' if r is totals else ""
        body_rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    labelled = [(f"{r.template}", r) for r in report.rows if r.sent]
    charts = [
        _bar_chart("Delivery rate by template variant", [(k, r.delivery_rate) for k, r in labelled], max_value=1.0),
        _bar_chart("Messages sent by template variant", [(k, float(r.sent)) for k, r in labelled], fmt="{:.0f}"),
        _bar_chart("Payments within 7 days after contact", [(k, float(r.payments_7d)) for k, r in labelled],
                   fmt="{:.0f}"),
        _bar_chart("Opt-outs and complaints", [(k, float(r.opt_outs + r.complaints)) for k, r in labelled],
                   fmt="{:.0f}"),
    ]
    since = report.since.isoformat() if report.since else "the beginning"
    balance_rows = [
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            b.jurisdiction, b.currency, b.cases, b.open_cases, b.amount_due, b.paid_total, b.outstanding)) + "</tr>"
        for b in report.balances
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Dispatcher report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1a202c; }}
table {{ border-collapse: collapse; font-size: 13px; margin-bottom: 2rem; }}
th, td {{ border: 1px solid #cbd5e0; padding: 4px 8px; text-align: right; }}
th:nth-child(-n+3), td:nth-child(-n+3) {{ text-align: left; }}
tr.total td {{ font-weight: bold; background: #edf2f7; }}
figure {{ margin: 0 0 2rem 0; }}
</style></head><body>
<h1>Dispatcher report</h1>
<p>Since {html.escape(since)}; generated {html.escape(report.generated_at.isoformat())}.
Total sent {totals.sent}, delivered {totals.delivered} ({totals.delivery_rate:.1%}), failed {totals.failed},
replies {totals.replies}, opt-outs {totals.opt_outs}, clicks {totals.clicks},
payments within 7 days {totals.payments_7d}, complaints {totals.complaints}.</p>
<table><thead><tr>{head}</tr></thead><tbody>{"".join(body_rows)}</tbody></table>
<h2>Owed now (outstanding = amount due &minus; paid, open cases)</h2>
<table id="balances"><thead><tr><th>jurisdiction</th><th>currency</th><th>cases</th><th>open</th><th>amount due</th>
<th>paid</th><th>outstanding</th></tr></thead><tbody>{"".join(balance_rows)}</tbody></table>
{"".join(f"<figure>{c}</figure>" for c in charts)}
</body></html>
"""
