"""`import_file`: SPEC section 3 (contract), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.domain import CaseStatus, Channel, Product
from dispatcher.services.importer import (
    ImportReport,
    ImportUsageError,
    RowError,
    import_file,
)
from dispatcher.store.snapshots import get_snapshot
from dispatcher.store.tables import cases_t
from dispatcher.store.timeline import case_timeline

NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)
US_ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")

GOOD = {
    "case_id": "CN-0001",
    "name": "Zhang Wei",
    "jurisdiction": "cn",
    "phone": "+8613812345678",
    "email": "zhang.wei@example.com",
    "principal": "1000.00",
    "interest": "20.50",
    "penalty": "5.25",
    "fees": "0",
    "amount_due": "1025.75",
    "due_date": "2026-11-07",
}


def write_csv(path: Path, rows: list[dict[str, str]], header: list[str] | None = None) -> Path:
    header = header or list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def row(**overrides: str) -> dict[str, str]:
    return {**GOOD, **overrides}


@pytest.fixture
def run(engine: Engine, config: Config, fake_clock: FakeClock, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Import a file into the test's store."""

    def _run(path: Path, **kwargs: Any) -> ImportReport:
        return import_file(path, engine, config, fake_clock, **kwargs)

    return _run


def snapshot(engine: Engine, case_id: str):  # type: ignore[no-untyped-def]
    return get_snapshot(engine, case_id, NOW)


def contacts(engine: Engine, case_id: str) -> dict[Channel, tuple[str | None, bool]]:
    return {c.channel: (c.address, c.consent) for c in snapshot(engine, case_id).contacts}


def count_cases(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(cases_t)).scalar_one())


# -------------------------------------------------------------------------- happy paths


def test_csv_happy_path(run, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "cases.csv", [
        row(locale="zh-CN", timezone="Asia/Shanghai", sms_consent="yes", voice_consent="No",
            email_consent="TRUE", currency="CNY", penalty_rate_daily="0.0005", status="active",
            product="credit_card"),
        row(case_id="US-0001", name="John Smith", jurisdiction="us", phone="(310) 555-0123",
            email="John.Smith@Example.com", principal="100", interest="0.5", penalty="0.05", fees="1",
            amount_due="101.55", due_date="2026-10-01", product="loan"),
    ])
    report = run(path)
    assert (report.imported, report.updated, report.rejected, report.errors) == (2, 0, 0, [])
    assert report.summary == "imported 2, updated 0, rejected 0" and report.exit_status == 0

    cn = snapshot(engine, "CN-0001")
    assert cn.case.name == "Zhang Wei" and cn.case.locale == "zh-CN" and cn.case.currency == "CNY"
    assert (cn.case.principal, cn.case.interest, cn.case.penalty, cn.case.fees, cn.case.amount_due) == (
        Decimal("1000.00"), Decimal("20.50"), Decimal("5.25"), Decimal("0.00"), Decimal("1025.75"))
    assert str(cn.case.fees) == "0.00"
    assert cn.case.penalty_rate_daily == Decimal("0.0005")
    assert cn.case.due_date == dt.date(2026, 11, 7)
    assert cn.case.product is Product.CREDIT_CARD and cn.case.status is CaseStatus.ACTIVE
    assert cn.case.timezone == "Asia/Shanghai" and cn.zones == ("Asia/Shanghai",)
    assert contacts(engine, "CN-0001") == {
        Channel.SMS: ("+8613812345678", True),
        Channel.VOICE: ("+8613812345678", False),
        Channel.EMAIL: ("zhang.wei@example.com", True),
    }

    us = snapshot(engine, "US-0001")
    # defaults from the US profile: locale, currency, consents (sms and voice off, e-mail on)
    assert (us.case.locale, us.case.currency, us.case.product) == ("en-US", "USD", Product.LOAN)
    assert us.case.timezone is None and us.zones == ("America/Los_Angeles",)
    assert contacts(engine, "US-0001") == {
        Channel.SMS: ("+13105550123", False),
        Channel.VOICE: ("+13105550123", False),
        Channel.EMAIL: ("john.smith@example.com", True),
    }
    with engine.connect() as conn:
        assert [e["kind"] for e in case_timeline(conn, "US-0001")["events"]] == ["case_imported"]


def test_jsonl_happy_path_with_numbers_booleans_and_nulls(run, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lines = [
        json.dumps({"case_id": "J-1", "name": "Li Na", "jurisdiction": "cn", "phone": "13912345678",
                    "email": None, "sms_consent": False, "voice_consent": True, "principal": 0.1,
                    "interest": 0.2, "penalty": 0, "amount_due": 0.3, "due_date": "2026-11-01",
                    "penalty_rate_daily": 0.0005, "ignored": {"nested": "is fine in unknown columns"}}),
        "",
        "   ",
        json.dumps({"case_id": "J-2", "name": "Ann Lee", "jurisdiction": "us", "principal": "10.00",
                    "interest": "0", "penalty": "0", "fees": 2, "amount_due": 12, "due_date": "2026-11-01",
                    "timezone": "America/Chicago"}),
    ]
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = run(path)
    assert (report.imported, report.updated, report.rejected) == (2, 0, 0), report.errors
    j1 = snapshot(engine, "J-1")
    # JSON numbers are parsed as Decimal, so 0.1 + 0.2 == 0.3 exactly
    assert (j1.case.principal, j1.case.interest, j1.case.amount_due) == (
        Decimal("0.10"), Decimal("0.20"), Decimal("0.30"))
    assert j1.case.penalty_rate_daily == Decimal("0.0005")
    assert j1.case.phone == "+8613912345678" and j1.case.email is None
    assert contacts(engine, "J-1")[Channel.SMS] == ("+8613912345678", False)
    assert contacts(engine, "J-1")[Channel.VOICE] == ("+8613912345678", True)
    j2 = snapshot(engine, "J-2")
    assert (j2.case.fees, j2.case.amount_due) == (Decimal("2.00"), Decimal("12.00"))
    assert j2.zones == ("America/Chicago",)


def test_reimport_is_an_update_and_a_later_duplicate_wins(run, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "a.csv", [row(), row(case_id="CN-0002")])
    assert run(path).summary == "imported 2, updated 0, rejected 0"
    assert run(path).summary == "imported 0, updated 2, rejected 0"
    dup = write_csv(tmp_path / "b.csv", [row(case_id="CN-0003", name="First"), row(case_id="CN-0003", name="Last")])
    report = run(dup)
    assert (report.imported, report.updated) == (1, 1)
    assert snapshot(engine, "CN-0003").case.name == "Last"
    # the same across batch boundaries
    many = write_csv(tmp_path / "c.csv", [row(case_id=f"B-{i % 3}", name=f"N{i}") for i in range(7)])
    report = run(many, batch_size=2)
    assert (report.imported, report.updated) == (3, 4)
    assert snapshot(engine, "B-0").case.name == "N6"
    assert count_cases(engine) == 6


def test_unknown_columns_are_ignored_and_headers_are_lenient(run, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cases.csv"
    path.write_text(
        "\ufeff Case_ID ,NAME,jurisdiction,principal,interest,penalty,amount_due,due_date,branch,\n"
        "X-1,Wang Fang,CN,1,2,3,6,2026-11-07,Shanghai,\n"
        ",,,,,,,,,\n",  # a spreadsheet's empty row
        encoding="utf-8",
    )
    report = run(path)
    assert (report.imported, report.rejected) == (1, 0), report.errors
    assert snapshot(engine, "X-1").case.jurisdiction == "cn"


# ------------------------------------------------------------------------ validation


CASES_PER_RULE = [
    # (overrides, column, message)
    ({"case_id": ""}, "case_id", "required: 1 to 64 characters of A-Za-z0-9_.-"),
    ({"case_id": "has space"}, "case_id", "must be 1 to 64 characters of A-Za-z0-9_.- (got 'has space')"),
    (
        {"case_id": "x" * 65},
        "case_id",
        "must be 1 to 64 characters of A-Za-z0-9_.- (got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...')",
    ),
    ({"name": "  "}, "name", "required: the debtor's full name"),
    ({"jurisdiction": ""}, "jurisdiction", "required: one of cn, cn-bank, cn-internet, us, us-ma, us-nyc, us-wa"),
    ({"jurisdiction": "uk"}, "jurisdiction",
     "must be one of cn, cn-bank, cn-internet, us, us-ma, us-nyc, us-wa (got 'uk')"),
    ({"locale": "fr-FR"}, "locale", "must be zh-CN or en-US, or empty for the jurisdiction's default (got 'fr-FR')"),
    (
        {"timezone": "Mars/Olympus"},
        "timezone",
        "must be an IANA time zone such as Asia/Shanghai or America/Los_Angeles, or empty to derive it from the"
        " phone number (got 'Mars/Olympus')",
    ),
    (
        {"timezone": "localtime"},
        "timezone",
        "must be an IANA time zone such as Asia/Shanghai or America/Los_Angeles, or empty to derive it from the"
        " phone number (got 'localtime')",
    ),
    (
        {"phone": "12345"},
        "phone",
        "must be a valid phone number: E.164 like +8613812345678, or a national number of region CN",
    ),
    (
        {"phone": "call me"},
        "phone",
        "must be a valid phone number: E.164 like +8613812345678, or a national number of region CN",
    ),
    ({"email": "not-an-email"}, "email", "must be an e-mail address like name@example.com"),
    ({"email": "a b@example.com"}, "email", "must be an e-mail address like name@example.com"),
    (
        {"sms_consent": "maybe"},
        "sms_consent",
        "must be true/false, 1/0 or yes/no, or empty for the jurisdiction's default (got 'maybe')",
    ),
    (
        {"voice_consent": "Y"},
        "voice_consent",
        "must be true/false, 1/0 or yes/no, or empty for the jurisdiction's default (got 'Y')",
    ),
    (
        {"email_consent": "2"},
        "email_consent",
        "must be true/false, 1/0 or yes/no, or empty for the jurisdiction's default (got '2')",
    ),
    ({"currency": "RMB"}, "currency", "must be an ISO 4217 currency code such as CNY or USD (got 'RMB')"),
    ({"currency": "US$"}, "currency", "must be an ISO 4217 currency code such as CNY or USD (got 'US$')"),
    (
        {"principal": "", "amount_due": "25.75"},
        "principal",
        "required: a decimal amount >= 0 with at most 2 decimals, e.g. 1234.50",
    ),
    (
        {"interest": "1,000.00"},
        "interest",
        "must be a decimal amount >= 0 with at most 2 decimals, e.g. 1234.50 (got '1,000.00')",
    ),
    ({"penalty": "NaN"}, "penalty", "must be a decimal amount >= 0 with at most 2 decimals, e.g. 1234.50 (got 'NaN')"),
    ({"penalty": "-5.25"}, "penalty", "must be >= 0 (got -5.25)"),
    ({"principal": "999.995"}, "principal", "must have at most 2 decimals (got 999.995)"),
    ({"fees": "0.001"}, "fees", "must have at most 2 decimals (got 0.001)"),
    ({"principal": "99999999999.00"}, "principal", "must be at most 9999999999.99 (got 99999999999.00)"),
    ({"amount_due": ""}, "amount_due", "required: a decimal amount >= 0 with at most 2 decimals, e.g. 1234.50"),
    (
        {"amount_due": "1025.76"},
        "amount_due",
        "must equal principal + interest + penalty + fees = 1025.75 (got 1025.76)",
    ),
    (
        {"fees": "10", "amount_due": "1025.75"},
        "amount_due",
        "must equal principal + interest + penalty + fees = 1035.75 (got 1025.75)",
    ),
    (
        {"penalty_rate_daily": "0.05%"},
        "penalty_rate_daily",
        "must be a daily rate >= 0 with at most 8 decimals, e.g. 0.0005 (got '0.05%')",
    ),
    (
        {"penalty_rate_daily": "-0.001"},
        "penalty_rate_daily",
        "must be a daily rate >= 0 with at most 8 decimals, e.g. 0.0005 (got -0.001)",
    ),
    (
        {"penalty_rate_daily": "0.000000001"},
        "penalty_rate_daily",
        "must be a daily rate >= 0 with at most 8 decimals, e.g. 0.0005 (got 0.000000001)",
    ),
    ({"due_date": ""}, "due_date", "required: the date the missed payment was due, YYYY-MM-DD"),
    ({"due_date": "07/11/2026"}, "due_date", "must be a date YYYY-MM-DD, e.g. 2026-11-07 (got '07/11/2026')"),
    ({"due_date": "20261107"}, "due_date", "must be a date YYYY-MM-DD, e.g. 2026-11-07 (got '20261107')"),
    ({"due_date": "2026-02-30"}, "due_date", "must be a date YYYY-MM-DD, e.g. 2026-11-07 (got '2026-02-30')"),
    ({"status": "open"}, "status", "must be one of active, paid, settled, closed (got 'open')"),
    ({"product": "mortgage"}, "product", "must be one of credit_card, loan, other (got 'mortgage')"),
]


@pytest.mark.parametrize(("overrides", "column", "message"), CASES_PER_RULE, ids=[c[1] for c in CASES_PER_RULE])
def test_each_rule_rejects_with_line_column_and_message(
    run, engine: Engine, tmp_path: Path, overrides: dict[str, str], column: str, message: str  # type: ignore[no-untyped-def]
) -> None:
    header = [*GOOD, *(k for k in overrides if k not in GOOD)]
    path = write_csv(tmp_path / "cases.csv", [row(case_id="OK-1"), row(**overrides), row(case_id="OK-2")], header)
    report = run(path)
    assert (report.imported, report.rejected) == (2, 1)
    assert [str(e) for e in report.errors] == [f"line 3: {column}: {message}"]
    assert report.errors[0] == RowError(3, column, message)
    assert report.exit_status == 3
    assert count_cases(engine) == 2


def test_every_problem_of_a_row_is_reported(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "cases.csv", [row(case_id="bad id", jurisdiction="xx", principal="-1", due_date="")])
    report = run(path)
    assert report.rejected == 1
    assert [f"{e.column}" for e in report.errors] == ["case_id", "jurisdiction", "principal", "due_date"]
    assert all(e.line == 2 for e in report.errors)


def test_accepted_spellings(run, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "cases.csv", [
        row(case_id="A.b_c-1", locale="EN-us", sms_consent="1", voice_consent="0", email_consent="No",
            currency="usd", status="PAID", principal="+1000", interest="20.5", penalty="5.250",
            amount_due="1025.75", penalty_rate_daily="0.00012345"),
    ])
    report = run(path)
    assert report.errors == []
    case = snapshot(engine, "A.b_c-1").case
    assert (case.locale, case.currency, case.status) == ("en-US", "USD", CaseStatus.PAID)
    assert str(case.principal) == "1000.00" and str(case.penalty) == "5.25"
    assert contacts(engine, "A.b_c-1")[Channel.EMAIL] == ("zhang.wei@example.com", False)


# --------------------------------------------------------------------- phones, zones


@pytest.mark.parametrize(
    ("jurisdiction", "phone", "e164", "zones"),
    [
        ("cn", "138 1234 5678", "+8613812345678", ("Asia/Shanghai",)),
        ("cn", "+86 138-1234-5678", "+8613812345678", ("Asia/Shanghai",)),
        ("us", "(310) 555-0123", "+13105550123", ("America/Los_Angeles",)),
        ("us", "+1 310 555 0123", "+13105550123", ("America/Los_Angeles",)),
        ("us", "212-555-0100", "+12125550100", ("America/New_York",)),
        ("cn", "+1 310 555 0123", "+13105550123", ("America/Los_Angeles",)),  # a US number on a CN case
        ("us", "800 555 0100", "+18005550100", US_ZONES),  # toll-free: the profile's zones
        ("us", "", None, US_ZONES),
        ("cn", "", None, ("Asia/Shanghai",)),
    ],
)
def test_phone_normalisation_and_zones(run, engine: Engine, tmp_path: Path, jurisdiction: str, phone: str,  # type: ignore[no-untyped-def]
                                       e164: str | None, zones: tuple[str, ...]) -> None:
    path = write_csv(tmp_path / "cases.csv", [row(jurisdiction=jurisdiction, phone=phone)])
    report = run(path)
    assert report.errors == []
    got = snapshot(engine, "CN-0001")
    assert got.case.phone == e164
    assert got.zones == zones


def test_the_seven_profile_keys_are_accepted_with_their_defaults(run, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys = ["cn", "cn-bank", "CN-Internet", "us", "us-ma", "us-wa", "us-nyc"]
    path = write_csv(tmp_path / "cases.csv", [
        row(case_id=f"P-{i}", jurisdiction=key, phone="" if key.lower().startswith("us") else "13812345678",
            email="p@example.com")
        for i, key in enumerate(keys)
    ] + [row(case_id="P-bad", jurisdiction="us-ny")])
    report = run(path)
    assert report.imported == 7 and report.rejected == 1
    (error,) = report.errors
    assert "jurisdiction: must be one of cn, cn-bank, cn-internet, us, us-ma, us-nyc, us-wa" in str(error)
    got = {key.lower(): snapshot(engine, f"P-{i}") for i, key in enumerate(keys)}
    assert {k: s.case.jurisdiction for k, s in got.items()} == {k.lower(): k.lower() for k in keys}
    assert got["cn-bank"].case.locale == "zh-CN" and got["us-wa"].case.currency == "USD"
    # each state profile's own zone when the phone says nothing
    assert got["us-wa"].zones == ("America/Los_Angeles",) and got["us-nyc"].zones == ("America/New_York",)
    # NYC: no SMS or e-mail without recorded consent; the us profile takes e-mail consent by default
    assert {c.channel: c.consent for c in got["us-nyc"].contacts if c.address} == {Channel.EMAIL: False}
    assert {c.channel: c.consent for c in got["us"].contacts if c.address} == {Channel.EMAIL: True}
    recorded = write_csv(tmp_path / "consent.csv", [row(case_id="P-6", jurisdiction="us-nyc", phone="212-555-0100",
                                                        email="p@example.com", sms_consent="yes",
                                                        email_consent="yes")])
    assert run(recorded).errors == []
    assert {c.channel: c.consent for c in snapshot(engine, "P-6").contacts} == {
        Channel.SMS: True, Channel.EMAIL: True, Channel.VOICE: False}


def test_explicit_timezone_wins_over_the_phone(run, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "cases.csv", [row(jurisdiction="us", phone="+1 310 555 0123",
                                                  timezone="America/Denver")])
    assert run(path).errors == []
    assert snapshot(engine, "CN-0001").zones == ("America/Denver",)


# -------------------------------------------------------------------- line numbers


def test_line_numbers_count_physical_lines_with_quoted_newlines(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cases.csv"
    header = ",".join(GOOD)
    good = ",".join(GOOD.values())
    path.write_text(
        f"{header}\n"                                    # 1
        f"{good}\n"                                      # 2
        '"Q-1","Name with\nline break\nand more",cn,,,1,1,1,,3,2026-11-07\n'  # 3-5 (valid)
        '"Q-2","Two\nlines",xx,,,1,1,1,,3,2026-11-07\n'  # 6-7 (bad jurisdiction)
        "\n"                                             # 8 (blank)
        "bad id,Name,cn,,,1,1,1,,3,2026-11-07\r\n"       # 9
        '"Q-3","x",cn,,,1,1,1,,3,"2026-11-\n07"\n'       # 10-11: a date with a newline in it
        "Q-4,Name,cn,,,1,1,1,,4,2026-11-07\n",           # 12
        encoding="utf-8",
    )
    report = run(path)
    assert [str(e) for e in report.errors] == [
        "line 6: jurisdiction: must be one of cn, cn-bank, cn-internet, us, us-ma, us-nyc, us-wa (got 'xx')",
        "line 9: case_id: must be 1 to 64 characters of A-Za-z0-9_.- (got 'bad id')",
        "line 10: due_date: must be a date YYYY-MM-DD, e.g. 2026-11-07 (got '2026-11-\\n07')",
        "line 12: amount_due: must equal principal + interest + penalty + fees = 3.00 (got 4.00)",
    ]
    assert (report.imported, report.rejected) == (2, 4)


def test_jsonl_line_numbers_and_bad_lines(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = json.dumps({**GOOD, "case_id": "J-1"})
    path = tmp_path / "cases.jsonl"
    path.write_text(
        f"{good}\n"                                      # 1
        "\n"                                             # 2
        "{not json}\n"                                   # 3
        "[1, 2]\n"                                       # 4
        + json.dumps({**GOOD, "case_id": "J-2", "phone": {"n": 1}}) + "\n"  # 5
        + json.dumps({**GOOD, "case_id": "J-3", "amount_due": 1}) + "\n"  # 6
        + json.dumps({**GOOD, "case_id": "J-4"}),        # 7, no final newline
        encoding="utf-8",
    )
    report = run(path)
    assert [str(e) for e in report.errors] == [
        "line 3: row: not valid JSON (Expecting property name enclosed in double quotes at column 2);"
        " each line must be one JSON object",
        "line 4: row: must be a JSON object like {\"case_id\": ...}, not list",
        "line 5: phone: must be a string, number, boolean or null, not a JSON object or list",
        "line 6: amount_due: must equal principal + interest + penalty + fees = 1025.75 (got 1.00)",
    ]
    assert (report.imported, report.rejected) == (2, 4)


def test_a_row_with_the_wrong_number_of_fields(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cases.csv"
    path.write_text(
        ",".join(GOOD) + "\n" + ",".join(GOOD.values()).replace("Zhang Wei", "Zhang, Wei") + "\n", encoding="utf-8"
    )
    report = run(path)
    assert [str(e) for e in report.errors] == [
        "line 2: row: has 12 fields but the header has 11; quote values that contain commas, quotes or line breaks"
    ]


def test_a_row_that_is_not_utf8_is_rejected_alone(run, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cases.csv"
    header = ",".join(GOOD).encode()
    good = ",".join(GOOD.values()).encode()
    latin1 = ",".join(row(case_id="L-1", name="Jos\xe9").values()).encode("latin-1")
    path.write_bytes(header + b"\n" + latin1 + b"\n" + good + b"\n")
    rejects = tmp_path / "rejects.csv"
    report = run(path, rejects_path=rejects)
    assert [str(e) for e in report.errors] == [
        "line 2: row: contains bytes that are not UTF-8 text; save the file as UTF-8 (or give --encoding, e.g. gbk)"]
    assert report.imported == 1
    assert b"Jos\xe9" in rejects.read_bytes()  # written back byte for byte


# ------------------------------------------------------------------------ rejects


def test_rejects_csv_keeps_original_columns_and_adds_error(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    header = [*GOOD, "branch"]
    path = write_csv(tmp_path / "cases.csv", [
        {**row(case_id="R-1"), "branch": "north"},
        {**row(case_id="R-2", amount_due="1"), "branch": "south, east"},
        {**row(case_id="R 3", due_date="soon"), "branch": "west"},
    ], header)
    rejects = tmp_path / "out" / "rejects.csv"
    rejects.parent.mkdir()
    report = run(path, rejects_path=rejects)
    assert report.rejected == 2
    with rejects.open(newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == [*header, "error"]
    assert [r["case_id"] for r in got] == ["R-2", "R 3"]
    assert got[0]["branch"] == "south, east" and got[0]["amount_due"] == "1"
    assert (
        got[0]["error"] == "line 3: amount_due: must equal principal + interest + penalty + fees = 1025.75 (got 1.00)"
    )
    assert got[1]["error"] == (
        "line 4: case_id: must be 1 to 64 characters of A-Za-z0-9_.- (got 'R 3'); "
        "line 4: due_date: must be a date YYYY-MM-DD, e.g. 2026-11-07 (got 'soon')"
    )
    # the rejects file can be fixed and imported again: same columns
    fixed = tmp_path / "fixed.csv"
    with fixed.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerow({**got[0], "amount_due": "1025.75"})
    assert run(fixed).summary == "imported 1, updated 0, rejected 0"


def test_rejects_for_jsonl(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cases.jsonl"
    path.write_text(
        json.dumps({**GOOD, "case_id": "J-1", "amount_due": 9.5, "sms_consent": True, "note": "x"}) + "\n"
        + "oops\n" + json.dumps({**GOOD, "case_id": "J-2"}) + "\n",
        encoding="utf-8",
    )
    rejects = tmp_path / "rejects.csv"
    report = run(path, rejects_path=rejects)
    assert report.summary == "imported 1, updated 0, rejected 2"
    with rejects.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        got = list(reader)
    assert reader.fieldnames is not None
    assert reader.fieldnames[:2] == ["case_id", "name"] and reader.fieldnames[-3:] == ["note", "raw_line", "error"]
    assert (got[0]["case_id"], got[0]["amount_due"], got[0]["sms_consent"], got[0]["note"]) == (
        "J-1", "9.5", "true", "x")
    assert got[1]["raw_line"] == "oops" and got[1]["error"].startswith("line 2: row: not valid JSON")


def test_rejects_file_is_written_even_when_nothing_is_rejected(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rejects = tmp_path / "rejects.csv"
    run(write_csv(tmp_path / "cases.csv", [row()]), rejects_path=rejects)
    assert rejects.read_text(encoding="utf-8").splitlines() == [",".join([*GOOD, "error"])]


def test_errors_are_streamed_to_a_callback(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    report = run(
        write_csv(tmp_path / "cases.csv", [row(name=""), row(case_id="")]), on_error=lambda e: seen.append(str(e))
    )
    assert seen == [str(e) for e in report.errors] and len(seen) == 2


def test_error_messages_do_not_quote_personal_data(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = run(write_csv(tmp_path / "cases.csv", [row(phone="+86 555 SECRET", email="secret@@example.com")]))
    text = "\n".join(str(e) for e in report.errors)
    assert "SECRET" not in text and "secret" not in text and "Zhang" not in text
    assert len(report.errors) == 2


# -------------------------------------------------------------------- unusable files


def test_unusable_files(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImportUsageError, match=r"unknown file type '\.xlsx'; use \.csv .* or \.jsonl"):
        run(tmp_path / "cases.xlsx")
    with pytest.raises(ImportUsageError, match="no such file"):
        run(tmp_path / "missing.csv")
    with pytest.raises(ImportUsageError, match="is a directory"):
        (tmp_path / "dir.csv").mkdir()
        run(tmp_path / "dir.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ImportUsageError, match="the file is empty; line 1 must be the header"):
        run(empty)
    no_amount = write_csv(tmp_path / "cols.csv", [{k: v for k, v in GOOD.items() if k not in ("amount_due", "name")}])
    with pytest.raises(ImportUsageError, match=r"line 1: the header lacks the required column\(s\) name, amount_due;"
                                               r" required: case_id, name, jurisdiction, principal"):
        run(no_amount)
    twice = tmp_path / "twice.csv"
    twice.write_text(",".join([*GOOD, "Phone"]) + "\n", encoding="utf-8")
    with pytest.raises(ImportUsageError, match=r"column\(s\) phone appear more than once"):
        run(twice)
    good = write_csv(tmp_path / "good.csv", [row()])
    with pytest.raises(ImportUsageError, match="that is the input file"):
        run(good, rejects_path=good)
    with pytest.raises(ImportUsageError, match="--rejects .*: cannot write it"):
        run(good, rejects_path=tmp_path / "no" / "such" / "dir" / "r.csv")


def test_a_missing_column_in_jsonl_is_a_row_error(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps({k: v for k, v in GOOD.items() if k != "due_date"}) + "\n", encoding="utf-8")
    report = run(path)
    assert [str(e) for e in report.errors] == [
        "line 1: due_date: required: the date the missed payment was due, YYYY-MM-DD"]


# ---------------------------------------------------------------------------- scale


class _PeakRss:
    """Samples the resident set size (Linux /proc) in a thread; `growth` is the peak
    above the size when sampling started."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def _write_many(path: Path, n: int) -> None:
    buffer = io.StringIO()
    buffer.write("case_id,name,jurisdiction,phone,email,principal,interest,penalty,amount_due,due_date\n")
    for i in range(n):
        # every 10th row has a phone (phone parsing dominates the cost), one in 1000 is bad
        phone = f"138{i:08d}" if i % 10 == 0 else ""
        due = "2026-11-07" if i % 1000 != 999 else "yesterday"
        buffer.write(
            f"M{i:07d},Debtor {i},cn,{phone},d{i}@example.com,{i % 5000}.25,1.50,0.25,{i % 5000 + 2}.00,{due}\n"
        )
        if buffer.tell() > 1 << 20:
            with path.open("a", encoding="utf-8") as out:
                out.write(buffer.getvalue())
            buffer = io.StringIO()
    with path.open("a", encoding="utf-8") as out:
        out.write(buffer.getvalue())


@pytest.mark.slow
def test_100k_rows_import_in_one_streaming_pass(engine: Engine, config: Config, fake_clock: FakeClock,
                                                tmp_path: Path) -> None:
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs /proc to sample the resident set size")
    n = 100_000
    path = tmp_path / "many.csv"
    _write_many(path, n)
    # warm up (phone metadata, statement caches), so the measurement shows the import only
    import_file(write_csv(tmp_path / "warm.csv", [row(case_id="W-1")]), engine, config, fake_clock)

    started = time.perf_counter()
    with _PeakRss() as rss:
        report = import_file(path, engine, config, fake_clock)
    elapsed = time.perf_counter() - started

    bad = n // 1000
    assert (report.imported, report.updated, report.rejected) == (n - bad, 0, bad)
    assert report.errors[0] == RowError(
        1001, "due_date", "must be a date YYYY-MM-DD, e.g. 2026-11-07 (got 'yesterday')"
    )
    assert count_cases(engine) == n - bad + 1
    # Everything in memory at once would be far more than this (the rows alone, as
    # validated objects, take well over 100 MB); streaming keeps to a few batches.
    assert rss.growth < 64 * 2**20, f"resident set grew by {rss.growth / 2**20:.0f} MiB for {n} rows"
    print(f"\n{engine.dialect.name}: {n} rows in {elapsed:.1f} s ({n / elapsed:,.0f} rows/s),"
          f" RSS growth {rss.growth / 2**20:.1f} MiB")


def test_a_row_with_a_control_character_is_refused_and_says_what_to_do(tmp_path: Path) -> None:
    """Found by the import fuzzing on SQLite: a NUL inside a quoted name was stored (PostgreSQL
    cannot even hold one). The row is rejected with the column named; the others go in."""
    from dispatcher.clock import FakeClock
    from dispatcher.config import load_config
    from dispatcher.services.importer import import_file
    from dispatcher.store.db import ensure_schema, make_engine

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "config" / "dispatcher.toml")
    engine = make_engine(f"sqlite:///{tmp_path / 'd.db'}")
    ensure_schema(engine)
    head = "case_id,name,jurisdiction,principal,interest,penalty,amount_due,due_date\n"
    path = tmp_path / "cases.csv"
    path.write_text(head + '"A1","Wang\x00Wei",cn,100,0,0,100,2026-11-01\n'
                    + "A2,Li Na,cn,100,0,0,100,2026-11-01\n", encoding="utf-8")
    report = import_file(path, engine, config, FakeClock(dt.datetime(2026, 12, 3, tzinfo=dt.UTC)))
    assert (report.imported, report.rejected) == (1, 1)
    [error] = report.errors
    assert error.column == "name" and "control characters" in error.message
