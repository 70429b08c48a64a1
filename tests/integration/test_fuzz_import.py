"""Bad input everywhere, in case files (issue 16): hypothesis writes CSV and JSON Lines
files of mostly-valid rows with random damage — wrong values in any column, control
characters and NUL, huge fields, stray quotes, random bytes, other encodings — and
imports them on SQLite and PostgreSQL.

Never an exception but `ImportUsageError` (exit 2, a message that says what to fix);
every row is either imported or rejected with `line N: COLUMN: message`; a rejected row
is never half-written (its case is not in the store unless an earlier good row put it
there); and what was imported reads back as given. Bounded examples keep CI quick;
`DISPATCHER_FUZZ_EXAMPLES` raises them."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.services.importer import COLUMNS, ImportUsageError, import_file
from dispatcher.store.tables import cases_t

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)
EXAMPLES = int(os.environ.get("DISPATCHER_FUZZ_EXAMPLES", "10"))
FUZZ = settings(max_examples=EXAMPLES * 2, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

GOOD = {"case_id": "C1", "name": "王伟", "jurisdiction": "cn", "locale": "zh-CN", "timezone": "", "phone":
        "+8613812345678", "email": "w@example.com", "sms_consent": "yes", "voice_consent": "0", "email_consent": "",
        "currency": "CNY", "principal": "1000.00", "interest": "20.50", "penalty": "5.25", "fees": "0",
        "amount_due": "1025.75", "penalty_rate_daily": "0.0005", "due_date": "2026-11-07", "status": "active",
        "product": "loan"}
NASTY = st.sampled_from([
    "", " ", "\x00", "a\x00b", "\r", "\n", '"', '""', ",", "x" * 5000, "-1", "1e9", "NaN", "Infinity", "0.001",
    "99999999999999999999.99", "2026-02-30", "2026-13-01", "+99999", "13812345678", "@", "zz", "us", "null",
    "true", "TRUE", "２０２６-11-07", "１０００.００", "\ufeff", "\u202e", "😀", "Asia/Nowhere", "../../etc",
    "=cmd|' /C calc'!A0", "C" * 65, "C 1", "closed", "paid", "other",
])
VALUE = st.one_of(NASTY, st.text(max_size=30))


@st.composite
def rows(draw: st.DrawFn) -> list[dict[str, str]]:
    out = []
    for i in range(draw(st.integers(1, 6))):
        row = {**GOOD, "case_id": f"C{i}"}
        for column in draw(st.lists(st.sampled_from(COLUMNS), max_size=3, unique=True)):
            row[column] = draw(VALUE)
        out.append(row)
    return out


TALLY: dict[str, int] = {}


@pytest.fixture
def store(engine: Engine) -> Iterator[Engine]:
    TALLY.clear()
    yield engine
    out = ROOT / "var" / "fuzz"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"import-{engine.dialect.name}.json"
    merged: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
    for key, n in TALLY.items():
        merged[key] = merged.get(key, 0) + n
    path.write_text(json.dumps(merged, indent=1, sort_keys=True))


def tally(key: str, n: int = 1) -> None:
    TALLY[key] = TALLY.get(key, 0) + n


def check(engine: Engine, config: Config, path: Path, expected_rows: int | None) -> None:
    with engine.begin() as conn:  # a clean store for each example, dependants first
        for table in reversed(SQLModel.metadata.sorted_tables):
            if table.name != "alembic_version":
                conn.execute(delete(table))
    try:
        report = import_file(path, engine, config, FakeClock(NOW))
    except ImportUsageError as exc:
        tally(f"{path.suffix} files refused (exit 2)")
        assert str(exc) and "Traceback" not in str(exc)
        with engine.connect() as conn:
            assert conn.execute(select(cases_t.c.case_id)).first() is None  # nothing written
        return
    if expected_rows is not None:
        assert report.imported + report.updated + report.rejected <= expected_rows
    tally(f"{path.suffix} files imported")
    tally(f"{path.suffix} rows imported", report.imported)
    tally(f"{path.suffix} rows rejected", report.rejected)
    rejected_lines = {e.line for e in report.errors}
    assert len(rejected_lines) == report.rejected
    for error in report.errors:
        assert error.column and error.message and error.line >= 1
    with engine.connect() as conn:
        stored = {r.case_id: r for r in conn.execute(select(cases_t))}
    assert len(stored) == report.imported  # every imported row is there, nothing else is
    for case_id, row in stored.items():
        assert 1 <= len(case_id) <= 64 and row.amount_due == row.principal + row.interest + row.penalty + row.fees
        assert "\x00" not in (row.name or "")


@pytest.mark.parametrize("encoding", ["utf-8", "gbk"])
def test_csv_files_with_random_damage(store: Engine, config: Config, tmp_path: Path, encoding: str) -> None:
    @FUZZ
    @given(data=rows(), quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]), tail=st.binary(max_size=40))
    def run(data: list[dict[str, str]], quoting: int, tail: bytes) -> None:
        path = tmp_path / "cases.csv"
        with path.open("w", newline="", encoding=encoding, errors="replace") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), quoting=quoting)
            writer.writeheader()
            writer.writerows(data)
        with path.open("ab") as fh:
            fh.write(tail)  # stray bytes at the end: a truncated or concatenated file
        check(store, config, path, None)

    run()


def test_jsonl_files_with_random_damage(store: Engine, config: Config, tmp_path: Path) -> None:
    json_values: Any = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                                    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=2), max_leaves=3)

    @FUZZ
    @given(data=rows(), damage=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(COLUMNS), json_values),
                                        max_size=3),
           junk=st.lists(st.sampled_from(["{", "[]", "null", '"x"', "{}", "\x00", '{"case_id": 1}']), max_size=2))
    def run(data: list[dict[str, Any]], damage: list[tuple[int, str, Any]], junk: list[str]) -> None:
        for index, column, value in damage:
            if index < len(data):
                data[index][column] = value
        lines = [json.dumps(row, ensure_ascii=False) for row in data] + junk
        path = tmp_path / "cases.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        check(store, config, path, len(lines))

    run()


def test_random_bytes_are_a_clear_error_or_rejected_rows(store: Engine, config: Config, tmp_path: Path) -> None:
    @FUZZ
    @given(blob=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".jsonl"]))
    def run(blob: bytes, suffix: str) -> None:
        path = tmp_path / f"random{suffix}"
        path.write_bytes(blob)
        check(store, config, path, None)

    run()
