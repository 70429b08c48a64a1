"""The provider transport against scripted HTTP servers on loopback: framing (length,
chunked, until close), keep-alive reuse, and the failure kinds at-most-once relies on."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.channels.http11 import (
    IDLE_TIMEOUT,
    MAX_BODY_BYTES,
    ConnectError,
    Http11Client,
    ResponseError,
    _no_proxy,
    form_body,
)

Handler = Callable[[bytes], bytes | None]  # request bytes -> raw response (None: close without answering)


class ScriptedServer:
    """Answers each request on a connection with `handler(request)`; counts connections."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None, *,
                 close_after_answer: bool = False, idle_close: float | None = None,
                 silently: bool = False) -> None:
        self.handler = handler
        self.close_after_answer = close_after_answer
        self.ssl_context = ssl_context
        #: a connection idle this long after an answer is closed: with a FIN at once, or
        #: `silently` — forgotten, and the next bytes that arrive on it are answered with
        #: a reset, unread (a load balancer or NAT that dropped the flow's state)
        self.idle_close = idle_close
        self.silently = silently
        self.connections = 0
        self.dropped = 0  # requests that arrived on a silently closed connection
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            answered = False
            while True:
                if answered and self.idle_close is not None:
                    try:
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_close)
                    except TimeoutError:
                        if not self.silently:
                            return  # the FIN goes out now
                        if not await reader.read(1):  # the client closed it: fine
                            return
                        self.dropped += 1  # the client wrote into a flow nobody knows
                        writer.get_extra_info("socket").setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        writer.transport.abort()  # linger 0: a reset
                        return
                else:
                    head = await reader.readuntil(b"\r\n\r\n")
                answered = True
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + (await reader.readexactly(length) if length else b"")
                self.requests.append(request)
                answer = self.handler(request)
                if answer is None:
                    writer.close()
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer or b"connection: close" in answer.lower():
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def ok(body: bytes = b'{"sid": "SM1"}', extra: str = "") -> bytes:
    return (f"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


@pytest.fixture
async def client() -> AsyncIterator[Http11Client]:
    c = Http11Client()
    yield c
    await c.aclose()


async def serve(handler: Handler) -> tuple[ScriptedServer, str]:
    server = ScriptedServer(handler)
    port = await server.start()
    return server, f"http://127.0.0.1:{port}"


async def test_request_line_headers_and_body_arrive_as_written(client: Http11Client) -> None:
    server, base = await serve(lambda _r: ok())
    try:
        status, headers, body = await client.request(
            "POST", f"{base}/2010-04-01/Messages.json?x=1", headers=[("X-Test", "yes")], body=b"To=%2B1", timeout=5)
    finally:
        await server.stop()
    assert (status, body) == (201, b'{"sid": "SM1"}')
    assert headers["Content-Type"] == "application/json"
    request = server.requests[0]
    assert request.startswith(b"POST /2010-04-01/Messages.json?x=1 HTTP/1.1\r\n")
    assert f"Host: {base.removeprefix('http://')}".encode() in request
    assert b"X-Test: yes\r\n" in request and b"Content-Length: 7\r\n" in request
    assert request.endswith(b"\r\n\r\nTo=%2B1")


async def test_keep_alive_connections_are_reused_and_concurrency_opens_more(client: Http11Client) -> None:
    server, base = await serve(lambda _r: ok())
    try:
        for _ in range(5):
            await client.request("GET", f"{base}/a", timeout=5)
        assert server.connections == 1
        await asyncio.gather(*(client.request("GET", f"{base}/b", timeout=5) for _ in range(4)))
        assert server.connections == 4  # one in flight per connection
        assert len(server.requests) == 9
    finally:
        await server.stop()


async def test_chunked_and_until_close_bodies(client: Http11Client) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n"
    server, base = await serve(lambda _r: chunked)
    try:
        assert (await client.request("GET", f"{base}/c", timeout=5))[2] == b'{"a": 1}'
    finally:
        await server.stop()
    server, base = await serve(lambda _r: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
    try:
        assert (await client.request("GET", f"{base}/d", timeout=5))[2] == b"until the end"
        assert (await client.request("GET", f"{base}/d", timeout=5))[2] == b"until the end"
        assert server.connections == 2  # a closed connection is never reused
    finally:
        await server.stop()


async def test_connection_refused_is_a_connect_error(client: Http11Client) -> None:
    server, base = await serve(lambda _r: ok())
    await server.stop()
    with pytest.raises(ConnectError):
        await client.request("POST", f"{base}/x", body=b"a=1", timeout=5)


async def test_no_answer_is_a_response_error_not_a_connect_error(client: Http11Client) -> None:
    server, base = await serve(lambda _r: None)  # reads the request, closes without a word
    try:
        with pytest.raises(ResponseError) as raised:
            await client.request("POST", f"{base}/x", body=b"a=1", timeout=5)
        assert not isinstance(raised.value, ConnectError)
        assert len(server.requests) == 1  # it was sent: the outcome is unknown
    finally:
        await server.stop()


async def test_truncated_and_malformed_responses(client: Http11Client) -> None:
    server, base = await serve(
        lambda _r: b"HTTP/1.1 201 Created\r\nContent-Length: 50\r\nConnection: close\r\n\r\nshort"
    )
    try:
        with pytest.raises(ResponseError, match="before a complete response"):
            await client.request("GET", f"{base}/t", timeout=5)
    finally:
        await server.stop()
    server, base = await serve(lambda _r: b"NOT HTTP AT ALL\r\n\r\n")
    try:
        with pytest.raises(ResponseError, match="malformed"):
            await client.request("GET", f"{base}/m", timeout=5)
    finally:
        await server.stop()


async def test_an_oversized_body_is_refused(client: Http11Client) -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)
    server, base = await serve(lambda _r: ok(big))
    try:
        with pytest.raises(ResponseError, match="larger than"):
            await client.request("GET", f"{base}/big", timeout=10)
    finally:
        await server.stop()


async def test_a_hung_server_times_out_and_the_connection_is_not_reused(client: Http11Client) -> None:
    calls = 0

    def handler(_r: bytes) -> bytes | None:
        nonlocal calls
        calls += 1
        return b"" if calls == 1 else ok()  # the first request never gets an answer

    server, base = await serve(handler)
    try:
        with pytest.raises(TimeoutError):
            await client.request("GET", f"{base}/slow", timeout=0.3)
        assert (await client.request("GET", f"{base}/next", timeout=5))[0] == 201
        assert server.connections == 2
    finally:
        await server.stop()


async def test_an_idle_connection_closed_by_the_server_is_not_reused(client: Http11Client) -> None:
    server = ScriptedServer(lambda _r: ok(), close_after_answer=True)  # an idle timeout of zero
    port = await server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        await client.request("GET", f"{base}/1", timeout=5)
        await asyncio.sleep(0.1)  # the server's FIN reaches the idle connection
        assert (await client.request("GET", f"{base}/2", timeout=5))[0] == 201
        assert server.connections == 2
    finally:
        await server.stop()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost: (key, cert)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", f"subjectAltName=DNS:localhost,DNS:{TUNNELLED_HOST}"],
                   check=True, capture_output=True)
    return key, cert


async def test_https_with_a_verified_certificate(certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server = ScriptedServer(lambda _r: ok(b"secure"), ssl_context=server_ctx)
    port = await server.start()
    trusting = ssl.create_default_context(cafile=str(cert))
    client = Http11Client(ssl_context=trusting)
    try:
        assert (await client.request("GET", f"https://localhost:{port}/s", timeout=5))[2] == b"secure"
        with pytest.raises(ConnectError):  # the system trust store does not know the test CA
            await Http11Client().request("GET", f"https://localhost:{port}/s", timeout=5)
    finally:
        await client.aclose()
        await server.stop()


@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=80)), max_size=6))
def test_form_body_is_urlencode(pairs: list[tuple[str, str]]) -> None:
    assert form_body(pairs) == urlencode(pairs).encode()


async def test_a_connect_that_times_out_is_a_connect_error(client: Http11Client) -> None:
    # a listening socket whose backlog is full never completes the handshake
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue (nobody accepts)
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        # the handshake never completes, so the request was never written: nothing can
        # have reached the server, and the caller may retry without reconciling
        with pytest.raises(ConnectError, match="timed out connecting"):
            await client.request("POST", f"http://127.0.0.1:{port}/x", body=b"a=1", timeout=0.3)
    finally:
        for s in fillers:
            s.close()
        listener.close()


# ------------------------------------------------------------- idle connections


async def test_idle_connections_expire_before_the_server_drops_them() -> None:
    """A server that drops connections idle for 1 s, and a 2 s pause between two POSTs.

    Dropped silently (as a load balancer or NAT that forgets the flow: the next bytes
    get a reset), a reused connection fails *after* the request went out: an ambiguous
    failure the sender would have to reconcile, though nothing was processed. The
    client avoids it by not reusing a connection idle longer than the server's announced
    `Keep-Alive: timeout` (less a margin) or its own `idle_timeout`. The last client,
    which keeps connections longer than the server does, shows what happens otherwise.
    """
    async def scenario(announce: bool, silently: bool, idle_timeout: float) -> tuple[ScriptedServer, object]:
        extra = "Keep-Alive: timeout=1\r\n" if announce else ""
        server = ScriptedServer(lambda _r: ok(extra=extra), idle_close=1.0, silently=silently)
        port = await server.start()
        client = Http11Client(idle_timeout=idle_timeout)
        try:
            await client.request("POST", f"http://127.0.0.1:{port}/1", body=b"a=1", timeout=5)
            await asyncio.sleep(2.0)
            try:
                outcome: object = (await client.request("POST", f"http://127.0.0.1:{port}/2", body=b"a=2", timeout=5))[
                    0
                ]
            except (ResponseError, TimeoutError) as exc:
                outcome = exc
        finally:
            await client.aclose()
            await server.stop()
        return server, outcome

    announced, configured, closed, control = await asyncio.gather(
        scenario(announce=True, silently=True, idle_timeout=IDLE_TIMEOUT),  # the server's word
        scenario(announce=False, silently=True, idle_timeout=0.5),  # our own limit
        scenario(announce=False, silently=False, idle_timeout=IDLE_TIMEOUT),  # a FIN: seen, not reused
        scenario(announce=False, silently=True, idle_timeout=10.0),  # reused past the server's limit
    )
    for server, outcome in (announced, configured, closed):
        assert outcome == 201
        assert (server.connections, len(server.requests), server.dropped) == (2, 2, 0)
    server, outcome = control
    assert isinstance(outcome, ResponseError) and not isinstance(outcome, ConnectError)  # ambiguous
    assert (server.connections, len(server.requests), server.dropped) == (1, 1, 1)  # yet nothing was processed


async def test_idle_timeout_zero_never_reuses_and_a_short_keep_alive_hint_is_honoured() -> None:
    server, base = await serve(lambda _r: ok())
    never = Http11Client(idle_timeout=0)
    try:
        for _ in range(3):
            await never.request("GET", f"{base}/n", timeout=5)
        assert server.connections == 3
    finally:
        await never.aclose()
        await server.stop()
    # `timeout=1` leaves 0.5 s of reuse: within it the connection serves again, after it not
    server, base = await serve(lambda _r: ok(extra="Keep-Alive: timeout=1, max=100\r\n"))
    client = Http11Client()
    try:
        await client.request("GET", f"{base}/k", timeout=5)
        await client.request("GET", f"{base}/k", timeout=5)
        assert server.connections == 1
        await asyncio.sleep(0.6)
        await client.request("GET", f"{base}/k", timeout=5)
        assert server.connections == 2
    finally:
        await client.aclose()
        await server.stop()
    with pytest.raises(ValueError):
        Http11Client(idle_timeout=-1)


def second_request_unanswered() -> Handler:
    """Answers the first request; closes without a word on the second; answers the rest."""
    calls = 0

    def handler(_r: bytes) -> bytes | None:
        nonlocal calls
        calls += 1
        return None if calls == 2 else ok()

    return handler


async def test_only_a_safe_method_is_retried_when_a_reused_connection_dies_unanswered(client: Http11Client) -> None:
    server, base = await serve(second_request_unanswered())
    try:
        await client.request("GET", f"{base}/list", timeout=5)
        status, _h, _b = await client.request("GET", f"{base}/list", timeout=5)  # dies, goes again
        assert status == 201
        assert (server.connections, len(server.requests)) == (2, 3)
    finally:
        await server.stop()
    # a POST may have been acted on: the failure is reported as ambiguous, not retried
    server, base = await serve(second_request_unanswered())
    try:
        await client.request("POST", f"{base}/create", body=b"a=1", timeout=5)
        with pytest.raises(ResponseError):
            await client.request("POST", f"{base}/create", body=b"a=2", timeout=5)
        assert (server.connections, len(server.requests)) == (1, 2)
    finally:
        await server.stop()
    # on a new connection nothing explains the silence: not retried either
    server, base = await serve(lambda _r: None)
    try:
        with pytest.raises(ResponseError):
            await client.request("GET", f"{base}/fresh", timeout=5)
        assert len(server.requests) == 1
    finally:
        await server.stop()


# ---------------------------------------------------------------- header injection


@pytest.mark.parametrize(("headers", "url"), [
    ([("X-Note", "a\r\nX-Injected: 1")], "/p"),
    ([("X-Note", "a\nb")], "/p"),
    ([("X-Note", "a\rb")], "/p"),
    ([("X-Note", "a\x00b")], "/p"),
    ([("X-Bad Name", "v")], "/p"),
    ([("X-Bad:Name", "v")], "/p"),
    ([("X-Bad\r\nName", "v")], "/p"),
    ([], "/a b"),
    ([], "/caf\u00e9"),
])
async def test_a_request_that_could_inject_headers_is_refused_before_connecting(
        client: Http11Client, headers: list[tuple[str, str]], url: str) -> None:
    server, base = await serve(lambda _r: ok())
    try:
        with pytest.raises(ValueError):
            await client.request("POST", f"{base}{url}", headers=headers, body=b"a=1", timeout=5)
        with pytest.raises(ValueError):
            await client.request("POST /x HTTP/1.1\r\nX:", f"{base}/p", timeout=5)
        assert server.connections == 0  # refused before anything was written
        # tabs, quotes and non-ASCII text (sent as latin-1) are ordinary values
        await client.request("GET", f"{base}/ok", headers=[("X-Note", 'a\t"b" \u00e9')], timeout=5)
        assert b'X-Note: a\t"b" \xe9\r\n' in server.requests[0]
    finally:
        await server.stop()
    with pytest.raises(ValueError):
        Http11Client(user_agent="ua\r\nX-Injected: 1")


# ------------------------------------------------------------------------- proxies

#: A name only the test proxy knows (`.test` is reserved, RFC 2606): reaching it at all
#: proves the request went through the tunnel, and the client never resolves it.
TUNNELLED_HOST = "api.twilio.test"


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback that knows `TUNNELLED_HOST` as 127.0.0.1."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            method, authority, _version = head.split(b"\r\n", 1)[0].decode().split(" ")
            host, _, port = authority.rpartition(":")
            if self.credentials is not None:
                expected = "Proxy-Authorization: Basic " + base64.b64encode(self.credentials.encode()).decode()
                if expected.encode() + b"\r\n" not in head:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                    return
            if method != "CONNECT" or host != TUNNELLED_HOST:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(port))
            self._writers.append(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def stop(self) -> None:
        """Stop listening and close every tunnel (Python 3.11's `wait_closed` does not)."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_https_goes_through_the_proxys_connect_tunnel(
        certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    origin = ScriptedServer(lambda _r: ok(b"tunnelled"), ssl_context=server_ctx)
    origin_port = await origin.start()
    proxy = ConnectProxy(credentials="agent:p@ss")
    proxy_port = await proxy.start()
    monkeypatch.setenv("HTTPS_PROXY", f"http://agent:p%40ss@127.0.0.1:{proxy_port}")
    monkeypatch.delenv("https_proxy", raising=False)
    client = Http11Client(ssl_context=ssl.create_default_context(cafile=str(cert)))
    url = f"https://{TUNNELLED_HOST}:{origin_port}/2010-04-01/Messages.json"
    try:
        for _ in range(2):
            status, _h, body = await client.request("POST", url, body=b"a=1", timeout=5)
            assert (status, body) == (201, b"tunnelled")
        assert len(proxy.heads) == 1 and origin.connections == 1  # the tunnel is kept alive
        connect = proxy.heads[0]
        assert connect.startswith(f"CONNECT {TUNNELLED_HOST}:{origin_port} HTTP/1.1\r\n".encode())
        request = origin.requests[0]
        assert request.startswith(b"POST /2010-04-01/Messages.json HTTP/1.1\r\n")  # origin-form inside
        assert f"Host: {TUNNELLED_HOST}:{origin_port}\r\n".encode() in request
        assert b"Proxy-Authorization" not in request  # the proxy's credentials stay with the proxy
        # the certificate is checked against the origin's name, through the tunnel
        with pytest.raises(ConnectError):
            await Http11Client().request("POST", url, body=b"a=1", timeout=5)
        assert len(origin.requests) == 2
    finally:
        await client.aclose()
        await proxy.stop()
        await origin.stop()


async def test_a_tunnel_refused_or_unreachable_is_a_connect_error(
        certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _key, cert = certificate
    trusting = ssl.create_default_context(cafile=str(cert))
    proxy = ConnectProxy(credentials="agent:secret")
    proxy_port = await proxy.start()
    url = f"https://{TUNNELLED_HOST}:9/x"
    monkeypatch.delenv("https_proxy", raising=False)
    try:
        monkeypatch.setenv("HTTPS_PROXY", f"http://agent:wrong@127.0.0.1:{proxy_port}")
        with pytest.raises(ConnectError, match="407"):  # nothing went to the origin
            await Http11Client(ssl_context=trusting).request("POST", url, body=b"a=1", timeout=5)
        monkeypatch.setenv("HTTPS_PROXY", f"http://agent:secret@127.0.0.1:{proxy_port}")
        with pytest.raises(ConnectError):  # the proxy reaches nothing on port 9
            await Http11Client(ssl_context=trusting).request("POST", url, body=b"a=1", timeout=5)
    finally:
        await proxy.stop()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy_port}")  # stopped: refused
    with pytest.raises(ConnectError):
        await Http11Client(ssl_context=trusting).request("POST", url, body=b"a=1", timeout=5)


async def test_plain_http_goes_to_the_proxy_in_absolute_form(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = ScriptedServer(lambda _r: ok(b"via proxy"))  # a proxy that answers itself
    proxy_port = await proxy.start()
    monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{proxy_port}")  # no scheme: http://
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)  # urllib ignores HTTP_PROXY under CGI
    client = Http11Client()
    try:
        for path in ("/a?x=1", "/b"):
            assert (await client.request("GET", f"http://hooks.example.test:8080{path}", timeout=5))[2] == b"via proxy"
        assert proxy.connections == 1
        assert proxy.requests[0].startswith(b"GET http://hooks.example.test:8080/a?x=1 HTTP/1.1\r\n")
        assert b"Host: hooks.example.test:8080\r\n" in proxy.requests[0]
        # loopback never goes through a proxy (the proxy's loopback is not ours): origin-form
        await client.request("GET", f"http://127.0.0.1:{proxy_port}/direct", timeout=5)
        assert proxy.requests[-1].startswith(b"GET /direct HTTP/1.1\r\n")
    finally:
        await client.aclose()
        await proxy.stop()


@pytest.mark.parametrize(("host", "port", "no_proxy", "exempt"), [
    ("api.twilio.com", 443, "twilio.com", True),
    ("api.twilio.com", 443, ".twilio.com", True),
    ("api.twilio.com", 443, "example.org, TWILIO.com", True),
    ("eviltwilio.com", 443, "twilio.com", False),
    ("api.twilio.com", 443, "twilio.com:443", True),
    ("api.twilio.com", 443, "twilio.com:80", False),
    ("10.1.2.3", 443, "10.0.0.0/8", True),
    ("10.1.2.3", 443, "10.1.2.4", False),
    ("2001:db8::1", 443, "2001:db8::1", True),
    ("2001:db8::1", 443, "[2001:db8::1]:443", True),
    ("2001:db8::1", 443, "[2001:db8::1]:80", False),
    ("2001:db8::1", 443, "2001:db8::/32", True),
    ("api.twilio.com", 443, "*", True),
    ("api.twilio.com", 443, "", False),
])
def test_no_proxy_rules(host: str, port: int, no_proxy: str, exempt: bool) -> None:
    assert _no_proxy(host, port, no_proxy) is exempt


def test_the_environment_is_read_once_and_only_when_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    # which route a URL takes is checked without connecting: these names resolve nowhere
    for name in ("http_proxy", "https_proxy", "no_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "internal.test")
    client = Http11Client()
    assert client.proxy_for("http://hooks.example.test/x") == ("proxy.test", 3128)
    assert client.proxy_for("http://svc.internal.test/x") is None
    assert client.proxy_for("http://[::1]:8080/x") is None  # loopback
    assert client.proxy_for("https://api.twilio.com/x") is None  # HTTPS_PROXY is not set
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    assert client.proxy_for("https://api.twilio.com/x") is None  # read when the client was made
    with pytest.raises(ValueError, match="only http:// proxies"):
        Http11Client()
    assert Http11Client(trust_env=False).proxy_for("http://hooks.example.test/x") is None
