"""A small keep-alive HTTP/1.1 client for the provider SDK's transport.

Why not aiohttp or httpx: a provider call is one short request and one short response
on a kept-alive connection, and the general-purpose clients spend most of a message's
CPU budget around it (aiohttp ~90 µs per request here: tracing hooks, cookie jar,
redirect and proxy machinery, multidict headers, per-request timeout objects). This
client does only that exchange: the request is written in one piece, the response is
parsed by `httptools` (the C parser uvicorn uses: chunked bodies, keep-alive rules),
and idle connections are reused per origin. Timeouts are `asyncio.timeout`.

What the caller learns about a failure matters for at-most-once sending:
- `ConnectError` (an `OSError`): the connection could not be opened, so nothing was
  sent and a retry cannot duplicate anything;
- `ResponseError` (an `OSError`): the request was (or may have been) written but no
  complete response came back: the outcome is unknown;
- `TimeoutError`: likewise unknown (a timeout while still connecting is a `ConnectError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httptools

#: A response body larger than this is refused (provider answers are a few kB).
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Idle connections kept per origin.
MAX_IDLE_PER_ORIGIN = 128


class ConnectError(OSError):
    """The connection could not be opened: nothing was sent."""


class ResponseError(OSError):
    """The request went out (or may have) but no complete, valid response came back."""


class _Connection(asyncio.Protocol):
    """One connection, one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, dict[str, str], bytes, bool]] | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._header_name = b""
        self._headers_done = False

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # bytes nobody asked for: this connection's framing cannot be trusted
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ResponseError(f"malformed HTTP response: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._headers_done and self._read_until_close():
                # a body delimited by the end of the connection is complete now
                waiter.set_result((self._status, self._headers, b"".join(self._body), False))
            else:
                reason = f": {exc}" if exc else ""
                waiter.set_exception(ResponseError(f"connection closed before a complete response{reason}"))

    # -- httptools callbacks -----------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp may split a header across calls: an empty name continues the previous one
        if name:
            self._header_name = name
            self._headers[name.decode("latin-1")] = value.decode("latin-1")
        else:
            key = self._header_name.decode("latin-1")
            self._headers[key] = self._headers.get(key, "") + value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY_BYTES:
            self._fail(ResponseError(f"response body larger than {MAX_BODY_BYTES} bytes"))
            self.abort()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            keep = self._parser.should_keep_alive()
            waiter.set_result((self._status, self._headers, b"".join(self._body), keep))

    # -- use ---------------------------------------------------------------------

    def _read_until_close(self) -> bool:
        lowered = {k.lower() for k in self._headers}
        return "content-length" not in lowered and "transfer-encoding" not in lowered

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes, bool]:
        """Write `request` and wait for the whole response: (status, headers, body, keep-alive)."""
        assert self.transport is not None
        self._reset_message()  # the parser itself goes on to the next response on its own
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Http11Client:
    """Keep-alive connections per origin (scheme, host, port); safe for many concurrent
    requests on one event loop (each takes its own connection)."""

    def __init__(self, *, user_agent: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl = ssl_context  # default: the system's trust store, verified
        self._user_agent = user_agent

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        timeout: float,  # noqa: ASYNC109 - a per-request total, like the SDK's own argument
    ) -> tuple[int, dict[str, str], bytes]:
        """One request; (status, headers, body). Raises ConnectError, ResponseError or
        TimeoutError (see the module docstring)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        origin = (parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        if self._user_agent:
            lines.append(f"User-Agent: {self._user_agent}")
        lines += [f"{name}: {value}" for name, value in headers]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        request = head + body if body else head
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connection(origin, tls)
                try:
                    status, response_headers, data, keep = await conn.exchange(request)
                except BaseException:
                    conn.abort()  # a cancelled or failed exchange leaves the framing unknown
                    raise
        except TimeoutError:
            if conn is None:  # still connecting: nothing was sent
                raise ConnectError(f"timed out connecting to {parts.hostname}:{port}") from None
            raise
        if keep and not conn.closed:
            self._release(origin, conn)
        else:
            conn.abort()
        return status, response_headers, data

    async def _connection(self, origin: tuple[str, str, int], tls: bool) -> _Connection:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that opened them
            self.close()
            self._loop = loop
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        _scheme, hostname, port = origin
        context = self._ssl_context() if tls else None
        try:
            _transport, conn = await loop.create_connection(
                _Connection, hostname, port, ssl=context, server_hostname=hostname if tls else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {hostname}:{port}: {exc}") from exc
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _release(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, deque())
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.abort()
            return
        idle.append(conn)

    def close(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for conn in connections:
                with contextlib.suppress(Exception):
                    conn.abort()

    async def aclose(self) -> None:
        self.close()


def form_body(pairs: Iterable[tuple[str, Any]]) -> bytes:
    """`urlencode(pairs).encode()`, twice as fast: urllib escapes a non-ASCII string
    byte by byte in Python, and every byte of a Chinese SMS body needs escaping."""
    get = _FORM_TABLE.__getitem__
    return "&".join(
        f"{''.join(map(get, str(k).encode()))}={''.join(map(get, str(v).encode()))}" for k, v in pairs
    ).encode("ascii")


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_TABLE = [chr(b) if b in _SAFE else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)]
