"""The sandbox's SMTP sink (aiosmtpd): records every e-mail, bounces on request.

Recipient rules (`SandboxOptions.email_rules`, recipient glob → kind, first match wins,
case-insensitive, e.g. `{"*@bounce.example": "hard", "full-*@*": "soft"}`):

| kind | what happens |
|---|---|
| `hard` | `RCPT TO` is refused: `550 5.1.1 Recipient address rejected: user unknown`
  (synchronous hard bounce; nothing is recorded as received) |
| `tempfail` | `RCPT TO` is refused: `451 4.7.1 Greylisted, try again later` |
| `async_hard` | accepted and recorded; then a hard bounce notification is POSTed |
| `soft` | accepted and recorded; then a soft bounce notification is POSTed |
| `drop_after_data` | the message is received and recorded, then the connection is dropped
  without the final reply (the client cannot know it was accepted) |

`SandboxOptions.smtp_latency_ms` holds the answer to the end of each message's data
that long (received and recorded first): a slow mail server, for shutdown tests.

Bounce notification contract (what the dispatcher's bounce endpoint receives), sent
`callback_delay_ms` after the message was accepted:

    POST {bounce_url}
    Content-Type: application/x-www-form-urlencoded
    X-Dispatcher-Signature: <hex HMAC-SHA256 of the raw request body, key = bounce_key (UTF-8)>

    return_path=<the envelope MAIL FROM, i.e. the per-message VERP address>
    &recipient=<the bounced recipient address>
    &type=hard|soft
    &diagnostic=<an SMTP diagnostic, e.g. "smtp; 550 5.1.1 user unknown"; names no address>
    &message_id=<the Message-ID header of the bounced message, may be empty>

The receiver must verify the signature over the exact bytes received (compare with
`hmac.compare_digest`), match the message by `return_path` (VERP) first and
`message_id` second, and treat a repeated notification as harmless. Any 2xx answer
counts as delivered; the sink records the answer's status on the e-mail
(`bounces` in `/sandbox/emails`) and does not retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from dispatcher.clock import Clock
from dispatcher.sandbox.options import SandboxOptions
from dispatcher.sandbox.records import EmailRecord, Recorder
from dispatcher.sandbox.webhooks import WebhookClient

HARD_REPLY = "550 5.1.1 Recipient address rejected: user unknown"
TEMPFAIL_REPLY = "451 4.7.1 Greylisted, try again later"
_DIAGNOSTIC = {
    "hard": "smtp; 550 5.1.1 user unknown",
    "soft": "smtp; 452 4.2.2 mailbox full",
}


def sign_bounce(body: bytes, key: str) -> str:
    """The X-Dispatcher-Signature of a bounce notification body."""
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


def message_id_of(raw: bytes) -> str | None:
    """The Message-ID header, found without a full MIME parse."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found = _MESSAGE_ID.search(head)
    return found.group(1).decode("ascii", "replace") if found else None


class SinkHandler:
    """aiosmtpd handler hooks plus the bounce notifier."""

    def __init__(
        self,
        options: SandboxOptions,
        recorder: Recorder,
        client: WebhookClient,
        clock: Clock,
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self.options = options
        self.recorder = recorder
        self.client = client
        self.clock = clock
        self.spawn = spawn

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        expected = self.options.smtp_credentials
        if expected is None:
            return AuthResult(success=True)
        if isinstance(auth_data, LoginPassword):
            ok = (
                hmac.compare_digest(auth_data.login, expected[0].encode())
                and hmac.compare_digest(auth_data.password, expected[1].encode())
            )
            return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        # Enforced here rather than with aiosmtpd's auth_required, which warns when TLS is
        # not required too (the sink is loopback-only and has no certificate).
        if self.options.smtp_credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        rule = self.options.email_rule_for(address)
        if rule in ("hard", "tempfail"):
            reply = HARD_REPLY if rule == "hard" else TEMPFAIL_REPLY
            with self.recorder.lock:
                self.recorder.smtp_rejections.append(
                    {"mail_from": envelope.mail_from, "recipient": address, "reply": reply}
                )
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        record = EmailRecord(
            seq=self.recorder.next_seq(),
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            message_id=message_id_of(raw),
            raw=raw,
            received_at=self.clock.now(),
        )
        self.recorder.add_email(record)
        rules = {rcpt: self.options.email_rule_for(rcpt) for rcpt in envelope.rcpt_tos}
        for rcpt, rule in rules.items():
            if rule in ("async_hard", "soft"):
                self.spawn(self._bounce(record, rcpt, "hard" if rule == "async_hard" else "soft"))
        transport = server.transport
        if "drop_after_data" in rules.values() and isinstance(transport, asyncio.Transport):
            transport.abort()  # the reply below goes nowhere: the outcome is unknown to the client
        elif self.options.smtp_latency_ms:
            await asyncio.sleep(self.options.smtp_latency_ms / 1000)
        return "250 2.0.0 OK: queued"

    async def _bounce(self, record: EmailRecord, recipient: str, kind: str) -> None:
        await asyncio.sleep(self.options.callback_delay_ms / 1000)
        fields = {
            "return_path": record.mail_from,
            "recipient": recipient,
            "type": kind,
            "diagnostic": _DIAGNOSTIC[kind],
            "message_id": record.message_id or "",
        }
        entry: dict[str, Any] = {"recipient": recipient, "type": kind}
        if not self.options.bounce_url:
            entry.update(http_status=None, error="no bounce_url configured")
        else:
            body = urlencode(fields).encode()
            headers = {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Dispatcher-Signature": sign_bounce(body, self.options.bounce_key),
            }
            reply = await self.client.raw_post(self.options.bounce_url, body, headers)
            entry.update(http_status=reply.status, error=reply.error)
        with self.recorder.lock:
            record.bounces.append(entry)
            self.recorder.touch(record)


def make_smtp_protocol(handler: SinkHandler, loop: asyncio.AbstractEventLoop, hostname: str) -> SMTP:
    """One SMTP session; AUTH is offered without TLS (loopback sink), required only with credentials."""
    return SMTP(
        handler,
        hostname=hostname,
        ident="dispatcher sandbox SMTP sink",
        auth_require_tls=False,
        authenticator=handler.authenticate,
        loop=loop,
    )
