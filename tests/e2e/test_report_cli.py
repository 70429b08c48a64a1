"""`dispatcher report` through the real command, on the hand-built history of
`test_report_known_answers`: the JSON contract of SPEC section 16 (field names exactly),
CSV, tables that fit 80 columns (COLUMNS=80) unless `--wide`, and errors that say what
to do."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.store.db import ensure_schema, make_engine
from tests.integration.test_report_known_answers import build_history

ROOT = Path(__file__).resolve().parents[2]
PERIOD = ["--since", "2026-11-01", "--until", "2026-11-30"]

STAGE_FIELDS = {
    "stage", "jurisdiction", "cases_entered", "contacted", "right_party_contacts", "first_contact_hours_p50",
    "promises", "promises_kept", "cured", "rolled_forward", "cure_rate", "roll_rate", "amount_at_entry",
    "amount_recovered", "recovery_rate", "messages", "segments", "cost", "cost_per_recovered", "complaints",
    "complaints_per_1000", "opt_outs",
}
VARIANT_FIELDS = {"template", "stage", "channel", "sent", "delivered", "delivery_rate", "clicks", "payments_7d",
                  "conversion", "conversion_ci"}
EXPERIMENT_FIELDS = {"stage", "channel", "locale", "p_value", "leader", "significant"}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report-cli") / "history.db"
    engine = make_engine(f"sqlite:///{path}")
    ensure_schema(engine)
    build_history(engine)
    engine.dispose()
    return path


def report(db: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISPATCHER_CONFIG": str(ROOT / "config/dispatcher.toml"),
           "DISPATCHER_DB_URL": f"sqlite:///{db}", "DISPATCHER_NOW": "2026-12-02T12:00:00+00:00",
           "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "dispatcher.cli", "report", *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=db.parent)


def test_json_follows_the_contract(db: Path) -> None:
    result = report(db, *PERIOD, "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"since", "until", "generated_at", "currency", "stages", "variants", "experiments"} <= set(data)
    assert (data["since"], data["until"]) == ("2026-11-01", "2026-11-30")
    assert data["currency"] == {"cn": ["CNY"], "us": ["USD"]}
    for row in data["stages"]:
        assert set(row) >= STAGE_FIELDS
    for row in data["variants"]:
        assert set(row) >= VARIANT_FIELDS
    for row in data["experiments"]:
        assert set(row) >= EXPERIMENT_FIELDS
    early = next(s for s in data["stages"] if (s["stage"], s["jurisdiction"]) == ("early", "cn"))
    # money as exact decimal strings, proportions as numbers
    assert (early["amount_recovered"], early["recovery_rate"], early["cost"]) == ("1100.00", "0.3333", "0.4740")
    assert (early["cure_rate"], early["roll_rate"]) == (0.25, 0.5)
    email = next(v for v in data["variants"] if v["template"] == "email/early/a")
    assert email["delivery_rate"] is None and email["clicks"] == 1


def test_csv_carries_every_field(db: Path) -> None:
    result = report(db, *PERIOD, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert set(rows[0]) >= STAGE_FIELDS
    early = next(r for r in rows if (r["stage"], r["jurisdiction"]) == ("early", "cn"))
    assert (early["cases_entered"], early["amount_at_entry"], early["roll_rate"]) == ("4", "3300.00", "0.5")
    variants = list(csv.DictReader(io.StringIO(report(db, *PERIOD, "--format", "csv", "--table", "variants").stdout)))
    ci = next(v for v in variants if v["template"] == "sms/dpd30/a")["conversion_ci"]
    assert ci == "0.2188 0.6134"


def test_the_table_fits_80_columns_and_wide_shows_everything(db: Path) -> None:
    result = report(db, *PERIOD)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "…" not in result.stdout  # no number cut off
    for figure in ("1,100.00", "25.0%", "50.0%", "33.3%", "0.47", "21.9%-61.3%"):
        assert figure in result.stdout
    wide = report(db, *PERIOD, "--wide")
    assert wide.returncode == 0, wide.stderr
    assert "…" not in wide.stdout
    for figure in ("3,300.00", "47.0", "1/2", "500.0", "0.0004"):
        assert figure in wide.stdout
    assert max(len(line) for line in wide.stdout.splitlines()) > 80


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "01/11/2026"], "--since '01/11/2026': write a date as YYYY-MM-DD"),
    (["--since", "2026-12-01", "--until", "2026-11-01"], "--since 2026-12-01 is after --until 2026-11-01"),
    (["--format", "pdf"], "--format 'pdf': use one of table, json, csv, html"),
    (["--table", "cases"], "--table 'cases': use one of stages, variants, experiments, weeks"),
])
def test_bad_input_says_what_to_do(db: Path, args: list[str], message: str) -> None:
    result = report(db, *args)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
