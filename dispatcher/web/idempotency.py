"""`Idempotency-Key` on every POST of the API (SPEC section 14), in one place.

Stripe's semantics: the first answer to a POST with a key is stored with the key, per
caller, for 24 hours (`KEY_LIFETIME`); a retry with the same key and the same request
(method, path and body) gets that answer again, byte for byte, with the header
`Idempotent-Replayed: true`, and does nothing else; the same key with another request is
422; a retry while the first is still being answered is 409 (retry shortly). A POST
without the header works as before. Answers that say nothing about the request are not
kept, so a retry runs again: 401 (no valid token), 409, and 5xx.

The caller is the holder of the `Authorization` header (its SHA-256: tokens are never
stored), so two people's keys never meet. The key row is written in its own committed
transaction before the handler runs: that is what makes a concurrent duplicate see it.
Expired keys of the caller are deleted when they make a new one, everyone's by the
daemon's retention job.

Hand-rolled as a small ASGI middleware: the idempotency packages for FastAPI keep their
keys in memory or Redis; ours must live in the store the answers change, on both SQLite
and PostgreSQL, and use the injected clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from dispatcher.clock import Clock
from dispatcher.store import repository
from dispatcher.store.tables import idempotency_keys_t

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HEADER = b"idempotency-key"
KEY_LIFETIME = dt.timedelta(hours=24)
KEY_MAX = 255
#: answers not kept (see the module docstring)
_NOT_KEPT = frozenset({401, 403, 409})


def _caller(scope: Scope) -> str:
    auth = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
    return hashlib.sha256(auth).hexdigest()


def _fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


class IdempotencyStore:
    """The `idempotency_keys` table."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def begin(self, caller: str, key: str, method: str, path: str, fingerprint: str) -> Any:
        """Take the key for this request: None when it is new (the caller answers and
        then `finish`es or `abandon`s), else the stored row (an answer or in progress)."""
        now = self.clock.now()
        t = idempotency_keys_t.c
        with self.engine.begin() as conn:
            conn.execute(delete(idempotency_keys_t).where(t.principal == caller, t.expires_at <= now))
            taken = conn.execute(
                repository.dialect_insert(conn, idempotency_keys_t)
                .values(principal=caller, key=key, method=method, path=path[:512], body_hash=fingerprint,
                        created_at=now, expires_at=now + KEY_LIFETIME)
                .on_conflict_do_nothing(index_elements=[t.principal, t.key])
                .returning(t.key)
            ).first()
            if taken is not None:
                return None
            return conn.execute(select(idempotency_keys_t).where(t.principal == caller, t.key == key)).one()

    def finish(self, caller: str, key: str, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        stored = json.dumps({"headers": headers, "body": body.decode("utf-8", "surrogateescape")},
                            ensure_ascii=False)
        t = idempotency_keys_t.c
        with self.engine.begin() as conn:
            conn.execute(update(idempotency_keys_t).where(t.principal == caller, t.key == key)
                         .values(status=status, response=stored))

    def abandon(self, caller: str, key: str) -> None:
        t = idempotency_keys_t.c
        with self.engine.begin() as conn:
            conn.execute(delete(idempotency_keys_t).where(t.principal == caller, t.key == key))


async def _json(send: Send, status: int, payload: dict[str, Any],
                extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


class IdempotencyMiddleware:
    """ASGI middleware applying the store above to `POST /api/...` with the header."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, engine: Engine,
                 clock: Clock) -> None:
        self.app = app
        self.store = IdempotencyStore(engine, clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope.get("headers", ()) if k == HEADER), None)
        if raw is None:
            await self.app(scope, receive, send)
            return
        key = raw.decode("latin-1").strip()
        if not key or len(key) > KEY_MAX or not key.isprintable():
            await _json(send, 400, {"error": f"Idempotency-Key: 1 to {KEY_MAX} printable characters, e.g. a UUID"})
            return
        body = await _read_body(receive)
        caller, method, path = _caller(scope), scope["method"], scope["path"]
        fingerprint = _fingerprint(method, path + "?" + scope.get("query_string", b"").decode("latin-1"), body)
        row = await run_in_threadpool(self.store.begin, caller, key, method, path, fingerprint)
        if row is not None:
            await self._answer_again(row, fingerprint, send)
            return
        await self._first(scope, body, send, caller, key)

    async def _answer_again(self, row: Any, fingerprint: str, send: Send) -> None:
        if row.body_hash != fingerprint:
            await _json(send, 422, {"error": "this Idempotency-Key was used with another request (method, path or"
                                             " body); use a new key for a new request"})
            return
        if row.status is None:
            await _json(send, 409, {"error": "a request with this Idempotency-Key is still being answered;"
                                             " retry in a moment"}, ((b"retry-after", b"1"),))
            return
        stored = json.loads(row.response)
        body = stored["body"].encode("utf-8", "surrogateescape")
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored["headers"]]
        await send({"type": "http.response.start", "status": row.status,
                    "headers": [*headers, (b"idempotent-replayed", b"true")]})
        await send({"type": "http.response.body", "body": body})

    async def _first(self, scope: Scope, body: bytes, send: Send, caller: str, key: str) -> None:
        sent_body = False

        async def replay() -> Message:
            nonlocal sent_body
            if sent_body:
                return {"type": "http.disconnect"}
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}

        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay, capture)
        except BaseException:
            await run_in_threadpool(self.store.abandon, caller, key)
            raise
        status = int(start.get("status", 500))
        if status >= 500 or status in _NOT_KEPT:
            await run_in_threadpool(self.store.abandon, caller, key)
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])
                   if k.lower() in (b"content-type", b"content-length", b"location")]
        await run_in_threadpool(self.store.finish, caller, key, status, headers, b"".join(chunks))


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)
