"""Fixtures shared by the whole test suite.

Databases:
- `sqlite_url`: a file database under the test's tmp_path, schema not created.
- `pg_url`: one PostgreSQL database per test session (`dispatcher_test_<hex8>`), created
  on the server of `DISPATCHER_TEST_PG_URL` (default
  postgresql+psycopg://postgres@127.0.0.1:5432/test) and dropped at the end; schema not
  created. Tests sharing it must clean up, or use `engine`, which truncates first.
- `fresh_pg_url`: a brand-new empty database for one test (migration tests).
- `engine`: parametrized over ["sqlite", "postgres"]: migrated schema, no rows, disposed
  afterwards. The contract suites (STYLE principle 7) use this one.
When PostgreSQL is unreachable its tests are skipped, unless DISPATCHER_REQUIRE_POSTGRES=1
(CI), where they fail.

Other: `config` (the shipped config/dispatcher.toml), `fake_clock` (Mon 2026-12-07
10:00 in Shanghai = 02:00 UTC).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url, text
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config, load_config
from dispatcher.store.db import ensure_schema, make_engine

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

#: Mon 2026-12-07 10:00 Asia/Shanghai, a working day inside the CN window.
FAKE_NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)


# ------------------------------------------------------------------------ PostgreSQL


def _admin_url() -> str:
    return os.environ.get("DISPATCHER_TEST_PG_URL") or DEFAULT_PG_URL


def _libpq(url: str) -> str:
    """A SQLAlchemy URL as a libpq connection string for psycopg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_unavailable(exc: Exception) -> None:
    where = make_url(_admin_url())
    place = f"{where.host or 'localhost'}:{where.port or 5432}"
    if os.environ.get("DISPATCHER_REQUIRE_POSTGRES") == "1":
        pytest.fail(
            f"PostgreSQL not reachable at {place} ({exc}); DISPATCHER_REQUIRE_POSTGRES=1 makes these"
            " tests mandatory: start the server or set DISPATCHER_TEST_PG_URL to one",
            pytrace=False,
        )
    pytest.skip(
        f"PostgreSQL not reachable at {place}; start it or set DISPATCHER_TEST_PG_URL to a server"
        " — these tests are mandatory in CI (DISPATCHER_REQUIRE_POSTGRES=1)"
    )


@contextlib.contextmanager
def _temporary_pg_database() -> Iterator[str]:
    """Create a uniquely named database, yield its SQLAlchemy URL, drop it afterwards."""
    admin = _admin_url()
    try:
        conn = psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _pg_unavailable(exc)
        raise  # unreachable: skip/fail raise
    name = f"dispatcher_test_{uuid.uuid4().hex[:8]}"
    with conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(admin).set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One PostgreSQL database for the whole session (schema not created)."""
    with _temporary_pg_database() as url:
        yield url


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test only."""
    with _temporary_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def _pg_migrated(pg_url: str) -> str:
    engine = make_engine(pg_url)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()
    return pg_url


def _truncate_all(engine: Engine) -> None:
    with engine.begin() as conn:
        names = (
            conn.execute(
                text(
                    "SELECT tablename FROM pg_tables"
                    " WHERE schemaname = current_schema() AND tablename <> 'alembic_version'"
                )
            )
            .scalars()
            .all()
        )
        if names:
            quoted = ", ".join(f'"{name}"' for name in names)
            conn.execute(text(f"TRUNCATE TABLE {quoted} RESTART IDENTITY CASCADE"))


# ---------------------------------------------------------------------------- SQLite


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A file SQLite database under the test's tmp_path (schema not created)."""
    return f"sqlite:///{tmp_path / 'dispatcher.db'}"


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite file, copied for each test (faster than migrating each)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()
    return path


# ---------------------------------------------------------------------------- engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty store on each backend; disposed after the test."""
    if request.param == "sqlite":
        path = tmp_path / "dispatcher.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        eng = make_engine(f"sqlite:///{path}")
    else:
        eng = make_engine(request.getfixturevalue("_pg_migrated"))
        _truncate_all(eng)
    try:
        yield eng
    finally:
        eng.dispose()


# ----------------------------------------------------------------------- config, clock


@pytest.fixture(scope="session")
def config() -> Config:
    """The shipped configuration (config/dispatcher.toml)."""
    return load_config(ROOT / "config" / "dispatcher.toml")


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock stopped at Mon 2026-12-07 10:00 Asia/Shanghai (02:00 UTC)."""
    return FakeClock(FAKE_NOW)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"pg_url", "fresh_pg_url", "_pg_migrated"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
