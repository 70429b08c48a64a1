"""A small keep-alive HTTP/1.1 client for the provider SDK's transport.

Why not aiohttp or httpx: a provider call is one short request and one short response
on a kept-alive connection, and the general-purpose clients spend most of a message's
CPU budget around it. Measured with `bench/transport_bench.py` (BENCHMARKS.md,
"transport"): the SDK's aiohttp client costs 1.5–2.5x this one per SMS, and httpx
7–40x, because httpcore's pool rescans every connection for every queued request (its
cost grows with the square of the concurrency). This client does only that exchange:
the request is written in one piece, the response is parsed by `httptools` (the C
parser uvicorn uses: chunked bodies, keep-alive rules), idle connections are reused per
origin. Timeouts are `asyncio.timeout`.

What the caller learns about a failure matters for at-most-once sending:
- `ConnectError` (an `OSError`): the connection (or the proxy's tunnel) could not be
  opened, so nothing was sent and a retry cannot duplicate anything;
- `ResponseError` (an `OSError`): the request was (or may have been) written but no
  complete response came back: the outcome is unknown;
- `TimeoutError`: likewise unknown (a timeout while still connecting is a `ConnectError`).

Kept-alive connections are where "unknown" comes from needlessly: a server or load
balancer closes an idle connection, and a request written into it at that moment
fails after it went out. So an idle connection is used again only within
`idle_timeout` seconds (default 4 s: below the 5 s of Apache and Node.js, and far
below the 60 s and more of common load balancers) and within the server's own
`Keep-Alive: timeout=N`, less a margin. A request that dies on a reused connection
before any response byte is retried on a new one only for a safe method (GET, HEAD,
OPTIONS); never a POST, which the server may have acted on.

`HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` (or lower-case; read when the client is
made, as urllib reads them) route requests through an HTTP proxy: a CONNECT tunnel for
https, the absolute-form request for http. As in Go's net/http, loopback hosts never go
through a proxy (a proxy's loopback is not ours).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import re
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit
from urllib.request import getproxies_environment

import httptools

#: A response body larger than this is refused (provider answers are a few kB).
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Idle connections kept per origin.
MAX_IDLE_PER_ORIGIN = 128
#: Default seconds an idle connection may wait for its next request (see the module docstring).
IDLE_TIMEOUT = 4.0
#: Methods that RFC 9110 (9.2.1) calls safe: sending one twice changes nothing.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: A proxy's answer to CONNECT larger than this is refused.
MAX_TUNNEL_HEAD_BYTES = 64 * 1024

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_BAD_TARGET = re.compile(r"[^\x21-\x7e]")
_KEEP_ALIVE_TIMEOUT = re.compile(r"(?:^|[,;\s])timeout\s*=\s*(\d+)", re.IGNORECASE)

Route = tuple[str, str, int]  # (scheme, host, port) of the socket's peer, or of the tunnel's end


class ConnectError(OSError):
    """The connection could not be opened: nothing was sent."""


class ResponseError(OSError):
    """The request went out (or may have) but no complete, valid response came back."""


def _check_header(name: str, value: str) -> str:
    """`name: value`, or ValueError for what would let a value start a header of its own."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid HTTP header name {name!r}")
    if _BAD_VALUE.search(value):
        raise ValueError(f"CR, LF or NUL in the value of HTTP header {name!r}")
    return f"{name}: {value}"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class _Connection(asyncio.Protocol):
    """One connection, one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: loop time after which this connection, idle, is not used again
        self.expires_at = 0.0
        #: whether any byte of the current response has arrived
        self.answered = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, dict[str, str], bytes, bool]] | None = None
        self._tunnel: asyncio.Future[bytes] | None = None
        self._tunnel_head = b""
        self._reset_message()

    def _reset_message(self) -> None:
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._header_name = b""
        self._headers_done = False
        self.answered = False

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel_data(data)
            return
        if self._waiter is None or self._waiter.done():
            # bytes nobody asked for: this connection's framing cannot be trusted
            self.abort()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ResponseError(f"malformed HTTP response: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f": {exc}" if exc else ""
        if self._tunnel is not None and not self._tunnel.done():
            self._tunnel.set_exception(ConnectError(f"the proxy closed the connection{reason}"))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._headers_done and self._read_until_close():
                # a body delimited by the end of the connection is complete now
                waiter.set_result((self._status, self._headers, b"".join(self._body), False))
            else:
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

    def _tunnel_data(self, data: bytes) -> None:
        assert self._tunnel is not None
        self._tunnel_head += data
        end = self._tunnel_head.find(b"\r\n\r\n")
        if end >= 0 and not self._tunnel.done():
            if end + 4 != len(self._tunnel_head):  # the origin cannot speak before our TLS hello
                self._tunnel.set_exception(ConnectError("the proxy sent bytes after its answer to CONNECT"))
            else:
                self._tunnel.set_result(self._tunnel_head[:end])
        elif len(self._tunnel_head) > MAX_TUNNEL_HEAD_BYTES and not self._tunnel.done():
            self._tunnel.set_exception(ConnectError("the proxy's answer to CONNECT is too large"))

    async def open_tunnel(self, request: bytes, ssl_context: ssl.SSLContext, hostname: str) -> None:
        """CONNECT through the proxy at the other end, then TLS with `hostname` inside.
        Any failure is a ConnectError: the request itself was not written yet."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._tunnel = loop.create_future()
        self.transport.write(request)
        try:
            head = await self._tunnel
        finally:
            self._tunnel, self._tunnel_head = None, b""
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].startswith("2"):
            raise ConnectError(f"the proxy refused the tunnel: {status_line[:200]!r}")
        try:
            transport = await loop.start_tls(self.transport, self, ssl_context, server_hostname=hostname)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"TLS through the proxy to {hostname} failed: {exc}") from exc
        if transport is None:
            raise ConnectError(f"TLS through the proxy to {hostname} failed: the connection closed")
        self.transport = transport

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Target:
    """Where one request goes: the pool key, the request-target, the proxy's credentials."""

    __slots__ = ("route", "tunnel", "target", "host", "proxy_auth")

    def __init__(self, route: Route, tunnel: tuple[str, int] | None, target: str, host: str,
                 proxy_auth: str | None) -> None:
        self.route = route  # the socket's peer: the origin, or the proxy
        self.tunnel = tunnel  # (host, port) to CONNECT to through the proxy at `route`
        self.target = target
        self.host = host
        self.proxy_auth = proxy_auth  # a Proxy-Authorization header line


class Http11Client:
    """Keep-alive connections per origin (scheme, host, port); safe for many concurrent
    requests on one event loop (each takes its own connection)."""

    def __init__(self, *, user_agent: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 idle_timeout: float = IDLE_TIMEOUT, trust_env: bool = True) -> None:
        if idle_timeout < 0:
            raise ValueError("idle_timeout must not be negative (0: never reuse a connection)")
        self._idle: dict[tuple[Route, tuple[str, int] | None], deque[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl = ssl_context  # default: the system's trust store, verified
        self._user_agent = _check_header("User-Agent", user_agent) if user_agent else None
        self._idle_timeout = idle_timeout
        found = getproxies_environment() if trust_env else {}
        # parsed now: a proxy this client cannot use fails the start, not a later send
        self._proxies = {scheme: _parse_proxy(found[scheme]) for scheme in ("http", "https") if found.get(scheme)}
        self._no_proxy = found.get("no", "")
        self._proxy_for: dict[Route, tuple[Route, str | None] | None] = {}

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
        TimeoutError (see the module docstring), ValueError for a request that cannot be
        written safely (a header value with CR/LF, a space in the URL)."""
        parts = urlsplit(url)
        where = self._target(parts)
        if not _TOKEN.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        lines = [f"{method} {where.target} HTTP/1.1", f"Host: {where.host}"]
        if where.proxy_auth and where.tunnel is None:
            lines.append(where.proxy_auth)
        if self._user_agent:
            lines.append(self._user_agent)
        lines += [_check_header(name, value) for name, value in headers]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        request = head + body if body else head
        conn: _Connection | None = None
        sent = False
        try:
            async with asyncio.timeout(timeout):
                while True:
                    conn, reused = await self._connection(where)
                    sent = True
                    try:
                        status, response_headers, data, keep = await conn.exchange(request)
                        break
                    except ResponseError:
                        conn.abort()
                        # closed under us before any answer, on a connection that served
                        # before: the server most likely dropped it idle. Only a safe
                        # method may go again (a POST may have been acted on).
                        if reused and not conn.answered and method in SAFE_METHODS:
                            conn = None
                            continue
                        raise
                    except BaseException:
                        conn.abort()  # a cancelled or failed exchange leaves the framing unknown
                        raise
        except TimeoutError:
            if not sent:  # still connecting: nothing was sent
                raise ConnectError(f"timed out connecting to {where.route[1]}:{where.route[2]}") from None
            raise
        if keep and not conn.closed:
            self._release(where, conn, response_headers)
        else:
            conn.abort()
        return status, response_headers, data

    def _target(self, parts: SplitResult) -> _Target:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.geturl()!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]  # keeps an IPv6 literal's brackets
        if _BAD_TARGET.search(target) or _BAD_TARGET.search(host):
            raise ValueError("a URL for HTTP/1.1 must be printable ASCII without spaces (percent-encode it)")
        origin = (parts.scheme, parts.hostname, port)
        proxy = self._proxy(parts.scheme, parts.hostname, port)
        if proxy is None:
            return _Target(origin, None, target, host, None)
        route, authorization = proxy
        proxy_auth = f"Proxy-Authorization: {authorization}" if authorization else None
        if tls:  # the proxy sees only CONNECT; inside the tunnel the request is as usual
            return _Target(route, (parts.hostname, port), target, host, proxy_auth)
        return _Target(route, None, f"http://{host}{target}", host, proxy_auth)

    def _proxy(self, scheme: str, hostname: str, port: int) -> tuple[Route, str | None] | None:
        """The proxy (its route, its Proxy-Authorization) for this origin, or None."""
        key = (scheme, hostname, port)
        if key in self._proxy_for:
            return self._proxy_for[key]
        chosen = self._proxies.get(scheme)
        if chosen is not None and (_is_loopback(hostname) or _no_proxy(hostname, port, self._no_proxy)):
            chosen = None
        self._proxy_for[key] = chosen
        return chosen

    async def _connection(self, where: _Target) -> tuple[_Connection, bool]:
        """An idle connection still worth using (True), or a new one (False)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that opened them
            self.close()
            self._loop = loop
        idle = self._idle.get((where.route, where.tunnel))
        if idle:
            now = loop.time()
            while idle:
                conn = idle.pop()  # the most recently used first: the least likely to be dropped
                if not conn.closed and now < conn.expires_at:
                    return conn, True
                conn.abort()
        _scheme, hostname, port = where.route
        direct_tls = where.route[0] == "https"
        try:
            _transport, conn = await loop.create_connection(
                _Connection, hostname, port, ssl=self._ssl_context() if direct_tls else None,
                server_hostname=hostname if direct_tls else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {hostname}:{port}: {exc}") from exc
        if where.tunnel is not None:
            try:
                await self._open_tunnel(conn, where)
            except BaseException:
                conn.abort()
                raise
        return conn, False

    async def _open_tunnel(self, conn: _Connection, where: _Target) -> None:
        assert where.tunnel is not None
        host, port = where.tunnel
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if where.proxy_auth:
            lines.append(where.proxy_auth)
        await conn.open_tunnel(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), self._ssl_context(), host)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _release(self, where: _Target, conn: _Connection, headers: dict[str, str]) -> None:
        lifetime = self._idle_timeout
        hint = _keep_alive_timeout(headers)
        if hint is not None:
            # the server's clock started when it sent its last byte, a little before ours
            lifetime = min(lifetime, hint - min(1.0, hint / 2))
        if lifetime <= 0:
            conn.abort()
            return
        assert self._loop is not None
        conn.expires_at = self._loop.time() + lifetime
        idle = self._idle.setdefault((where.route, where.tunnel), deque())
        while idle and (idle[0].closed or idle[0].expires_at <= self._loop.time()):
            idle.popleft().abort()  # the oldest first: they hold sockets nobody will use
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


def _parse_proxy(url: str) -> tuple[Route, str | None]:
    """(route, Proxy-Authorization) of a proxy URL such as `http://user:pw@proxy:3128`."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        # a TLS or SOCKS proxy is not supported: fail loudly rather than go around it
        raise ValueError(f"unsupported proxy {parts.scheme}://{parts.hostname}: only http:// proxies")
    authorization = None
    if parts.username is not None:
        authorization = _basic(unquote(parts.username), unquote(parts.password or ""))
    return ("http", parts.hostname, parts.port or 80), authorization


def _no_proxy(hostname: str, port: int, no_proxy: str) -> bool:
    """Whether NO_PROXY exempts this host, as curl reads it: `*`; names matching
    themselves and their subdomains (a leading dot is optional); IP addresses and CIDR
    blocks; any of them with `:port` to exempt only that port."""
    host = hostname.lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in re.split(r"[,\s]+", no_proxy.lower()):
        if not entry:
            continue
        if entry == "*":
            return True
        if entry.startswith("["):  # [IPv6] or [IPv6]:port
            name, _, only = entry[1:].partition("]")
            only = only.removeprefix(":")
        elif entry.count(":") == 1:  # name:port (a bare IPv6 address has more colons)
            name, _, only = entry.partition(":")
        else:
            name, only = entry, ""
        name = name.lstrip(".")
        if only and only != str(port):
            continue
        if address is not None:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(name, strict=False):
                    return True
        elif host == name or host.endswith("." + name):
            return True
    return False


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _keep_alive_timeout(headers: dict[str, str]) -> float | None:
    """N of `Keep-Alive: timeout=N` (RFC 2068 19.7.1.1), when the server says it."""
    for name, value in headers.items():
        if len(name) == 10 and name.lower() == "keep-alive":
            found = _KEEP_ALIVE_TIMEOUT.search(value)
            return float(found.group(1)) if found else None
    return None


def form_body(pairs: Iterable[tuple[str, Any]]) -> bytes:
    """`urlencode(pairs).encode()`, twice as fast: urllib escapes a non-ASCII string
    byte by byte in Python, and every byte of a Chinese SMS body needs escaping."""
    get = _FORM_TABLE.__getitem__
    return "&".join(
        f"{''.join(map(get, str(k).encode()))}={''.join(map(get, str(v).encode()))}" for k, v in pairs
    ).encode("ascii")


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_TABLE = [chr(b) if b in _SAFE else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)]
