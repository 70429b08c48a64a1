"""What the Twilio SMS and voice channels share: the SDK client and outcome mapping.

The official SDK does the Twilio part (resources, parameters, JSON, errors) on our
`TwilioHttpClient`, an `AsyncHttpClient` over the small keep-alive client of
`dispatcher.channels.http11` instead of the SDK's `AsyncTwilioHttpClient` (aiohttp),
which in twilio 9.13:
- ignores the `timeout` given to its constructor (every request goes out with
  `timeout=None`, i.e. no timeout at all), so a hung provider would hang the sender;
- creates its aiohttp session in `__init__`, outside the event loop that later uses it;
- passes Basic auth as aiohttp's deprecated `auth=` argument;
- does not expose response headers to the caller of `create_async`, and
  `TwilioRestException` does not carry them, so a 429's `Retry-After` would be lost;
- costs ~90 µs of CPU per request in aiohttp alone (see `http11`).

Every answer's `Date` header is also read against our clock: `TwilioHttpClient.skew` is
the provider's clock minus ours as last measured (see `channels.reconcile.ClockSkew`),
which places an attempt stamped on our clock onto the provider's.

Error codes: `address_outcome` maps a Twilio error code (a refusal, or the `ErrorCode` of
a failed message's status callback) to a domain `AddressOutcome`; the services act on
that, never on Twilio's numbers.

Outcome mapping (`result_for_error`), the part of the at-most-once contract that
depends on Twilio:

| what happened | SendResult |
|---|---|
| HTTP 429 | retryable, `retry_after` from the `Retry-After` header |
| HTTP 5xx | retryable, **ambiguous** (Twilio may have created it; reconcile first) |
| HTTP 401/403 | retryable (credentials are an operator problem, not the message's) |
| other 4xx | failed, not retryable; an address error says "invalid address" |
| cannot connect: refused, reset or timed out connecting (nothing sent) | retryable, not ambiguous, unreachable |
| timeout, reset, disconnect, anything else | retryable, **ambiguous** |

`unreachable` (the connection could not even be opened) counts toward the provider's
circuit breaker (`channels.guarded`); a timeout or reset once the request went out does
not (the provider may be slow or flaky, not down). `probe()` on the channels asks Twilio
for one record of a list, which any answer (even a refusal) proves reachable.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from dispatcher.channels.base import SendResult
from dispatcher.channels.http11 import ConnectError, Http11Client, form_body
from dispatcher.channels.reconcile import ClockSkew
from dispatcher.clock import Clock, SystemClock
from dispatcher.domain import AddressOutcome, MessageStatus
from dispatcher.logs import mask

#: What Twilio error codes say about the destination address. Refusals when sending:
#: 21211 ... 13224 (not a valid or reachable number); delivery failures in status
#: callbacks: 30005 (unknown handset) and 30006 (landline or unreachable carrier). 21610:
#: the recipient replied STOP at the carrier, and Twilio refuses until they reply START.
ADDRESS_OUTCOMES: Mapping[int, AddressOutcome] = {
    **dict.fromkeys((21211, 21214, 21217, 21401, 21407, 21421, 21612, 21614, 13223, 13224, 30005, 30006),
                    AddressOutcome.INVALID),
    21610: AddressOutcome.CARRIER_OPT_OUT,
}

MESSAGE_STATUS: Mapping[str, MessageStatus] = {
    "accepted": MessageStatus.SENT,
    "scheduled": MessageStatus.SENT,
    "queued": MessageStatus.SENT,
    "sending": MessageStatus.SENT,
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.READ,
    "undelivered": MessageStatus.UNDELIVERED,
    "failed": MessageStatus.FAILED,
    "canceled": MessageStatus.CANCELLED,
}
CALL_STATUS: Mapping[str, MessageStatus] = {
    "queued": MessageStatus.SENT,
    "initiated": MessageStatus.SENT,
    "ringing": MessageStatus.RINGING,
    "in-progress": MessageStatus.IN_PROGRESS,
    "completed": MessageStatus.COMPLETED,
    "busy": MessageStatus.BUSY,
    "no-answer": MessageStatus.NO_ANSWER,
    "failed": MessageStatus.FAILED,
    "canceled": MessageStatus.CANCELLED,
}

_PROBE: ContextVar[dict[str, Any] | None] = ContextVar("dispatcher_twilio_probe", default=None)
_PHONE = re.compile(r"\+?\d[\d ()-]{6,}\d")


def scrub(text: str) -> str:
    """Mask phone numbers inside a provider's error text (it may quote the number)."""
    return _PHONE.sub(lambda m: mask(re.sub(r"[ ()-]", "", m.group())), text)


def _pairs(values: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in (values or {}).items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None:
                out.append((key, str(item)))
    return out


class TwilioHttpClient(AsyncHttpClient):
    """The SDK's async HTTP client interface over `http11.Http11Client`, with a working
    timeout, visible response headers (the 429 probe), a precomputed auth header, and
    the provider's clock skew measured from every answer's `Date` header."""

    def __init__(self, timeout: float, clock: Clock | None = None) -> None:
        super().__init__(logging.getLogger("twilio.http_client"), True, timeout)
        self._http = Http11Client()  # the SDK sends its own User-Agent
        self._auth: tuple[tuple[str, str], str] | None = None
        self.clock = clock or SystemClock()
        #: the provider's clock minus ours, from the latest answer with a Date header
        self.skew: ClockSkew | None = None

    def _authorization(self, auth: tuple[str, str]) -> str:
        if self._auth is None or self._auth[0] != auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self._auth = (auth, f"Basic {token}")
        return self._auth[1]

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK's signature
        allow_redirects: bool = False,
    ) -> Response:
        sent_headers = list((headers or {}).items())
        if auth is not None:
            sent_headers.append(("Authorization", self._authorization(auth)))
        query = _pairs(params)
        if query:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(query)}"
        body = None
        if data:
            body = form_body(_pairs(data))
            sent_headers.append(("Content-Type", "application/x-www-form-urlencoded"))
        sent_at = self.clock.now()
        status, response_headers, raw = await self._http.request(
            method.upper(), url, headers=sent_headers, body=body, timeout=timeout or self.timeout or 30.0)
        self._measure_skew(response_headers, sent_at)
        probe = _PROBE.get()
        if probe is not None:
            probe["status"] = status
            probe["headers"] = response_headers
        return Response(status, raw.decode("utf-8", "replace"), response_headers)

    def _measure_skew(self, headers: Mapping[str, str], sent_at: dt.datetime) -> None:
        value = next((v for k, v in headers.items() if k.lower() == "date"), None)
        if not value:
            return
        try:
            date = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return
        if date.tzinfo is None:  # RFC 7231: an HTTP date is GMT
            date = date.replace(tzinfo=dt.UTC)
        self.skew = ClockSkew.measure(date, sent_at, self.clock.now())

    async def close(self) -> None:
        await self._http.aclose()


@contextlib.contextmanager
def response_probe() -> Iterator[dict[str, Any]]:
    """Collect the status and headers of the last response received in this task."""
    probe: dict[str, Any] = {}
    token = _PROBE.set(probe)
    try:
        yield probe
    finally:
        _PROBE.reset(token)


def make_client(
    account_sid: str, auth_token: str, api_url: str | None, timeout: float, clock: Clock | None = None
) -> tuple[Client, TwilioHttpClient]:
    """The official client on our HTTP client; `api_url` overrides the API host (the
    sandbox); `clock` is the one that stamps attempts (the skew is measured against it)."""
    if not account_sid or not auth_token:
        raise ValueError("Twilio needs an account SID and an auth token: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
    if timeout <= 0:
        raise ValueError("timeout must be positive (seconds)")
    http = TwilioHttpClient(timeout, clock)
    client = Client(account_sid, auth_token, http_client=http)
    if api_url:
        # TWILIO_REGION / TWILIO_EDGE in the environment would rewrite the overridden host.
        client.region = None
        client.edge = None
        client.api.base_url = api_url.rstrip("/")
    return client, http


def address_outcome(error_code: str | int | None) -> AddressOutcome:
    """What a Twilio error code (as an int, or the text of a callback's `ErrorCode`)
    says about the address; `NONE` for any other or no code."""
    if error_code is None:
        return AddressOutcome.NONE
    try:
        code = int(str(error_code).strip())
    except ValueError:
        return AddressOutcome.NONE
    return ADDRESS_OUTCOMES.get(code, AddressOutcome.NONE)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds, or an HTTP date (against Date)."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
        sent = parsedate_to_datetime(lowered["date"])
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (when - sent).total_seconds())


def result_for_error(exc: BaseException, probe: Mapping[str, Any], what: str) -> SendResult:
    """Map an exception from `create_async` onto a SendResult (see the module table)."""
    if isinstance(exc, TwilioRestException):
        code = exc.code
        detail = f"Twilio {exc.status}/{code}: {scrub(str(exc.msg))}"
        if exc.status == 429:
            return SendResult(
                None,
                MessageStatus.FAILED,
                retryable=True,
                error=f"rate limited: {detail}",
                retry_after=parse_retry_after(probe.get("headers")),
            )
        if exc.status >= 500:
            return SendResult(
                None,
                MessageStatus.FAILED,
                retryable=True,
                ambiguous=True,
                error=f"provider error, {what} may have been created: {detail}",
            )
        if exc.status in (401, 403):
            return SendResult(
                None,
                MessageStatus.FAILED,
                retryable=True,
                error=f"authentication failed, check TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN: {detail}",
            )
        outcome = address_outcome(code)
        if outcome is AddressOutcome.INVALID:
            return SendResult(None, MessageStatus.FAILED, error=f"invalid address: {detail}")
        if outcome is AddressOutcome.CARRIER_OPT_OUT:
            return SendResult(None, MessageStatus.FAILED, error=f"recipient opted out at the carrier: {detail}")
        return SendResult(None, MessageStatus.FAILED, error=f"refused: {detail}")
    if isinstance(exc, ConnectError):
        return SendResult(
            None,
            MessageStatus.FAILED,
            retryable=True,
            error=f"cannot connect to Twilio ({type(exc).__name__}); nothing was sent",
            unreachable=True,
        )
    if isinstance(exc, TimeoutError):
        return SendResult(
            None,
            MessageStatus.FAILED,
            retryable=True,
            ambiguous=True,
            error=f"timeout waiting for Twilio; {what} may have been created",
        )
    name = type(exc).__name__
    if isinstance(exc, OSError | TwilioException):
        return SendResult(
            None,
            MessageStatus.FAILED,
            retryable=True,
            ambiguous=True,
            error=f"connection failed after the request was sent ({name}); {what} may have been created",
        )
    return SendResult(
        None,
        MessageStatus.FAILED,
        retryable=True,
        ambiguous=True,
        error=f"unexpected error ({name}); {what} may have been created",
    )
