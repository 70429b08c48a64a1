"""The receipts' idempotency keys, their automatic replies and their connection pool, on
both backends: concurrent duplicates of inbound SMS and IVR steps take effect once;
a reply whose template is missing or unapproved is recorded, never sent, and fails
nothing; the status hot path's connections are released at close."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.domain import Channel, Reason
from dispatcher.links import LinkSigner
from dispatcher.services.receipts import Receipts
from dispatcher.services.receipts.hot_path import LoopPool
from dispatcher.store import repository as repo
from dispatcher.store.db import ensure_schema, make_engine
from dispatcher.store.tables import contacts_t, dedupe_keys_t, events_t, holds_t, messages_t
from dispatcher.templates import TemplateSet
from tests.integration.test_webhooks import CN_PHONE, KEY, PUBLIC, VOICE_PARTS, add_message, imported

ROOT = Path(__file__).resolve().parents[2]
THREADS = 8


@pytest.fixture
def seeded(engine: Engine, fake_clock: FakeClock) -> tuple[int, int]:
    """Two cases on one phone number; an SMS and a call to it. Returns (sms id, voice id)."""
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("k-1", "cn", CN_PHONE, None), imported("k-2", "cn", CN_PHONE, None)],
                          fake_clock.now())
    # yesterday's SMS (one today would reach the SMS cap, and the gate refuse a link asked for on the call)
    return (add_message(engine, "k-1", "sms", to=CN_PHONE, at=fake_clock.now() - dt.timedelta(days=1)),
            add_message(engine, "k-1", "voice", to=CN_PHONE, parts=VOICE_PARTS))


@pytest.fixture
def receipts(engine: Engine, config: Config, fake_clock: FakeClock) -> Iterator[Receipts]:
    made = Receipts(engine, config, fake_clock, LinkSigner(KEY), PUBLIC)
    yield made
    made.close()


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls together on THREADS threads, released at once by a barrier."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def events(engine: Engine, kind: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(events_t).where(events_t.c.kind == kind)))


def test_concurrent_duplicate_inbound_sms_apply_once(engine: Engine, receipts: Receipts, seeded: tuple[int, int]
                                                     ) -> None:
    outcomes = concurrently([lambda: receipts.inbound_sms("SMdup1", CN_PHONE, "TD")] * THREADS
                            + [lambda: receipts.inbound_sms("SMdup2", CN_PHONE, "已还")] * THREADS)
    firsts = [o for o in outcomes if not o.duplicate]
    assert len(firsts) == 2
    assert sum(o.duplicate for o in outcomes) == 2 * THREADS - 2
    assert all(o.case_ids == ("k-1", "k-2") for o in outcomes)
    assert len(events(engine, "keyword_received")) == 4  # two messages, two cases each
    assert len(events(engine, "opted_out")) == 2
    assert count(engine, holds_t, holds_t.c.reason == Reason.PAYMENT_CLAIMED.value) == 2
    assert count(engine, messages_t, messages_t.c.kind == "system") == 1  # the STOP confirmation
    assert count(engine, dedupe_keys_t) == 2


def test_concurrent_duplicate_ivr_steps_apply_once(engine: Engine, receipts: Receipts, seeded: tuple[int, int],
                                                   fake_clock: FakeClock) -> None:
    ctx = receipts.call_context(seeded[1])
    assert ctx is not None
    day = dt.date(2026, 12, 10)  # keyed in on Mon Dec 7 (Shanghai)
    results = concurrently([lambda: receipts.promise_to_pay(ctx, day)] * THREADS)
    assert set(results) == {day}
    assert count(engine, holds_t, holds_t.c.reason == Reason.PROMISE_TO_PAY.value) == 1
    with engine.connect() as conn:  # to the end of Dec 10 in Shanghai
        assert conn.execute(select(holds_t.c.until)).scalar() == dt.datetime(2026, 12, 10, 16, 0, tzinfo=dt.UTC)
    assert len(events(engine, "hold_placed")) == 1

    links = concurrently([lambda: receipts.send_payment_link(ctx)] * THREADS)
    assert len(set(links)) == 1 and links[0] is not None
    (sms,) = [m for m in _system_messages(engine)]
    assert sms.template_id == "sms/replies/payment_link" and sms.locale == "zh-CN" and "/p/" in sms.body
    assert len(events(engine, "message_queued")) == 1

    pages = concurrently([lambda: receipts.send_self_service_link(ctx)] * THREADS)
    assert len(set(pages)) == 1 and pages[0] is not None and pages[0] != links[0]
    assert sorted(m.template_id for m in _system_messages(engine)) == ["sms/replies/payment_link",
                                                                       "sms/replies/self_service"]

    concurrently([lambda: receipts.record_keypress(ctx, "identity", "1", identity_confirmed=True)] * THREADS)
    assert count(engine, dedupe_keys_t, dedupe_keys_t.c.key == f"ivr-identity:{ctx.message_id}") == 1
    assert len(events(engine, "keypress")) == THREADS  # every press is on the timeline
    receipts.apply_status(Channel.VOICE, "CAkeys", "completed", ctx.message_id)
    with engine.connect() as conn:
        assert conn.execute(select(messages_t.c.conversation)
                            .where(messages_t.c.id == ctx.message_id)).scalar() is True


def _system_messages(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(messages_t).where(messages_t.c.kind == "system")))


@pytest.mark.parametrize("damage", ["missing", "edited"])
def test_a_reply_without_an_approved_template_is_recorded_not_sent(
    engine: Engine, config: Config, fake_clock: FakeClock, seeded: tuple[int, int], tmp_path: Path, damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tree = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", tree)
    for locale in ("zh-CN", "en-US"):
        for name in ("opt_out", "payment_link"):
            path = tree / "sms" / "replies" / f"{name}.{locale}.j2"
            if damage == "missing":
                path.unlink()
            else:
                path.write_text(path.read_text(encoding="utf-8") + " edited\n", encoding="utf-8")
    receipts = Receipts(engine, config, fake_clock, LinkSigner(KEY), PUBLIC, templates=TemplateSet(tree, config))
    try:
        ctx = receipts.call_context(seeded[1])
        assert ctx is not None
        link = receipts.send_payment_link(ctx)  # before the STOP: after it, the gate refuses it (opted out)
        outcome = receipts.inbound_sms("SMnoreply", CN_PHONE, "STOP")
        helped = receipts.inbound_sms("SMhelp", CN_PHONE, "HELP")  # its template is intact
    finally:
        receipts.close()
    assert outcome.reply_message_id is None and link is None
    assert helped.reply_message_id is not None
    with engine.connect() as conn:
        flags = conn.execute(select(contacts_t.c.opted_out).where(contacts_t.c.channel == "sms")).all()
    assert flags == [(True,), (True,)]  # the opt-out itself took effect
    not_sent = events(engine, "reply_not_sent")
    assert sorted((e.case_id, json.loads(e.data)["template"], json.loads(e.data)["reason"]) for e in not_sent) == [
        ("k-1", "sms/replies/opt_out", "opt_out"), ("k-1", "sms/replies/payment_link", "payment_link")]
    assert [m.template_id for m in _system_messages(engine)] == ["sms/replies/help"]
    assert sum("automatic reply sms/replies/" in r.getMessage() for r in caplog.records) == 2
    assert CN_PHONE not in caplog.text


def test_a_failed_sms_maps_its_error_code_to_an_address_outcome(engine: Engine, receipts: Receipts,
                                                                 seeded: tuple[int, int]) -> None:
    receipts.apply_status(Channel.SMS, "SMcarrier", "failed", seeded[0], error_code="21610")
    with engine.connect() as conn:
        rows = conn.execute(select(contacts_t.c.opted_out, contacts_t.c.invalid)
                            .where(contacts_t.c.channel == "sms")).all()
    assert rows == [(True, False), (True, False)]
    (event, *_) = events(engine, "opted_out")
    assert '"source": "carrier:21610"' in event.data
    voice = add_message(engine, "k-2", "voice", to=CN_PHONE, provider_id="CAx")
    receipts.apply_status(Channel.VOICE, "CAx", "failed", voice, error_code="30005")  # not an SMS: no verdict
    assert events(engine, "address_invalid") == []


@pytest.mark.postgres
async def test_the_hot_path_pool_is_released_at_close(pg_engine: Engine, config: Config, fake_clock: FakeClock
                                                       ) -> None:
    with pg_engine.begin() as conn:
        repo.upsert_cases(conn, [imported("k-1", "cn", CN_PHONE, None)], fake_clock.now())
    sms_id = add_message(pg_engine, "k-1", "sms", to=CN_PHONE)
    receipts = Receipts(pg_engine, config, fake_clock, LinkSigner(KEY), PUBLIC)
    database = pg_engine.url.database
    admin = pg_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def hot_connections() -> int:
        with psycopg.connect(admin, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                               " AND application_name = 'dispatcher-status'", (database,)).fetchone()
        return int(row[0]) if row else 0

    try:
        outcomes = await asyncio.gather(*(receipts.apply_status_async(Channel.SMS, f"SMp{n}", "delivered",
                                                                      sms_id if n == 0 else None)
                                          for n in range(20)))
        assert outcomes[0].result == "applied" and {o.result for o in outcomes[1:]} == {"orphan"}
        assert 1 <= hot_connections() <= 8
    finally:
        await receipts.aclose()
    for _ in range(100):  # a backend ends a moment after its client has closed the socket
        if not hot_connections():
            break
        await asyncio.sleep(0.05)
    assert hot_connections() == 0


@pytest.fixture
def pg_engine(fresh_pg_url: str) -> Iterator[Engine]:
    engine = make_engine(fresh_pg_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_a_loop_that_used_the_pool_ends_once_the_pool_is_closed(pg_engine: Engine) -> None:
    """Loops that open the pool and end at once, as tests and short-lived servers do: with
    `aclose()` each ends, even when the pool is still opening connections (left to the
    loop's final cancellation, such a loop can wait forever)."""
    conninfo = pg_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    pool = LoopPool(conninfo, 8)

    async def use(callbacks: int) -> None:
        await asyncio.gather(*(pool.fetch("SELECT 1", {}) for _ in range(callbacks)))
        await pool.aclose()

    def loops() -> None:
        for n in range(30):
            with asyncio.Runner() as runner:
                runner.run(use(1 + n % 12))

    worker = threading.Thread(target=loops, daemon=True)  # a hung loop must not hang the suite
    worker.start()
    worker.join(timeout=90)
    assert not worker.is_alive()
