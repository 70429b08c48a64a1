"""CPU per SMS of the Twilio SDK's HTTP transport: `channels.http11` against httpx (and aiohttp).

    .venv/bin/python bench/transport_bench.py [--messages 3000] [--rounds 3] [--concurrency 64]
        [--latency-ms 50] [--variants http11,httpx,aiohttp]

Why this exists: the provider call is the largest single item of a message's CPU budget,
and the choice between owning a small HTTP/1.1 client (`http11`, on httptools) and using
httpx (already a dependency) is decided by what each costs per message.

- The sandbox runs as a separate process (as in `send_bench.py`), so its CPU is not ours.
- Each variant is the same `TwilioSmsChannel` (the official async SDK, `messages.create`)
  with only its `AsyncHttpClient` swapped:
  - `http11`: the shipped `TwilioHttpClient` on `channels.http11.Http11Client`;
  - `httpx`: the same adapter on one `httpx.AsyncClient` (keep-alive pool, per-request
    timeout, exceptions mapped onto connect error / ambiguous failure);
  - `aiohttp`: the SDK's own `AsyncTwilioHttpClient` (for reference only: it ignores its
    timeout and hides response headers);
  - `before` (with `--before FILE`): the shipped adapter over the `Http11Client` of another
    version of `http11.py`, e.g. `git show main:dispatcher/channels/http11.py > /tmp/h.py`,
    to compare two versions in one process.
- Two measurements per variant: "SDK + transport" (`channel.send` of a ready message:
  the floor of a message before any of our work) and "transport alone" (the adapter's
  `request` with the same form fields and auth, without the SDK around it).
- The variants alternate within each round (A B C, A B C, ...) in one process against
  one sandbox, so a change in the machine's load hits them alike; the median of the
  rounds is reported with its ratio to `http11`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from twilio.http import AsyncHttpClient
from twilio.http.response import Response

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from send_bench import (  # noqa: E402
    BASELINE_BODY,
    PUBLIC_URL,
    SMS_FROM,
    SandboxProcess,
    cpu_seconds,
    machine,
    sandbox_process,
)

from dispatcher.channels.base import OutboundMessage  # noqa: E402
from dispatcher.channels.http11 import ConnectError, ResponseError, form_body  # noqa: E402
from dispatcher.channels.twilio_client import _pairs  # noqa: E402
from dispatcher.channels.twilio_sms import TwilioSmsChannel  # noqa: E402
from dispatcher.domain import Channel  # noqa: E402


class HttpxTwilioHttpClient(AsyncHttpClient):
    """What an httpx-based replacement of `TwilioHttpClient` would be: the same request
    building (precomputed auth, `form_body`), one pooled `httpx.AsyncClient`, httpx's
    exceptions mapped onto the sender's contract."""

    def __init__(self, timeout: float, pool: int) -> None:
        super().__init__(logging.getLogger("twilio.http_client"), True, timeout)
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=4.0)
        self._client = httpx.AsyncClient(limits=limits, follow_redirects=False, trust_env=True)
        self._auth: tuple[tuple[str, str], str] | None = None

    async def request(self, method: str, url: str, params: dict[str, object] | None = None,
                      data: dict[str, object] | None = None, headers: dict[str, str] | None = None,
                      auth: tuple[str, str] | None = None, timeout: float | None = None,  # noqa: ASYNC109
                      allow_redirects: bool = False) -> Response:
        sent = dict(headers or {})
        if auth is not None:
            if self._auth is None or self._auth[0] != auth:
                self._auth = (auth, httpx.BasicAuth(*auth)._auth_header)
            sent["Authorization"] = self._auth[1]
        body = None
        if data:
            body = form_body(_pairs(data))
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            r = await self._client.request(method.upper(), url, params=_pairs(params) or None, content=body,
                                           headers=sent, timeout=timeout or self.timeout or 30.0)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ConnectError(str(exc)) from exc
        except httpx.TimeoutException as exc:
            raise TimeoutError(str(exc)) from exc
        except httpx.TransportError as exc:
            raise ResponseError(str(exc)) from exc
        return Response(r.status_code, r.text, r.headers)

    async def close(self) -> None:
        await self._client.aclose()


BEFORE: Any = None  # the module loaded from --before


def load_module(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("http11_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_channel(variant: str, sandbox: SandboxProcess, concurrency: int) -> TwilioSmsChannel:
    channel = TwilioSmsChannel(sandbox.account_sid, sandbox.auth_token, sandbox.twilio_url, timeout=15.0)
    if variant == "http11":
        return channel
    if variant == "before":
        channel._http._http = BEFORE.Http11Client()
        return channel
    http: Any
    if variant == "httpx":
        http = HttpxTwilioHttpClient(15.0, concurrency)
    elif variant == "aiohttp":
        from twilio.http.async_http_client import AsyncTwilioHttpClient

        http = AsyncTwilioHttpClient(pool_connections=True, timeout=15.0)
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    channel._client.http_client = http
    channel._http = http
    return channel


async def measure(variant: str, sandbox: SandboxProcess, count: int, concurrency: int,
                  transport_only: bool) -> float:
    """CPU µs per message of `count` sends at `concurrency`, after a warm-up."""
    channel = make_channel(variant, sandbox, concurrency)
    gate = asyncio.Semaphore(concurrency)
    http = channel._client.http_client
    url = f"{sandbox.twilio_url}/2010-04-01/Accounts/{sandbox.account_sid}/Messages.json"
    auth = (sandbox.account_sid, sandbox.auth_token)
    sdk_headers = {"User-Agent": "twilio-python/9.13.0 (Linux x86_64) Python/3.11", "X-Twilio-Client": "python-9.13.0",
                   "Accept-Charset": "utf-8", "Accept": "application/json"}

    async def via_sdk(i: int) -> None:
        result = await channel.send(OutboundMessage(
            message_id=i, case_id=f"F{i}", channel=Channel.SMS, to=f"+86137{i:08d}", body=BASELINE_BODY,
            idempotency_key=f"f{i}", sender=SMS_FROM, status_callback=f"{PUBLIC_URL}/twilio/sms/status?m={i}"))
        if not result.provider_id:
            raise RuntimeError(f"{variant}: {result}")

    async def alone(i: int) -> None:
        data = {"To": f"+86137{i:08d}", "From": SMS_FROM, "Body": BASELINE_BODY,
                "StatusCallback": f"{PUBLIC_URL}/twilio/sms/status?m={i}"}
        response = await http.request("POST", url, data=data, headers=sdk_headers, auth=auth, timeout=15.0)
        if response.status_code != 201:
            raise RuntimeError(f"{variant}: {response.status_code} {response.text[:200]}")

    one: Callable[[int], Any] = alone if transport_only else via_sdk

    async def gated(i: int) -> None:
        async with gate:
            await one(i)

    try:
        await asyncio.gather(*(gated(i) for i in range(100)))  # warm-up: connections, caches
        cpu0 = cpu_seconds()
        await asyncio.gather(*(gated(i) for i in range(100, 100 + count)))
        cpu = cpu_seconds() - cpu0
    finally:
        await channel.aclose()
    return 1e6 * cpu / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--variants", default="http11,httpx,aiohttp")
    parser.add_argument("--before", default=None, help="another http11.py: adds the variant `before`")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if args.before:
        global BEFORE
        BEFORE = load_module(args.before)
        variants.insert(1, "before")
    for name in ("TWILIO_REGION", "TWILIO_EDGE"):
        os.environ.pop(name, None)
    warnings.simplefilter("ignore", DeprecationWarning)  # aiohttp's, through the SDK
    logging.getLogger("dispatcher").setLevel(logging.ERROR)
    results: dict[tuple[str, bool], list[float]] = {}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with sandbox_process(args.latency_ms) as sandbox:
        for r in range(args.rounds):
            for transport_only in (False, True):
                for variant in variants:
                    us = asyncio.run(measure(variant, sandbox, args.messages, args.concurrency, transport_only))
                    results.setdefault((variant, transport_only), []).append(us)
                    what = "transport alone" if transport_only else "SDK + transport"
                    print(f"round {r + 1}: {variant:8} {what}: {us:6.1f} µs CPU/SMS", file=sys.stderr)
    load_after = os.getloadavg()
    print(f"\nmachine: {machine()}")
    print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"{time.perf_counter() - t0:.0f} s; {args.rounds} rounds x {args.messages} SMS, concurrency "
          f"{args.concurrency}, sandbox latency {args.latency_ms:g} ms\n")
    print("| transport | SDK + transport, µs CPU/SMS (median; rounds) | vs http11 "
          "| transport alone, µs CPU/request (median; rounds) | vs http11 |")
    print("|---|---:|---:|---:|---:|")
    base = {t: statistics.median(results[("http11", t)]) for t in (False, True)} if "http11" in variants else None
    for variant in variants:
        cells = []
        for t in (False, True):
            runs = results[(variant, t)]
            med = statistics.median(runs)
            cells.append(f"{med:.0f} ({', '.join(f'{x:.0f}' for x in runs)})")
            cells.append(f"{med / base[t]:.2f}" if base else "–")
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
