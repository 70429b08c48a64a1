"""What a caller's keypress sends goes through the compliance gate, on SQLite and
PostgreSQL, over the real webhooks: option 1 (payment link) and option 4 (self-service
link) are refused for a number opted out of SMS, a case under a hold that stops contact,
a closed case, or outside the contact window; the caller hears so in the call's
language, and the case gets one `reply_not_sent` event with the gate's reason. The caps,
a promise to pay or a payment claim do not stop a link the debtor asks for."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import update

from dispatcher.channels.recording import RecordingChannel
from dispatcher.domain import Channel, Reason
from dispatcher.services.outbox import Sender
from dispatcher.store import repository as repo
from dispatcher.store.tables import contacts_t
from dispatcher.templates import TemplateSet
from tests.integration import test_webhooks
from tests.integration.test_webhooks import CN_PHONE, PUBLIC, US_PHONE, World, add_message, gather

world = test_webhooks.world  # the webhooks' fixture: three cases, an SMS, a call and an e-mail, the app

OPTIONS = {"1": ("sms/replies/payment_link", "还款链接已通过短信发送到本机"),
           "4": ("sms/replies/self_service", "自助服务链接已通过短信发送到本机")}
ROOT = Path(__file__).resolve().parents[2]
REFUSED_ZH = "无法向本号码发送短信，请拨打95555联系我们"


def refusals(world: World) -> list[tuple[str | None, str, str]]:
    return [(e.case_id, json.loads(e.data)["template"], json.loads(e.data)["reason"])
            for e in world.events("reply_not_sent")]


async def press(world: World, digits: str) -> str:
    await gather(world, "identity", "1")
    return (await gather(world, "options", digits)).text


@pytest.mark.parametrize("digits", ["1", "4"])
async def test_an_sms_opt_out_refuses_the_link(world: World, digits: str) -> None:
    with world.engine.begin() as conn:
        conn.execute(update(contacts_t).where(contacts_t.c.case_id == "cn-1", contacts_t.c.channel == "sms")
                     .values(opted_out=True))
    text = await press(world, digits)
    assert "<Hangup" in text and REFUSED_ZH in text and OPTIONS[digits][1] not in text
    assert world.system_messages() == []
    assert refusals(world) == [("cn-1", OPTIONS[digits][0], "opted_out")]
    [event] = world.events("reply_not_sent")
    assert event.message_id == world.voice_id and "opted out of sms" in json.loads(event.data)["error"]


@pytest.mark.parametrize("digits", ["1", "4"])
@pytest.mark.parametrize("hold", [Reason.CEASE_COMMUNICATION, Reason.DISPUTE_HOLD, Reason.LEGAL_HOLD,
                                  Reason.COLLECTOR_HOLD])
async def test_a_hold_that_stops_contact_refuses_the_link(world: World, hold: Reason, digits: str) -> None:
    # placed while the call rings (a dispute by SMS, a collector's or compliance's hold)
    with world.engine.begin() as conn:
        repo.place_hold(conn, "cn-1", hold, None, "合规张", world.clock.now())
    text = await press(world, digits)
    assert REFUSED_ZH in text and world.system_messages() == []
    assert refusals(world) == [("cn-1", OPTIONS[digits][0], hold.value)]


@pytest.mark.parametrize("hold", [Reason.PROMISE_TO_PAY, Reason.PAYMENT_CLAIMED])
async def test_a_promise_or_a_payment_claim_does_not_stop_a_requested_link(world: World, hold: Reason) -> None:
    with world.engine.begin() as conn:
        repo.place_hold(conn, "cn-1", hold, world.clock.now() + dt.timedelta(days=3), "ivr", world.clock.now())
    text = await press(world, "1")
    assert OPTIONS["1"][1] in text
    assert [m.template_id for m in world.system_messages()] == ["sms/replies/payment_link"]
    assert refusals(world) == []


async def test_a_case_paid_during_the_call_gets_no_payment_link(world: World) -> None:
    with world.engine.begin() as conn:
        repo.record_payment(conn, "cn-1", Decimal("10270.00"), "bank", world.clock.now())
    text = await press(world, "1")
    assert REFUSED_ZH in text and world.system_messages() == []
    assert refusals(world) == [("cn-1", "sms/replies/payment_link", "case_closed")]


async def test_outside_the_contact_window_the_link_is_not_sent(world: World) -> None:
    await gather(world, "identity", "1")
    world.clock.set(dt.datetime(2026, 12, 7, 13, 5, tzinfo=dt.UTC))  # 21:05 in Shanghai: the window closed
    text = (await gather(world, "options", "1")).text
    assert REFUSED_ZH in text and world.system_messages() == []
    assert refusals(world) == [("cn-1", "sms/replies/payment_link", "outside_hours")]


async def test_an_english_caller_hears_the_refusal_in_english(world: World) -> None:
    with world.engine.begin() as conn:
        conn.execute(update(contacts_t).where(contacts_t.c.case_id == "us-1", contacts_t.c.channel == "sms")
                     .values(opted_out=True))
    us_voice = add_message(world.engine, "us-1", "voice", to=US_PHONE, locale="en-US")
    await gather(world, "identity", "1", m=us_voice)
    text = (await gather(world, "options", "1", m=us_voice)).text
    assert "We could not send a text message to this number. Please call us on" in text
    assert 'language="en-US"' in text and "无法" not in text
    assert refusals(world) == [("us-1", "sms/replies/payment_link", "opted_out")]


async def test_a_repeated_keypress_finds_the_link_it_sent(world: World) -> None:
    """A re-delivered keypress is the same request: it is answered as the first one was,
    even when the gate would now say otherwise (the link is on its way already)."""
    assert OPTIONS["1"][1] in await press(world, "1")
    with world.engine.begin() as conn:
        repo.place_hold(conn, "cn-1", Reason.DISPUTE_HOLD, None, "sms", world.clock.now())
    assert OPTIONS["1"][1] in (await gather(world, "options", "1")).text
    assert len(world.system_messages()) == 1 and refusals(world) == []


async def test_an_sms_reminder_today_does_not_stop_the_link(world: World) -> None:
    """cn allows one SMS a day, and this morning's reminder used it: the caps limit what
    we start, not what the debtor asks for on the call (the link counts for no cap)."""
    add_message(world.engine, "cn-1", "sms", to=CN_PHONE, at=dt.datetime(2026, 12, 7, 1, 30, tzinfo=dt.UTC))
    assert OPTIONS["1"][1] in await press(world, "1")
    assert [m.template_id for m in world.system_messages()] == ["sms/replies/payment_link"]
    assert refusals(world) == []


async def test_a_refusal_is_recorded_once_however_often_the_key_is_pressed(world: World) -> None:
    with world.engine.begin() as conn:
        repo.place_hold(conn, "cn-1", Reason.CEASE_COMMUNICATION, None, "合规张", world.clock.now())
    for _ in range(3):
        assert REFUSED_ZH in await press(world, "1")
    assert refusals(world) == [("cn-1", "sms/replies/payment_link", "cease_communication")]


@pytest.mark.parametrize("later", ["stop", "dispute", "window_closed"])
async def test_the_sender_checks_a_requested_link_again(world: World, later: str) -> None:
    """Between the keypress and the send, the number opts out, a dispute comes in or the
    window closes: the sender's last-moment gate cancels the link (or waits for the
    window), as for every message; an opt-out confirmation still goes."""
    assert OPTIONS["1"][1] in await press(world, "1")
    if later == "stop":
        await world.inbound("SMstop", "TD")
    elif later == "dispute":
        with world.engine.begin() as conn:
            repo.place_hold(conn, "cn-1", Reason.DISPUTE_HOLD, None, "sms", world.clock.now())
    else:
        world.clock.set(dt.datetime(2026, 12, 7, 13, 5, tzinfo=dt.UTC))  # 21:05 in Shanghai
    channels = {channel: RecordingChannel(channel) for channel in Channel}
    sender = Sender(world.engine, world.config, TemplateSet(ROOT / "templates", world.config), channels,
                    world.clock, world.signer, PUBLIC, "ivr-gate")
    await sender.send_due()
    link = next(m for m in world.system_messages() if m.template_id == "sms/replies/payment_link")
    sent = [m.body for m in channels[Channel.SMS].sent]
    assert not any("/p/" in body for body in sent)
    if later == "window_closed":
        assert (link.status, link.scheduled_at) == ("queued", dt.datetime(2026, 12, 8, 1, 0, tzinfo=dt.UTC))
    else:
        assert link.status == "cancelled"
        assert link.last_error.startswith("opted_out" if later == "stop" else "dispute_hold")
    if later == "stop":
        assert len(sent) == 1  # the opt-out confirmation
