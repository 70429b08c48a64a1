"""A small keep-alive HTTP/1.1 client for the provider SDK's transport.

Why not aiohttp or httpx: a provider call is one short request and one short response
on a kept-alive connection, and the general-purpose clients spend most of a message's
CPU budget around it. Measured through the SDK with `bench/transport_bench.py`
(BENCHMARKS.md, "transport"), per SMS the SDK's aiohttp client costs 1.6–1.9x this one,
httpx 3.4x one request at a time and 8–18x at a concurrency of 16–64 (httpcore's pool
asks every connection whether it expired for every queued request). This client does
only that exchange: the request is written in one piece, the response is parsed by
`httptools` (the C parser uvicorn uses: chunked bodies, keep-alive rules), idle
connections are reused per origin. Timeouts are `asyncio.timeout`.

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
        self._keep_alive: str | None = None  # the Keep-Alive header's name as sent
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
            key = name.decode("latin-1")
            self._headers[key] = value.decode("latin-1")
            if len(name) == 10 and name.lower() == b"keep-alive":
                self._keep_alive = key
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

    def keep_alive_timeout(self) -> float | None:
        """N of the last response's `Keep-Alive: timeout=N` (RFC 2068 19.7.1.1), if sent."""
        if self._keep_alive is None:
            return None
        found = _KEEP_ALIVE_TIMEOUT.search(self._headers[self._keep_alive])
        return float(found.group(1)) if found else None

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


class _Origin:
    """How requests to one (scheme, netloc) are written and where they go."""

    __slots__ = ("key", "route", "tunnel", "prefix", "head", "breaks", "proxy_auth", "proxied")

    def __init__(self, route: Route, tunnel: tuple[str, int] | None, prefix: str, head: str,
                 proxy_auth: str | None) -> None:
        self.key = (route, tunnel)  # of the idle pool
        self.route = route  # the socket's peer: the origin, or the proxy
        self.tunnel = tunnel  # (host, port) to CONNECT to through the proxy at `route`
        self.prefix = prefix  # before the path: "" (origin-form) or "http://host" (to a proxy)
        self.head = head  # the Host line, the proxy's credentials for plain http
        self.breaks = head.count("\n")
        self.proxy_auth = proxy_auth  # a Proxy-Authorization line, for CONNECT or plain http
        self.proxied = tunnel is not None or bool(prefix)


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
        self._tokens: set[str] = set()  # method and header names already checked
        self._user_agent = f"\r\nUser-Agent: {user_agent}" if user_agent else ""
        if user_agent and _BAD_VALUE.search(user_agent):
            raise ValueError("CR, LF or NUL in the User-Agent")
        self._idle_timeout = idle_timeout
        found = getproxies_environment() if trust_env else {}
        # parsed now: a proxy this client cannot use fails the start, not a later send
        self._proxies = {scheme: _parse_proxy(found[scheme]) for scheme in ("http", "https") if found.get(scheme)}
        self._no_proxy = found.get("no", "")
        self._origins: dict[tuple[str, str], _Origin] = {}

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
        written safely (CR, LF or NUL in a header, a space in the URL)."""
        parts = urlsplit(url)
        where = self._origins.get((parts.scheme, parts.netloc)) or self._origin(parts)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if _BAD_TARGET.search(target):
            raise ValueError("a URL for HTTP/1.1 must be printable ASCII without spaces (percent-encode it)")
        tokens = self._tokens
        if method not in tokens:
            self._token(method, "method")
        lines = [f"{method} {where.prefix}{target} HTTP/1.1{where.head}{self._user_agent}"]
        for name, value in headers:
            if name not in tokens:
                self._token(name, "header name")
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        text = "\r\n".join(lines)
        # one scan instead of one per value: a CR, LF or NUL inside a value (which would
        # start a header of its own) shows as more line ends than were joined
        breaks = len(lines) - 1 + where.breaks + bool(self._user_agent)
        if text.count("\r") != breaks or text.count("\n") != breaks or "\x00" in text:
            raise ValueError("CR, LF or NUL in the value of an HTTP header")
        head = (text + "\r\n\r\n").encode("latin-1")
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
            self._release(where, conn)
        else:
            conn.abort()
        return status, response_headers, data

    def proxy_for(self, url: str) -> tuple[str, int] | None:
        """The proxy (host, port) that requests to `url` go through, or None (direct)."""
        where = self._origin(urlsplit(url))
        return (where.route[1], where.route[2]) if where.proxied else None

    def _token(self, name: str, what: str) -> None:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid HTTP {what} {name!r}")
        if len(self._tokens) < 1024:  # names come from code: a handful
            self._tokens.add(name)

    def _origin(self, parts: SplitResult) -> _Origin:
        """How to reach (scheme, netloc): directly, through a tunnel, or via a proxy."""
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.geturl()!r}")
        host = parts.netloc.rpartition("@")[2]  # keeps an IPv6 literal's brackets
        if _BAD_TARGET.search(host):
            raise ValueError(f"invalid host in URL: {host!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        proxy = self._proxies.get(parts.scheme)
        if proxy is not None and (_is_loopback(parts.hostname) or _no_proxy(parts.hostname, port, self._no_proxy)):
            proxy = None
        if proxy is None:
            where = _Origin((parts.scheme, parts.hostname, port), None, "", f"\r\nHost: {host}", None)
        else:
            route, authorization = proxy
            proxy_auth = f"Proxy-Authorization: {authorization}" if authorization else None
            if tls:  # the proxy sees only CONNECT; inside the tunnel the request is as usual
                where = _Origin(route, (parts.hostname, port), "", f"\r\nHost: {host}", proxy_auth)
            else:
                head = f"\r\nHost: {host}" + (f"\r\n{proxy_auth}" if proxy_auth else "")
                where = _Origin(route, None, f"http://{host}", head, proxy_auth)
        if len(self._origins) < 1024:
            self._origins[(parts.scheme, parts.netloc)] = where
        return where

    async def _connection(self, where: _Origin) -> tuple[_Connection, bool]:
        """An idle connection still worth using (True), or a new one (False)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that opened them
            self.close()
            self._loop = loop
        idle = self._idle.get(where.key)
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

    async def _open_tunnel(self, conn: _Connection, where: _Origin) -> None:
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

    def _release(self, where: _Origin, conn: _Connection) -> None:
        lifetime = self._idle_timeout
        hint = conn.keep_alive_timeout()
        if hint is not None:
            # the server's clock started when it sent its last byte, a little before ours
            lifetime = min(lifetime, hint - min(1.0, hint / 2))
        if lifetime <= 0:
            conn.abort()
            return
        assert self._loop is not None
        conn.expires_at = self._loop.time() + lifetime
        idle = self._idle.setdefault(where.key, deque())
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


def form_body(pairs: Iterable[tuple[str, Any]]) -> bytes:
    """`urlencode(pairs).encode()`, twice as fast: urllib escapes a non-ASCII string
    byte by byte in Python, and every byte of a Chinese SMS body needs escaping."""
    get = _FORM_TABLE.__getitem__
    return "&".join(
        f"{''.join(map(get, str(k).encode()))}={''.join(map(get, str(v).encode()))}" for k, v in pairs
    ).encode("ascii")


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_TABLE = [chr(b) if b in _SAFE else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)]
