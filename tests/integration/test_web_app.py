"""`WebApp`, the ASGI app every server runs: POSTs to the Twilio webhook paths take the
fast path (their own guard, straight to the handler), everything else — other methods,
other paths, the lifespan — reaches the FastAPI app. Both answer and count alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from twilio.request_validator import RequestValidator

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.settings import Settings
from dispatcher.web.app import WebApp, create_app
from dispatcher.wiring import Runtime

TOKEN = "web-app-test-token"
PUBLIC = "https://hooks.example"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def app(engine: Engine, config: Config, fake_clock: FakeClock) -> AsyncIterator[WebApp]:
    runtime = Runtime(Settings(public_url=PUBLIC, twilio_auth_token=TOKEN, signing_key="web-app-key",
                                api_token="web-app-bootstrap"), fake_clock,
                      config=config, engine=engine)
    app = create_app(runtime.web(), max_body_bytes=1024)
    try:
        yield app
    finally:
        await app.collaborators.receipts.aclose()  # the hot path's pool, on its loop
        runtime.close()


async def test_the_lifespan_reaches_the_fastapi_app(app: WebApp) -> None:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})
    answers: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        answers.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send)
    assert answers == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_fast_path_and_full_stack_answer_and_count_alike(app: WebApp) -> None:
    path = "/twilio/sms/status"
    params = {"MessageSid": "SMunknown", "MessageStatus": "delivered"}
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, params)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://internal") as client:
        signed = await client.post(path, data=params, headers={"X-Twilio-Signature": signature})
        assert signed.status_code == 200 and "<Response/>" in signed.text  # an orphan callback: acknowledged
        unsigned = await client.post(path, data=params)
        assert (unsigned.status_code, unsigned.text) == (403, "missing or unusable X-Twilio-Signature")
        too_big = await client.post(path, content=b"a" * 1025, headers=FORM)
        assert too_big.status_code == 413
        # not a POST: the FastAPI app's router answers, through its own guard
        assert (await client.get(path)).status_code == 405
        # not a webhook path: the FastAPI app
        assert (await client.post("/twilio/sms/nowhere", data=params)).status_code == 404
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/metrics")).status_code == 401  # ops (or the bootstrap token) only
        metrics = (await client.get("/metrics", headers={"Authorization": "Bearer web-app-bootstrap"})).text
    counted = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1])
               for line in metrics.splitlines() if line.startswith("dispatcher_webhooks_total{")}
    assert counted == {
        'dispatcher_webhooks_total{endpoint="/twilio/sms/status",result="orphan"}': 1,
        'dispatcher_webhooks_total{endpoint="/twilio/sms/status",result="forbidden"}': 1,
        'dispatcher_webhooks_total{endpoint="/twilio/sms/status",result="too_large"}': 1,
        'dispatcher_webhooks_total{endpoint="/twilio/sms/status",result="bad_request"}': 1,
        'dispatcher_webhooks_total{endpoint="other",result="not_found"}': 1,
        'dispatcher_webhooks_total{endpoint="/healthz",result="ok"}': 1,
        'dispatcher_webhooks_total{endpoint="/metrics",result="unauthorized"}': 1,
    }
