"""The simulated provider behind the HTTP layer: message and call lifecycles, callbacks.

SMS: created `queued` (`accepted` with a messaging service only), then after
`callback_delay_ms` `sent`, then `delivered` — or `undelivered` (ErrorCode 30003/30005)
or `failed` (30008) for the configured `fail_ratio` and always (30003) for
`undeliverable_numbers`.

Calls: `queued` → `initiated` (dialled: StartTime set) → `ringing` → answered
(`in-progress`, with `AnsweredBy` when `MachineDetection` was asked for) → the TwiML is
played (see `voice.py`) → `completed` with `CallDuration`; or `busy` / `no-answer` /
`failed` per the callee's `CallBehaviour` (and, for callees without an explicit
behaviour, `fail_ratio`). Status callbacks follow `StatusCallbackEvent` (none given:
only the final one).

Every callback is form-encoded and signed with `X-Twilio-Signature`; with
`duplicate_ratio` some are delivered twice, with `drop_callback_ratio` some are lost
(logged with `dropped`), with `shuffle_callbacks` a resource's callbacks are held back
and delivered in random order after its last transition. Message bodies are stored as
Twilio would store them (Smart Encoding, link shortening: `_rewrite_body`). Records are
stamped on the sandbox's clock (`clock_offset_seconds` skews it); with a records file,
`resume` carries on after a restart with what was under way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
import re
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from email.utils import format_datetime
from typing import Any

from dispatcher.clock import Clock
from dispatcher.sandbox.faults import FaultInjector
from dispatcher.sandbox.options import CallBehaviour, SandboxOptions
from dispatcher.sandbox.records import CallRecord, MessageRecord, Recorder, new_sid
from dispatcher.sandbox.voice import CallPlayer
from dispatcher.sandbox.webhooks import WebhookClient

API_VERSION = "2010-04-01"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_URL = re.compile(r"https?://\S+")
#: Smart Encoding: Unicode look-alikes and the GSM-7 characters Twilio puts instead
SMART_ENCODING = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"',
    "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u00a0": " ", "\u2009": " ", "\u2026": "...",
    "\u02bc": "'", "\uff0c": ",", "\u2022": "-",
})
MAX_BODY_CHARS = 1600
CALL_EVENTS = ("initiated", "ringing", "answered", "completed")

_UNDELIVERED = {30003: "Unreachable destination handset", 30005: "Unknown destination handset"}
_FAILED = {30008: "Unknown error"}


class TwilioError(Exception):
    """An error answer of the API, shaped like Twilio's."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def payload(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


def rfc2822(value: dt.datetime | None) -> str | None:
    return None if value is None else format_datetime(value.astimezone(dt.UTC))


class TwilioSimulator:
    """State and behaviour of the simulated Twilio account."""

    def __init__(self, options: SandboxOptions, recorder: Recorder, client: WebhookClient, clock: Clock) -> None:
        self.options = options
        self.recorder = recorder
        self.client = client
        self.clock = clock
        seed = options.seed
        self.faults = FaultInjector(options.fault_plan, self._rng(seed, "faults"))
        self._outcomes = self._rng(seed, "outcomes")
        self._callbacks = self._rng(seed, "callbacks")
        self._drops = self._rng(seed, "drops")
        #: share of status callbacks lost (a fault; `POST /sandbox/faults` may change it)
        self.drop_callback_ratio = options.drop_callback_ratio
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _rng(seed: int | None, stream: str) -> random.Random:
        return random.Random(f"{seed}:{stream}") if seed is not None else random.Random()

    def now(self) -> dt.datetime:
        return self.clock.now().astimezone(dt.UTC)

    # -- background work ---------------------------------------------------------------

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    async def drain(self, max_wait: float = 10.0) -> None:
        """Wait until every lifecycle, callback and bounce in flight has finished."""
        async with asyncio.timeout(max_wait):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- messages ----------------------------------------------------------------------

    def create_message(self, form: Mapping[str, list[str]], fault: str | None) -> MessageRecord:
        to = _one(form, "To")
        from_ = _one(form, "From")
        service = _one(form, "MessagingServiceSid")
        body = _one(form, "Body")
        if not to:
            raise TwilioError(400, 21604, "A 'To' phone number is required.")
        if not from_ and not service:
            raise TwilioError(400, 21603, "A 'From' phone number is required.")
        if not body and not _one(form, "MediaUrl"):
            raise TwilioError(400, 21602, "Message body is required.")
        if not E164.match(to) or to in self.options.invalid_numbers:
            raise TwilioError(400, 21211, "Invalid 'To' Phone Number")
        if len(body or "") > MAX_BODY_CHARS:
            raise TwilioError(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        body = self._rewrite_body(body or "", service, _one(form, "SmartEncoded"), _one(form, "ShortenUrls"))
        now = self.now()
        record = MessageRecord(
            seq=self.recorder.next_seq(),
            sid=new_sid("SM"),
            account_sid=self.options.account_sid,
            to=to,
            from_=from_,
            messaging_service_sid=service,
            body=body,
            status_callback=_one(form, "StatusCallback"),
            status="queued" if from_ else "accepted",
            date_created=now,
            date_updated=now,
            fault=fault,
        )
        self.recorder.add_message(record)
        self.spawn(self._message_lifecycle(record))
        return record

    def _rewrite_body(self, body: str, service: str | None, smart: str | None, shorten: str | None) -> str:
        """What Twilio stores and sends: Smart Encoding replaces Unicode look-alikes
        (asked for, or the Messaging Service's setting unless `SmartEncoded=false`), link
        shortening rewrites URLs (`ShortenUrls=true`, Messaging Services only)."""
        if (smart or "").lower() == "true" or (smart is None and service and self.options.smart_encoding):
            body = body.translate(SMART_ENCODING)
        if (shorten or "").lower() == "true":
            if not service:
                raise TwilioError(400, 21602, "ShortenUrls requires a MessagingServiceSid.")
            body = _URL.sub(lambda m: "https://lnk.sandbox.test/" + hashlib.sha1(m.group().encode()).hexdigest()[:8],
                            body)
        return body

    def _message_outcome(self, record: MessageRecord) -> tuple[str, int | None, str | None]:
        if record.to in self.options.undeliverable_numbers:
            return "undelivered", 30003, _UNDELIVERED[30003]
        if self.options.fail_ratio and self._outcomes.random() < self.options.fail_ratio:
            code = self._outcomes.choice([30003, 30005, 30008])
            if code in _FAILED:
                return "failed", code, _FAILED[code]
            return "undelivered", code, _UNDELIVERED[code]
        return "delivered", None, None

    async def _message_lifecycle(self, record: MessageRecord) -> None:
        status, code, message = self._message_outcome(record)
        transitions = ["failed"] if status == "failed" else ["sent", status]
        held: list[dict[str, str]] = []
        for step in transitions:
            await asyncio.sleep(self.options.callback_delay_ms / 1000)
            with self.recorder.lock:
                now = self.now()
                record.status = step
                record.date_updated = now
                if step == "sent" and record.date_sent is None:
                    record.date_sent = now
                if step in ("failed", "undelivered"):
                    record.error_code, record.error_message = code, message
                self.recorder.touch(record)
            if record.status_callback:
                params = self._message_callback(record, step)
                if self.options.shuffle_callbacks:
                    held.append(params)
                else:
                    await self._deliver(record.callbacks, record.status_callback, params)
        if held and record.status_callback:
            self._callbacks.shuffle(held)
            for params in held:
                await self._deliver(record.callbacks, record.status_callback, params)
        self.recorder.touch(record)  # with its callbacks

    def _message_callback(self, record: MessageRecord, status: str) -> dict[str, str]:
        params = {
            "AccountSid": record.account_sid,
            "ApiVersion": API_VERSION,
            "From": record.from_ or "",
            "To": record.to,
            "MessageSid": record.sid,
            "SmsSid": record.sid,
            "MessageStatus": status,
            "SmsStatus": status,
        }
        if record.messaging_service_sid:
            params["MessagingServiceSid"] = record.messaging_service_sid
        if status in ("failed", "undelivered") and record.error_code is not None:
            params["ErrorCode"] = str(record.error_code)
        return params

    # -- calls -------------------------------------------------------------------------

    def create_call(self, form: Mapping[str, list[str]], fault: str | None) -> CallRecord:
        to = _one(form, "To")
        from_ = _one(form, "From")
        url = _one(form, "Url")
        twiml = _one(form, "Twiml")
        if not to:
            raise TwilioError(400, 21201, "No 'To' number is specified")
        if not from_:
            raise TwilioError(400, 21213, "No 'From' number is specified")
        if not url and not twiml and not _one(form, "ApplicationSid"):
            raise TwilioError(400, 21205, "Url parameter is required.")
        if not E164.match(to) or to in self.options.invalid_numbers:
            raise TwilioError(400, 21211, "Invalid 'To' Phone Number")
        events = tuple(e.strip().lower() for e in form.get("StatusCallbackEvent", []) if e.strip())
        now = self.now()
        record = CallRecord(
            seq=self.recorder.next_seq(),
            sid=new_sid("CA"),
            account_sid=self.options.account_sid,
            to=to,
            from_=from_,
            url=url,
            twiml=twiml,
            method=(_one(form, "Method") or "POST").upper(),
            status_callback=_one(form, "StatusCallback"),
            status_callback_events=events,
            machine_detection=_one(form, "MachineDetection"),
            status="queued",
            date_created=now,
            date_updated=now,
            fault=fault,
        )
        self.recorder.add_call(record)
        self.spawn(self._call_lifecycle(record))
        return record

    def _call_behaviour(self, record: CallRecord) -> CallBehaviour:
        behaviour, explicit = self.options.behaviour_for(record.to)
        if not explicit and self.options.fail_ratio and self._outcomes.random() < self.options.fail_ratio:
            behaviour = replace(behaviour, outcome=self._outcomes.choice(["no-answer", "busy", "failed"]))
        return behaviour

    async def _call_lifecycle(self, record: CallRecord) -> None:
        behaviour = self._call_behaviour(record)
        delay = self.options.callback_delay_ms / 1000
        progress = _CallProgress(self, record)
        await asyncio.sleep(delay)
        if behaviour.outcome == "failed":
            await progress.final("failed")
            return
        with self.recorder.lock:
            record.start_time = self.now()  # dialled (Twilio: "empty if not yet dialed")
        await progress.step("initiated", "initiated")
        await asyncio.sleep(delay)
        await progress.step("ringing", "ringing")
        await asyncio.sleep(delay)
        if behaviour.outcome in ("busy", "no-answer"):
            with self.recorder.lock:
                record.end_time = self.now()
            await progress.final(behaviour.outcome)
            return
        with self.recorder.lock:
            answered = self.now()
            if record.machine_detection:
                record.answered_by = behaviour.answered_by
        await progress.step("in-progress", "answered")
        base = self._call_params(record, "in-progress")
        player = CallPlayer(record, behaviour, self.client, base, max_documents=self.options.max_twiml_documents,
                            now=self.now)
        seconds = await player.play()
        with self.recorder.lock:
            record.duration = behaviour.talk_seconds if behaviour.talk_seconds is not None else seconds
            record.end_time = answered + dt.timedelta(seconds=record.duration)
        await progress.final("completed")

    def resume(self) -> None:
        """After a restart with kept records: carry on with what was under way when the
        sandbox stopped (a provider's calls and deliveries go on while its API is down)."""
        with self.recorder.lock:
            messages = [m for m in self.recorder.messages if m.status in ("queued", "accepted", "sending", "sent")]
            calls = [c for c in self.recorder.calls if c.status in ("queued", "initiated", "ringing", "in-progress")]
        for message in messages:
            self.spawn(self._message_lifecycle(message))
        for call in calls:
            if call.status == "in-progress":
                with self.recorder.lock:
                    call.duration = call.duration or 0
                    call.end_time = self.now()
                self.spawn(_CallProgress(self, call).final("completed"))
            else:
                self.spawn(self._call_lifecycle(call))

    def _call_params(self, record: CallRecord, status: str) -> dict[str, str]:
        params = {
            "AccountSid": record.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": record.sid,
            "CallStatus": status,
            "Called": record.to,
            "Caller": record.from_,
            "Direction": "outbound-api",
            "From": record.from_,
            "To": record.to,
        }
        if record.answered_by:
            params["AnsweredBy"] = record.answered_by
        return params

    # -- inbound -----------------------------------------------------------------------

    async def inbound(self, from_: str, to: str, body: str, url: str) -> dict[str, Any]:
        """POST a signed inbound SMS to `url`, as Twilio does for a reply; returns its answer."""
        sid = new_sid("SM")
        params = {
            "AccountSid": self.options.account_sid,
            "ApiVersion": API_VERSION,
            "Body": body,
            "From": from_,
            "MessageSid": sid,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "SmsStatus": "received",
            "To": to,
        }
        reply = await self.client.signed(url, params)
        result = {"message_sid": sid, "status": reply.status, "body": reply.body, "error": reply.error}
        with self.recorder.lock:
            self.recorder.inbound.append(
                {"from": from_, "to": to, "body": body, "url": url, "message_sid": sid,
                 "status": reply.status, "response": reply.body, "error": reply.error}
            )
        return result

    # -- delivery ----------------------------------------------------------------------

    async def _deliver(self, log: list[dict[str, Any]], url: str, params: dict[str, str]) -> None:
        status = params.get("MessageStatus") or params.get("CallStatus")
        if self.drop_callback_ratio and self._drops.random() < self.drop_callback_ratio:
            with self.recorder.lock:
                log.append({"status": status, "http_status": None, "error": "dropped (fault)", "dropped": True})
            return
        copies = 2 if self.options.duplicate_ratio and self._callbacks.random() < self.options.duplicate_ratio else 1
        for _ in range(copies):
            reply = await self.client.signed(url, params)
            with self.recorder.lock:
                log.append({"status": status, "http_status": reply.status, "error": reply.error})


class _CallProgress:
    """Status transitions of one call and the callbacks its StatusCallbackEvent asks for."""

    def __init__(self, sim: TwilioSimulator, record: CallRecord) -> None:
        self.sim = sim
        self.record = record
        self.sequence = 0
        self.held: list[dict[str, str]] = []

    def _wants(self, event: str) -> bool:
        events = self.record.status_callback_events
        return bool(self.record.status_callback) and (event in events or (not events and event == "completed"))

    async def step(self, status: str, event: str) -> None:
        with self.sim.recorder.lock:
            self.record.status = status
            self.record.date_updated = self.sim.now()
            self.sim.recorder.touch(self.record)
        if self._wants(event):
            await self._emit(self.sim._call_params(self.record, status))

    async def final(self, status: str) -> None:
        with self.sim.recorder.lock:
            self.record.status = status
            self.record.date_updated = self.sim.now()
            self.sim.recorder.touch(self.record)
        if self._wants("completed"):
            params = self.sim._call_params(self.record, status)
            duration = str(self.record.duration or 0)
            params.update(CallDuration=duration, Duration=str(-(-int(duration) // 60)))
            await self._emit(params)
        if self.held and self.record.status_callback:
            self.sim._callbacks.shuffle(self.held)
            for params in self.held:
                await self.sim._deliver(self.record.callbacks, self.record.status_callback, params)
        self.sim.recorder.touch(self.record)  # with its callbacks, spoken texts and keys

    async def _emit(self, params: dict[str, str]) -> None:
        assert self.record.status_callback
        params.update(
            CallbackSource="call-progress-events",
            SequenceNumber=str(self.sequence),
            Timestamp=rfc2822(self.sim.now()) or "",
        )
        self.sequence += 1
        if self.sim.options.shuffle_callbacks:
            self.held.append(params)
        else:
            await self.sim._deliver(self.record.callbacks, self.record.status_callback, params)


def _one(form: Mapping[str, list[str]], key: str) -> str | None:
    values = form.get(key)
    return values[-1] if values else None
