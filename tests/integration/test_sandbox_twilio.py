"""The sandbox's Twilio API over real sockets, driven by the official SDK.

Callbacks, TwiML fetches and inbound SMS go to a real local HTTP receiver, and every
signature is checked with the SDK's own `RequestValidator`.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from dispatcher.sandbox import (
    VOICEMAIL,
    CallBehaviour,
    FaultPlan,
    FaultSpecError,
    Reply,
    Sandbox,
    WebhookReceiver,
    run_sandbox_in_thread,
)

TO = "+8613812345678"
FROM = "+15005550006"


@pytest.fixture(autouse=True)
def _no_twilio_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=7, callback_delay_ms=2) as sb:
        yield sb


@pytest.fixture
async def receiver(sandbox: Sandbox) -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(auth_token=sandbox.auth_token) as rx:
        yield rx


def sdk_client(sandbox: Sandbox, token: str | None = None, sid: str | None = None) -> Client:
    client = Client(sid or sandbox.account_sid, token or sandbox.auth_token, http_client=AsyncTwilioHttpClient())
    client.api.base_url = sandbox.twilio_url
    return client


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[Client]:
    c = sdk_client(sandbox)
    yield c
    await c.http_client.close()  # type: ignore[attr-defined]


# -- messages -------------------------------------------------------------------------


async def test_create_fetch_and_list_messages_with_the_sdk(sandbox: Sandbox, client: Client) -> None:
    created = await client.api.account.messages.create_async(to=TO, from_=FROM, body="您的账单已逾期 30 天")
    assert created.sid.startswith("SM") and len(created.sid) == 34
    assert created.status == "queued"
    assert created.account_sid == sandbox.account_sid
    assert created.date_created is not None and created.date_created.tzinfo is not None
    assert created.num_segments == "1"

    fetched = await client.api.account.messages(created.sid).fetch_async()
    assert (fetched.sid, fetched.to, fetched.from_, fetched.body) == (created.sid, TO, FROM, "您的账单已逾期 30 天")

    for i in range(4):
        await client.api.account.messages.create_async(to=TO, from_=FROM, body=f"reminder {i}")
    await client.api.account.messages.create_async(to="+8613900000000", from_=FROM, body="other")

    # Newest first, across pages of two: the SDK follows next_page_uri.
    listed = await client.api.account.messages.list_async(to=TO, page_size=2)
    assert [m.body for m in listed] == ["reminder 3", "reminder 2", "reminder 1", "reminder 0", "您的账单已逾期 30 天"]
    assert len(await client.api.account.messages.list_async(from_=FROM)) == 6
    assert len(await client.api.account.messages.list_async(to=TO, limit=3)) == 3

    stream = await client.api.account.messages.stream_async(to="+8613900000000")
    assert [m.body async for m in stream] == ["other"]


async def test_list_filters_by_date_sent(sandbox: Sandbox, client: Client) -> None:
    await client.api.account.messages.create_async(to=TO, from_=FROM, body="one")
    await sandbox.drain()
    now = dt.datetime.now(dt.UTC)
    tomorrow = now + dt.timedelta(days=1)
    assert len(await client.api.account.messages.list_async(date_sent_after=now - dt.timedelta(minutes=1))) == 1
    assert await client.api.account.messages.list_async(date_sent_after=tomorrow) == []
    assert len(await client.api.account.messages.list_async(date_sent_before=tomorrow)) == 1


async def test_messaging_service_sid_instead_of_from(sandbox: Sandbox, client: Client) -> None:
    created = await client.api.account.messages.create_async(
        to=TO, messaging_service_sid="MG" + "1" * 32, body="via service"
    )
    assert created.status == "accepted"
    assert created.messaging_service_sid == "MG" + "1" * 32


async def test_wrong_credentials_get_401_and_unknown_resources_404(sandbox: Sandbox, client: Client) -> None:
    bad = sdk_client(sandbox, token="wrong-token")
    try:
        with pytest.raises(TwilioRestException) as excinfo:
            await bad.api.account.messages.create_async(to=TO, from_=FROM, body="x")
        assert excinfo.value.status == 401
        assert excinfo.value.code == 20003
    finally:
        await bad.http_client.close()  # type: ignore[attr-defined]
    with pytest.raises(TwilioRestException) as excinfo:
        await client.api.account.messages("SM" + "0" * 32).fetch_async()
    assert (excinfo.value.status, excinfo.value.code) == (404, 20404)
    assert sandbox.messages() == []


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"to": "12345", "from_": FROM, "body": "x"}, 21211),
        ({"to": TO, "from_": FROM}, 21602),
        ({"to": TO, "body": "x"}, 21603),
        ({"to": TO, "from_": FROM, "body": "x" * 1601}, 21617),
    ],
)
async def test_invalid_creates_are_refused_like_twilio(client: Client, kwargs: dict[str, str], code: int) -> None:
    with pytest.raises(TwilioRestException) as excinfo:
        await client.api.account.messages.create_async(**kwargs)
    assert excinfo.value.status == 400
    assert excinfo.value.code == code


async def test_sms_status_callbacks_are_signed_like_twilio(
    sandbox: Sandbox, client: Client, receiver: WebhookReceiver
) -> None:
    url = receiver.url("/twilio/sms/status?m=42")
    created = await client.api.account.messages.create_async(to=TO, from_=FROM, body="hello", status_callback=url)
    got = await receiver.wait_for(lambda r: len(r) == 2, path="/twilio/sms/status")
    assert [r.form["MessageStatus"] for r in got] == ["sent", "delivered"]
    validator = RequestValidator(sandbox.auth_token)
    for request in got:
        assert request.form["MessageSid"] == request.form["SmsSid"] == created.sid
        assert request.form["AccountSid"] == sandbox.account_sid
        assert (request.form["To"], request.form["From"]) == (TO, FROM)
        assert request.form["SmsStatus"] == request.form["MessageStatus"]
        assert "ErrorCode" not in request.form
        assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
        assert validator.validate(url, request.form, request.headers["x-twilio-signature"])
        assert not validator.validate(
            url, {**request.form, "MessageStatus": "failed"}, request.headers["x-twilio-signature"]
        )
    await sandbox.drain()
    fetched = await client.api.account.messages(created.sid).fetch_async()
    assert fetched.status == "delivered" and fetched.date_sent is not None


async def test_undeliverable_numbers_and_fail_ratio_give_error_codes(receiver: WebhookReceiver) -> None:
    async with Sandbox(seed=3, callback_delay_ms=1, fail_ratio=1.0, undeliverable_numbers={TO}) as sb:
        c = sdk_client(sb)
        try:
            status_url = receiver.url("/status")
            receiver.validator = RequestValidator(sb.auth_token)
            await c.api.account.messages.create_async(to=TO, from_=FROM, body="a", status_callback=status_url)
            for i in range(6):
                await c.api.account.messages.create_async(
                    to=f"+861390000000{i}", from_=FROM, body="b", status_callback=status_url
                )
            await sb.drain()
        finally:
            await c.http_client.close()  # type: ignore[attr-defined]
    finals = [r.form for r in receiver.received("/status") if r.form["MessageStatus"] in ("undelivered", "failed")]
    assert len(finals) == 7
    assert {f["ErrorCode"] for f in finals} <= {"30003", "30005", "30008"}
    assert next(f for f in finals if f["To"] == TO)["ErrorCode"] == "30003"  # undeliverable number
    assert all(r.signature_valid for r in receiver.received("/status"))


async def test_duplicate_and_shuffled_callbacks_can_be_injected(receiver: WebhookReceiver) -> None:
    async with Sandbox(seed=11, callback_delay_ms=1, duplicate_ratio=1.0, shuffle_callbacks=True) as sb:
        c = sdk_client(sb)
        receiver.validator = RequestValidator(sb.auth_token)
        try:
            for i in range(8):
                await c.api.account.messages.create_async(
                    to=TO, from_=FROM, body=f"m{i}", status_callback=receiver.url("/s")
                )
            await sb.drain()
        finally:
            await c.http_client.close()  # type: ignore[attr-defined]
    got = receiver.received("/s")
    assert len(got) == 8 * 2 * 2  # two statuses, each delivered twice
    by_sid: dict[str, list[str]] = {}
    for r in got:
        by_sid.setdefault(r.form["MessageSid"], []).append(r.form["MessageStatus"])
    assert all(sorted(v) == ["delivered", "delivered", "sent", "sent"] for v in by_sid.values())
    assert any(v[0] == "delivered" for v in by_sid.values()), "shuffle should put some delivered before sent"
    assert all(r.signature_valid for r in got)


async def test_duplicates_are_counted(sandbox: Sandbox, client: Client) -> None:
    for _ in range(2):
        await client.api.account.messages.create_async(to=TO, from_=FROM, body="same text")
    await client.api.account.messages.create_async(to=TO, from_=FROM, body="other text")
    async with httpx.AsyncClient() as http:
        listed = (await http.get(f"{sandbox.twilio_url}/sandbox/messages")).json()
    assert sorted((m["body"], m["count"]) for m in listed) == [("other text", 1), ("same text", 2), ("same text", 2)]
    assert [m["count"] for m in sandbox.messages()] == [2, 2, 1]


async def test_reset_forgets_everything(sandbox: Sandbox, client: Client) -> None:
    await client.api.account.messages.create_async(to=TO, from_=FROM, body="x")
    async with httpx.AsyncClient() as http:
        assert (await http.post(f"{sandbox.twilio_url}/sandbox/reset")).status_code == 200
        assert (await http.get(f"{sandbox.twilio_url}/sandbox/messages")).json() == []


# -- faults ---------------------------------------------------------------------------


def test_fault_spec_parsing() -> None:
    plan = FaultPlan.parse("429:0.05, 500:0.05,timeout:0.05,reset:0.05,reset_before:0.1,503:0")
    assert plan.ratios[0] == ("429", 0.05) and plan.total == pytest.approx(0.3)
    assert FaultPlan.parse("") == FaultPlan()
    for bad in ("teapot:0.1", "429", "429:x", "429:1.5", "429:0.6,500:0.6"):
        with pytest.raises(FaultSpecError):
            FaultPlan.parse(bad)


async def test_http_faults_are_shaped_like_twilio(sandbox: Sandbox, client: Client) -> None:
    sandbox.force_faults("429", "503")
    with pytest.raises(TwilioRestException) as excinfo:
        await client.api.account.messages.create_async(to=TO, from_=FROM, body="x")
    assert (excinfo.value.status, excinfo.value.code) == (429, 20429)
    with pytest.raises(TwilioRestException) as excinfo:
        await client.api.account.messages.create_async(to=TO, from_=FROM, body="x")
    assert excinfo.value.status == 503
    assert sandbox.messages() == []  # neither was created
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{sandbox.twilio_url}/sandbox/faults", json={"next": ["429"]})
        assert reply.json()["next"] == ["429"]
        raw = await http.post(
            f"{sandbox.twilio_url}/2010-04-01/Accounts/{sandbox.account_sid}/Messages.json",
            data={"To": TO, "From": FROM, "Body": "x"},
            auth=(sandbox.account_sid, sandbox.auth_token),
        )
    assert raw.status_code == 429 and raw.headers["Retry-After"] == "1"
    assert raw.json() == {
        "code": 20429,
        "message": "Too Many Requests",
        "more_info": "https://www.twilio.com/docs/errors/20429",
        "status": 429,
    }


async def test_seeded_faults_are_reproducible() -> None:
    async def kinds(seed: int) -> list[str | None]:
        async with Sandbox(seed=seed, faults="429:0.3,500:0.3") as sb:
            assert sb.simulator is not None
            return [sb.simulator.faults.draw() for _ in range(40)]

    first = await kinds(5)
    assert first == await kinds(5)
    assert first != await kinds(6)
    assert {"429", "500", None} == set(first)


# -- calls ----------------------------------------------------------------------------

IVR_ANSWER = """<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Gather action="gather?step=identity" numDigits="1" timeout="5">
    <Say language="zh-CN">您好，如果您是张伟，请按1。</Say>
  </Gather>
  <Say>No input.</Say>
  <Hangup/>
</Response>"""
IVR_MENU = """<Response>
  <Say>You owe 10,270.00 yuan. Press 1 for a payment link, 2 to promise to pay.</Say>
  <Gather action="/twilio/voice/gather?step=menu" numDigits="1"><Pause length="1"/></Gather>
</Response>"""
IVR_DONE = "<Response><Say>Thank you. Goodbye.</Say><Redirect>/twilio/voice/bye</Redirect></Response>"
IVR_BYE = "<Response><Hangup/></Response>"
VOICEMAIL_TWIML = "<Response><Say>Please call us back at 400 000 0000.</Say></Response>"


def ivr(receiver: WebhookReceiver) -> None:
    def gather(request: object) -> Reply:
        step = getattr(request, "url", "").rsplit("step=", 1)[-1]
        return Reply(IVR_MENU if step == "identity" else IVR_DONE)

    def answer(request: object) -> Reply:
        form = getattr(request, "form", {})
        return Reply(VOICEMAIL_TWIML if form.get("AnsweredBy", "").startswith("machine") else IVR_ANSWER)

    receiver.respond("/twilio/voice/answer", answer)
    receiver.respond("/twilio/voice/gather", gather)
    receiver.respond("/twilio/voice/bye", IVR_BYE)


async def test_call_plays_twiml_presses_digits_and_reports_completed(
    sandbox: Sandbox, client: Client, receiver: WebhookReceiver
) -> None:
    ivr(receiver)
    callee = "+8613800000001"
    sandbox.options.call_behaviours[callee] = CallBehaviour(digits=("1", "2"))
    call = await client.api.account.calls.create_async(
        to=callee,
        from_=FROM,
        url=receiver.url("/twilio/voice/answer"),
        status_callback=receiver.url("/twilio/voice/status"),
        status_callback_event=["initiated", "ringing", "answered", "completed"],
        machine_detection="DetectMessageEnd",
    )
    assert call.sid.startswith("CA") and call.status == "queued"
    await sandbox.drain()

    record = sandbox.calls()[0]
    assert record["spoken"] == [
        "您好，如果您是张伟，请按1。",
        "You owe 10,270.00 yuan. Press 1 for a payment link, 2 to promise to pay.",
        "Thank you. Goodbye.",
    ]
    assert record["digits"] == ["1", "2"]
    assert record["errors"] == []
    assert record["status"] == "completed" and record["answered_by"] == "human"

    flow = [
        (r.path, r.form.get("Digits"), r.url.rsplit("?", 1)[-1] if "?" in r.url else "")
        for r in receiver.received()
        if r.path != "/twilio/voice/status"
    ]
    assert flow == [
        ("/twilio/voice/answer", None, ""),
        ("/twilio/voice/gather", "1", "step=identity"),  # relative action resolved against the answer URL
        ("/twilio/voice/gather", "2", "step=menu"),
        ("/twilio/voice/bye", None, ""),
    ]
    answer = receiver.received("/twilio/voice/answer")[0].form
    assert answer["CallSid"] == call.sid and answer["CallStatus"] == "in-progress"
    assert answer["Direction"] == "outbound-api" and answer["AnsweredBy"] == "human"
    statuses = [r.form for r in receiver.received("/twilio/voice/status")]
    assert [s["CallStatus"] for s in statuses] == ["initiated", "ringing", "in-progress", "completed"]
    assert statuses[-1]["AnsweredBy"] == "human" and int(statuses[-1]["CallDuration"]) > 0
    assert [s["SequenceNumber"] for s in statuses] == ["0", "1", "2", "3"]
    assert all(r.signature_valid for r in receiver.received())

    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{sandbox.twilio_url}/sandbox/calls")).json() == sandbox.calls()

    fetched = await client.api.account.calls(call.sid).fetch_async()
    assert fetched.status == "completed" and fetched.answered_by == "human"
    assert fetched.duration == statuses[-1]["CallDuration"]
    listed = await client.api.account.calls.list_async(to=callee, status="completed")
    assert [c.sid for c in listed] == [call.sid]
    assert await client.api.account.calls.list_async(to=callee, status="busy") == []
    assert (
        len(await client.api.account.calls.list_async(start_time_after=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)))
        == 1
    )


async def test_answering_machine_gets_the_voicemail_and_presses_nothing(
    sandbox: Sandbox, client: Client, receiver: WebhookReceiver
) -> None:
    ivr(receiver)
    sandbox.options.call_behaviours["+8613800000002"] = CallBehaviour(answered_by="machine_end_beep", digits=("1",))
    await client.api.account.calls.create_async(
        to="+8613800000002", from_=FROM, url=receiver.url("/twilio/voice/answer"),
        status_callback=receiver.url("/twilio/voice/status"), machine_detection="DetectMessageEnd",
    )
    await sandbox.drain()
    record = sandbox.calls()[0]
    assert record["spoken"] == ["Please call us back at 400 000 0000."]
    assert record["digits"] == []
    finals = [r.form for r in receiver.received("/twilio/voice/status")]
    assert [(f["CallStatus"], f["AnsweredBy"]) for f in finals] == [
        ("completed", "machine_end_beep")
    ]  # no events: final only


@pytest.mark.parametrize("outcome", ["busy", "no-answer", "failed"])
async def test_unanswered_calls_fetch_no_twiml(
    sandbox: Sandbox, client: Client, receiver: WebhookReceiver, outcome: str
) -> None:
    ivr(receiver)
    sandbox.options.call_behaviours[TO] = CallBehaviour(outcome=outcome)
    await client.api.account.calls.create_async(
        to=TO,
        from_=FROM,
        url=receiver.url("/twilio/voice/answer"),
        status_callback=receiver.url("/twilio/voice/status"),
    )
    await sandbox.drain()
    assert receiver.received("/twilio/voice/answer") == []
    assert [r.form["CallStatus"] for r in receiver.received("/twilio/voice/status")] == [outcome]
    assert sandbox.calls()[0]["status"] == outcome


async def test_default_behaviour_function_and_inline_twiml() -> None:
    sandbox = Sandbox(default_call_behaviour=lambda number: VOICEMAIL if number.endswith("9") else CallBehaviour())
    async with sandbox:
        c = sdk_client(sandbox)
        try:
            await c.api.account.calls.create_async(
                to="+8613800000009", from_=FROM, twiml="<Response><Say>Hi</Say></Response>", machine_detection="Enable"
            )
            await sandbox.drain()
        finally:
            await c.http_client.close()  # type: ignore[attr-defined]
        (record,) = sandbox.calls()
        assert record["answered_by"] == "machine_end_beep" and record["spoken"] == ["Hi"]


async def test_broken_twiml_ends_the_call_with_an_error(
    sandbox: Sandbox, client: Client, receiver: WebhookReceiver
) -> None:
    receiver.respond("/answer", "this is not xml", content_type="text/plain")
    await client.api.account.calls.create_async(to=TO, from_=FROM, url=receiver.url("/answer"))
    await sandbox.drain()
    (record,) = sandbox.calls()
    assert record["status"] == "completed" and record["errors"][0].startswith("12100")


# -- inbound --------------------------------------------------------------------------


async def test_inbound_sms_is_posted_signed_and_the_answer_returned(
    sandbox: Sandbox, receiver: WebhookReceiver
) -> None:
    receiver.respond("/twilio/sms/inbound", "<Response/>")
    url = receiver.url("/twilio/sms/inbound")
    async with httpx.AsyncClient() as http:
        reply = await http.post(
            f"{sandbox.twilio_url}/sandbox/inbound", json={"from": TO, "to": FROM, "body": "退订", "url": url}
        )
        bad = await http.post(f"{sandbox.twilio_url}/sandbox/inbound", json={"from": TO})
    assert reply.status_code == 200
    assert reply.json()["status"] == 200 and reply.json()["body"] == "<Response/>"
    assert bad.status_code == 400
    (request,) = receiver.received("/twilio/sms/inbound")
    assert request.signature_valid
    assert request.form["Body"] == "退订" and request.form["From"] == TO and request.form["To"] == FROM
    assert request.form["NumMedia"] == "0" and request.form["MessageSid"] == reply.json()["message_sid"]
    assert request.form["AccountSid"] == sandbox.account_sid

    direct = await sandbox.simulate_inbound(TO, FROM, "STOP", url)
    assert direct["status"] == 200
    assert [i["body"] for i in sandbox.inbound()] == ["退订", "STOP"]


# -- runners --------------------------------------------------------------------------


def test_run_sandbox_in_thread_with_the_sync_sdk() -> None:
    with run_sandbox_in_thread(seed=1, callback_delay_ms=1) as sb:
        client = Client(sb.account_sid, sb.auth_token)
        client.api.base_url = sb.twilio_url
        try:
            created = client.api.account.messages.create(to=TO, from_=FROM, body="sync")
            assert client.api.account.messages(created.sid).fetch().body == "sync"
            sb.drain_threadsafe()
            assert sb.messages()[0]["status"] == "delivered"
        finally:
            client.http_client.session.close()  # type: ignore[attr-defined]


def test_serve_prints_its_addresses_and_stops_on_sigterm() -> None:
    code = "from dispatcher.sandbox import serve; raise SystemExit(serve(twilio_port=0, smtp_port=0))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert proc.stdout is not None
        twilio_line = proc.stdout.readline().strip()
        smtp_line = proc.stdout.readline().strip()
        assert twilio_line.startswith("twilio http://127.0.0.1:")
        assert smtp_line.startswith("smtp 127.0.0.1:")
        health = httpx.get(twilio_line.split(" ", 1)[1] + "/sandbox/health", timeout=5)
        assert health.json() == {"ok": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# -- the sandbox in a process of its own (the demo's layout) --------------------------


async def test_a_sandbox_process_on_a_shared_clock_drains_and_posts_inbound(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dispatcher.clock import SharedClock
    from dispatcher.sandbox.server import run_sandbox_in_process

    start = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)
    clock = SharedClock(tmp_path / "clock", start)
    async with WebhookReceiver(auth_token="process-token") as rx:
        with run_sandbox_in_process(seed=3, clock=clock, auth_token="process-token", callback_delay_ms=20) as sb:
            assert sb.pid != os.getpid()
            client = Client(sb.account_sid, sb.auth_token, http_client=AsyncTwilioHttpClient())
            client.api.base_url = sb.twilio_url
            try:
                created = await client.api.account.messages.create_async(
                    to=TO, from_=FROM, body="hello", status_callback=rx.url("/status"))
                # the record is stamped with the driver's simulated instant, not the wall clock
                assert created.date_created == start
                clock.set(start + dt.timedelta(days=1))
                await sb.drain(30)  # returns only when every callback has been answered
                statuses = [r.form["MessageStatus"] for r in rx.received("/status")]
                assert statuses[-1] in {"delivered", "undelivered", "failed"}
                later = await client.api.account.messages.create_async(to=TO, from_=FROM, body="again")
                assert later.date_created == start + dt.timedelta(days=1)
            finally:
                await client.http_client.close()  # type: ignore[attr-defined]
            result = await sb.simulate_inbound(TO, FROM, "STOP", rx.url("/inbound"))
            assert result["status"] == 200
            inbound = rx.received("/inbound")
            assert len(inbound) == 1 and inbound[0].form["Body"] == "STOP"
            assert inbound[0].signature_valid is True
            assert all(r.signature_valid for r in rx.received("/status"))
