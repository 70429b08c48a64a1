"""The report as a self-contained HTML page (`report --format html`, the demo's
`report.html`) and as the console's dashboard (`/ui/reports`): the same charts and tables.

What each chart answers:
- *Messages and effective contacts per week*: is the operation reaching people, and is
  the reach rate holding up week over week?
- *Payments and amount recovered per week* (one chart per currency): is it paying off?
- *Funnel per stage*: of the cases that entered each stage, how many were reached, how
  many spoke to us (right-party contacts), promised and cured?
- *Variant comparison*: within each (stage, channel, locale), which template variant
  converts best, and is the difference real (intervals apart, p < 0.05) or noise?
"""

from __future__ import annotations

from collections import defaultdict
from html import escape
from typing import Any

from dispatcher.reports.charts import Arm, Series, funnel_chart, interval_chart, line_chart
from dispatcher.reports.model import Report
from dispatcher.reports.text import money, pct

STYLE = """
.report { color: #1a202c; }
.report table { border-collapse: collapse; font-size: 13px; width: auto; }
.report th, .report td { border: 1px solid #cbd5e0; padding: 3px 7px; text-align: right; white-space: nowrap; }
.report th { background: #edf2f7; color: #1a202c; }
.report td.l, .report th.l { text-align: left; }
.report figure { margin: 0 0 2rem 0; }
.report .charts { display: flex; flex-wrap: wrap; gap: 1rem 2rem; }
.report dl { font-size: 14px; } .report dt { font-weight: bold; margin-top: .4rem; }
.report .note { color: #4a5568; font-size: 13px; }
.report .scroll { overflow-x: auto; margin-bottom: 2rem; }
"""
PAGE_STYLE = "body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 1200px; }"


def _cell(value: Any, left: bool = False) -> str:
    cls = ' class="l"' if left else ""
    return f"<td{cls}>{escape('-' if value is None else str(value))}</td>"


def _table(head: list[tuple[str, bool]], rows: list[list[Any]]) -> str:
    ths = "".join(f'<th{" class=l" if left else ""}>{escape(h)}</th>' for h, left in head)
    body = "".join("<tr>" + "".join(_cell(v, head[i][1]) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table></div>'


def trend_charts(report: Report) -> list[str]:
    labels = [w.start.strftime("%m-%d") for w in report.weeks]
    charts = [
        line_chart("Messages sent and effective contacts per week", labels, [
            Series("sent", [w.sent for w in report.weeks]),
            Series("effective contacts", [w.contacts for w in report.weeks]),
        ]),
        line_chart("Payments per week", labels, [Series("payments", [w.payments for w in report.weeks])]),
    ]
    currencies = sorted({c for w in report.weeks for c in w.recovered})
    for currency in currencies:
        charts.append(line_chart(f"Amount recovered per week ({currency})", labels, [
            Series(currency, [float(w.recovered.get(currency, 0)) for w in report.weeks])]))
    return charts


def funnel(report: Report) -> str:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for s in report.stages:  # counts add up across jurisdictions; money never does
        t = totals[s.stage]
        for i, v in enumerate((s.cases_entered, s.contacted, s.right_party_contacts, s.promises, s.cured)):
            t[i] += v
    steps = ("entered", "contacted", "right party", "promised", "cured")
    rows = [(stage, list(zip(steps, t, strict=True))) for stage, t in totals.items()]
    return funnel_chart("Funnel per stage (cases)", rows)


def variant_charts(report: Report) -> list[str]:
    charts = []
    for e in sorted(report.experiments, key=lambda e: (not e.significant, e.p_value if e.p_value is not None else 2)):
        p = "p n/a" if e.p_value is None else f"p = {e.p_value:.4f}"
        verdict = "significant" if e.significant else "not significant"
        arms = [Arm(f"{v.variant} (n={v.sent:,})", v.conversion,
                    v.conversion_ci[0] if v.conversion_ci else None, v.conversion_ci[1] if v.conversion_ci else None,
                    leader=v.template == e.leader) for v in e.variants]
        charts.append(interval_chart(f"{e.stage} · {e.channel} · {e.locale}: conversion, 95% CI ({p}, {verdict})",
                                     arms))
    return charts


def stage_rows(report: Report) -> tuple[list[tuple[str, bool]], list[list[Any]]]:
    head = [("stage", True), ("jurisdiction", True), ("currency", True), ("entered", False),
            ("contacted", False), ("right party", False), ("1st contact h (p50)", False), ("promises", False),
            ("kept", False), ("cured", False), ("rolled fwd", False), ("cure rate", False), ("roll rate", False),
            ("amount at entry", False), ("recovered", False), ("recovery rate", False), ("messages", False),
            ("segments", False), ("cost", False), ("cost / recovered", False), ("complaints", False),
            ("per 1,000 contacted", False), ("opt-outs", False)]
    rows = [[s.stage, s.jurisdiction, s.currency, s.cases_entered, s.contacted, s.right_party_contacts,
             s.first_contact_hours_p50, s.promises, s.promises_kept, s.cured, s.rolled_forward, pct(s.cure_rate),
             pct(s.roll_rate), money(s.amount_at_entry), money(s.amount_recovered), pct(s.recovery_rate),
             s.messages, s.segments, money(s.cost), s.cost_per_recovered, s.complaints, s.complaints_per_1000,
             s.opt_outs] for s in report.stages]
    return head, rows


def dashboard(report: Report) -> str:
    """The page's content (headings, charts, tables, definitions), without the document."""
    totals = report.messages
    stage_head, stage_body = stage_rows(report)
    variant_body = [[v.template, v.stage, v.channel, v.locale, v.sent,
                     v.delivered, pct(v.delivery_rate), v.clicks, v.payments_7d, pct(v.conversion),
                     "-" if v.conversion_ci is None else f"{v.conversion_ci[0]:.1%} – {v.conversion_ci[1]:.1%}",
                     v.off_stage] for v in report.variants]
    variant_head = [("template", True), ("stage", True), ("channel", True), ("locale", True), ("sent", False),
                    ("delivered", False), ("delivery rate", False), ("clicks", False), ("paid ≤ 7 d", False),
                    ("conversion", False), ("95% CI", False), ("off-stage", False)]
    experiment_body = [[e.stage, e.channel, e.locale, ", ".join(v.variant for v in e.variants),
                        None if e.p_value is None else f"{e.p_value:.4f}", e.leader,
                        "yes" if e.significant else "no"] for e in report.experiments]
    experiment_head = [("stage", True), ("channel", True), ("locale", True), ("variants", True), ("p", False),
                       ("leader", True), ("significant", True)]
    plan_body = [[p.jurisdiction, p.taken, p.active, p.completed, p.broken, pct(p.keep_rate)] for p in report.plans]
    plan_head = [("jurisdiction", True), ("taken", False), ("in force", False), ("kept", False), ("broken", False),
                 ("keep rate", False)]
    figures = "".join(f"<figure>{c}</figure>" for c in trend_charts(report))
    variants = "".join(f"<figure>{c}</figure>" for c in variant_charts(report)) or "<p>No experiment yet.</p>"
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in report.notes)
    return f"""<div class="report"><h1>Collections report</h1>
<p>{escape(report.since.isoformat())} to {escape(report.until.isoformat())} (dates in
{escape(report.timezone)}); generated {escape(report.generated_at.isoformat(timespec="seconds"))}.
Messages sent {totals.total("sent"):,}, delivered {totals.total("delivered"):,}, failed
{totals.total("failed"):,}, rejected before sending {totals.total("rejected"):,}, still queued
{totals.total("queued"):,}, cancelled {totals.total("cancelled"):,}. Money is per currency, never summed
across currencies.</p>
<h2>Trends per week</h2><div class="charts">{figures}</div>
<h2>Funnel per stage</h2><figure>{funnel(report)}</figure>
<h2>Stages</h2>{_table(stage_head, stage_body)}
<h2>Variant comparison</h2><div class="charts">{variants}</div>
<h2>Experiments</h2>{_table(experiment_head, experiment_body)}
<h2>Template variants</h2>{_table(variant_head, variant_body)}
<h2>Repayment plans</h2>{_table(plan_head, plan_body) if plan_body else "<p>No plan taken in the period.</p>"}
<h2>Definitions</h2>{DEFINITIONS}{notes}</div>"""


DEFINITIONS = """<dl>
<dt>entered</dt><dd>cases in the stage at some time in the period (already in it on the first day, or
entering it), not closed before; a stage runs from day due date + its first DPD to due date + its last.</dd>
<dt>contacted</dt><dd>cases with an effective contact in the stage: an SMS with a delivery receipt, a call
answered by a person, or an e-mail whose payment link was opened (SMTP gives no receipts).</dd>
<dt>right party</dt><dd>cases where the callee confirmed their identity in the voice menu.</dd>
<dt>cured</dt><dd>paid in full while in the stage. <b>rolled fwd</b>: reached the next stage unpaid.</dd>
<dt>recovery rate</dt><dd>amount paid while in the stage / amount outstanding when the stage began.</dd>
<dt>cost</dt><dd>SMS segments, e-mails and billed call minutes times the prices in [costs].</dd>
<dt>conversion</dt><dd>messages followed by a payment on their case within 7 days / messages sent;
intervals are 95% Wilson intervals; experiments compare a stage's variants per channel and locale
with Pearson's chi-squared test (significant: p &lt; 0.05).</dd>
</dl>"""


def report_html(report: Report) -> str:
    """A self-contained page: inline CSS and SVG, no script, no external asset."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Collections report {escape(report.since.isoformat())} – {escape(report.until.isoformat())}</title>
<style>{PAGE_STYLE}{STYLE}</style></head><body>
{dashboard(report)}
</body></html>
"""
