"""`dispatcher run`'s planning job warns once per profile and year when it decides in an
estimated calendar year (SPEC 12), on both stores."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.links import LinkSigner
from dispatcher.policy import Gate
from dispatcher.services.calendar_notice import forget_warnings
from dispatcher.services.daemon import DaemonJobs
from dispatcher.services.outbox import Sender
from dispatcher.store import repository as repo
from dispatcher.templates import TemplateSet
from tests.integration.test_collector_api import imported

ROOT = Path(__file__).resolve().parents[2]


async def test_the_planning_job_warns_once_per_profile_and_year(engine: Engine, config: Config,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    forget_warnings()
    clock = FakeClock(dt.datetime(2027, 1, 5, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1"), imported("A2")], clock.now())
    templates = TemplateSet(ROOT / "templates", config)
    gate = Gate(config)
    sender = Sender(engine, config, templates, {}, clock, LinkSigner("k"), "http://127.0.0.1:9", "t", gate=gate)
    jobs = DaemonJobs(engine=engine, config=config, gate=gate, clock=clock, sender=sender,
                      catalog=templates.approved_catalog)
    with caplog.at_level(logging.WARNING, logger="dispatcher.calendar"):
        await jobs.plan()
        clock.advance(hours=1)
        await jobs.plan()
    said = [r.getMessage() for r in caplog.records if r.name == "dispatcher.calendar"]
    assert len(said) == 1 and "profile cn, year 2027" in said[0]
