"""Run the sandbox: `Sandbox` (async), `run_sandbox_in_thread` (sync), `serve` (the CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from aiosmtpd.smtp import SMTP

from dispatcher.channels.http11 import Http11Client
from dispatcher.clock import Clock, SystemClock
from dispatcher.sandbox.asgi_server import AsgiServer
from dispatcher.sandbox.options import OffsetClock, SandboxOptions
from dispatcher.sandbox.provider import TwilioSimulator
from dispatcher.sandbox.record_file import RecordFile
from dispatcher.sandbox.records import EmailRecord, Recorder
from dispatcher.sandbox.smtp_sink import SinkHandler, make_smtp_protocol
from dispatcher.sandbox.twilio_api import TwilioApi
from dispatcher.sandbox.webhooks import WebhookClient

DEFAULT_TWILIO_PORT = 8081
DEFAULT_SMTP_PORT = 2525
SMTP_HOSTNAME = "sandbox.dispatcher.local"


class Sandbox:
    """A Twilio-compatible HTTP API and an SMTP sink, in the running event loop.

    `Sandbox(**options)` takes the fields of `SandboxOptions` (or `options=` and
    overrides). After `await start()`: `twilio_url`, `smtp_host`, `smtp_port`,
    `smtp_url`, `account_sid`, `auth_token`. Records: `messages()`, `calls()`,
    `emails()` (dict snapshots with `count`), `email_records()`, `reset()`.
    """

    def __init__(self, options: SandboxOptions | None = None, **overrides: Any) -> None:
        self.options = replace(options, **overrides) if options is not None else SandboxOptions(**overrides)
        base = self.options.clock or SystemClock()
        self.clock: Clock = (OffsetClock(base, self.options.clock_offset_seconds)
                             if self.options.clock_offset_seconds else base)
        self._record_file = RecordFile(self.options.records_path) if self.options.records_path else None
        self.recorder = Recorder(self._record_file)
        self.simulator: TwilioSimulator | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._client: WebhookClient | None = None
        self._http: AsgiServer | None = None
        self._api: TwilioApi | None = None
        self._smtp: asyncio.Server | None = None
        self._smtp_sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._twilio_port: int | None = None
        self._smtp_port: int | None = None

    # -- addresses ---------------------------------------------------------------------

    @property
    def account_sid(self) -> str:
        return self.options.account_sid

    @property
    def auth_token(self) -> str:
        return self.options.auth_token

    @property
    def twilio_url(self) -> str:
        """Base URL for the Twilio SDK (`client.api.base_url`, DISPATCHER_TWILIO_API_URL)."""
        if self._twilio_port is None:
            raise RuntimeError("the sandbox is not started; await start() first")
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        return f"http://{host}:{self._twilio_port}"

    @property
    def smtp_host(self) -> str:
        return self.options.host

    @property
    def smtp_port(self) -> int:
        if self._smtp_port is None:
            raise RuntimeError("the sandbox is not started; await start() first")
        return self._smtp_port

    @property
    def smtp_url(self) -> str:
        """For DISPATCHER_SMTP_URL."""
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        return f"smtp://{host}:{self.smtp_port}"

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the Twilio and SMTP ports (0: free ports)."""
        # aiosmtpd logs every SMTP command (recipient addresses included) at INFO.
        smtp_log = logging.getLogger("mail.log")
        if smtp_log.level == logging.NOTSET:
            smtp_log.setLevel(logging.WARNING)
        self.loop = asyncio.get_running_loop()
        if self._record_file is not None:
            self.recorder.restore(self._record_file.load())
        self._client = WebhookClient(self.options.auth_token)
        self.simulator = TwilioSimulator(self.options, self.recorder, self._client, self.clock)
        # no Date header from uvicorn (the system clock): the app sets the sandbox clock's
        self._http = AsgiServer(app=None, host=self.options.host, port=self.options.twilio_port,  # type: ignore[arg-type]
                                date_header=False)
        self._api = TwilioApi(lambda: self.options, self.simulator, self._http.transport_for)
        self._http.app = self._api.app()
        try:
            self._twilio_port = await self._http.start()
            handler = SinkHandler(self.options, self.recorder, self._client, self.clock, self.simulator.spawn)
            loop = self.loop

            def session() -> SMTP:
                protocol = make_smtp_protocol(handler, loop, SMTP_HOSTNAME)
                self._smtp_sessions.add(protocol)
                return protocol

            self._smtp = await loop.create_server(session, self.options.host, self.options.smtp_port)
            self._smtp_port = self._smtp.sockets[0].getsockname()[1]
            self.simulator.resume()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop listening, cancel pending callbacks and bounces, close every connection."""
        if self._api is not None:
            self._api.stopping.set()
        if self.simulator is not None:
            await self.simulator.cancel_all()
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self._smtp is not None:
            self._smtp.close()
            for protocol in list(self._smtp_sessions):
                if protocol.transport is not None:
                    protocol.transport.close()
            await self._smtp.wait_closed()
            self._smtp = None
            await asyncio.sleep(0)  # let the sessions' connection_lost run
        if self.simulator is not None:
            await self.simulator.cancel_all()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._record_file is not None:
            self._record_file.close()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- control -----------------------------------------------------------------------

    def force_faults(self, *kinds: str) -> None:
        """Make the next create requests fail with these fault kinds, in order."""
        self._sim.faults.force(*kinds)

    async def drain(self, max_wait: float = 10.0) -> None:
        """Wait until every status callback, call flow and bounce in flight is done."""
        await self._sim.drain(max_wait)

    async def simulate_inbound(self, from_: str, to: str, body: str, url: str) -> dict[str, Any]:
        """POST a signed inbound SMS to `url`; returns {message_sid, status, body, error}."""
        return await self._sim.inbound(from_, to, body, url)

    def drain_threadsafe(self, max_wait: float = 10.0) -> None:
        """`drain()` from another thread (`run_sandbox_in_thread`)."""
        self._run_threadsafe(self.drain(max_wait), max_wait + 1)

    def simulate_inbound_threadsafe(
        self, from_: str, to: str, body: str, url: str, timeout: float = 15.0
    ) -> dict[str, Any]:
        """`simulate_inbound()` from another thread (`run_sandbox_in_thread`)."""
        result: dict[str, Any] = self._run_threadsafe(self.simulate_inbound(from_, to, body, url), timeout)
        return result

    def _run_threadsafe(self, coro: Any, timeout: float) -> Any:
        if self.loop is None:
            coro.close()
            raise RuntimeError("the sandbox is not started")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def _sim(self) -> TwilioSimulator:
        if self.simulator is None:
            raise RuntimeError("the sandbox is not started; await start() first")
        return self.simulator

    # -- records -----------------------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """Every SMS received, oldest first, with `count` per (to, body)."""
        return self.recorder.message_snapshots()

    def calls(self) -> list[dict[str, Any]]:
        """Every call received, oldest first, with spoken texts, digits and `count` per (to, url)."""
        return self.recorder.call_snapshots()

    def emails(self) -> list[dict[str, Any]]:
        """Every e-mail accepted, oldest first, with `count` per Message-ID."""
        return self.recorder.email_snapshots()

    def email_records(self) -> list[EmailRecord]:
        """The e-mails as records (with the raw bytes), oldest first."""
        with self.recorder.lock:
            return list(self.recorder.emails)

    def smtp_rejections(self) -> list[dict[str, Any]]:
        with self.recorder.lock:
            return [dict(r) for r in self.recorder.smtp_rejections]

    def inbound(self) -> list[dict[str, Any]]:
        with self.recorder.lock:
            return [dict(r) for r in self.recorder.inbound]

    def reset(self) -> None:
        """Forget every record (callbacks in flight still complete)."""
        self.recorder.reset()


@contextlib.contextmanager
def run_sandbox_in_thread(**options: Any) -> Iterator[Sandbox]:
    """Run a sandbox in a background thread with its own event loop (sync tests, demo, benchmarks).

    Yields the started `Sandbox`; its records are readable from the calling thread, and
    `drain_threadsafe()` / `simulate_inbound_threadsafe()` reach into its loop.
    """
    sandbox = Sandbox(**options)
    ready = threading.Event()
    failure: list[BaseException] = []
    holder: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        holder["stop"] = stop
        holder["loop"] = asyncio.get_running_loop()
        try:
            await sandbox.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who reports it
            failure.append(exc)
            ready.set()
            return
        ready.set()
        try:
            await stop.wait()
        finally:
            await sandbox.stop()

    thread = threading.Thread(target=lambda: asyncio.run(main()), name="dispatcher-sandbox", daemon=True)
    thread.start()
    if not ready.wait(timeout=30):
        raise RuntimeError("the sandbox did not start within 30 s")
    if failure:
        thread.join()
        raise failure[0]
    try:
        yield sandbox
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(timeout=30)


@dataclass(frozen=True)
class SandboxProcess:
    """A sandbox running in a process of its own (`run_sandbox_in_process`): its
    addresses, and its control endpoints over HTTP."""

    twilio_url: str
    smtp_url: str
    account_sid: str
    auth_token: str
    pid: int
    _http: Http11Client = field(default_factory=Http11Client, compare=False, repr=False)

    async def drain(self, max_wait: float = 10.0) -> None:
        """Wait until every callback, call flow and bounce in flight is done."""
        status, _ = await self._post("/sandbox/drain", {"max_wait": max_wait}, read_seconds=max_wait + 5)
        if status != 200:
            raise TimeoutError(f"the sandbox is still busy after {max_wait:g} s")

    async def simulate_inbound(self, from_: str, to: str, body: str, url: str) -> dict[str, Any]:
        """POST a signed inbound SMS to `url`; returns {message_sid, status, body, error}."""
        status, result = await self._post("/sandbox/inbound", {"from": from_, "to": to, "body": body, "url": url},
                                          read_seconds=30)
        if status != 200:
            raise RuntimeError(f"the sandbox refused the inbound SMS: {status} {result}")
        return result

    def close(self) -> None:
        """Close the control connection (the process is stopped by `run_sandbox_in_process`)."""
        self._http.close()

    async def _post(self, path: str, payload: dict[str, Any], *, read_seconds: float) -> tuple[int, Any]:
        status, _headers, body = await self._http.request(
            "POST", f"{self.twilio_url}{path}", headers=[("Content-Type", "application/json")],
            body=json.dumps(payload).encode(), timeout=read_seconds)
        return status, json.loads(body or b"null")


def _sandbox_process_main(options: SandboxOptions, conn: Any) -> None:
    """The spawned process: start, report the addresses, serve until SIGTERM."""

    async def main() -> None:
        sandbox = Sandbox(options)
        try:
            await sandbox.start()
        except BaseException as exc:
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
            raise
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        conn.send({"twilio_url": sandbox.twilio_url, "smtp_url": sandbox.smtp_url,
                   "account_sid": sandbox.account_sid, "auth_token": sandbox.auth_token})
        try:
            await stop.wait()
        finally:
            await sandbox.stop()

    asyncio.run(main())


@contextlib.contextmanager
def run_sandbox_in_process(**options: Any) -> Iterator[SandboxProcess]:
    """Run a sandbox in a spawned process (the demo: its CPU is then its own, not the
    sender's). Options must pickle: a clock shared with the caller is a `SharedClock`,
    behaviours are module-level functions. Stopped with SIGTERM on exit."""
    import multiprocessing

    from dispatcher.spawn import spawned

    parent, child = multiprocessing.get_context("spawn").Pipe()
    with spawned(_sandbox_process_main, (SandboxOptions(**options), child), name="dispatcher-sandbox") as process:
        child.close()
        try:
            if not parent.poll(60):
                raise RuntimeError("the sandbox process did not start within 60 s")
            started = parent.recv()
            if "error" in started:
                raise RuntimeError(f"the sandbox process failed to start: {started['error']}")
            assert process.pid is not None
            handle = SandboxProcess(pid=process.pid, **started)
            try:
                yield handle
            finally:
                handle.close()
        finally:
            parent.close()


def serve(
    host: str = "127.0.0.1",
    twilio_port: int = DEFAULT_TWILIO_PORT,
    smtp_port: int = DEFAULT_SMTP_PORT,
    latency_ms: float = 0.0,
    fail_ratio: float = 0.0,
    faults: str | None = None,
    **options: Any,
) -> int:
    """`dispatcher sandbox`: listen, print the two addresses, run until SIGINT/SIGTERM.

    Prints `twilio http://HOST:PORT` and `smtp HOST:PORT` on stdout, and the matching
    environment settings on stderr. Extra keyword arguments are `SandboxOptions` fields.
    Returns the exit status (0).
    """

    async def main() -> None:
        sandbox = Sandbox(
            host=host,
            twilio_port=twilio_port,
            smtp_port=smtp_port,
            latency_ms=latency_ms,
            fail_ratio=fail_ratio,
            faults=faults,
            **options,
        )
        await sandbox.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            print(f"twilio {sandbox.twilio_url}", flush=True)
            print(f"smtp {sandbox.smtp_host}:{sandbox.smtp_port}", flush=True)
            print(
                "# point the dispatcher at it:\n"
                f"#   TWILIO_ACCOUNT_SID={sandbox.account_sid}\n"
                f"#   TWILIO_AUTH_TOKEN={sandbox.auth_token}\n"
                f"#   DISPATCHER_TWILIO_API_URL={sandbox.twilio_url}\n"
                f"#   DISPATCHER_SMTP_URL={sandbox.smtp_url}\n"
                f"# records: {sandbox.twilio_url}/sandbox/messages, /sandbox/calls, /sandbox/emails\n"
                f"# a debtor's reply: POST {sandbox.twilio_url}/sandbox/inbound"
                ' {"from": "+8613812345678", "to": "<sms_from>", "body": "PAID",'
                ' "url": "<DISPATCHER_PUBLIC_URL>/twilio/sms/inbound"}',
                file=sys.stderr,
                flush=True,
            )
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await sandbox.stop()

    asyncio.run(main())
    return 0
