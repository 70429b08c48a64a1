"""What the sandbox received: messages, calls, e-mails, inbound simulations.

Records are mutated on the sandbox's event loop and read from anywhere (tests, the
demo, benchmarks in another thread), so every access goes through one lock and readers
get plain-dict snapshots. A snapshot carries `count`: how many records share the same
identity — (to, body) for SMS, (to, url) for calls, Message-ID for e-mails — so a
message that reached the provider twice shows up as `count == 2`.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import secrets
import threading
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass
class MessageRecord:
    seq: int
    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None
    status: str
    date_created: dt.datetime
    date_updated: dt.datetime
    date_sent: dt.datetime | None = None
    error_code: int | None = None
    error_message: str | None = None
    fault: str | None = None  # injected fault after which it was created (timeout, reset)
    callbacks: list[dict[str, Any]] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "to": self.to,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "body": self.body,
            "status": self.status,
            "status_callback": self.status_callback,
            "error_code": self.error_code,
            "date_created": _iso(self.date_created),
            "date_sent": _iso(self.date_sent),
            "fault": self.fault,
            "callbacks": [dict(c) for c in self.callbacks],
        }


@dataclass
class CallRecord:
    seq: int
    sid: str
    account_sid: str
    to: str
    from_: str
    url: str | None
    twiml: str | None
    method: str
    status_callback: str | None
    status_callback_events: tuple[str, ...]
    machine_detection: str | None
    status: str
    date_created: dt.datetime
    date_updated: dt.datetime
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    duration: int | None = None
    answered_by: str | None = None
    fault: str | None = None
    spoken: list[str] = field(default_factory=list)  # every <Say> text, in order
    digits: list[str] = field(default_factory=list)  # every keypress sent to a <Gather>
    dialed: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)  # URLs the TwiML was fetched from
    errors: list[str] = field(default_factory=list)
    callbacks: list[dict[str, Any]] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "to": self.to,
            "from": self.from_,
            "url": self.url,
            "status": self.status,
            "answered_by": self.answered_by,
            "duration": self.duration,
            "status_callback": self.status_callback,
            "status_callback_events": list(self.status_callback_events),
            "machine_detection": self.machine_detection,
            "date_created": _iso(self.date_created),
            "fault": self.fault,
            "spoken": list(self.spoken),
            "digits": list(self.digits),
            "dialed": list(self.dialed),
            "documents": list(self.documents),
            "errors": list(self.errors),
            "callbacks": [dict(c) for c in self.callbacks],
        }


def decode_email(raw: bytes) -> tuple[EmailMessage, str | None, str | None]:
    """The parsed message and its text and HTML bodies (None when absent)."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    texts: list[str | None] = []
    for kind in ("plain", "html"):
        part = message.get_body(preferencelist=(kind,))
        texts.append(None if part is None or part.get_content_type() != f"text/{kind}" else part.get_content())
    return message, texts[0], texts[1]


@dataclass
class EmailRecord:
    """One accepted e-mail. The MIME parse is done on first access, not on receipt:
    parsing with the modern e-mail policy costs milliseconds, and most records are only
    counted."""

    seq: int
    mail_from: str  # the envelope sender (MAIL FROM), i.e. the VERP return path
    rcpt_tos: list[str]
    message_id: str | None
    raw: bytes
    received_at: dt.datetime
    bounces: list[dict[str, Any]] = field(default_factory=list)
    _parsed: tuple[str | None, list[tuple[str, str]], str | None, str | None] | None = field(
        default=None, repr=False, compare=False)

    def _parse(self) -> tuple[str | None, list[tuple[str, str]], str | None, str | None]:
        if self._parsed is None:
            message, text, html = decode_email(self.raw)
            self._parsed = (message["Subject"], [(k, str(v)) for k, v in message.items()], text, html)
        return self._parsed

    @property
    def subject(self) -> str | None:
        return self._parse()[0]

    @property
    def headers(self) -> list[tuple[str, str]]:  # decoded, in order
        return self._parse()[1]

    @property
    def text(self) -> str | None:
        return self._parse()[2]

    @property
    def html(self) -> str | None:
        return self._parse()[3]

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)

    def snapshot(self) -> dict[str, Any]:
        return {
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "message_id": self.message_id,
            "subject": self.subject,
            "headers": {k: v for k, v in self.headers},
            "text": self.text,
            "html": self.html,
            "size": len(self.raw),
            "received_at": _iso(self.received_at),
            "bounces": [dict(b) for b in self.bounces],
        }


class RecordSink(Protocol):
    """Where record states are kept beyond the process (`record_file.RecordFile`)."""

    def write(self, record: MessageRecord | CallRecord | EmailRecord) -> None: ...

    def truncate(self) -> None: ...


class Recorder:
    """All records of one sandbox, guarded by one lock; with a sink, every new record and
    every `touch` is written through to it."""

    def __init__(self, sink: RecordSink | None = None) -> None:
        self.sink = sink
        self.lock = threading.RLock()
        self._seq = 0
        self.messages: list[MessageRecord] = []
        self.calls: list[CallRecord] = []
        self.emails: list[EmailRecord] = []
        self.smtp_rejections: list[dict[str, Any]] = []
        self.inbound: list[dict[str, Any]] = []
        self.messages_by_sid: dict[str, MessageRecord] = {}
        self.calls_by_sid: dict[str, CallRecord] = {}

    def next_seq(self) -> int:
        with self.lock:
            self._seq += 1
            return self._seq

    def add_message(self, record: MessageRecord) -> None:
        with self.lock:
            self.messages.append(record)
            self.messages_by_sid[record.sid] = record
            self.touch(record)

    def add_call(self, record: CallRecord) -> None:
        with self.lock:
            self.calls.append(record)
            self.calls_by_sid[record.sid] = record
            self.touch(record)

    def add_email(self, record: EmailRecord) -> None:
        with self.lock:
            self.emails.append(record)
            self.touch(record)

    def touch(self, record: MessageRecord | CallRecord | EmailRecord) -> None:
        """Keep the record's current state (after a change), if there is a sink."""
        if self.sink is not None:
            with self.lock:
                self.sink.write(record)

    def restore(self, records: list[MessageRecord | CallRecord | EmailRecord]) -> None:
        """Take back records kept by an earlier run (no write-through)."""
        with self.lock:
            for record in records:
                if isinstance(record, MessageRecord):
                    self.messages.append(record)
                    self.messages_by_sid[record.sid] = record
                elif isinstance(record, CallRecord):
                    self.calls.append(record)
                    self.calls_by_sid[record.sid] = record
                else:
                    self.emails.append(record)
                self._seq = max(self._seq, record.seq)

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.calls.clear()
            self.emails.clear()
            self.smtp_rejections.clear()
            self.inbound.clear()
            self.messages_by_sid.clear()
            self.calls_by_sid.clear()
            if self.sink is not None:
                self.sink.truncate()

    # -- snapshots --------------------------------------------------------------------

    def message_snapshots(self) -> list[dict[str, Any]]:
        with self.lock:
            counts = Counter((m.to, m.body) for m in self.messages)
            return [{**m.snapshot(), "count": counts[(m.to, m.body)]} for m in self.messages]

    def call_snapshots(self) -> list[dict[str, Any]]:
        with self.lock:
            counts = Counter((c.to, c.url or c.twiml) for c in self.calls)
            return [{**c.snapshot(), "count": counts[(c.to, c.url or c.twiml)]} for c in self.calls]

    def email_snapshots(self) -> list[dict[str, Any]]:
        with self.lock:
            counts = Counter(e.message_id for e in self.emails)
            return [{**e.snapshot(), "count": counts[e.message_id]} for e in self.emails]
