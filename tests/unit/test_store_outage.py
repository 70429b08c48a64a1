"""`store.outage`: what counts as the database being unreachable, the backoff, and the
start-up wait."""

from __future__ import annotations

import logging

import psycopg
import pytest
from sqlalchemy import exc as sa_exc

from dispatcher.store.outage import Backoff, is_outage, survives_outage, wait_for_store
from dispatcher.wiring import SetupError


def test_lost_connections_are_outages_and_other_errors_are_not() -> None:
    refused = psycopg.OperationalError("connection refused")
    assert is_outage(refused)
    assert is_outage(sa_exc.OperationalError("SELECT 1", {}, refused))
    try:
        raise SetupError("cannot open the database") from sa_exc.OperationalError("x", {}, refused)
    except SetupError as wrapped:
        assert is_outage(wrapped)
    assert not is_outage(ValueError("bad URL"))
    assert not is_outage(sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")))


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first=0.5, cap=4.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    jittery = Backoff(first=10, cap=10, jitter=0.2)
    assert all(8 <= jittery.next_delay() <= 12 for _ in range(50))


def test_wait_for_store_retries_an_outage_and_logs_each_wait(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    slept: list[float] = []

    def build() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise SetupError("cannot open the database") from psycopg.OperationalError("connection refused")
        return "engine"

    with caplog.at_level(logging.WARNING, logger="dispatcher.store"):
        assert wait_for_store(build, what="start-up", sleep=slept.append, backoff=Backoff(jitter=0)) == "engine"
    assert slept == [0.5, 1.0, 2.0]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all("start-up: the database is unavailable" in line for line in lines)
    assert "connection refused" in lines[0]


def test_wait_for_store_raises_what_is_not_an_outage() -> None:
    def build() -> str:
        raise SetupError("bad configuration", usage=True)

    with pytest.raises(SetupError):
        wait_for_store(build, what="start-up", sleep=lambda _s: None)


async def test_a_job_outlives_an_outage_and_runs_again() -> None:
    runs: list[int] = []

    async def job() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise sa_exc.OperationalError("SELECT", {}, psycopg.OperationalError("terminating connection"))

    await survives_outage(job, backoff=lambda: Backoff(first=0.001, jitter=0))()
    assert len(runs) == 3

    async def broken() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        await survives_outage(broken)()
