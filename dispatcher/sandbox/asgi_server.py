"""A uvicorn server on a given or free port inside the running event loop.

Used by the sandbox and by `WebhookReceiver`. Signals are left to the caller (uvicorn's
own handlers would swallow Ctrl-C in tests), logging is left alone (`log_config=None`),
and every accepted connection's transport is kept by peer address so that a fault
injector can reset a connection (`transport_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _protocol_class(transports: dict[Any, asyncio.Transport]) -> type[HttpToolsProtocol]:
    # httptools, not h11: the C parser costs a fraction of h11's CPU per request, and the
    # sandbox and the demo's webhooks serve tens of thousands of them
    class TrackingProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self.client is not None:
                transports[self.client] = transport

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client is not None:
                transports.pop(self.client, None)
            super().connection_lost(exc)

    return TrackingProtocol


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it a response written in two parts waits for the client's delayed
    # ACK (40 ms per request on a kept-alive connection).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class AsgiServer:
    """Serve an ASGI app with uvicorn (httptools) until `stop()`."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, date_header: bool = True) -> None:
        self.app = app
        self.host = host
        self.port = port
        #: uvicorn's own Date header (the system clock); off when the app sets its own
        self.date_header = date_header
        self._transports: dict[Any, asyncio.Transport] = {}
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    def transport_for(self, client: Any) -> asyncio.Transport | None:
        """The transport of the connection from `client` (the ASGI scope's `client`)."""
        if isinstance(client, list):
            client = tuple(client)
        return self._transports.get(client)

    async def start(self) -> int:
        """Bind, start serving, and return the port."""
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            http=_protocol_class(self._transports),
            interface="asgi3",
            lifespan="off",
            proxy_headers=False,
            log_config=None,
            access_log=False,
            timeout_keep_alive=75,
            timeout_graceful_shutdown=2,
            date_header=self.date_header,
        )
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                sock.close()
                await self._task  # raises the start-up error
                raise RuntimeError(f"HTTP server on {self.host}:{self.port} stopped during start-up")
            await asyncio.sleep(0.005)
        return self.port

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._server = None
        self._task = None


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, host: str = "127.0.0.1", port: int = 0,
                    name: str = "asgi-server") -> Iterator[int]:
    """Serve `app` from a background thread with its own event loop; yields the port.

    For sync callers (the demo, tests) that need our web app reachable over loopback."""
    import threading

    server = AsgiServer(app, host, port)
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        holder["loop"] = asyncio.get_running_loop()
        holder["stop"] = asyncio.Event()
        try:
            holder["port"] = await server.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who reports it
            holder["error"] = exc
            ready.set()
            return
        ready.set()
        await holder["stop"].wait()
        await server.stop()

    thread = threading.Thread(target=lambda: asyncio.run(main()), name=name, daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError(f"the web app did not start on {host}:{port} within 30 s")
    if "error" in holder:
        thread.join(5)
        raise holder["error"]
    try:
        yield int(holder["port"])
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
