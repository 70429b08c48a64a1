"""`dispatcher.wiring`: the one place collaborators are built from `Settings`."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from dispatcher.clock import FakeClock, StartedClock, SystemClock
from dispatcher.config import Config
from dispatcher.settings import Settings
from dispatcher.wiring import Runtime, SetupError, build_clock

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "dispatcher.toml"
START = "2026-12-07T10:00:00+08:00"


def test_the_clock_follows_now_and_the_kind_of_command() -> None:
    assert isinstance(build_clock(Settings(), advancing=True), SystemClock)
    standing = build_clock(Settings(now=START), advancing=False)
    running = build_clock(Settings(now=START), advancing=True)
    assert isinstance(standing, FakeClock) and isinstance(running, StartedClock)
    start = dt.datetime.fromisoformat(START)
    time.sleep(0.01)
    assert standing.now() == start
    assert running.now() > start
    with pytest.raises(ValueError):
        build_clock(Settings(now="next tuesday"), advancing=False)


def test_a_bad_configuration_file_is_the_operators_input(tmp_path: Path) -> None:
    bad = tmp_path / "dispatcher.toml"
    bad.write_text("[jurisdictions.cn]\nhours = 9\n", encoding="utf-8")
    runtime = Runtime(Settings(config_path=bad), SystemClock())
    with pytest.raises(SetupError) as raised:
        runtime.config  # noqa: B018 - building it is the test
    assert raised.value.usage
    assert str(bad) in str(raised.value)


def test_an_unreachable_database_is_named_without_its_password() -> None:
    url = "postgresql+psycopg://collector:s3cret@127.0.0.1:1/none?connect_timeout=1"
    runtime = Runtime(Settings(config_path=CONFIG, db_url=url), SystemClock())
    with pytest.raises(SetupError) as raised:
        runtime.engine  # noqa: B018
    message = str(raised.value)
    assert not raised.value.usage
    assert "cannot open the database" in message and "127.0.0.1:1" in message and "s3cret" not in message


def test_links_need_a_signing_key_unless_the_providers_are_local(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="DISPATCHER_SIGNING_KEY"):
        Runtime(Settings(config_path=CONFIG), SystemClock()).signer  # noqa: B018
    for local in (Settings(transport="file"), Settings(twilio_api_url="http://127.0.0.1:8081")):
        signer = Runtime(local, SystemClock()).signer
        assert signer.verify_unsubscribe_token(signer.unsubscribe_token(7)) == 7


def test_web_collaborators_share_the_runtimes_parts(sqlite_url: str, config: Config) -> None:
    runtime = Runtime(Settings(db_url=sqlite_url, signing_key="k"), FakeClock(dt.datetime(2026, 12, 7, tzinfo=dt.UTC)),
                      config=config)
    web = runtime.web()
    assert web.engine is runtime.engine and web.receipts is runtime.receipts
    assert web.config is config and web.templates is runtime.templates and web.clock is runtime.clock
    # one gate per process: the web pages and the sender share its caches
    assert web.gate is runtime.gate and web.gate.config is config
    assert runtime.sender({}).gate is runtime.gate
    with web.engine.connect() as conn:  # the schema was created on the way
        assert conn.execute(text("SELECT count(*) FROM cases")).scalar_one() == 0
    pool = web.engine.pool
    runtime.close()
    assert web.engine.pool is not pool  # disposed: the runtime built it


def test_a_given_engine_stays_the_callers(sqlite_url: str, config: Config) -> None:
    from dispatcher.store.db import ensure_schema, make_engine

    engine = make_engine(sqlite_url)
    ensure_schema(engine)
    pool = engine.pool
    try:
        runtime = Runtime(Settings(signing_key="k"), SystemClock(), config=config, engine=engine)
        assert runtime.web().engine is engine
        runtime.close()
        assert engine.pool is pool  # not disposed
    finally:
        engine.dispose()
