"""The console's dashboard: `GET /ui/reports?since=YYYY-MM-DD&until=YYYY-MM-DD`, the same
charts and tables as `dispatcher report --format html` (one computation:
`dispatcher.reports`), for the people who run the operation (compliance, ops).

It needs `reports.read` (compliance, ops), checked by `web.auth` like every console page;
it changes nothing, and shows no debtor's data (only aggregates)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from dispatcher.reports import PeriodError, Report, build_report
from dispatcher.reports.html import STYLE, dashboard
from dispatcher.roles import Permission, Principal
from dispatcher.web.auth import console_permission
from dispatcher.web.console_ui import console_page, gettext_for
from dispatcher.web.dependencies import ClockDep, ConfigDep, EngineDep

router = APIRouter(prefix="/ui")

ReportReader = Annotated[Principal, Depends(console_permission(Permission.REPORTS_READ))]


def _date(name: str, value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise PeriodError(f"{name} {value!r}: write a date as YYYY-MM-DD, e.g. 2026-11-01") from None


@router.get("/reports")
async def reports_page(request: Request, user: ReportReader, engine: EngineDep, config: ConfigDep, clock: ClockDep,
                       since: str | None = None, until: str | None = None) -> Response:
    _ = gettext_for(request, user)
    try:
        start, end = _date("since", since), _date("until", until)

        def build() -> Report:
            return build_report(engine, config, clock.now(), since=start, until=end)

        report = await run_in_threadpool(build)
    except PeriodError as exc:
        return console_page(request, user, "console_reports.html", 400, title=_("Reports"), error=str(exc),
                            content="", style=STYLE, since=since or "", until=until or "")
    return console_page(request, user, "console_reports.html", title=_("Reports"), error=None,
                        content=dashboard(report), style=STYLE, since=report.since.isoformat(),
                        until=report.until.isoformat())
