"""Global options after the command (issue 16): moved in front of it, where click reads them."""

from __future__ import annotations

import pytest

from dispatcher.cli import hoist_global_options


@pytest.mark.parametrize(("argv", "expected"), [
    (["plan", "--format", "table", "--case", "N-001", "--now", "2026-12-07T10:00:00+08:00"],
     ["--now", "2026-12-07T10:00:00+08:00", "plan", "--format", "table", "--case", "N-001"]),
    (["--db", "sqlite:///x.db", "case", "show", "C1", "--config=/etc/d.toml"],
     ["--db", "sqlite:///x.db", "--config=/etc/d.toml", "case", "show", "C1"]),
    (["--now", "plan", "plan"], ["--now", "plan", "plan"]),  # a value that looks like the command
    (["import", "f.csv", "--", "--now", "x"], ["import", "f.csv", "--", "--now", "x"]),  # after --: arguments
    (["plan", "--now"], ["plan", "--now"]),  # no value: click reports it
    ([], []),
])
def test_hoisting(argv: list[str], expected: list[str]) -> None:
    assert hoist_global_options(argv) == expected
