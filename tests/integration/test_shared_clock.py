"""SharedClock: one simulated instant read by several processes (the demo's sandbox and
web server follow the driver's clock)."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import pickle
from pathlib import Path

import pytest

from dispatcher.clock import SharedClock

START = dt.datetime(2026, 11, 30, 1, 30, tzinfo=dt.UTC)


def _report(clock: SharedClock, ask: multiprocessing.synchronize.Event, answer: multiprocessing.queues.Queue) -> None:
    for _ in range(2):
        ask.wait(30)
        ask.clear()
        answer.put(clock.now())


def test_a_spawned_process_reads_what_the_parent_sets(tmp_path: Path) -> None:
    clock = SharedClock(tmp_path / "clock", START)
    context = multiprocessing.get_context("spawn")
    ask, answer = context.Event(), context.Queue()
    child = context.Process(target=_report, args=(clock, ask, answer))
    child.start()
    try:
        ask.set()
        assert answer.get(timeout=30) == START
        later = dt.datetime(2026, 12, 1, 17, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=8)))
        clock.set(later)
        ask.set()
        seen = answer.get(timeout=30)
        assert seen == later and seen.tzinfo is dt.UTC
    finally:
        child.join(30)
    assert child.exitcode == 0


def test_set_advance_and_pickling(tmp_path: Path) -> None:
    clock = SharedClock(tmp_path / "clock", START)
    copy = pickle.loads(pickle.dumps(clock))
    assert copy.path == clock.path
    assert clock.advance(hours=1, minutes=5) == START + dt.timedelta(hours=1, minutes=5)
    assert copy.now() == START + dt.timedelta(hours=1, minutes=5)
    copy.set(dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=dt.UTC))  # before the epoch: negative micros
    assert clock.now() == dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.set(dt.datetime(2026, 1, 1))
    clock.close()
    copy.close()
