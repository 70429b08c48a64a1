"""The Alembic migrations build exactly the schema the tables declare, on both backends."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.links import LinkSigner
from dispatcher.services.receipts import Receipts
from dispatcher.store.db import (
    MIGRATIONS_DIR,
    SchemaError,
    alembic_config,
    ensure_schema,
    head_revision,
    make_engine,
    schema_revision,
)
from dispatcher.store.events import encode_data

HEAD = "0013"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest) -> str:
    """The URL of a database without any tables."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url")


def _not_search_index(name: str | None, type_: str, parent: object) -> bool:
    # the PostgreSQL-only search indexes (expressions, trigrams) are the migration's, not
    # the tables' (see 0007_tasks); test_search_indexes_exist_on_postgres checks them
    return not (type_ == "index" and (name or "").startswith("ix_search_"))


def _diffs(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": _not_search_index})
        return compare_metadata(context, SQLModel.metadata)


def test_migrated_schema_equals_the_tables(empty_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the migrations are found from the package, not the working directory
    engine = make_engine(empty_url)
    try:
        assert schema_revision(engine) is None
        ensure_schema(engine)
        assert schema_revision(engine) == head_revision() == HEAD
        assert _diffs(engine) == []
        assert set(SQLModel.metadata.tables) <= set(inspect(engine).get_table_names())
        ensure_schema(engine)  # a second run is a no-op
        assert schema_revision(engine) == HEAD
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
        assert schema_revision(engines[0]) == HEAD
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
        assert schema_revision(engine) == HEAD
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
    assert (MIGRATIONS_DIR / "versions" / "0002_dedupe_keys.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0003_messages_to_index.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0004_users.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0007_tasks.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0008_user_locale.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0010_plan_instants.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0011_template_versions.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0013_close_tasks_of_closed_cases.py").is_file()
    assert MIGRATIONS_DIR.parent.name == "store"


def test_reconciles_rivals_query_has_its_index(empty_url: str) -> None:
    """0003: reconcile asks for our other recent messages to one number on every
    ambiguous send; the index on (channel, to_address, status_at) answers it."""
    engine = make_engine(empty_url)
    try:
        ensure_schema(engine)
        indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("messages")}
        assert indexes["ix_messages_to"] == ["channel", "to_address", "status_at"]
    finally:
        engine.dispose()


def _upgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config()
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


def test_dedupe_keys_are_backfilled_so_old_duplicates_stay_duplicates(empty_url: str, config: Config) -> None:
    """A database at 0001 with inbound SMS, a confirmed identity and a phone promise
    recorded the old way: 0002 derives their keys, and a webhook applied before the
    upgrade and delivered again after it changes nothing."""
    engine = make_engine(empty_url)
    at = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
    try:
        _upgrade(engine, "0001")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO cases (case_id, name, jurisdiction, locale, zones, escalated_stages, currency,"
                " principal, interest, penalty, fees, amount_due, due_date, status, product, paid_total,"
                " created_at, updated_at) VALUES ('M-1', 'Old Case', 'cn', 'zh-CN', 'Asia/Shanghai', '', 'CNY',"
                " 100, 0, 0, 0, 100, '2026-10-01', 'active', 'other', 0, :at, :at)"), {"at": at})
            conn.execute(sa.text(
                "INSERT INTO contact_points (case_id, channel, address, consent, opted_out, invalid, updated_at)"
                " VALUES ('M-1', 'sms', '+8613800000001', TRUE, TRUE, FALSE, :at)"), {"at": at})
            events = [
                ("keyword_received", None, {"intent": "opt_out", "sid": "SMold1", "text": "TD"}),
                ("keyword_received", None, {"intent": "opt_out", "sid": "SMold1", "text": "TD"}),  # old duplicate
                ("reply_received", None, {"intent": "free_text", "sid": "SMold2", "text": "hello"}),
                ("keypress", 7, {"digits": "1", "identity_confirmed": True, "step": "identity"}),
                ("keypress", 8, {"digits": "2", "step": "options"}),
                ("status_received", 9, {"sid": "SMother", "status": "delivered"}),
            ]
            for kind, message_id, data in events:
                conn.execute(sa.text(
                    "INSERT INTO events (case_id, message_id, at, kind, actor, data)"
                    " VALUES ('M-1', :m, :at, :kind, 'sms', :data)"),
                    {"m": message_id, "at": at, "kind": kind, "data": encode_data(data)})
            conn.execute(sa.text(
                "INSERT INTO holds (case_id, reason, placed_at, until, placed_by, note)"
                " VALUES ('M-1', 'promise_to_pay', :at, :at, 'ivr', 'ivr call message 7'),"
                " ('M-1', 'collector_hold', :at, NULL, 'ops', 'ivr call message 8')"), {"at": at})

        ensure_schema(engine)

        assert schema_revision(engine) == HEAD
        assert _diffs(engine) == []
        with engine.connect() as conn:
            keys = set(conn.execute(sa.text("SELECT key FROM dedupe_keys")).scalars())
        assert keys == {"sms-in:SMold1", "sms-in:SMold2", "ivr-identity:7", "ivr-promise:7"}

        clock = FakeClock(at + dt.timedelta(days=1))
        receipts = Receipts(engine, config, clock, LinkSigner("migration-test-key-0123456789"), "https://x.test")
        try:
            again = receipts.inbound_sms("SMold1", "+8613800000001", "TD")
            fresh = receipts.inbound_sms("SMnew", "+8613800000001", "START")
        finally:
            receipts.close()
        assert again.duplicate and again.reply_message_id is None
        assert not fresh.duplicate and fresh.reply_message_id is not None
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT opted_out FROM contact_points WHERE case_id = 'M-1'")).scalar() in (
                False, 0)
    finally:
        engine.dispose()


def test_sms_segments_are_backfilled_from_the_stored_bodies(empty_url: str) -> None:
    """0005 counts the segments of SMS sent before it (reports bill them), with the
    same counter the sender uses; other channels stay without."""
    engine = make_engine(empty_url)
    at = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
    bodies = {"sms-short": "Pay 100.00 now", "sms-long": "还款提醒" * 20, "email-1": "x" * 500}
    try:
        _upgrade(engine, "0003")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO cases (case_id, name, jurisdiction, locale, zones, escalated_stages, currency,"
                " principal, interest, penalty, fees, amount_due, due_date, status, product, paid_total,"
                " created_at, updated_at) VALUES ('S-1', 'Old Case', 'cn', 'zh-CN', 'Asia/Shanghai', '', 'CNY',"
                " 100, 0, 0, 0, 100, '2026-10-01', 'active', 'other', 0, :at, :at)"), {"at": at})
            for key, body in bodies.items():
                conn.execute(sa.text(
                    "INSERT INTO messages (case_id, channel, kind, body, status, idempotency_key, scheduled_at,"
                    " created_at, sent_at, attempts, conversation) VALUES ('S-1', :channel, 'scheduled', :body,"
                    " 'delivered', :key, :at, :at, :at, 1, FALSE)"),
                    {"channel": key.split("-")[0], "body": body, "key": key, "at": at})

        ensure_schema(engine)

        with engine.connect() as conn:
            segments = dict(conn.execute(sa.text("SELECT idempotency_key, segments FROM messages")).all())
        # GSM-7 fits one; 80 Chinese characters are UCS-2: 67 per part, 2 parts
        assert segments == {"sms-short": 1, "sms-long": 2, "email-1": None}
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_tasks_of_closed_cases_are_closed_on_upgrade(empty_url: str) -> None:
    """0013: open and claimed tasks of cases closed before closing closed tasks are done
    by the system, at the moment their case closed, with the note saying why."""
    engine = make_engine(empty_url)
    paid_at = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
    imported_at = dt.datetime(2026, 12, 2, 2, 0, tzinfo=dt.UTC)
    try:
        _upgrade(engine, "0012")
        with engine.begin() as conn:
            for case_id, status, updated in (("P-1", "paid", paid_at), ("F-1", "closed", imported_at),
                                             ("A-1", "active", imported_at)):
                conn.execute(sa.text(
                    "INSERT INTO cases (case_id, name, jurisdiction, locale, zones, escalated_stages, currency,"
                    " principal, interest, penalty, fees, amount_due, due_date, status, product, paid_total,"
                    " created_at, updated_at) VALUES (:id, 'Old Case', 'cn', 'zh-CN', 'Asia/Shanghai', '', 'CNY',"
                    " 100, 0, 0, 0, 100, '2026-10-01', :status, 'other', 0, :created, :updated)"),
                    {"id": case_id, "status": status, "created": paid_at - dt.timedelta(days=9), "updated": updated})
                for kind, state in (("read_reply", "open"), ("review_dispute", "claimed"), ("call_back", "done")):
                    conn.execute(sa.text(
                        "INSERT INTO tasks (case_id, kind, source, state, created_at, due_at, assignee, detail,"
                        " done_by, note) VALUES (:id, :kind, 'old', :state, :at, :at, :who, '', :done_by, :note)"),
                        {"id": case_id, "kind": kind, "state": state, "at": paid_at - dt.timedelta(days=2),
                         "who": None if state == "open" else "王伟", "done_by": "王伟" if state == "done" else None,
                         "note": "called" if state == "done" else None})
            conn.execute(sa.text(
                "INSERT INTO events (case_id, message_id, at, kind, actor, data)"
                " VALUES ('P-1', NULL, :at, 'case_closed', 'bank', :data)"),
                {"at": paid_at, "data": encode_data({"reason": "paid_in_full", "status": "paid"})})

        ensure_schema(engine)

        assert schema_revision(engine) == HEAD
        with engine.connect() as conn:
            tasks = {(r.case_id, r.kind): r for r in conn.execute(sa.text(
                "SELECT case_id, kind, state, done_by, note, assignee FROM tasks"))}
            done = sorted(tuple(r) for r in conn.execute(sa.text(
                "SELECT case_id, actor, data FROM events WHERE kind = 'task_done'")))
        expected = {"P-1": "case closed: paid in full", "F-1": "case closed: marked closed by an import"}
        for case_id, note in expected.items():
            assert [(tasks[case_id, k].state, tasks[case_id, k].done_by, tasks[case_id, k].note)
                    for k in ("read_reply", "review_dispute")] == [("done", "system", note)] * 2
            assert tasks[case_id, "review_dispute"].assignee == "王伟"
            assert (tasks[case_id, "call_back"].done_by, tasks[case_id, "call_back"].note) == ("王伟", "called")
        assert {tasks["A-1", k].state for k in ("read_reply", "review_dispute")} == {"open", "claimed"}
        assert [(case_id, actor) for case_id, actor, _ in done] == [("F-1", "system")] * 2 + [("P-1", "system")] * 2
        with engine.connect() as conn:
            closed_at = conn.execute(sa.text(
                "SELECT done_at FROM tasks WHERE case_id = 'P-1' AND kind = 'read_reply'")).scalar()
        assert closed_at is not None and str(closed_at).startswith("2026-12-01")
    finally:
        engine.dispose()


def test_search_indexes_exist_on_postgres(fresh_pg_url: str) -> None:
    """0007 builds the search indexes on PostgreSQL, the name's with pg_trgm."""
    engine = make_engine(fresh_pg_url)
    try:
        ensure_schema(engine)
        with engine.connect() as conn:
            names = set(conn.exec_driver_sql(
                "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_search_%%'").scalars())
            trgm = conn.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").scalar()
        assert names == {"ix_search_cases_id", "ix_search_cases_name", "ix_search_contacts_last4",
                         "ix_search_contacts_email"}
        assert trgm == 1
    finally:
        engine.dispose()


def test_call_durations_are_backfilled_from_the_status_events(empty_url: str) -> None:
    """0012 stores each call's duration from its status events (the largest that is
    plain digits), for the report's billed minutes; other channels and calls without
    a duration stay without."""
    engine = make_engine(empty_url)
    at = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
    # message key -> (channel, durations in its status events)
    history = {"call-final": ("voice", ["0", "75"]), "call-junk": ("voice", ["12s"]), "call-none": ("voice", []),
               "call-unanswered": ("voice", [None]), "sms-1": ("sms", ["30"])}
    try:
        _upgrade(engine, "0011")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO cases (case_id, name, jurisdiction, locale, zones, escalated_stages, currency,"
                " principal, interest, penalty, fees, amount_due, due_date, status, product, paid_total,"
                " created_at, updated_at) VALUES ('V-1', 'Old Case', 'us', 'en-US', 'America/New_York', '', 'USD',"
                " 100, 0, 0, 0, 100, '2026-10-01', 'active', 'other', 0, :at, :at)"), {"at": at})
            for key, (channel, durations) in history.items():
                mid = conn.execute(sa.text(
                    "INSERT INTO messages (case_id, channel, kind, status, idempotency_key, scheduled_at,"
                    " created_at, sent_at, attempts, conversation) VALUES ('V-1', :channel, 'scheduled',"
                    " 'completed', :key, :at, :at, :at, 1, FALSE) RETURNING id"),
                    {"channel": channel, "key": key, "at": at}).scalar_one()
                for duration in durations:
                    data = {"status": "completed"} | ({} if duration is None else {"duration": duration})
                    conn.execute(sa.text(
                        "INSERT INTO events (case_id, message_id, at, kind, data) VALUES ('V-1', :m, :at,"
                        " 'status_received', :data)"), {"m": mid, "at": at, "data": encode_data(data)})

        ensure_schema(engine)

        with engine.connect() as conn:
            seconds = dict(conn.execute(sa.text("SELECT idempotency_key, call_seconds FROM messages")).all())
        assert seconds == {"call-final": 75, "call-junk": None, "call-none": None, "call-unanswered": None,
                           "sms-1": None}
    finally:
        engine.dispose()
