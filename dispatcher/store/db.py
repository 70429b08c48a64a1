"""Engine creation and schema management (SQLite by default, PostgreSQL in production).

The schema is owned by the Alembic migrations in `dispatcher/store/migrations`;
`ensure_schema` applies them on first use (and `dispatcher db upgrade` explicitly).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel, create_engine

from dispatcher.store import tables  # noqa: F401  (registers the tables)

DEFAULT_DB_URL = "sqlite:///var/dispatcher.db"

#: Located from this file, not the working directory, so an installed package finds them.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: Advisory-lock key serialising schema upgrades on PostgreSQL ("migr").
MIGRATION_LOCK_KEY = 0x6D696772


class SchemaError(Exception):
    """The database schema cannot be brought to the current revision."""


def make_engine(url: str = DEFAULT_DB_URL) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and foreign keys."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A pool as large as the web server's thread pool: SQLite connections are cheap
        # to keep but not to open (every new one re-runs the PRAGMAs below).
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               pool_size=40, max_overflow=20)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            _use_wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        _serialise_sqlite_writers(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _use_wal(cur: sqlite3.Cursor, patience: float = 30.0) -> None:
    """Switch the database file to WAL (a persistent setting: once per new file).

    The switch needs the file to itself, and SQLite answers "database is locked" at once
    instead of waiting in its busy handler when another connection holds a lock, which
    is what happens when several instances open a brand-new database together. Retried
    with a short backoff until `patience` seconds have passed."""
    if cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "BEGIN I", "BEGIN E")


def _serialise_sqlite_writers(engine: Engine) -> None:
    """Queue this process's SQLite writers on a lock instead of SQLite's busy handler.

    SQLite allows one writer; a blocked writer polls with sleeps of up to 100 ms, which
    under concurrent webhooks and sending costs tens of milliseconds per message. Here a
    connection takes a process-wide lock at its first write statement and drops it when
    its transaction ends, so writers wait on a lock that wakes them at once. Reads never
    take it (WAL readers do not block). Other processes still meet the busy timeout.
    The lock belongs to the connection, not the thread (a plain Lock): frameworks may end
    a transaction on another thread than the one that began it.
    """
    lock = threading.Lock()

    def take(conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if not conn.info.get("dispatcher_writing") and statement.lstrip()[:7].upper().startswith(_WRITE_VERBS):
            lock.acquire()
            conn.info["dispatcher_writing"] = True

    def release(conn: Connection) -> None:
        if conn.info.pop("dispatcher_writing", False):
            lock.release()

    def release_on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None and record.info.pop("dispatcher_writing", False):
            lock.release()

    event.listen(engine, "before_cursor_execute", take)
    event.listen(engine, "commit", release)
    event.listen(engine, "rollback", release)
    event.listen(engine.pool, "checkin", release_on_checkin)


def alembic_config() -> AlembicConfig:
    """Alembic configured programmatically (no alembic.ini needed at run time)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest migration this package ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found next to dispatcher/store/db.py"
    return head


def ensure_schema(engine: Engine) -> None:
    """Create or upgrade the schema to the newest migration; cheap when already there.

    Safe when several processes start at once: on PostgreSQL the upgrade runs in one
    transaction holding a transaction-scoped advisory lock (DDL is transactional there,
    so a second process waits, then finds the schema at head); on SQLite the transaction
    starts with BEGIN IMMEDIATE, which takes the database's write lock up front.
    """
    cfg = alembic_config()
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        _adopt_unversioned(conn, cfg)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        conn.commit()


def schema_revision(engine: Engine) -> str | None:
    """The migration the database is at, or None for a database without the schema."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _adopt_unversioned(conn: Connection, cfg: AlembicConfig) -> None:
    """Stamp a database made by the pre-migration `create_all` if it matches the tables.

    Early development databases have the tables but no `alembic_version`; upgrading
    them would fail on "table already exists".
    """
    inspector = inspect(conn)
    if inspector.has_table("alembic_version") or not inspector.has_table("cases"):
        return
    diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    if diffs:
        raise SchemaError(
            f"the database has dispatcher tables but no migration history, and they differ from"
            f" this version's schema ({len(diffs)} differences, e.g. {diffs[0]!r}); back it up"
            " and point --db at a new database, or recreate this one"
        )
    cfg.attributes["connection"] = conn
    command.stamp(cfg, "head")
