"""A storm of signed status callbacks through a real uvicorn server on loopback: 5,000
callbacks for 1,700 messages, a third of them duplicated, all shuffled and sent
concurrently with httpx. Every message must end in exactly its highest-ranked status."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine
from twilio.request_validator import RequestValidator

from dispatcher.clock import FakeClock
from dispatcher.domain import Case, MessageStatus
from dispatcher.policy.replies import map_provider_status, status_rank
from dispatcher.store import repository as repo
from dispatcher.store.repository import ImportedCase
from dispatcher.store.tables import dedupe_keys_t, events_t, holds_t, messages_t, tasks_t

try:  # httpcore imports sniffio on every request; when it is absent, cache the miss
    import sniffio  # noqa: F401
except ImportError:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "storm-auth-token"
PUBLIC = "https://hooks.example.test"
TOTAL = 5000
SMS_MESSAGES = 1200
VOICE_MESSAGES = 500
CONCURRENCY = 16

#: plausible provider histories (the callbacks one message can receive)
SMS_HISTORIES = [
    ["sent", "delivered"],
    ["delivered"],
    ["sent", "undelivered"],
    ["failed"],
    ["sent", "delivered", "read"],
    ["delivered", "read"],
]
VOICE_HISTORIES = [
    ["initiated", "ringing", "in-progress", "completed"],
    ["ringing", "no-answer"],
    ["busy"],
    ["initiated", "failed"],
    ["ringing", "in-progress", "completed"],
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """uvicorn serving the app (built by `create_app_from_env`) on a free loopback port,
    in its own process: the server gets its own interpreter and core, as in production,
    instead of sharing the GIL with the test's client."""

    def __init__(self, db_url: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "DISPATCHER_DB_URL": db_url,
            "DISPATCHER_CONFIG": str(ROOT / "config" / "dispatcher.toml"),
            "DISPATCHER_PUBLIC_URL": PUBLIC,
            "TWILIO_AUTH_TOKEN": TOKEN,
            "DISPATCHER_SIGNING_KEY": "storm-signing-key-0123456789",
            "DISPATCHER_NOW": "2026-12-07T10:00:00+08:00",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "dispatcher.web.app:create_app_from_env", "--factory",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", "--no-access-log",
             "--lifespan", "on", "--ws", "none", "--backlog", "2048"],
            cwd=ROOT, env=self.env,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not become healthy within 60 s")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def seed(engine: Engine, now: dt.datetime, rnd: random.Random) -> dict[int, tuple[str, str, str | None]]:
    """100 cases, 1,700 messages in flight; returns id -> (channel, initial status, provider id)."""
    cases = [
        ImportedCase(
            case=Case(case_id=f"storm-{i:03d}", name="Storm Case", jurisdiction="cn", locale="zh-CN", currency="CNY",
                      principal=Decimal("100.00"), interest=Decimal("0.00"), penalty=Decimal("0.00"),
                      fees=Decimal("0.00"), amount_due=Decimal("100.00"), due_date=dt.date(2026, 10, 1),
                      phone=f"+86138{i:08d}"),
            zones=("Asia/Shanghai",), sms_consent=True, email_consent=True, voice_consent=True,
        )
        for i in range(100)
    ]
    rows = []
    for n in range(SMS_MESSAGES + VOICE_MESSAGES):
        channel = "sms" if n < SMS_MESSAGES else "voice"
        initial = rnd.choice(["sending", "sent"])
        # half the rows already know their SID (the sender recorded it), half learn it from a callback
        provider_id = f"{'SM' if channel == 'sms' else 'CA'}{n:030d}" if rnd.random() < 0.5 else None
        rows.append({
            "case_id": f"storm-{n % 100:03d}", "channel": channel, "kind": "scheduled", "status": initial,
            "provider_id": provider_id, "idempotency_key": f"storm:{n}", "scheduled_at": now, "created_at": now,
            "to_address": f"+86138{n % 100:08d}",
        })
    with engine.begin() as conn:
        repo.upsert_cases(conn, cases, now)
        conn.execute(insert(messages_t), rows)
        ids = conn.execute(
            select(messages_t.c.id, messages_t.c.channel, messages_t.c.status,
                   messages_t.c.idempotency_key)
        ).all()
    by_n = {int(r.idempotency_key.split(":")[1]): r for r in ids}
    return {
        by_n[n].id: (rows[n]["channel"], rows[n]["status"], f"{'SM' if rows[n]['channel'] == 'sms' else 'CA'}{n:030d}")
        for n in range(len(rows))
    }


def build_callbacks(messages: dict[int, tuple[str, str, str | None]], rnd: random.Random) -> tuple[
        list[tuple[str, dict[str, str]]], dict[int, str]]:
    unique: list[tuple[str, dict[str, str]]] = []
    expected: dict[int, str] = {}
    for message_id, (channel, initial, sid) in messages.items():
        history = rnd.choice(SMS_HISTORIES if channel == "sms" else VOICE_HISTORIES)
        final = initial
        for status in history:
            ours = map_provider_status(status)
            assert ours is not None
            if status_rank(ours) > status_rank(final):
                final = ours.value
            if channel == "sms":
                unique.append((f"/twilio/sms/status?m={message_id}", {"MessageSid": sid, "MessageStatus": status,
                                                                       "AccountSid": "AC" + "0" * 32}))
            else:
                unique.append((f"/twilio/voice/status?m={message_id}", {"CallSid": sid, "CallStatus": status,
                                                                         "AccountSid": "AC" + "0" * 32}))
        expected[message_id] = final
    duplicates = rnd.choices(unique, k=TOTAL - len(unique))
    callbacks = unique + duplicates
    rnd.shuffle(callbacks)
    return callbacks, expected


async def fire(base_url: str, callbacks: list[tuple[str, dict[str, str]]]) -> list[int]:
    """Send every callback; CONCURRENCY connections, each with its own keep-alive client
    (one shared httpx pool rescans all its connections for every request, which costs
    more CPU than the server spends on the request)."""
    validator = RequestValidator(TOKEN)
    prepared = [
        (i, path, urlencode(params), validator.compute_signature(PUBLIC + path, params))
        for i, (path, params) in enumerate(callbacks)
    ]
    pending = prepared[::-1]
    statuses = [0] * len(prepared)

    async def connection() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
            while pending:
                i, path, body, signature = pending.pop()
                r = await client.post(path, content=body, headers={
                    "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature})
                statuses[i] = r.status_code

    await asyncio.gather(*(connection() for _ in range(CONCURRENCY)))
    return statuses


@pytest.fixture
def storm_app(engine: Engine) -> Iterator[ServerProcess]:
    with ServerProcess(engine.url.render_as_string(hide_password=False)) as server:
        yield server


@pytest.mark.slow
async def test_storm_of_duplicated_shuffled_callbacks_ends_in_the_highest_status(
    engine: Engine, fake_clock: FakeClock, storm_app: ServerProcess
) -> None:
    rnd = random.Random(20261207)
    messages = seed(engine, fake_clock.now(), rnd)
    callbacks, expected = build_callbacks(messages, rnd)
    assert len(callbacks) == TOTAL
    duplicated = TOTAL - len({(p, tuple(sorted(b.items()))) for p, b in callbacks})
    assert 0.28 * TOTAL < duplicated < 0.40 * TOTAL  # about a third

    started = time.monotonic()
    statuses = await fire(storm_app.url, callbacks)
    elapsed = time.monotonic() - started
    assert statuses == [200] * TOTAL
    assert elapsed < 60

    with engine.connect() as conn:
        final = dict(conn.execute(select(messages_t.c.id, messages_t.c.status)).all())
        sids = dict(conn.execute(select(messages_t.c.id, messages_t.c.provider_id)).all())
        events = conn.execute(
            select(events_t.c.kind, func.count()).group_by(events_t.c.kind)
        ).all()
    wrong = {m: (final[m], want) for m, want in expected.items() if final[m] != want}
    assert wrong == {}
    assert all(sids[m] == messages[m][2] for m in messages)  # every row learnt its SID
    counts = dict(events)
    assert "orphan_callback" not in counts
    moved = sum(1 for m, (_, initial, _) in messages.items() if expected[m] != initial)
    # one event per upward move: at least one per message that moved, never one per duplicate
    assert moved <= counts["status_received"] <= len({(p, b["MessageSid" if "MessageSid" in b else "CallSid"],
                                                          b.get("MessageStatus") or b.get("CallStatus"))
                                                         for p, b in callbacks})
    assert all(MessageStatus(s) for s in final.values())


#: inbound SMS of the second storm: (body, what it does), one kind per number
INBOUND_KINDS = [("TD", "opt_out"), ("START", "opt_in"), ("HELP", "help"), ("已还", "paid"), ("有异议", "dispute"),
                 ("什么时候可以分期？", "free_text")]
DELIVERIES = 4  # every webhook of the second storm arrives this many times


def build_steps(messages: dict[int, tuple[str, str, str | None]], rnd: random.Random) -> tuple[
        list[tuple[str, dict[str, str]]], dict[str, Any]]:
    """Inbound SMS from 60 numbers and the IVR steps of 60 calls (identity, then options 1
    and 2), every one delivered DELIVERIES times; and what they must add up to."""
    steps: list[tuple[str, dict[str, str]]] = []
    kinds: dict[str, int] = {}
    for i in range(60):
        body, kind = INBOUND_KINDS[i % len(INBOUND_KINDS)]
        kinds[kind] = kinds.get(kind, 0) + 1
        steps.append(("/twilio/sms/inbound", {"MessageSid": f"SMin{i:030d}", "From": f"+86138{i:08d}",
                                              "To": "+8610000000", "Body": body, "AccountSid": "AC" + "0" * 32}))
    calls = [m for m, (channel, _, _) in messages.items() if channel == "voice"][:60]
    for message_id in calls:
        steps.append((f"/twilio/voice/gather?m={message_id}&step=identity", {"Digits": "1"}))
        steps.append((f"/twilio/voice/gather?m={message_id}&step=options", {"Digits": "1"}))
        # option 2's last step: the read-back of a keyed date (Dec 10), confirmed with 1
        steps.append((f"/twilio/voice/gather?m={message_id}&step=confirm&d=2026-12-10", {"Digits": "1"}))
    storm = steps * DELIVERIES
    rnd.shuffle(storm)
    return storm, {"kinds": kinds, "calls": len(calls)}


@pytest.mark.slow
async def test_storm_of_duplicated_inbound_sms_and_ivr_steps_takes_effect_once(
    engine: Engine, fake_clock: FakeClock, storm_app: ServerProcess
) -> None:
    rnd = random.Random(20261208)
    messages = seed(engine, fake_clock.now(), rnd)
    storm, want = build_steps(messages, rnd)
    statuses = await fire(storm_app.url, storm)
    assert statuses == [200] * len(storm)

    kinds, calls = want["kinds"], want["calls"]
    e, m, h = events_t.c, messages_t.c, holds_t.c
    with engine.connect() as conn:
        def count(table: Any, *where: Any) -> int:
            return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())

        assert count(events_t, e.kind.in_(["keyword_received", "reply_received"])) == 60  # one case a number
        assert count(events_t, e.kind == "opted_out") == kinds["opt_out"]
        assert count(holds_t, h.reason == "payment_claimed") == kinds["paid"]
        assert count(holds_t, h.reason == "dispute_hold") == kinds["dispute"]
        # one task per case and message: PAID, DISPUTE and free text (read_reply) open one each
        opened = kinds["paid"] + kinds["dispute"] + kinds["free_text"]
        assert count(events_t, e.kind == "collector_task") == opened
        assert count(tasks_t) == opened
        assert count(holds_t, h.reason == "promise_to_pay") == calls
        replies = dict(conn.execute(select(m.template_id, func.count()).where(m.kind == "system")
                                    .group_by(m.template_id)).all())
        # option 1 on each call: its payment link queued once, or refused once by the gate
        # (the storm's opt-outs and disputes reach the same numbers, in any order)
        links = replies.pop("sms/replies/payment_link", 0)
        refused = count(events_t, e.kind == "reply_not_sent")
        assert links + refused == calls
        assert replies == {"sms/replies/opt_out": kinds["opt_out"], "sms/replies/opt_in": kinds["opt_in"],
                           "sms/replies/help": kinds["help"]}
        keys = [k for k in conn.execute(select(dedupe_keys_t.c.key)).scalars() if k != "templates:seeded"]
        # one per SMS; one identity, one promise and one link request per call
        assert len(keys) == 60 + 3 * calls
        assert count(events_t, e.kind == "keypress") == 3 * calls * DELIVERIES  # every press is logged
