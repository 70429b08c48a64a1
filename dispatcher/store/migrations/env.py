"""Alembic environment for the dispatcher store.

Two ways in:
- programmatic (`dispatcher.store.db.ensure_schema`): the caller passes an open
  connection in `config.attributes["connection"]`, already inside a transaction that
  holds the migration lock; migrations run in that transaction;
- the `alembic` command line (developers): the URL comes from `DISPATCHER_DB_URL` or
  `sqlalchemy.url` in alembic.ini.
"""

from __future__ import annotations

import os

from alembic import context
from sqlmodel import SQLModel

from dispatcher.store import tables  # noqa: F401  (registers the tables on the metadata)

config = context.config
target_metadata = SQLModel.metadata


def _configure(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds tables for later migrations.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_migrations_offline() -> None:
    context.configure(
        url=os.environ.get("DISPATCHER_DB_URL") or config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    from dispatcher.store.db import make_engine

    url = os.environ.get("DISPATCHER_DB_URL") or config.get_main_option("sqlalchemy.url")
    engine = make_engine(url or "")
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
