"""The sandbox's HTTP API: the Twilio REST resources the SDK uses, and `/sandbox/*`.

Twilio resources (HTTP Basic auth with the sandbox's account SID and auth token):

- `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` — To, From | MessagingServiceSid,
  Body, StatusCallback → 201 and the message JSON
- `GET  .../Messages.json` — filters To, From, DateSent, DateSent<, DateSent> (dates);
  PageSize, Page, PageToken; newest first by DateSent (see `listing`)
- `GET  .../Messages/{Sid}.json`
- `POST .../Calls.json` — To, From, Url | Twiml, Method, StatusCallback,
  StatusCallbackEvent (repeated), MachineDetection → 201 and the call JSON
- `GET  .../Calls.json` — filters To, From, Status, StartTime(<,>), EndTime(<,>); paging;
  newest first by StartTime
- `GET  .../Calls/{Sid}.json`

Sandbox control (no auth; loopback only):

- `GET /sandbox/messages`, `/sandbox/calls`, `/sandbox/emails`, `/sandbox/inbound`: JSON
  lists of what was received, each entry with `count` (duplicates show)
- `POST /sandbox/inbound` `{"from", "to", "body", "url"}`: POST a signed inbound SMS to
  `url`; answers `{"message_sid", "status", "body", "error"}` (the webhook's answer)
- `POST /sandbox/faults` `{"faults": "429:0.1,...", "next": ["reset", ...],
  "drop_callbacks": 0.2}`: change the fault plan / force the next faults / lose a share
  of the status callbacks
- `POST /sandbox/reset`: forget every record
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import socket
import struct
from collections.abc import Callable, Mapping
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.sandbox.faults import CREATED_KINDS, FaultPlan, FaultSpecError
from dispatcher.sandbox.listing import PAGING_PARAMS, date_filters, matches_dates, ordered, page
from dispatcher.sandbox.options import SandboxOptions
from dispatcher.sandbox.provider import API_VERSION, TwilioError, TwilioSimulator, rfc2822
from dispatcher.sandbox.records import CallRecord, MessageRecord

ConnectionLookup = Callable[[Any], asyncio.Transport | None]

_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)
_GSM7_EXT = set("^{}\\[~]|€")


def num_segments(body: str) -> int:
    if all(ch in _GSM7 for ch in body):
        units = sum(2 if ch in _GSM7_EXT else 1 for ch in body)
        single, multi = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
    return 1 if units <= single else -(-units // multi)


def message_json(record: MessageRecord) -> dict[str, Any]:
    base = f"/{API_VERSION}/Accounts/{record.account_sid}/Messages/{record.sid}"
    return {
        "account_sid": record.account_sid,
        "api_version": API_VERSION,
        "body": record.body,
        "date_created": rfc2822(record.date_created),
        "date_sent": rfc2822(record.date_sent),
        "date_updated": rfc2822(record.date_updated),
        "direction": "outbound-api",
        "error_code": record.error_code,
        "error_message": record.error_message,
        "from": record.from_,
        "messaging_service_sid": record.messaging_service_sid,
        "num_media": "0",
        "num_segments": str(num_segments(record.body)),
        "price": None,
        "price_unit": "USD",
        "sid": record.sid,
        "status": record.status,
        "subresource_uris": {"media": f"{base}/Media.json", "feedback": f"{base}/Feedback.json"},
        "to": record.to,
        "uri": f"{base}.json",
    }


def call_json(record: CallRecord) -> dict[str, Any]:
    base = f"/{API_VERSION}/Accounts/{record.account_sid}/Calls/{record.sid}"
    return {
        "account_sid": record.account_sid,
        "annotation": None,
        "answered_by": record.answered_by,
        "api_version": API_VERSION,
        "caller_name": None,
        "date_created": rfc2822(record.date_created),
        "date_updated": rfc2822(record.date_updated),
        "direction": "outbound-api",
        "duration": None if record.duration is None else str(record.duration),
        "end_time": rfc2822(record.end_time),
        "forwarded_from": None,
        "from": record.from_,
        "from_formatted": record.from_,
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": None,
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": record.sid,
        "start_time": rfc2822(record.start_time),
        "status": record.status,
        "subresource_uris": {"recordings": f"{base}/Recordings.json", "events": f"{base}/Events.json"},
        "to": record.to,
        "to_formatted": record.to,
        "trunk_sid": None,
        "uri": f"{base}.json",
    }


class _NoResponse(Response):
    """Sends nothing: the connection is already gone (reset) or the client left (timeout)."""

    def __init__(self) -> None:
        super().__init__(status_code=204)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


def _error(exc: TwilioError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.payload(), status_code=exc.status, headers=dict(headers or {}))


def _http_fault(kind: str, retry_after: int) -> JSONResponse:
    status = int(kind)
    if status == 429:
        return _error(TwilioError(429, 20429, "Too Many Requests"), {"Retry-After": str(retry_after)})
    reason = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Server Error")
    return _error(TwilioError(status, 20000 + status, reason))


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class TwilioApi:
    """Builds the Starlette app for one sandbox: its current options (read per request:
    a test may replace the sandbox's options while it runs, e.g. to add latency), the
    simulator behind it (and its recorder) and a way to find a request's TCP transport
    (for the reset fault)."""

    def __init__(self, options: Callable[[], SandboxOptions], simulator: TwilioSimulator,
                 connections: ConnectionLookup) -> None:
        self._options = options
        self.sim = simulator
        self.connections = connections
        self.stopping = asyncio.Event()

    def app(self) -> ASGIApp:
        """The routes, every answer with a `Date` header from the sandbox's clock."""
        prefix = f"/{API_VERSION}/Accounts/{{account_sid}}"
        routes = Starlette(
            routes=[
                Route(f"{prefix}/Messages.json", self.create_message, methods=["POST"]),
                Route(f"{prefix}/Messages.json", self.list_messages, methods=["GET"]),
                Route(f"{prefix}/Messages/{{sid}}.json", self.fetch_message, methods=["GET"]),
                Route(f"{prefix}/Calls.json", self.create_call, methods=["POST"]),
                Route(f"{prefix}/Calls.json", self.list_calls, methods=["GET"]),
                Route(f"{prefix}/Calls/{{sid}}.json", self.fetch_call, methods=["GET"]),
                Route("/sandbox/messages", self.sandbox_messages, methods=["GET"]),
                Route("/sandbox/calls", self.sandbox_calls, methods=["GET"]),
                Route("/sandbox/emails", self.sandbox_emails, methods=["GET"]),
                Route("/sandbox/inbound", self.sandbox_inbound_list, methods=["GET"]),
                Route("/sandbox/inbound", self.sandbox_inbound, methods=["POST"]),
                Route("/sandbox/faults", self.sandbox_faults, methods=["POST"]),
                Route("/sandbox/drain", self.sandbox_drain, methods=["POST"]),
                Route("/sandbox/reset", self.sandbox_reset, methods=["POST"]),
                Route("/sandbox/health", self.health, methods=["GET"]),
            ]
        )

        async def dated(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await routes(scope, receive, send)
                return

            async def send_dated(message: Message) -> None:
                if message["type"] == "http.response.start":
                    # Twilio's clock, as a client sees it (RFC 7231 IMF-fixdate): a
                    # client measures its skew from this (see `clock_offset_seconds`).
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                    headers.append((b"date", format_datetime(self.sim.now(), usegmt=True).encode()))
                    message = {**message, "headers": headers}
                await send(message)

            await routes(scope, receive, send_dated)

        return dated

    # -- guards ------------------------------------------------------------------------

    async def _guard(self, request: Request) -> Response | None:
        """Latency, then authentication; returns an error response or None."""
        options = self._options()
        if options.latency_ms:
            await asyncio.sleep(options.latency_ms / 1000)
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        user = password = ""
        if scheme.lower() == "basic":
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                user, _, password = base64.b64decode(value).decode().partition(":")
        if not (
            hmac.compare_digest(user.encode(), options.account_sid.encode())
            and hmac.compare_digest(password.encode(), options.auth_token.encode())
        ):
            return _error(TwilioError(401, 20003, "Authenticate"), {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        if request.path_params.get("account_sid") != options.account_sid:
            return _error(TwilioError(404, 20404, f"The requested resource {request.url.path} was not found"))
        return None

    async def _reset_connection(self, request: Request) -> Response:
        """Close the client's TCP connection with a RST, answering nothing."""
        transport = self.connections(request.scope.get("client"))
        if transport is None:  # not served by the sandbox's protocol class: cannot reset
            raise RuntimeError("sandbox reset fault: connection transport not found")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        await _wait_disconnect(request.receive)
        return _NoResponse()

    async def _hold(self, request: Request, response: Response) -> Response:
        """Hold the answer back until the client gives up (or the hold time passes)."""
        waiter = asyncio.ensure_future(_wait_disconnect(request.receive))
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, stopping}, timeout=self._options().timeout_hold_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (waiter, stopping):
                task.cancel()
            await asyncio.gather(waiter, stopping, return_exceptions=True)
        if waiter in done:
            return _NoResponse()
        return response

    async def _create(self, request: Request, create: Callable[[dict[str, list[str]], str | None], Any],
                      render: Callable[[Any], dict[str, Any]]) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        form = parse_qs((await request.body()).decode(), keep_blank_values=True)
        fault = self.sim.faults.draw()
        if fault == "reset_before":
            return await self._reset_connection(request)
        if fault is not None and fault not in CREATED_KINDS:
            return _http_fault(fault, self._options().retry_after_s)
        try:
            record = create(form, fault)
        except TwilioError as exc:
            return _error(exc)
        response = JSONResponse(render(record), status_code=201)
        if fault == "reset":
            return await self._reset_connection(request)
        if fault == "timeout":
            return await self._hold(request, response)
        return response

    # -- Twilio resources --------------------------------------------------------------

    async def create_message(self, request: Request) -> Response:
        return await self._create(request, self.sim.create_message, message_json)

    async def create_call(self, request: Request) -> Response:
        return await self._create(request, self.sim.create_call, call_json)

    async def fetch_message(self, request: Request) -> Response:
        return await self._fetch(request, self.sim.recorder.messages_by_sid, message_json)

    async def fetch_call(self, request: Request) -> Response:
        return await self._fetch(request, self.sim.recorder.calls_by_sid, call_json)

    async def _fetch(
        self, request: Request, index: Mapping[str, Any], render: Callable[[Any], dict[str, Any]]
    ) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        with self.sim.recorder.lock:
            record = index.get(request.path_params["sid"])
            payload = None if record is None else render(record)
        if payload is None:
            return _error(TwilioError(404, 20404, f"The requested resource {request.url.path} was not found"))
        return JSONResponse(payload)

    async def list_messages(self, request: Request) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        query = request.query_params
        to, from_ = query.get("To"), query.get("From")
        try:
            sent = date_filters(query, "DateSent")

            def keep(m: MessageRecord) -> bool:
                return (not to or m.to == to) and (not from_ or m.from_ == from_) and matches_dates(m.date_sent, sent)

            with self.sim.recorder.lock:
                records = ordered((m for m in self.sim.recorder.messages if keep(m)), lambda m: m.date_sent,
                                  lambda m: (m.date_created, m.seq), undated_first=self._options().undated_first)
                body = self._page(request, "messages", records, message_json)
        except TwilioError as exc:
            return _error(exc)
        return JSONResponse(body)

    async def list_calls(self, request: Request) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        query = request.query_params
        to, from_, status = query.get("To"), query.get("From"), query.get("Status")
        try:
            started = date_filters(query, "StartTime")
            ended = date_filters(query, "EndTime")

            def keep(c: CallRecord) -> bool:
                return (
                    (not to or c.to == to)
                    and (not from_ or c.from_ == from_)
                    and (not status or c.status == status)
                    and matches_dates(c.start_time, started)
                    and matches_dates(c.end_time, ended)
                )

            with self.sim.recorder.lock:
                records = ordered((c for c in self.sim.recorder.calls if keep(c)), lambda c: c.start_time,
                                  lambda c: (c.date_created, c.seq), undated_first=self._options().undated_first)
                body = self._page(request, "calls", records, call_json)
        except TwilioError as exc:
            return _error(exc)
        return JSONResponse(body)

    @staticmethod
    def _page(request: Request, key: str, records: list[Any], render: Callable[[Any], dict[str, Any]]
              ) -> dict[str, Any]:
        query = request.query_params
        filters = [(k, v) for k, v in query.multi_items() if k not in PAGING_PARAMS]
        return page(query, filters, request.url.path, key, records, lambda r: str(r.sid),
                    lambda items: [render(r) for r in items])

    # -- sandbox control ---------------------------------------------------------------

    async def sandbox_messages(self, request: Request) -> Response:
        return JSONResponse(self.sim.recorder.message_snapshots())

    async def sandbox_calls(self, request: Request) -> Response:
        return JSONResponse(self.sim.recorder.call_snapshots())

    async def sandbox_emails(self, request: Request) -> Response:
        return JSONResponse(self.sim.recorder.email_snapshots())

    async def sandbox_inbound_list(self, request: Request) -> Response:
        with self.sim.recorder.lock:
            return JSONResponse([dict(i) for i in self.sim.recorder.inbound])

    async def sandbox_inbound(self, request: Request) -> Response:
        try:
            payload = json.loads(await request.body())
            args = {k: str(payload[k]) for k in ("from", "to", "body", "url")}
        except (ValueError, KeyError, TypeError):
            return JSONResponse(
                {"error": 'send JSON {"from": "+86...", "to": "+1...", "body": "...", "url": "http://.../twilio/sms/inbound"}'},
                status_code=400,
            )
        result = await self.sim.inbound(args["from"], args["to"], args["body"], args["url"])
        return JSONResponse(result)

    async def sandbox_faults(self, request: Request) -> Response:
        try:
            payload = json.loads(await request.body() or b"{}")
            if "faults" in payload:
                self.sim.faults.plan = FaultPlan.parse(str(payload["faults"]))
            if "drop_callbacks" in payload:
                ratio = float(payload["drop_callbacks"])
                if not 0.0 <= ratio <= 1.0:
                    raise ValueError("drop_callbacks must be between 0 and 1")
                self.sim.drop_callback_ratio = ratio
            self.sim.faults.force(*[str(k) for k in payload.get("next", [])])
        except (ValueError, FaultSpecError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"faults": str(self.sim.faults.plan), "next": self.sim.faults.forced,
                             "drop_callbacks": self.sim.drop_callback_ratio})

    async def sandbox_drain(self, request: Request) -> Response:
        """Wait until every callback, call flow and bounce in flight is done:
        `{"max_wait": seconds}` (default 10); 504 if they are still running then."""
        try:
            payload = json.loads(await request.body() or b"{}")
            max_wait = float(payload.get("max_wait", 10.0))
            if not 0 < max_wait <= 600:
                raise ValueError
        except (ValueError, TypeError, AttributeError):
            return JSONResponse({"error": 'send JSON {"max_wait": seconds} (0 < seconds <= 600)'}, status_code=400)
        try:
            await self.sim.drain(max_wait)
        except TimeoutError:
            return JSONResponse({"idle": False, "error": f"still busy after {max_wait:g} s"}, status_code=504)
        return JSONResponse({"idle": True})

    async def sandbox_reset(self, request: Request) -> Response:
        self.sim.recorder.reset()
        return JSONResponse({"reset": True})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})
