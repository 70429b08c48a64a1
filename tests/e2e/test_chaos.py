"""The chaos bench (`bench/chaos.py`, issue 10) in its short CI configuration: the same
disruptions — SIGKILLs with 1 and 3 instances, a SIGTERM in the middle of a batch, the
daemon's clock 5 minutes behind and ahead of the provider's with 30 % timeouts and
resets, a provider outage, the database's connections terminated during start-up and
during sending — in two worlds (`bench.chaos.CI_SCENARIOS`), each on its own PostgreSQL
database with `dispatcher sandbox --records` and `dispatcher run` as real processes.

Each must end with 0 delivered twice, 0 stuck in flight, 0 lost, none outside its
window and no cap or cadence exceeded.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.postgres


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_bench", ROOT / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


chaos = _bench()


@pytest.fixture(autouse=True)
def _postgres(pg_url: str) -> None:
    """PostgreSQL must be reachable (skipped, or failed in CI, like every PostgreSQL test)."""


@pytest.mark.parametrize("scenario", chaos.CI_SCENARIOS, ids=lambda s: s.name)
def test_chaos_keeps_the_outbox_promise(scenario: object, tmp_path: Path) -> None:
    result = chaos.run_scenario(scenario, cases=chaos.CI_CASES, seed=10, settle_seconds=180, workdir=tmp_path)
    summary = f"{chaos.table_row(result)}\n{dict(result.statuses)}\n{result.notes}\nlogs under {tmp_path}"
    assert result.planned > 0, summary
    assert result.disruptions > 0, summary
    assert result.twice == 0, f"delivered twice\n{summary}"
    assert result.stuck == 0, f"stuck in flight\n{summary}"
    assert result.left_by_sigterm == 0, f"SIGTERM left messages in flight or did not exit 0\n{summary}"
    assert result.lost == 0, f"lost\n{summary}"
    assert result.failed_without_reason == 0, summary
    assert result.outside_window == 0, f"sent outside the window\n{summary}"
    assert result.over_cap == 0, f"cap or cadence exceeded\n{summary}"
