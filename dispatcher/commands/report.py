"""`dispatcher report`: the KPIs of SPEC sections 9 and 16 as a table, JSON, CSV or HTML."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.console import Console

from dispatcher.commands.common import fail, out, rt

FORMATS = ("table", "json", "csv", "html")


def _date(option: str, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise fail(f"{option} {value!r}: write a date as YYYY-MM-DD, e.g. 2026-11-01") from None


def report_cmd(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option("--since", help="first day, YYYY-MM-DD (organisation.timezone)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="last day, YYYY-MM-DD (default: today)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json, csv or html")] = "table",
    wide: Annotated[bool, typer.Option("--wide", help="table: every column (wider than 80)")] = False,
    table: Annotated[str | None, typer.Option(
        "--table",
        help="stages, variants, experiments, weeks or balances: the table to print (csv: default stages)")] = None,
) -> None:
    """KPIs per stage and jurisdiction, template variants and their experiments."""
    from dispatcher.reports import PeriodError, build_report
    from dispatcher.reports.html import report_html
    from dispatcher.reports.text import TABLES, print_tables, report_csv

    if fmt not in FORMATS:
        raise fail(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if table is not None and table not in TABLES:
        raise fail(f"--table {table!r}: use one of {', '.join(TABLES)}")
    start, end = _date("--since", since), _date("--until", until)
    runtime = rt(ctx)
    try:
        report = build_report(runtime.engine, runtime.config, runtime.clock.now(), since=start, until=end)
    except PeriodError as exc:
        raise fail(str(exc)) from None
    if fmt == "json":
        print(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    elif fmt == "csv":
        print(report_csv(report, table or "stages"), end="")
    elif fmt == "html":
        print(report_html(report))
    else:
        # --wide: as wide as the columns need (a pager or a file takes the long lines)
        console = Console(width=1000) if wide else out
        print_tables(report, console, wide=wide, tables=(table,) if table else TABLES)
