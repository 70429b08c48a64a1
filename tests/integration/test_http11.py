"""The provider transport against scripted HTTP servers on loopback: framing (length,
chunked, until close), keep-alive reuse, and the failure kinds at-most-once relies on."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.channels.http11 import MAX_BODY_BYTES, ConnectError, Http11Client, ResponseError, form_body

Handler = Callable[[bytes], bytes | None]  # request bytes -> raw response (None: close without answering)


class ScriptedServer:
    """Answers each request on a connection with `handler(request)`; counts connections."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None, *,
                 close_after_answer: bool = False) -> None:
        self.handler = handler
        self.close_after_answer = close_after_answer
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
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
    server, base = await serve(lambda _r: b"HTTP/1.1 201 Created\r\nContent-Length: 50\r\nConnection: close\r\n\r\nshort")
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
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
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
    import contextlib
    import socket

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
