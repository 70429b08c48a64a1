"""A tiny webhook receiver for tests and benchmarks: records requests, checks signatures.

    receiver = WebhookReceiver(auth_token=sandbox.auth_token)
    await receiver.start()
    receiver.respond("/twilio/voice/answer", "<Response><Say>Hello</Say></Response>")
    ... receiver.url("/twilio/sms/status") ...
    await receiver.wait_for(lambda reqs: len(reqs) >= 2, path="/twilio/sms/status")
    await receiver.stop()

Every request is recorded with its form fields and whether its `X-Twilio-Signature`
validates (official `RequestValidator`) against the URL it was sent to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from twilio.request_validator import RequestValidator

from dispatcher.sandbox.asgi_server import AsgiServer


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    method: str
    path: str
    url: str  # as the sender addressed it (what a signature covers)
    form: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    signature_valid: bool | None  # None: no auth token to check against


@dataclass(frozen=True, slots=True)
class Reply:
    body: str = ""
    status: int = 200
    content_type: str = "text/xml"
    headers: dict[str, str] = field(default_factory=dict)


Responder = Reply | Callable[[ReceivedRequest], Reply]


class WebhookReceiver:
    """An HTTP server on a free loopback port that answers configured replies per path."""

    def __init__(self, auth_token: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.validator = RequestValidator(auth_token) if auth_token else None
        self.requests: list[ReceivedRequest] = []
        self._routes: dict[str, Responder] = {}
        self._server = AsgiServer(self._app, host, port)
        self._changed = asyncio.Condition()

    @property
    def base_url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def respond(self, path: str, body: str | Responder = "", status: int = 200, content_type: str = "text/xml") -> None:
        """Answer requests to `path` with a fixed reply or a function of the request."""
        self._routes[path] = body if not isinstance(body, str) else Reply(body, status, content_type)

    def received(self, path: str | None = None) -> list[ReceivedRequest]:
        return [r for r in self.requests if path is None or r.path == path]

    async def wait_for(
        self, predicate: Callable[[list[ReceivedRequest]], bool], path: str | None = None, max_wait: float = 10.0
    ) -> list[ReceivedRequest]:
        """Wait until `predicate(received(path))` holds; returns those requests."""
        async with asyncio.timeout(max_wait), self._changed:
            await self._changed.wait_for(lambda: predicate(self.received(path)))
        return self.received(path)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        query = request.url.query
        url = self.base_url + request.url.path + (f"?{query}" if query else "")
        form = (
            dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True)) if request.method == "POST" else {}
        )
        signature = request.headers.get("x-twilio-signature")
        valid = None
        if self.validator is not None:
            valid = signature is not None and self.validator.validate(url, form, signature)
        received = ReceivedRequest(
            method=request.method,
            path=request.url.path,
            url=url,
            form=form,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            signature_valid=valid,
        )
        responder = self._routes.get(request.url.path, Reply("", 200, "text/plain"))
        reply = responder(received) if callable(responder) else responder
        async with self._changed:
            self.requests.append(received)
            self._changed.notify_all()
        response = Response(reply.body, status_code=reply.status, media_type=reply.content_type, headers=reply.headers)
        await response(scope, receive, send)
