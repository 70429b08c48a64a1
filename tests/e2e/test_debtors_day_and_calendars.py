"""Issue 11 through the real `dispatcher` command: holds and previews in the debtor's
day, outstanding amounts after a payment, and calendars you can trust (SPEC 11, 12)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from dispatcher.testing import copy_shipped_config
from tests.e2e.test_cli_contract import Cli, case_row, cli, write_cases

__all__ = ["cli"]  # the fixture

LA_PHONE = "+13105550123"  # Los Angeles


def la_case(case_id: str, due: str) -> dict[str, str]:
    return case_row(case_id, due, jurisdiction="us", name="Alex Morgan", phone=LA_PHONE,
                    email="alex@example.com", sms_consent="true", principal="500.00", interest="10.00",
                    penalty="0", amount_due="510.00", penalty_rate_daily="")


def statuses(cli: Cli, now: str, case_id: str) -> set[tuple[object, object]]:
    return {(d["action"], d["reason"]) for d in cli.plan(now, case_id) if d["channel"] is not None}


def test_a_hold_until_a_date_lasts_through_the_whole_local_day_before_it(cli: Cli) -> None:
    assert cli("import", str(write_cases(cli.tmp / "c.csv", [la_case("la", "2026-11-07")]))).returncode == 0
    held = cli("case", "hold", "la", "--reason", "collector_hold", "--until", "2026-12-10",
               now="2026-12-08T10:00:00-08:00")
    assert held.returncode == 0, held.stderr
    assert "until 2026-12-10T00:00:00-08:00 (America/Los_Angeles)" in held.stdout
    shown = json.loads(cli("case", "show", "la", "--format", "json", now="2026-12-08T10:00:00-08:00").stdout)
    assert [(h["until"], h["until_local"]) for h in shown["holds"]] == [
        ("2026-12-10T08:00:00+00:00", "2026-12-10T00:00:00-08:00")]
    # 16:00 on the 9th in Los Angeles is 00:00 UTC on the 10th: the old cut-off. Still held,
    # and so is every legal minute left of the 9th.
    for now in ("2026-12-09T08:00:00-08:00", "2026-12-09T16:00:00-08:00", "2026-12-09T16:30:00-08:00",
                "2026-12-09T20:59:00-08:00"):
        assert statuses(cli, now, "la") == {("skip", "collector_hold")}, now
    assert ("send", "due") in statuses(cli, "2026-12-10T08:00:00-08:00", "la")
    # an ISO instant with an offset is that instant
    again = cli("case", "hold", "la", "--reason", "legal_hold", "--until", "2026-12-11T12:00:00Z",
                now="2026-12-10T08:00:00-08:00")
    assert again.returncode == 0 and "until 2026-12-11T12:00:00+00:00" in again.stdout
    for bad, says in (("2026-12-11T12:00", "no UTC offset"), ("tomorrow", "not a date"),
                      ("2026-12-01", "not in the future")):
        refused = cli("case", "hold", "la", "--reason", "legal_hold", "--until", bad, now="2026-12-10T08:00:00-08:00")
        assert refused.returncode == 2 and says in refused.stderr and "Traceback" not in refused.stderr, bad


def test_preview_counts_days_past_due_in_the_case_zone_and_states_the_outstanding_amount(cli: Cli) -> None:
    assert cli("import", str(write_cases(cli.tmp / "c.csv", [la_case("la", "2026-11-08")]))).returncode == 0
    evening = "2026-12-09T20:00:00-08:00"  # already the 10th in UTC: 32 days there, 31 in Los Angeles
    shown = cli("templates", "preview", "sms/dpd30/v1", "--case", "la", now=evening)
    assert shown.returncode == 0, shown.stderr
    assert "is 31 days past due" in shown.stdout and "32 days" not in shown.stdout
    assert "Overdue amount: $510.00." in shown.stdout
    paid = cli("payment", "la", "123.45", now=evening)
    assert paid.returncode == 0 and "386.55 still due" in paid.stdout
    shown = cli("templates", "preview", "sms/dpd30/v1", "--case", "la", now=evening)
    assert "Overdue amount: $386.55." in shown.stdout and "Less $123.45 paid." in shown.stdout
    assert "$510.00" not in shown.stdout
    timeline = json.loads(cli("case", "show", "la", "--format", "json", now=evening).stdout)
    assert (timeline["amount_due"], timeline["paid_total"], timeline["outstanding"]) == ("510.00", "123.45", "386.55")
    assert timeline["zone"] == "America/Los_Angeles"
    report = json.loads(cli("report", "--format", "json", now=evening).stdout)
    assert report["balances"] == [{"jurisdiction": "us", "currency": "USD", "cases": 1, "open_cases": 1,
                                   "amount_due": "510.00", "paid_total": "123.45", "outstanding": "386.55"}]
    assert "386.55" in cli("report", now=evening).stdout


def _config_with(cli: Cli, replace: dict[str, str]) -> Path:
    def replaced(text: str) -> str:
        for old, new in replace.items():
            assert old in text, old
            text = text.replace(old, new, 1)
        return text

    return copy_shipped_config(cli.tmp, replaced)


def test_calendar_2027_is_estimated_until_the_operator_applies_the_notice(cli: Cli) -> None:
    shown = cli("calendar", "cn", "--year", "2027", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    days = json.loads(shown.stdout)
    assert days and {d["source"] for d in days} == {"estimated"}
    assert all(set(d) == {"date", "working", "name", "source"} for d in days)
    assert {"date": "2027-02-08", "working": False, "name": "Chinese New Year (Spring Festival)",
            "source": "estimated"} in days
    table = cli("calendar", "cn", "--year", "2027")
    assert table.returncode == 0 and "ESTIMATED" in table.stdout

    # the notice is out: the operator adds its differences and marks 2027 official
    cli.env["DISPATCHER_CONFIG"] = str(_config_with(cli, {
        "extra_holidays = []": 'extra_holidays = [2027-02-11]',
        "extra_working_days = []": "extra_working_days = [2027-02-13, 2027-02-20]",
        "official_years = [2025, 2026]": "official_years = [2025, 2026, 2027]",
    }))
    days = {d["date"]: d for d in json.loads(cli("calendar", "cn", "--year", "2027", "--format", "json").stdout)}
    assert days["2027-02-11"] == {"date": "2027-02-11", "working": False, "name": "holiday (extra_holidays)",
                                  "source": "config"}
    assert days["2027-02-13"]["source"] == days["2027-02-20"]["source"] == "config"
    assert days["2027-02-13"]["working"] is True
    assert days["2027-02-08"]["source"] == "official"
    assert {d["source"] for d in days.values()} == {"official", "config"}

    assert cli("calendar", "nowhere", "--year", "2027").returncode == 2
    assert cli("calendar", "cn", "--year", "2027", "--format", "xml").returncode == 2


def _warnings(stderr: str) -> list[str]:
    return re.findall(r"calendar estimated: profile (\S+), year (\d+)", stderr)


def test_plan_and_tick_warn_once_per_profile_and_year_in_an_estimated_year(cli: Cli) -> None:
    rows = [case_row("a", "2026-12-01"), case_row("b", "2026-12-02"), la_case("la", "2026-12-01")]
    assert cli("import", str(write_cases(cli.tmp / "c.csv", rows))).returncode == 0
    planned = cli("plan", "--format", "jsonl", now="2027-01-05T10:00:00+08:00")
    assert planned.returncode == 0, planned.stderr
    assert _warnings(planned.stderr) == [("cn", "2027")]  # two cn cases, one warning; us has no day rule
    assert "official_years" in planned.stderr
    # in an official year: nothing to say
    quiet = cli("plan", "--format", "jsonl", now="2026-12-07T10:00:00+08:00")
    assert quiet.returncode == 0 and _warnings(quiet.stderr) == []
    ticked = cli("tick", now="2027-01-05T10:00:00+08:00")
    assert ticked.returncode == 0, ticked.stderr
    assert _warnings(ticked.stderr) == [("cn", "2027")]
