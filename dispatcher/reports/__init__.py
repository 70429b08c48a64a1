"""Reports: the procedures' KPIs per stage and jurisdiction, template variants and
their experiments (SPEC sections 9 and 16), as a table, JSON, CSV or an HTML page.

`build_report` computes; `formats` renders. The SQL (`queries`) does the aggregation."""

from dispatcher.reports.build import build_report
from dispatcher.reports.model import Report
from dispatcher.reports.period import Period, PeriodError

__all__ = ["Period", "PeriodError", "Report", "build_report"]
