"""The plan's speed tricks stay where they pay: the cyclic collector's threshold is
raised by the `plan` command only (never by `plan_decisions`, which the console and
the daemon also run), and restored when the command ends."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from dispatcher.cli import app
from dispatcher.config import Config
from dispatcher.domain import Decision
from dispatcher.policy import Gate
from dispatcher.services import planner
from dispatcher.store.db import ensure_schema, make_engine
from tests.integration.test_broken_promise import CATALOG
from tests.integration.test_store_contract import NOW, import_cases, make_case

ROOT = Path(__file__).resolve().parents[2]
LOW = (700, 10, 10)  # CPython's default


@pytest.fixture
def default_thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(*LOW)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


@pytest.mark.usefixtures("default_thresholds")
def test_plan_decisions_leaves_the_collector_alone(engine: Engine, config: Config) -> None:
    import_cases(engine, *(make_case(f"G-{i}") for i in range(3)))
    seen = []
    for _snapshot, decisions in planner.plan_decisions(engine, Gate(config), CATALOG, NOW):
        assert decisions
        seen.append(gc.get_threshold())
    assert seen == [LOW] * 3
    assert gc.get_threshold() == LOW


@pytest.mark.usefixtures("default_thresholds")
def test_the_plan_command_raises_the_threshold_while_it_runs(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(sqlite_url)
    ensure_schema(engine)
    import_cases(engine, make_case("G-1"), make_case("G-2"))
    engine.dispose()
    during = []

    def recording_line(decision: Decision) -> str:
        during.append(gc.get_threshold())
        return planner.choose_decision_line()(decision)

    monkeypatch.setattr(planner, "decision_line", recording_line)
    monkeypatch.setenv("DISPATCHER_TRANSPORT", "file")
    result = CliRunner().invoke(
        app, ["--config", str(ROOT / "config/dispatcher.toml"), "--db", sqlite_url, "--now", NOW.isoformat(), "plan"]
    )
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == len(during) > 0
    assert set(during) == {(planner.PLAN_GC_THRESHOLD, *LOW[1:])}
    assert gc.get_threshold() == LOW  # restored when the command's context closed
