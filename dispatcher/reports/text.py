"""The report as terminal tables (rich) and as CSV.

The tables fit 80 columns by default (the columns a manager reads first); `wide=True`
adds every other field. CSV carries every field of one table (`stages` by default)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from dispatcher.reports.model import Report

TABLES = ("stages", "variants", "experiments", "weeks", "balances", "plans")


def pct(value: float | Decimal | None) -> str:
    return "-" if value is None else f"{float(value):.1%}"


def money(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _table(title: str, columns: Sequence[tuple[str, bool]]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), title_justify="left", pad_edge=False)
    for name, numeric in columns:
        table.add_column(name, justify="right" if numeric else "left", no_wrap=True)
    return table


def stage_table(report: Report, wide: bool) -> Table:
    cols: list[tuple[str, bool, Callable[[Any], str]]] = [
        ("stage", False, lambda s: s.stage),
        ("where", False, lambda s: f"{s.jurisdiction} {s.currency}"),
        ("cases", True, lambda s: f"{s.cases_entered:,}"),
    ]
    if wide:
        cols += [("contacted", True, lambda s: f"{s.contacted:,}"),
                 ("RPC", True, lambda s: f"{s.right_party_contacts:,}"),
                 ("1st h p50", True, lambda s: "-" if s.first_contact_hours_p50 is None
                  else f"{s.first_contact_hours_p50:.1f}"),
                 ("promises", True, lambda s: f"{s.promises_kept:,}/{s.promises:,}"),
                 ("cured", True, lambda s: f"{s.cured:,}"), ("rolled", True, lambda s: f"{s.rolled_forward:,}")]
    cols += [("cure", True, lambda s: pct(s.cure_rate)), ("roll", True, lambda s: pct(s.roll_rate))]
    if wide:
        cols.append(("at entry", True, lambda s: money(s.amount_at_entry)))
    cols += [("recovered", True, lambda s: money(s.amount_recovered)),
             ("recov.", True, lambda s: pct(s.recovery_rate)), ("cost", True, lambda s: money(s.cost))]
    if wide:
        cols += [("msgs", True, lambda s: f"{s.messages:,}"), ("segs", True, lambda s: f"{s.segments:,}"),
                 ("cost/recov.", True, lambda s: "-" if s.cost_per_recovered is None else f"{s.cost_per_recovered}"),
                 ("complaints", True, lambda s: f"{s.complaints:,}"),
                 ("per 1000", True, lambda s: "-" if s.complaints_per_1000 is None
                  else f"{s.complaints_per_1000:.1f}"),
                 ("opt-outs", True, lambda s: f"{s.opt_outs:,}")]
    table = _table(f"Stages {report.since} .. {report.until} ({report.timezone})", [(n, num) for n, num, _ in cols])
    for s in report.stages:
        table.add_row(*(fmt(s) for _, _, fmt in cols))
    return table


def _ci(v: Any) -> str:
    return "-" if v.conversion_ci is None else f"{v.conversion_ci[0]:.1%}-{v.conversion_ci[1]:.1%}"


def variant_table(report: Report, wide: bool) -> Table:
    cols: list[tuple[str, bool, Callable[[Any], str]]] = [
        ("template", False, lambda v: v.template), ("locale", False, lambda v: v.locale),
        ("sent", True, lambda v: f"{v.sent:,}"),
        ("deliv.", True, lambda v: pct(v.delivery_rate)),
    ]
    if wide:
        cols += [("delivered", True, lambda v: "-" if v.delivered is None else f"{v.delivered:,}"),
                 ("clicks", True, lambda v: f"{v.clicks:,}"), ("paid 7d", True, lambda v: f"{v.payments_7d:,}"),
                 ("off-stage", True, lambda v: f"{v.off_stage:,}")]
    cols += [("conv.", True, lambda v: pct(v.conversion)), ("95% CI", True, _ci)]
    table = _table("Template variants (conversion: a payment within 7 days)", [(n, num) for n, num, _ in cols])
    for v in report.variants:
        table.add_row(*(fmt(v) for _, _, fmt in cols))
    return table


def experiment_table(report: Report, wide: bool) -> Table:
    table = _table("Experiments (chi-squared across variants)",
                   [("stage", False), ("channel", False), ("locale", False), ("arms", True), ("p", True),
                    ("leader", False), ("sig.", False)])
    for e in report.experiments:
        p = "-" if e.p_value is None else f"{e.p_value:.4f}"
        leader = "-" if e.leader is None else e.leader.rsplit("/", 1)[-1]
        table.add_row(e.stage, e.channel, e.locale, str(len(e.variants)), p, leader,
                      "yes" if e.significant else "no")
    return table


def week_table(report: Report, wide: bool) -> Table:
    table = _table("Weeks (Monday)", [("week", False), ("sent", True), ("contacts", True), ("payments", True),
                                      ("recovered", True)])
    for w in report.weeks:
        recovered = ", ".join(f"{money(v)} {k}" for k, v in sorted(w.recovered.items())) or "-"
        table.add_row(w.start.isoformat(), f"{w.sent:,}", f"{w.contacts:,}", f"{w.payments:,}", recovered)
    return table


def balance_table(report: Report, wide: bool) -> Table:
    table = _table("Owed now (outstanding = amount due - paid)", [("where", False), ("cases", True), ("open", True),
                                                                   ("amount due", True), ("paid", True),
                                                                   ("outstanding", True)])
    for b in report.balances:
        table.add_row(f"{b.jurisdiction} {b.currency}", f"{b.cases:,}", f"{b.open_cases:,}", money(b.amount_due),
                      money(b.paid_total), money(b.outstanding))
    return table


def plan_table(report: Report, wide: bool) -> Table:
    table = _table("Repayment plans taken in the period (status now)",
                   [("where", False), ("taken", True), ("in force", True), ("kept", True), ("broken", True),
                    ("keep rate", True)])
    for p in report.plans:
        rate = "-" if p.keep_rate is None else f"{p.keep_rate:.1%}"
        table.add_row(p.jurisdiction, f"{p.taken:,}", f"{p.active:,}", f"{p.completed:,}", f"{p.broken:,}", rate)
    return table


def print_tables(report: Report, console: Console, *, wide: bool = False,
                 tables: Sequence[str] = TABLES) -> None:
    makers = {"stages": stage_table, "variants": variant_table, "experiments": experiment_table,
              "weeks": week_table, "balances": balance_table, "plans": plan_table}
    for name in tables:
        console.print(makers[name](report, wide))
    totals = report.messages
    console.print(f"messages: sent {totals.total('sent'):,}, delivered {totals.total('delivered'):,}, "
                  f"failed {totals.total('failed'):,}, rejected {totals.total('rejected'):,}, "
                  f"queued {totals.total('queued'):,}, cancelled {totals.total('cancelled'):,}", soft_wrap=False)
    for note in report.notes:
        console.print(f"note: {note}", style="dim", soft_wrap=False)


def _flat(value: Any) -> Any:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else value


def report_csv(report: Report, table: str = "stages") -> str:
    """One table of the JSON (every field), as CSV with a header row; null is empty."""
    data = report.as_json()
    rows: list[dict[str, Any]] = data[table]
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _flat(v) for k, v in row.items()})
    return out.getvalue()
