"""The report's SQL: every aggregation runs in the database, and Python receives a few
rows per (stage, jurisdiction, currency), per template variant and per week, so memory
does not grow with the history.

A case's **stage spell**: stage S applies from day `due_date + dpd_min` to day
`due_date + dpd_max` (day numbers, see `period`). Within the period the spell starts at
the latest of its entry day, `since` and the day the case was imported, and ends at the
earliest of its last day and `until`. A case is in the stage's cohort (`cases_entered`)
when that span is not empty and the case was not closed before it started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from dispatcher.config import Config
from dispatcher.reports.dialect import Dialect
from dispatcher.reports.period import Period

#: An SMS with a delivery receipt.
SMS_DELIVERED = "m.channel = 'sms' AND m.status IN ('delivered', 'read')"
#: A call answered by a person (the IVR's identity check sets `conversation`).
CALL_CONNECTED = "m.channel = 'voice' AND m.status = 'completed' AND (m.answered_by = 'human' OR m.conversation)"
#: A call that reached the callee's phone: a person or a voicemail.
CALL_COMPLETED = "m.channel = 'voice' AND m.status = 'completed'"
#: Statuses of a message that failed after the provider accepted it.
FAILED_STATUSES = "('failed', 'undelivered', 'busy', 'no-answer', 'canceled')"


@dataclass(frozen=True, slots=True)
class Query:
    dialect: Dialect
    period: Period
    config: Config

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "since_at": self.period.since_at, "until_at": self.period.until_at,
            "since_day": self.period.since_day, "until_day": self.period.until_day,
            "tz_offset": self.period.offset_seconds,
        }
        if self.dialect.postgres:
            params["tz"] = self.period.zone
        for i, stage in enumerate(self.ordered_stages()):
            params[f"s{i}_name"] = stage.name
            params[f"s{i}_lo"] = stage.dpd_min
            params[f"s{i}_hi"] = stage.dpd_max
        return params

    def ordered_stages(self) -> list[Any]:
        return sorted(self.config.stages, key=lambda s: s.dpd_min)

    def run(self, conn: Connection, sql: str) -> list[Any]:
        return list(conn.execute(text(sql), self.params()))

    # -- the spells CTE --------------------------------------------------------------

    def _stages_cte(self) -> str:
        rows = [f"SELECT {i} AS ord, CAST(:s{i}_name AS VARCHAR(32)) AS name, CAST(:s{i}_lo AS INTEGER) AS lo,"
                f" CAST(:s{i}_hi AS INTEGER) AS hi" for i in range(len(self.config.stages))]
        return "stages AS (" + " UNION ALL ".join(rows) + ")"

    def spells_cte(self) -> str:
        d = self.dialect
        closed_at = ("COALESCE(cl.closed_at, CASE WHEN c.status <> 'active' AND c.updated_at > c.created_at"
                     " THEN c.updated_at END)")
        return f"""{self._stages_cte()},
closed AS (SELECT case_id, MIN(at) AS closed_at FROM events WHERE kind = 'case_closed' GROUP BY case_id),
facts AS (
  SELECT c.case_id, c.jurisdiction, c.currency, {d.date_day('c.due_date')} AS due_day,
         {d.instant_day('c.created_at')} AS created_day, {d.epoch('c.created_at')} AS created_epoch,
         {d.cents('c.amount_due')} AS due_cents,
         CASE WHEN c.status <> 'active' AND cl.closed_at IS NULL AND c.updated_at <= c.created_at THEN -1
              ELSE {d.instant_day(closed_at)} END AS closed_day
  FROM cases c LEFT JOIN closed cl ON cl.case_id = c.case_id
  WHERE c.created_at < :until_at
),
raw_spells AS (
  SELECT f.case_id, f.jurisdiction, f.currency, f.due_cents, f.closed_day, f.created_epoch,
         s.name AS stage, s.ord,
         {d.greatest('f.due_day + s.lo', ':since_day', 'f.created_day')} AS start_day,
         CASE WHEN s.hi IS NULL THEN :until_day ELSE {d.least('f.due_day + s.hi', ':until_day')} END AS end_day,
         CASE WHEN s.hi IS NULL THEN NULL ELSE f.due_day + s.hi + 1 END AS exit_day
  FROM facts f CROSS JOIN stages s
  WHERE f.due_day + s.lo <= :until_day AND (s.hi IS NULL OR f.due_day + s.hi >= :since_day)
),
spells AS (
  SELECT r.*,
         CASE WHEN r.closed_day IS NOT NULL AND r.closed_day <= r.end_day THEN 1 ELSE 0 END AS cured,
         CASE WHEN r.exit_day IS NOT NULL AND r.exit_day <= :until_day
                   AND (r.closed_day IS NULL OR r.closed_day >= r.exit_day) THEN 1 ELSE 0 END AS rolled
  FROM raw_spells r
  WHERE r.start_day <= r.end_day AND (r.closed_day IS NULL OR r.closed_day >= r.start_day)
)"""

    # -- stage KPIs ------------------------------------------------------------------

    def stage_sql(self) -> str:
        d = self.dialect
        start_epoch = d.greatest("sp.start_day * 86400 - :tz_offset", "sp.created_epoch")
        return f"""WITH {self.spells_cte()},
pays AS (
  SELECT case_id, {d.instant_day('at')} AS d, {d.cents('amount')} AS cents FROM payments WHERE at < :until_at
),
spell_pay AS (
  SELECT sp.case_id, sp.stage,
         SUM(CASE WHEN p.d < sp.start_day THEN p.cents ELSE 0 END) AS paid_before,
         SUM(CASE WHEN p.d >= sp.start_day AND p.d <= sp.end_day THEN p.cents ELSE 0 END) AS recovered
  FROM spells sp JOIN pays p ON p.case_id = sp.case_id
  GROUP BY sp.case_id, sp.stage
),
clicked AS (SELECT DISTINCT message_id FROM events WHERE kind = 'link_clicked' AND message_id IS NOT NULL),
contact AS (
  SELECT m.case_id, m.stage, MIN({d.epoch('m.sent_at')}) AS first_epoch,
         MAX(CASE WHEN m.conversation THEN 1 ELSE 0 END) AS rpc
  FROM messages m
  WHERE m.sent_at >= :since_at AND m.sent_at < :until_at AND m.stage IS NOT NULL
    AND (({SMS_DELIVERED}) OR ({CALL_CONNECTED})
         OR (m.channel = 'email' AND m.id IN (SELECT message_id FROM clicked)))
  GROUP BY m.case_id, m.stage
),
marks AS (
  SELECT h.case_id, {d.instant_day('h.placed_at')} AS d,
         CASE WHEN h.reason = 'promise_to_pay' THEN 1 ELSE 0 END AS promise,
         CASE WHEN h.reason = 'promise_to_pay' AND EXISTS (
              SELECT 1 FROM payments p WHERE p.case_id = h.case_id AND p.at >= h.placed_at
                AND (h.until IS NULL OR p.at <= h.until)) THEN 1 ELSE 0 END AS kept,
         CASE WHEN h.reason = 'dispute_hold' THEN 1 ELSE 0 END AS complaint, 0 AS opt_out
  FROM holds h
  WHERE h.reason IN ('promise_to_pay', 'dispute_hold') AND h.placed_at >= :since_at AND h.placed_at < :until_at
  UNION ALL
  SELECT e.case_id, {d.instant_day('e.at')} AS d, 0, 0, 0, 1
  FROM events e WHERE e.kind = 'opted_out' AND e.case_id IS NOT NULL AND e.at >= :since_at AND e.at < :until_at
),
-- a case counts once among a stage's opt-outs however many `opted_out` events it has in
-- the spell: one per channel (a revocation about calls opts out of SMS and voice), and a
-- keyword, a later revocation phrase or an e-mail unsubscribe each add their own
spell_marks AS (
  SELECT sp.case_id, sp.stage, SUM(mk.promise) AS promises, SUM(mk.kept) AS kept,
         SUM(mk.complaint) AS complaints, MAX(mk.opt_out) AS opt_outs
  FROM spells sp JOIN marks mk ON mk.case_id = sp.case_id AND mk.d >= sp.start_day AND mk.d <= sp.end_day
  GROUP BY sp.case_id, sp.stage
),
base AS (
  SELECT sp.stage, sp.ord, sp.jurisdiction, sp.currency, sp.cured, sp.rolled,
         sp.due_cents - COALESCE(pp.paid_before, 0) AS entry_cents, COALESCE(pp.recovered, 0) AS recovered,
         CASE WHEN ct.case_id IS NULL THEN 0 ELSE 1 END AS contacted, COALESCE(ct.rpc, 0) AS rpc,
         CASE WHEN ct.case_id IS NULL THEN NULL
              ELSE CAST(ct.first_epoch - {start_epoch} AS REAL) / 3600.0 END AS hours,
         COALESCE(sm.promises, 0) AS promises, COALESCE(sm.kept, 0) AS kept,
         COALESCE(sm.complaints, 0) AS complaints, COALESCE(sm.opt_outs, 0) AS opt_outs
  FROM spells sp
  LEFT JOIN spell_pay pp ON pp.case_id = sp.case_id AND pp.stage = sp.stage
  LEFT JOIN contact ct ON ct.case_id = sp.case_id AND ct.stage = sp.stage
  LEFT JOIN spell_marks sm ON sm.case_id = sp.case_id AND sm.stage = sp.stage
),
{self._median_cte()},
agg AS (
  SELECT stage, MIN(ord) AS ord, jurisdiction, currency, COUNT(*) AS entered, SUM(contacted) AS contacted,
         SUM(rpc) AS rpc, SUM(promises) AS promises, SUM(kept) AS kept, SUM(cured) AS cured,
         SUM(rolled) AS rolled, SUM(entry_cents) AS entry_cents, SUM(recovered) AS recovered_cents,
         SUM(complaints) AS complaints, SUM(opt_outs) AS opt_outs
  FROM base GROUP BY stage, jurisdiction, currency
)
SELECT a.*, md.p50 FROM agg a
LEFT JOIN median md ON md.stage = a.stage AND md.jurisdiction = a.jurisdiction AND md.currency = a.currency
ORDER BY a.ord, a.jurisdiction, a.currency"""

    def _median_cte(self) -> str:
        """The median hours to the first contact per (stage, jurisdiction, currency):
        the middle value, or the mean of the two middle values. PostgreSQL has it as an
        aggregate (one sort of the hours alone); SQLite numbers the rows."""
        if self.dialect.postgres:
            return """median AS (
  SELECT stage, jurisdiction, currency, percentile_cont(0.5) WITHIN GROUP (ORDER BY hours) AS p50
  FROM base WHERE hours IS NOT NULL GROUP BY stage, jurisdiction, currency
)"""
        return """ranked AS (
  SELECT stage, jurisdiction, currency, hours,
         ROW_NUMBER() OVER (PARTITION BY stage, jurisdiction, currency ORDER BY hours) AS rn,
         COUNT(*) OVER (PARTITION BY stage, jurisdiction, currency) AS n
  FROM base WHERE hours IS NOT NULL
),
median AS (
  SELECT stage, jurisdiction, currency, AVG(hours) AS p50 FROM ranked
  WHERE rn = (n + 1) / 2 OR rn = (n + 2) / 2 GROUP BY stage, jurisdiction, currency
)"""

    # -- variants --------------------------------------------------------------------

    def message_sql(self) -> str:
        """One pass over the period's messages, per (template, locale, channel, the
        case's stage, status, week): counts, delivered, effective contacts and clicked
        messages. Variants, weekly trends and the outbox totals are sums of these rows;
        none needs the case, so the messages are not joined to the cases here. A message
        belongs to the period by when it was sent, or, never sent, by when its status
        last changed (else when it was queued)."""
        d = self.dialect
        when = "COALESCE(m.sent_at, m.status_at, m.created_at)"
        return f"""WITH clicked AS (
  SELECT DISTINCT message_id FROM events WHERE kind = 'link_clicked' AND message_id IS NOT NULL
),
dated AS (
  SELECT m.*, {d.instant_day(when)} AS day FROM messages m
  WHERE (m.sent_at >= :since_at AND m.sent_at < :until_at)
     OR (m.sent_at IS NULL AND {when} >= :since_at AND {when} < :until_at)
)
SELECT m.template_id, m.locale, m.channel, m.stage, m.status,
       CASE WHEN m.kind = 'system' THEN 1 ELSE 0 END AS system,
       CASE WHEN m.sent_at IS NULL THEN 0 ELSE 1 END AS reached,
       m.day - ((m.day + 3) % 7) AS week, COUNT(*) AS n,
       SUM(CASE WHEN ({SMS_DELIVERED}) OR ({CALL_COMPLETED}) THEN 1 ELSE 0 END) AS delivered,
       SUM(CASE WHEN ({SMS_DELIVERED}) OR ({CALL_CONNECTED}) THEN 1 ELSE 0 END) AS contacts,
       SUM(CASE WHEN k.message_id IS NULL THEN 0 ELSE 1 END) AS clicks
FROM dated m LEFT JOIN clicked k ON k.message_id = m.id
GROUP BY m.template_id, m.locale, m.channel, m.stage, m.status,
         CASE WHEN m.kind = 'system' THEN 1 ELSE 0 END, CASE WHEN m.sent_at IS NULL THEN 0 ELSE 1 END, week"""

    def stage_messages_sql(self) -> str:
        """The messages sent in the period per (the case's stage, jurisdiction,
        currency, channel): how many, their SMS segments and their calls' billed minutes
        (each call's stored duration rounded up to whole minutes), of which the stages'
        cost is made."""
        return """SELECT m.stage, c.jurisdiction, c.currency, m.channel, COUNT(*) AS n,
       SUM(CASE WHEN m.channel = 'sms' THEN COALESCE(m.segments, 0) ELSE 0 END) AS segments,
       SUM(CASE WHEN m.channel = 'voice' AND m.call_seconds > 0 THEN (m.call_seconds + 59) / 60 ELSE 0 END)
           AS minutes
FROM messages m JOIN cases c ON c.case_id = m.case_id
WHERE m.sent_at >= :since_at AND m.sent_at < :until_at AND m.stage IS NOT NULL
GROUP BY m.stage, c.jurisdiction, c.currency, m.channel"""

    def converted_sql(self) -> str:
        """Messages followed by a payment on their case within 7 days, per (template,
        locale, channel, the case's stage): a semi-join, one pass."""
        d = self.dialect
        return f"""SELECT m.template_id, m.locale, m.channel, m.stage, COUNT(*) AS payments_7d
FROM messages m
WHERE m.sent_at >= :since_at AND m.sent_at < :until_at AND m.template_id IS NOT NULL AND m.kind <> 'system'
  AND EXISTS (SELECT 1 FROM payments p WHERE p.case_id = m.case_id AND {d.within_7_days('p.at', 'm.sent_at')})
GROUP BY m.template_id, m.locale, m.channel, m.stage"""

    # -- the outbox and weekly trends ------------------------------------------------

    def weekly_payments_sql(self) -> str:
        d = self.dialect
        day = d.instant_day("p.at")
        return f"""SELECT w.week, w.currency, COUNT(*) AS payments, SUM(w.cents) AS cents
FROM (SELECT {day} - (({day} + 3) % 7) AS week, c.currency, {d.cents('p.amount')} AS cents
      FROM payments p JOIN cases c ON c.case_id = p.case_id
      WHERE p.at >= :since_at AND p.at < :until_at) w
GROUP BY w.week, w.currency ORDER BY w.week, w.currency"""

    def balances_sql(self, closed_statuses: list[str]) -> str:
        """What debtors owe now, per (jurisdiction, currency): counts and sums in integer
        cents (exact on both databases), `outstanding` never below 0 per case."""
        d = self.dialect
        closed = ", ".join(f"'{s}'" for s in closed_statuses)  # the domain's own constants
        return f"""SELECT b.jurisdiction, b.currency, COUNT(*) AS cases,
       SUM(CASE WHEN b.status IN ({closed}) THEN 0 ELSE 1 END) AS open_cases,
       SUM(b.due) AS due_cents, SUM(b.paid) AS paid_cents,
       SUM(CASE WHEN b.due > b.paid THEN b.due - b.paid ELSE 0 END) AS outstanding_cents
FROM (SELECT jurisdiction, currency, status, {d.cents('amount_due')} AS due, {d.cents('paid_total')} AS paid
      FROM cases) b
GROUP BY b.jurisdiction, b.currency ORDER BY b.jurisdiction, b.currency"""

    def first_day_sql(self) -> str:
        return "SELECT MIN(created_at) FROM cases"
