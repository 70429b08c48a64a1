"""Where reconcile depends on Twilio's behaviour, the sandbox mirrors it: list order
(Messages by DateSent, Calls by StartTime, newest first), date filters, paging by page
token, the `Date` header (with a clock offset), records kept across a restart, lost
callbacks, Smart Encoding and link shortening. Driven by the official SDK."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from dispatcher.clock import FakeClock
from dispatcher.sandbox import Sandbox, WebhookReceiver
from dispatcher.sandbox.listing import ordered

TO = "+8613812345678"
OTHER = "+8613812345679"
FROM = "+15005550006"
T0 = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _no_twilio_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)


def sdk(sandbox: Sandbox) -> Client:
    client = Client(sandbox.account_sid, sandbox.auth_token, http_client=AsyncTwilioHttpClient())
    client.api.base_url = sandbox.twilio_url
    return client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def held(clock: FakeClock) -> AsyncIterator[tuple[Sandbox, Client]]:
    """A sandbox whose messages and calls stay queued (no transition within the test):
    the test says when Twilio dispatched each (`dispatch`)."""
    async with Sandbox(seed=3, clock=clock, callback_delay_ms=600_000) as sandbox:
        client = sdk(sandbox)
        try:
            yield sandbox, client
        finally:
            await client.http_client.close()  # type: ignore[attr-defined]


def dispatch(sandbox: Sandbox, sid: str, when: dt.datetime) -> None:
    """Twilio takes the message off its queue (or dials the call) at `when`: its own
    queue decides that, not the order of creation."""
    with sandbox.recorder.lock:
        if sid.startswith("SM"):
            message = sandbox.recorder.messages_by_sid[sid]
            message.status, message.date_sent = "sent", when
        else:
            call = sandbox.recorder.calls_by_sid[sid]
            call.status, call.start_time = "ringing", when


async def create_sms(client: Client, clock: FakeClock, at: dt.datetime, body: str, to: str = TO) -> str:
    clock.set(at)
    created = await client.api.account.messages.create_async(to=to, from_=FROM, body=body)
    return str(created.sid)


# -- order, filters, paging ---------------------------------------------------------


@pytest.mark.parametrize("undated_first", [True, False])
async def test_messages_are_listed_newest_first_by_date_sent(clock: FakeClock, undated_first: bool) -> None:
    async with Sandbox(seed=3, clock=clock, callback_delay_ms=600_000, undated_first=undated_first) as sandbox:
        client = sdk(sandbox)
        try:
            early = await create_sms(client, clock, T0, "created first, sent last")
            middle = await create_sms(client, clock, T0 + dt.timedelta(minutes=1), "created second, sent first")
            queued = await create_sms(client, clock, T0 + dt.timedelta(minutes=2), "still queued at Twilio")
            dispatch(sandbox, middle, T0 + dt.timedelta(minutes=3))
            dispatch(sandbox, early, T0 + dt.timedelta(minutes=4))

            listed = [m.sid async for m in await client.api.account.messages.stream_async(to=TO)]
        finally:
            await client.http_client.close()  # type: ignore[attr-defined]
    by_date_sent = [early, middle]  # newest DateSent first, whatever the creation order
    assert listed == ([queued, *by_date_sent] if undated_first else [*by_date_sent, queued])


async def test_date_filters_compare_dates_and_never_show_an_unsent_message(
        held: tuple[Sandbox, Client], clock: FakeClock) -> None:
    sandbox, client = held
    yesterday = await create_sms(client, clock, T0 - dt.timedelta(days=1), "yesterday")
    today = await create_sms(client, clock, T0, "today")
    unsent = await create_sms(client, clock, T0, "not yet")
    dispatch(sandbox, yesterday, T0 - dt.timedelta(days=1))
    dispatch(sandbox, today, T0 + dt.timedelta(hours=5))
    messages = client.api.account.messages

    async def sids(**filters: object) -> set[str]:
        return {m.sid async for m in await messages.stream_async(to=TO, **filters)}

    # an instant is cut to its date, as Twilio does: "after yesterday 02:01" still means
    # "yesterday on", so the message sent yesterday at 02:00 is in
    assert await sids(date_sent_after=T0 - dt.timedelta(days=1) + dt.timedelta(minutes=1)) == {yesterday, today}
    assert await sids(date_sent_after=T0.date()) == {today}
    assert await sids(date_sent_before=T0 - dt.timedelta(days=1)) == {yesterday}
    assert await sids(date_sent=T0) == {today}
    assert unsent in await sids()
    assert unsent not in await sids(date_sent_after=T0 - dt.timedelta(days=30))
    # To and From filter exactly
    await create_sms(client, clock, T0, "to someone else", to=OTHER)
    assert {m.to async for m in await messages.stream_async(from_=FROM)} == {TO, OTHER}
    assert await sids(from_="+15550000000") == set()


async def test_paging_follows_next_page_uri_with_page_tokens(held: tuple[Sandbox, Client], clock: FakeClock) -> None:
    sandbox, client = held
    created = [await create_sms(client, clock, T0 + dt.timedelta(seconds=i), f"m{i}") for i in range(7)]
    for i, sid in enumerate(created):
        dispatch(sandbox, sid, T0 + dt.timedelta(minutes=i))
    streamed = [m.sid async for m in await client.api.account.messages.stream_async(to=TO, page_size=3)]
    assert streamed == created[::-1]
    async with httpx.AsyncClient(auth=(sandbox.account_sid, sandbox.auth_token)) as http:
        first = (await http.get(f"{sandbox.twilio_url}/2010-04-01/Accounts/{sandbox.account_sid}/Messages.json",
                                params={"To": TO, "PageSize": 3})).json()
        assert [m["sid"] for m in first["messages"]] == created[:3:-1]
        assert f"PageToken=PA{created[4]}" in first["next_page_uri"]
        assert "To=%2B8613812345678" in first["next_page_uri"]
        last = (await http.get(f"{sandbox.twilio_url}{first['next_page_uri']}".replace("PageSize=3", "PageSize=10"))
                ).json()
    assert [m["sid"] for m in last["messages"]] == created[3::-1] and last["next_page_uri"] is None


async def test_calls_are_listed_by_start_time_with_status_and_time_filters(
        held: tuple[Sandbox, Client], clock: FakeClock) -> None:
    sandbox, client = held
    calls = client.api.account.calls
    sids = []
    for minute in range(3):
        clock.set(T0 + dt.timedelta(minutes=minute))
        created = await calls.create_async(to=TO, from_=FROM, url="http://127.0.0.1:9/answer?m=1")
        sids.append(created.sid)
    dispatch(sandbox, sids[0], T0 + dt.timedelta(minutes=5))  # dialled last
    dispatch(sandbox, sids[1], T0 + dt.timedelta(minutes=4))
    listed = [c.sid async for c in await calls.stream_async(to=TO)]
    assert listed == [sids[2], sids[0], sids[1]]  # not yet dialled first, then by StartTime
    assert {c.sid async for c in await calls.stream_async(to=TO, status="queued")} == {sids[2]}
    assert {c.sid async for c in await calls.stream_async(to=TO, start_time_after=T0)} == {sids[0], sids[1]}
    assert [c.sid async for c in await calls.stream_async(to=OTHER)] == []


def test_order_puts_undated_records_first_or_last() -> None:
    rows = [("a", None, 1), ("b", 5, 2), ("c", 9, 3), ("d", None, 4)]
    assert [r[0] for r in ordered(rows, lambda r: r[1], lambda r: r[2], undated_first=True)] == ["d", "a", "c", "b"]
    assert [r[0] for r in ordered(rows, lambda r: r[1], lambda r: r[2], undated_first=False)] == ["c", "b", "d", "a"]


# -- the Date header and the clock offset -----------------------------------------------


@pytest.mark.parametrize("offset", [-180.0, 300.0])
async def test_every_answer_carries_the_sandbox_clocks_date(clock: FakeClock, offset: float) -> None:
    async with Sandbox(clock=clock, clock_offset_seconds=offset) as sandbox:
        expected = T0 + dt.timedelta(seconds=offset)
        async with httpx.AsyncClient() as http:
            answers = [
                await http.get(f"{sandbox.twilio_url}/sandbox/health"),
                await http.get(f"{sandbox.twilio_url}/2010-04-01/Accounts/{sandbox.account_sid}/Messages.json"),
                await http.post(f"{sandbox.twilio_url}/2010-04-01/Accounts/{sandbox.account_sid}/Messages.json",
                                data={"To": TO, "From": FROM, "Body": "x"},
                                auth=(sandbox.account_sid, sandbox.auth_token)),
            ]
        assert [a.status_code for a in answers] == [200, 401, 201]
        for answer in answers:
            assert len(answer.headers.get_list("date")) == 1
            assert parsedate_to_datetime(answer.headers["date"]) == expected
            assert answer.headers["date"].endswith(" GMT")
        # the records are stamped on the same (skewed) clock
        assert answers[2].json()["date_created"] == expected.strftime("%a, %d %b %Y %H:%M:%S +0000")


# -- records kept across a restart -----------------------------------------------------------


async def test_a_restarted_sandbox_still_answers_for_what_it_received(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    async with WebhookReceiver() as rx:
        async with Sandbox(seed=1, records_path=str(path), callback_delay_ms=1) as first:
            client = sdk(first)
            try:
                delivered = await client.api.account.messages.create_async(to=TO, from_=FROM, body="one")
                call = await client.api.account.calls.create_async(to=TO, from_=FROM, twiml="<Response/>")
                await first.drain()
            finally:
                await client.http_client.close()  # type: ignore[attr-defined]
            before = first.messages()
        # a sandbox that dies with a message still queued at the "provider"
        async with Sandbox(seed=1, records_path=str(path), callback_delay_ms=600_000) as second:
            client = sdk(second)
            try:
                pending = await client.api.account.messages.create_async(
                    to=TO, from_=FROM, body="one", status_callback=rx.url("/status"))
            finally:
                await client.http_client.close()  # type: ignore[attr-defined]
        with path.open("a") as f:
            f.write('{"kind": "message", "record": {"se')  # a line cut short by a kill

        async with Sandbox(seed=1, records_path=str(path), callback_delay_ms=1) as third:
            client = sdk(third)
            try:
                fetched = await client.api.account.messages(delivered.sid).fetch_async()
                assert (fetched.status, fetched.body) == ("delivered", "one")
                assert (await client.api.account.calls(call.sid).fetch_async()).status == "completed"
                listed = [m.sid async for m in await client.api.account.messages.stream_async(to=TO)]
                assert set(listed) == {delivered.sid, pending.sid}
                # the queued one carries on after the restart, callbacks included
                await third.drain()
                assert (await client.api.account.messages(pending.sid).fetch_async()).status == "delivered"
                later = await client.api.account.messages.create_async(to=TO, from_=FROM, body="two")
            finally:
                await client.http_client.close()  # type: ignore[attr-defined]
            counts = {m["sid"]: m["count"] for m in third.messages()}
    assert [m["sid"] for m in before] == [delivered.sid]
    assert counts == {delivered.sid: 2, pending.sid: 2, later.sid: 1}  # "one" reached the provider twice
    assert [r.form["MessageStatus"] for r in rx.received("/status")] == ["sent", "delivered"]


def test_the_cli_takes_the_clock_offset_records_and_lost_callbacks(tmp_path: Path) -> None:
    records = tmp_path / "sandbox.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", "sandbox", "--twilio-port", "0", "--smtp-port", "0",
         "--clock-offset-seconds", "-300", "--records", str(records), "--drop-callbacks", "0.25"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().split(" ", 1)[1]
        answer = httpx.get(f"{url}/sandbox/health", timeout=5)
        skew = (parsedate_to_datetime(answer.headers["date"]) - dt.datetime.now(dt.UTC)).total_seconds()
        assert -302 < skew < -298
        faults = httpx.post(f"{url}/sandbox/faults", json={}, timeout=5).json()
        assert faults["drop_callbacks"] == 0.25
        httpx.post(f"{url}/2010-04-01/Accounts/AC{'5a' * 16}/Messages.json",
                   data={"To": TO, "From": FROM, "Body": "kept"},
                   auth=(f"AC{'5a' * 16}", "sandbox-auth-token-0123456789abc"), timeout=5).raise_for_status()
        assert '"body": "kept"' in records.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# -- lost callbacks, Smart Encoding, link shortening ---------------------------------------


async def test_a_share_of_status_callbacks_can_be_lost() -> None:
    async with WebhookReceiver() as rx:
        async with Sandbox(seed=4, callback_delay_ms=1, drop_callback_ratio=1.0) as sandbox:
            client = sdk(sandbox)
            try:
                created = await client.api.account.messages.create_async(
                    to=TO, from_=FROM, body="x", status_callback=rx.url("/status"))
                await sandbox.drain()
                assert rx.received("/status") == []
                (record,) = sandbox.messages()
                assert [c["dropped"] for c in record["callbacks"]] == [True, True]
                assert (await client.api.account.messages(created.sid).fetch_async()).status == "delivered"
                async with httpx.AsyncClient() as http:
                    changed = await http.post(f"{sandbox.twilio_url}/sandbox/faults", json={"drop_callbacks": 0})
                assert changed.json()["drop_callbacks"] == 0
                await client.api.account.messages.create_async(
                    to=TO, from_=FROM, body="y", status_callback=rx.url("/status"))
                await sandbox.drain()
            finally:
                await client.http_client.close()  # type: ignore[attr-defined]
        assert [r.form["MessageStatus"] for r in rx.received("/status")] == ["sent", "delivered"]


async def test_smart_encoding_and_link_shortening_rewrite_bodies_unless_turned_off() -> None:
    body = "Don\u2019t miss it \u2013 pay at https://pay.example/p/abc123 \u2026"
    async with Sandbox(seed=5, smart_encoding=True) as sandbox:
        client = sdk(sandbox)
        messages = client.api.account.messages
        try:
            rewritten = await messages.create_async(to=TO, messaging_service_sid="MG" + "1" * 32, body=body)
            kept = await messages.create_async(to=TO, messaging_service_sid="MG" + "1" * 32, body=body,
                                               smart_encoded=False, shorten_urls=False)
            shortened = await messages.create_async(to=TO, messaging_service_sid="MG" + "1" * 32, body=body,
                                                    smart_encoded=False, shorten_urls=True)
            from_number = await messages.create_async(to=TO, from_=FROM, body=body)
            with pytest.raises(TwilioRestException):
                await messages.create_async(to=TO, from_=FROM, body=body, shorten_urls=True)
        finally:
            await client.http_client.close()  # type: ignore[attr-defined]
    assert rewritten.body == "Don't miss it - pay at https://pay.example/p/abc123 ..."
    assert kept.body == body and from_number.body == body
    assert "https://pay.example" not in (shortened.body or "") and "https://lnk.sandbox.test/" in (shortened.body or "")
