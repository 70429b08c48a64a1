"""Every benchmark script starts: its imports resolve and its options parse.

The benches are run by hand, rarely, against large databases; a shared helper renamed in
one of them (as once happened to scale_bench) would otherwise be found only after a
long load. `--help` imports the whole script and exits before touching a database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name not in {"child.py", "__init__.py"})


def test_the_bench_folder_is_found() -> None:
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_starts(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
