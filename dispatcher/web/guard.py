"""The outermost guard of the app (pure ASGI): body size limit, a catch-all so that no
request ever gets a 500, and per-endpoint counters.

The body is read here, up to the limit, and replayed to the app: a request over the
limit gets 413 before any handler runs, whether it announces its length or streams.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import psycopg
from sqlalchemy.exc import DataError, SQLAlchemyError

from dispatcher.web.metrics import WebhookMetrics

log = logging.getLogger("dispatcher.web")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


def _result_for(status: int) -> str:
    if status == 403:
        return "forbidden"
    if status == 404:
        return "not_found"
    if status == 413:
        return "too_large"
    if 400 <= status < 500:
        return "bad_request"
    if status >= 500:
        return "error"
    return "ok"


class GuardMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: WebhookMetrics,
                 known_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.known_paths = known_paths
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status_box = [0]
        problem = bad_path(scope)
        if problem is not None:
            # before any handler or query: a NUL byte would reach PostgreSQL as an error
            # that looks like an outage (503); it is the request that is wrong
            await _plain(send, 400, f"bad request: {problem}")
            self._count(scope, 400)
            return
        try:
            body = await self._read_body(scope, receive)
        except _TooLarge:
            await _plain(send, 413, f"request body larger than {self.max_body_bytes} bytes")
            self._count(scope, 413)
            return
        except _Disconnected:
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, replay, tracking_send)
        except Exception as exc:  # the catch-all: never a 500
            # a value the store refuses (NUL in text, out of range) is the request's fault
            # and says nothing about the store's health: 400, never 503
            unavailable = isinstance(exc, SQLAlchemyError | psycopg.Error | OSError | TimeoutError) \
                and not isinstance(exc, DataError | psycopg.DataError)
            status = 503 if unavailable else 400
            log.error("%s %s failed: %s; answered %d", scope.get("method"), scope.get("path"),
                      type(exc).__name__, status, exc_info=exc)
            if status_box[0] == 0:
                status_box[0] = status
                await _plain(send, status, "service temporarily unavailable" if status == 503 else "bad request")
        self._count(scope, status_box[0])

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        raise _TooLarge
                except ValueError:
                    pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _count(self, scope: Scope, status: int) -> None:
        # FastAPI records its own routes in the scope; plain Starlette routes are
        # counted by their (fixed) path; anything else is "other" (bounded labels)
        route = scope.get("route")
        path = scope.get("path", "")
        endpoint = getattr(route, "path", None) or (path if path in self.known_paths else "other")
        state = scope.get("state") or {}
        result = state.get("result") if isinstance(state, dict) else None
        self.metrics.count(endpoint, result or _result_for(status))


#: longer paths are refused (a case id is at most 64 characters, a token 16)
MAX_PATH_CHARS = 2048


def bad_path(scope: Scope) -> str | None:
    """What is wrong with the request's path (control characters, length), or None."""
    path = scope.get("path", "")
    if len(path) > MAX_PATH_CHARS:
        return f"the path is longer than {MAX_PATH_CHARS} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "the path contains control characters (e.g. %00)"
    return None


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass
