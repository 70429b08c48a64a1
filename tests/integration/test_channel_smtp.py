"""The SMTP e-mail channel through aiosmtplib to the sandbox's SMTP sink."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hmac
import socket
from collections.abc import AsyncIterator
from email.header import decode_header, make_header
from urllib.parse import parse_qsl

import httpx
import pytest

from dispatcher.channels.base import OutboundMessage
from dispatcher.channels.smtp_email import UNKNOWN_AFTER_DATA, SmtpEmailChannel, SmtpEndpoint
from dispatcher.domain import Channel, MessageStatus
from dispatcher.sandbox import Sandbox, WebhookReceiver, sign_bounce

BOUNCE_KEY = "bounce-signing-key"
SUBJECT = "【调度银行】您的信用卡账单已逾期 30 天，请尽快还款"
UNSUBSCRIBE = "<https://pay.bank.example/email/unsubscribe/tok123>, <mailto:unsubscribe@bank.example?subject=tok123>"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    rules = {
        "*@hard.example": "hard",
        "*@grey.example": "tempfail",
        "*@async-hard.example": "async_hard",
        "*@full.example": "soft",
        "*@drop.example": "drop_after_data",
    }
    async with Sandbox(callback_delay_ms=2, email_rules=rules, bounce_key=BOUNCE_KEY) as sb:
        yield sb


@pytest.fixture
async def channel(sandbox: Sandbox) -> SmtpEmailChannel:
    return SmtpEmailChannel(sandbox.smtp_url, timeout=2.0)


def mail(message_id: int = 9, to: str = "zhang.wei@example.com", **kw: object) -> OutboundMessage:
    fields: dict[str, object] = {
        "message_id": message_id,
        "case_id": "C-9",
        "channel": Channel.EMAIL,
        "to": to,
        "body": "您好 张伟：您的账单已逾期 30 天，应还金额 ¥10,270.00。\n退订：https://pay.bank.example/email/unsubscribe/tok123",
        "idempotency_key": f"C-9:email:dpd30:{message_id}",
        "locale": "zh-CN",
        "subject": SUBJECT,
        "html": "<p>您好 张伟：应还金额 <b>¥10,270.00</b>。</p><p><a href='https://pay.bank.example/p/x'>还款</a></p>",
        "sender": "调度银行 <reminders@bank.example>",
        "headers": {"List-Unsubscribe": UNSUBSCRIBE, "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        "return_path": f"bounce+{message_id}.sig@bounce.bank.example",
        "message_ref": f"<dispatcher-{message_id}@bounce.bank.example>",
        **kw,
    }
    return OutboundMessage(**fields)  # type: ignore[arg-type]


async def test_email_arrives_with_headers_parts_verp_and_chinese_subject(
    sandbox: Sandbox, channel: SmtpEmailChannel
) -> None:
    message = mail()
    result = await channel.send(message)
    assert result.status is MessageStatus.SENT and not result.retryable
    assert result.provider_id == "<dispatcher-9@bounce.bank.example>"

    (record,) = sandbox.email_records()
    assert record.mail_from == "bounce+9.sig@bounce.bank.example"  # VERP = envelope sender
    assert record.rcpt_tos == ["zhang.wei@example.com"]

    raw = record.raw
    assert all(b < 0x80 for b in raw), "7-bit clean on the wire"
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == SUBJECT
    raw_subject = email.message_from_bytes(raw, policy=email.policy.compat32)["Subject"]
    assert "=?utf-8?" in raw_subject.lower() and str(make_header(decode_header(raw_subject))) == SUBJECT
    assert parsed["Message-ID"] == "<dispatcher-9@bounce.bank.example>"
    assert parsed["List-Unsubscribe"] == UNSUBSCRIBE
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["To"] == "zhang.wei@example.com"
    assert parsed["From"].addresses[0].addr_spec == "reminders@bank.example"
    assert parsed["From"].addresses[0].display_name == "调度银行"
    assert parsed["Date"] is not None
    assert parsed.get_content_type() == "multipart/alternative"
    plain = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    # text is canonical (CRLF line ends) inside its transfer encoding, as RFC 2045 asks
    assert plain.get_content().replace("\r\n", "\n").strip() == message.body
    assert "<b>¥10,270.00</b>" in html.get_content()

    async with httpx.AsyncClient() as http:
        (snapshot,) = (await http.get(f"{sandbox.twilio_url}/sandbox/emails")).json()
    assert snapshot == sandbox.emails()[0]
    assert snapshot["subject"] == SUBJECT and snapshot["count"] == 1
    assert snapshot["mail_from"] == "bounce+9.sig@bounce.bank.example"
    assert snapshot["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert snapshot["text"].replace("\r\n", "\n").strip() == message.body


async def test_text_only_mail_and_duplicates_are_counted_by_message_id(
    sandbox: Sandbox, channel: SmtpEmailChannel
) -> None:
    message = mail(html=None)
    for _ in range(2):
        assert (await channel.send(message)).status is MessageStatus.SENT
    emails = sandbox.emails()
    assert [e["count"] for e in emails] == [2, 2]
    assert emails[0]["html"] is None
    parsed = email.message_from_bytes(sandbox.email_records()[0].raw, policy=email.policy.default)
    assert parsed.get_content_type() == "text/plain"


async def test_hard_bounce_at_rcpt_fails_for_good(sandbox: Sandbox, channel: SmtpEmailChannel) -> None:
    result = await channel.send(mail(to="nobody@hard.example"))
    assert result.status is MessageStatus.FAILED
    assert not result.retryable and not result.ambiguous
    assert result.error is not None and result.error.startswith("hard bounce: 550")
    assert "nobody@" not in result.error
    assert sandbox.emails() == []
    assert sandbox.smtp_rejections()[0]["mail_from"] == "bounce+9.sig@bounce.bank.example"


async def test_temporary_refusal_is_retryable(sandbox: Sandbox, channel: SmtpEmailChannel) -> None:
    result = await channel.send(mail(to="someone@grey.example"))
    assert result.retryable and not result.ambiguous and "451" in (result.error or "")


async def test_drop_after_data_is_ambiguous_and_never_retried(sandbox: Sandbox, channel: SmtpEmailChannel) -> None:
    message = mail(to="someone@drop.example")
    result = await channel.send(message)
    assert result.ambiguous and result.retryable
    assert len(sandbox.emails()) == 1  # the server did get it
    settled = await channel.reconcile(message, dt.datetime.now(dt.UTC))
    assert settled is not None
    # never resent, and counted as sent (the server most likely has it), not failed
    assert settled.status is MessageStatus.SENT_UNCONFIRMED and settled.error == UNKNOWN_AFTER_DATA
    assert not settled.retryable and settled.provider_id == SmtpEmailChannel.message_id(message)


async def test_connection_refused_is_retryable_not_ambiguous() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await SmtpEmailChannel(f"smtp://127.0.0.1:{port}", timeout=1.0).send(mail())
    assert result.retryable and not result.ambiguous and "nothing was sent" in (result.error or "")


@pytest.mark.parametrize(("domain", "kind"), [("async-hard.example", "hard"), ("full.example", "soft")])
async def test_async_bounces_are_posted_with_a_valid_hmac(domain: str, kind: str) -> None:
    async with WebhookReceiver() as receiver:
        receiver.respond("/email/bounce", "", status=204)
        sandbox_with_url = Sandbox(
            email_rules={f"*@{domain}": f"{'async_hard' if kind == 'hard' else 'soft'}"},
            bounce_url=receiver.url("/email/bounce"),
            bounce_key=BOUNCE_KEY,
            callback_delay_ms=1,
        )
        async with sandbox_with_url:
            result = await SmtpEmailChannel(sandbox_with_url.smtp_url).send(mail(to=f"user@{domain}"))
            assert result.status is MessageStatus.SENT  # accepted now, bounced later
            await sandbox_with_url.drain()
            (record,) = sandbox_with_url.emails()
            assert record["bounces"] == [
                {"recipient": f"user@{domain}", "type": kind, "http_status": 204, "error": None}
            ]
    (request,) = receiver.received("/email/bounce")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    expected = hmac.new(BOUNCE_KEY.encode(), request.body, "sha256").hexdigest()
    assert request.headers["x-dispatcher-signature"] == expected == sign_bounce(request.body, BOUNCE_KEY)
    fields = dict(parse_qsl(request.body.decode()))
    assert fields == {
        "return_path": "bounce+9.sig@bounce.bank.example",
        "recipient": f"user@{domain}",
        "type": kind,
        "diagnostic": fields["diagnostic"],
        "message_id": "<dispatcher-9@bounce.bank.example>",
    }
    assert fields["diagnostic"].startswith("smtp; 550" if kind == "hard" else "smtp; 452")


async def test_smtp_auth_is_used_when_the_url_has_credentials() -> None:
    async with Sandbox(smtp_credentials=("mailer", "p@ss word")) as sb:
        good = await SmtpEmailChannel(f"smtp://mailer:p%40ss%20word@127.0.0.1:{sb.smtp_port}").send(mail())
        assert good.status is MessageStatus.SENT
        bad = await SmtpEmailChannel(f"smtp://mailer:nope@127.0.0.1:{sb.smtp_port}").send(mail(message_id=10))
        assert bad.retryable and not bad.ambiguous and "DISPATCHER_SMTP_URL" in (bad.error or "")
        anonymous = await SmtpEmailChannel(sb.smtp_url).send(mail(message_id=11))
        assert anonymous.status is MessageStatus.FAILED and not anonymous.ambiguous
        assert len(sb.emails()) == 1


def test_smtp_url_parsing() -> None:
    assert SmtpEndpoint.parse("smtp://127.0.0.1:2525") == SmtpEndpoint("127.0.0.1", 2525, False, None, None, None)
    assert SmtpEndpoint.parse("smtps://u:p%2Fw@mail.example") == SmtpEndpoint(
        "mail.example", 465, True, False, "u", "p/w"
    )
    assert SmtpEndpoint.parse("smtp://mail.example?starttls=true").port == 587
    assert SmtpEndpoint.parse("smtp://mail.example?starttls=false").start_tls is False
    for bad in ("http://mail.example", "smtp://", "smtps://h?starttls=true", "smtp://h?starttls=maybe"):
        with pytest.raises(ValueError):
            SmtpEndpoint.parse(bad)
