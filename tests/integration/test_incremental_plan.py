"""Incremental planning enqueues exactly what a full plan at the same instants would.

Two stores start from the same random portfolio and go through the same random story:
time passes (minutes to days), and events happen — payments, holds placed and released,
opt-outs and opt-ins, message statuses (sent, delivered, failed), import updates (due
date, status). After each step one store is planned incrementally (only the cases due
or invalidated), the other fully (every case); their outboxes and escalations must be
equal. Also: a configuration change and a template approval make the next run evaluate
every case.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config, load_config
from dispatcher.domain import HOLD_REASONS, Channel, MessageStatus
from dispatcher.policy import Gate
from dispatcher.services.importer import import_file
from dispatcher.services.planner import IncrementalPlanner, run_planner
from dispatcher.services.portfolio import generate_cases, write_csv
from dispatcher.services.receipts import resume_broken_promises
from dispatcher.services.receipts.hot_path import StatusSQL
from dispatcher.store import plan_state, repository
from dispatcher.store.db import make_engine
from dispatcher.store.tables import contacts_t, escalations_t, messages_t, plan_instants_t
from dispatcher.templates import TemplateSet

ROOT = Path(__file__).resolve().parents[2]
START = dt.datetime(2026, 12, 7, 1, 0, tzinfo=dt.UTC)  # Mon 09:00 in Shanghai
CASES = 14
EXAMPLES = int(os.environ.get("DISPATCHER_PLAN_EXAMPLES", "25"))

_event = st.one_of(
    st.tuples(st.just("none")),
    st.tuples(st.just("payment"), st.integers(0, CASES - 1), st.sampled_from(["10.00", "250.00", "99999.00"])),
    st.tuples(st.just("hold"), st.integers(0, CASES - 1), st.sampled_from([r.value for r in HOLD_REASONS]),
              st.one_of(st.none(), st.integers(1, 24 * 9))),
    st.tuples(st.just("release"), st.integers(0, CASES - 1)),
    st.tuples(st.just("opt"), st.integers(0, CASES - 1), st.sampled_from(list(Channel)), st.booleans()),
    st.tuples(st.just("status"), st.integers(0, 10_000), st.sampled_from(["sent", "delivered", "failed"])),
    st.tuples(st.just("update"), st.integers(0, CASES - 1), st.integers(-40, 40),
              st.sampled_from(["active", "active", "settled"])),
)
_step = st.tuples(st.integers(1, 60 * 24 * 4), st.lists(_event, max_size=3))


def catalog(config: Config) -> Any:
    return TemplateSet(config.resolve(config.templates.directory), config).approved_catalog()


def outbox(engine: Engine) -> dict[str, tuple[Any, ...]]:
    m = messages_t.c
    with engine.connect() as conn:
        return {r.idempotency_key: (r.case_id, r.channel, r.stage, r.status, r.template_id, r.scheduled_at)
                for r in conn.execute(select(m.idempotency_key, m.case_id, m.channel, m.stage, m.status,
                                             m.template_id, m.scheduled_at))}


def escalations(engine: Engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return {(r.case_id, r.stage) for r in conn.execute(select(escalations_t.c.case_id, escalations_t.c.stage))}


class World:
    """One store and what is done to it."""

    def __init__(self, engine: Engine, config: Config, tmp: Path, rows: list[dict[str, str]]) -> None:
        self.engine, self.config, self.tmp, self.rows = engine, config, tmp, rows
        self.status = StatusSQL(engine)

    def import_rows(self, rows: list[dict[str, str]], now: dt.datetime, name: str) -> None:
        path = self.tmp / f"{name}.csv"
        write_csv(path, iter(rows))
        report = import_file(path, self.engine, self.config, FakeClock(now))
        assert report.rejected == 0

    def apply(self, event: tuple[Any, ...], now: dt.datetime, step: int) -> None:
        kind = event[0]
        case_id = self.rows[event[1]]["case_id"] if kind not in ("none", "status") else None
        with self.engine.begin() as conn:
            if kind == "payment":
                repository.record_payment(conn, case_id, Decimal(event[2]), "test", now)
            elif kind == "hold":
                until = None if event[3] is None else now + dt.timedelta(hours=event[3])
                repository.place_hold(conn, case_id, event[2], until, "test", now)
            elif kind == "release":
                repository.release_holds(conn, case_id, None, "test", now)
            elif kind == "opt":
                address = conn.execute(select(contacts_t.c.address).where(
                    contacts_t.c.case_id == case_id, contacts_t.c.channel == event[2].value)).scalar()
                if address:
                    repository.set_opt_out(conn, event[2], address, event[3], now, source="test")
        if kind == "status":
            live = sorted((k, v) for k, v in outbox(self.engine).items() if v[3] in ("queued", "sending", "sent"))
            if live:
                key, _ = live[event[1] % len(live)]
                with self.engine.connect() as conn:
                    row = conn.execute(select(messages_t.c.id, messages_t.c.channel)
                                       .where(messages_t.c.idempotency_key == key)).one()
                self.status.apply(Channel(row.channel), f"SM{row.id:030d}", MessageStatus(event[2]), row.id, now,
                                  None, "{}")
        elif kind == "update":
            row = dict(self.rows[event[1]])
            row["due_date"] = (dt.date.fromisoformat(row["due_date"]) + dt.timedelta(days=event[2])).isoformat()
            row["status"] = event[3]
            self.import_rows([row], now, f"update-{step}")


@pytest.fixture
def worlds(_sqlite_template: Path, config: Config) -> Iterator[Any]:
    made: list[tuple[World, Path]] = []

    def make(rows: list[dict[str, str]]) -> tuple[World, World]:
        pair = []
        for name in ("incremental", "full"):
            tmp = Path(tempfile.mkdtemp(prefix=f"plan-{name}-"))
            shutil.copyfile(_sqlite_template, tmp / "db.sqlite")
            world = World(make_engine(f"sqlite:///{tmp / 'db.sqlite'}"), config, tmp, rows)
            world.import_rows(rows, START, "portfolio")
            made.append((world, tmp))
            pair.append(world)
        return pair[0], pair[1]

    yield make
    for world, tmp in made:
        world.status.close()
        world.engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), start_minutes=st.integers(0, 60 * 24), steps=st.lists(_step, min_size=1,
                                                                                          max_size=6))
def test_incremental_planning_enqueues_what_a_full_plan_would(
    worlds: Any, config: Config, seed: int, start_minutes: int, steps: list[Any]
) -> None:
    now = START + dt.timedelta(minutes=start_minutes)
    rows = list(generate_cases(CASES, START.date(), seed=seed, prefix=f"P{seed}-"))
    inc, full = worlds(rows)
    gate, approved = Gate(config), catalog(config)
    planner = IncrementalPlanner(inc.engine, gate)
    evaluated = 0
    for step, (minutes, events) in enumerate([(0, []), *steps]):
        now += dt.timedelta(minutes=minutes)
        for event in events:
            inc.apply(event, now, step)
            full.apply(event, now, step)
        for world in (inc, full):
            resume_broken_promises(world.engine, now)
        summary = planner.run(approved, now)
        run_planner(full.engine, gate, approved, now, full=True)
        evaluated += summary.evaluated
        assert outbox(inc.engine) == outbox(full.engine), f"step {step} at {now.isoformat()}"
        assert escalations(inc.engine) == escalations(full.engine)
    assert evaluated <= CASES * (len(steps) + 1)


def test_a_quiet_portfolio_is_not_evaluated_again(worlds: Any, config: Config) -> None:
    """Right after a plan nothing is due; a payment makes exactly its case due."""
    rows = list(generate_cases(40, START.date(), seed=3))
    inc, _ = worlds(rows)
    gate, approved = Gate(config), catalog(config)
    planner = IncrementalPlanner(inc.engine, gate)
    first = planner.run(approved, START)
    assert first.evaluated == 40 and first.whole_partitions == plan_state.PARTITIONS  # a new fingerprint
    assert planner.run(approved, START + dt.timedelta(seconds=1)).evaluated <= 2  # at most a failed re-send
    with inc.engine.begin() as conn:
        repository.record_payment(conn, rows[5]["case_id"], Decimal("1.00"), "test", START)
        due = conn.execute(select(plan_instants_t.c.case_id).where(
            plan_instants_t.c.next_check_at == plan_state.DIRTY)).scalars().all()
    assert due == [rows[5]["case_id"]]
    assert planner.run(approved, START + dt.timedelta(seconds=2)).evaluated == 1


def test_a_configuration_change_invalidates_every_case(worlds: Any, config: Config, tmp_path: Path) -> None:
    rows = list(generate_cases(30, START.date(), seed=5))
    inc, full = worlds(rows)
    approved = catalog(config)
    IncrementalPlanner(inc.engine, Gate(config)).run(approved, START)
    run_planner(full.engine, Gate(config), approved, START, full=True)
    source = (ROOT / "config" / "dispatcher.toml").read_text(encoding="utf-8")
    changed = source.replace("sms = { every_days = 3 }", "sms = { every_days = 1 }")
    assert changed != source
    path = tmp_path / "config" / "dispatcher.toml"
    path.parent.mkdir()
    path.write_text(changed.replace('directory = "../templates"', f'directory = "{ROOT / "templates"}"').replace(
        'forbidden_phrases = "forbidden_phrases.txt"',
        f'forbidden_phrases = "{ROOT / "config" / "forbidden_phrases.txt"}"'), encoding="utf-8")
    new = load_config(path)
    later = START + dt.timedelta(days=1, hours=2)
    summary = IncrementalPlanner(inc.engine, Gate(new)).run(approved, later)
    assert summary.whole_partitions == plan_state.PARTITIONS and summary.evaluated == 30
    run_planner(full.engine, Gate(new), approved, later, full=True)
    assert outbox(inc.engine) == outbox(full.engine)


def test_a_template_approval_invalidates_every_case(worlds: Any, config: Config) -> None:
    """Four-eyes approval of a new version of a template the catalog already has changes
    no decision (its text is rendered when a message is composed), so nothing is planned
    again; an approval that changes the approved catalog (a new or withdrawn template)
    changes the fingerprint, and the next run evaluates every case."""
    from dispatcher.credentials import light_passwords
    from dispatcher.roles import Role
    from dispatcher.services.people import People
    from dispatcher.services.template_files import seed_if_empty
    from dispatcher.services.template_versions import TemplateVersions

    rows = list(generate_cases(20, START.date(), seed=9))
    inc, _ = worlds(rows)
    approved = catalog(config)
    planner = IncrementalPlanner(inc.engine, Gate(config))
    planner.run(approved, START)
    clock = FakeClock(START)
    tv = TemplateVersions(inc.engine, config, clock, config.resolve(config.templates.forbidden_phrases))
    seed_if_empty(tv, ROOT / "templates")
    people = People(inc.engine, clock, light_passwords())
    people.add_user("writer", frozenset({Role.AUTHOR}), "test-admin")
    people.add_user("checker", frozenset({Role.COMPLIANCE}), "test-admin")
    current = tv.approved("sms/dpd30/v2", "en-US")
    assert current is not None
    draft, problems = tv.save("sms/dpd30/v2", "en-US", current.content.replace("as soon as you can", "soon"), "writer")
    assert problems == [] and draft.content != current.content
    assert tv.approve("sms/dpd30/v2", draft.version, "checker", "wording").state == "approved"
    assert planner.run(approved, START + dt.timedelta(minutes=5)).evaluated <= 2
    smaller = {k: v for k, v in approved.items() if k[1] != "dpd30"}
    assert planner.run(smaller, START + dt.timedelta(minutes=7)).evaluated == 20
    with inc.engine.begin() as conn:  # and back: the fingerprint differs again
        conn.execute(update(plan_instants_t).values(planned_by="x"))
    assert planner.run(approved, START + dt.timedelta(minutes=8)).evaluated == 20
