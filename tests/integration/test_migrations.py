"""The Alembic migrations build exactly the schema the tables declare, on both backends."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from dispatcher.store.db import (
    MIGRATIONS_DIR,
    SchemaError,
    ensure_schema,
    head_revision,
    make_engine,
    schema_revision,
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest) -> str:
    """The URL of a database without any tables."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url")


def _diffs(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)


def test_migrated_schema_equals_the_tables(empty_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the migrations are found from the package, not the working directory
    engine = make_engine(empty_url)
    try:
        assert schema_revision(engine) is None
        ensure_schema(engine)
        assert schema_revision(engine) == head_revision() == "0001"
        assert _diffs(engine) == []
        assert set(SQLModel.metadata.tables) <= set(inspect(engine).get_table_names())
        ensure_schema(engine)  # a second run is a no-op
        assert schema_revision(engine) == "0001"
    finally:
        engine.dispose()


def test_concurrent_first_use_is_safe(empty_url: str) -> None:
    """Several instances starting together against an empty database (the advisory lock
    on PostgreSQL, BEGIN IMMEDIATE on SQLite)."""
    engines = [make_engine(empty_url) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def start(engine: Engine) -> None:
        try:
            barrier.wait()
            ensure_schema(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert schema_revision(engines[0]) == "0001"
        assert _diffs(engines[0]) == []
    finally:
        for e in engines:
            e.dispose()


def test_a_database_made_by_create_all_is_adopted(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        SQLModel.metadata.create_all(engine)
        assert schema_revision(engine) is None
        ensure_schema(engine)
        assert schema_revision(engine) == "0001"
        assert _diffs(engine) == []
    finally:
        engine.dispose()


def test_an_unversioned_database_that_differs_is_refused(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE cases (case_id VARCHAR(64) PRIMARY KEY)")
        with pytest.raises(SchemaError, match="no migration history.*point --db at a new database"):
            ensure_schema(engine)
    finally:
        engine.dispose()


def test_migrations_ship_inside_the_package() -> None:
    assert MIGRATIONS_DIR.is_dir()
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()
    assert MIGRATIONS_DIR.parent.name == "store"
