"""What the Twilio SMS and voice channels share: the SDK client and outcome mapping.

`TwilioAioHttpClient` exists because `AsyncTwilioHttpClient` in twilio 9.13:
- ignores the `timeout` given to its constructor (every request goes out with
  `timeout=None`, i.e. no timeout at all), so a hung provider would hang the sender;
- creates its aiohttp session in `__init__`, outside the event loop that later uses it;
- passes Basic auth as aiohttp's deprecated `auth=` argument;
- does not expose response headers to the caller of `create_async`, and
  `TwilioRestException` does not carry them, so a 429's `Retry-After` would be lost.
The subclass fixes these and is otherwise the SDK's own client.

Outcome mapping (`result_for_error`), the part of the at-most-once contract that
depends on Twilio:

| what happened | SendResult |
|---|---|
| HTTP 429 | retryable, `retry_after` from the `Retry-After` header |
| HTTP 5xx | retryable, **ambiguous** (Twilio may have created it; reconcile first) |
| HTTP 401/403 | retryable (credentials are an operator problem, not the message's) |
| other 4xx | failed, not retryable; an address error says "invalid address" |
| connection refused (nothing sent) | retryable, not ambiguous |
| timeout, reset, disconnect, anything else | retryable, **ambiguous** |
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from dispatcher.channels.base import SendResult
from dispatcher.domain import MessageStatus
from dispatcher.logs import mask

#: Twilio error codes that mean the destination address is unusable.
ADDRESS_ERROR_CODES = frozenset({21211, 21214, 21217, 21401, 21407, 21421, 21612, 21614, 13223, 13224})
#: The recipient replied STOP at the carrier: Twilio refuses until they reply START.
OPTED_OUT_CODES = frozenset({21610})

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


class TwilioAioHttpClient(AsyncTwilioHttpClient):
    """The SDK's async HTTP client with a working timeout and visible response headers."""

    def __init__(self, timeout: float) -> None:
        super().__init__(pool_connections=False, timeout=timeout)
        self._session: aiohttp.ClientSession | None = None

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
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        sent_headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            sent_headers["Authorization"] = f"Basic {token}"
        body = urlencode(_pairs(data)).encode() if data else None
        async with self._session.request(
            method.upper(),
            url,
            params=_pairs(params) or None,
            data=body,
            headers=sent_headers,
            timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
            allow_redirects=allow_redirects,
        ) as response:
            text = await response.text()
            response_headers = dict(response.headers)
        probe = _PROBE.get()
        if probe is not None:
            probe["status"] = response.status
            probe["headers"] = response_headers
        return Response(response.status, text, response_headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@contextlib.contextmanager
def response_probe() -> Iterator[dict[str, Any]]:
    """Collect the status and headers of the last response received in this task."""
    probe: dict[str, Any] = {}
    token = _PROBE.set(probe)
    try:
        yield probe
    finally:
        _PROBE.reset(token)


def make_client(account_sid: str, auth_token: str, api_url: str | None, timeout: float) -> tuple[Client, TwilioAioHttpClient]:
    """The official client on our HTTP client; `api_url` overrides the API host (the sandbox)."""
    if not account_sid or not auth_token:
        raise ValueError("Twilio needs an account SID and an auth token: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
    if timeout <= 0:
        raise ValueError("timeout must be positive (seconds)")
    http = TwilioAioHttpClient(timeout)
    client = Client(account_sid, auth_token, http_client=http)
    if api_url:
        # TWILIO_REGION / TWILIO_EDGE in the environment would rewrite the overridden host.
        client.region = None
        client.edge = None
        client.api.base_url = api_url.rstrip("/")
    return client, http


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
        if code in ADDRESS_ERROR_CODES:
            return SendResult(None, MessageStatus.FAILED, error=f"invalid address: {detail}")
        if code in OPTED_OUT_CODES:
            return SendResult(None, MessageStatus.FAILED, error=f"recipient opted out at the carrier: {detail}")
        return SendResult(None, MessageStatus.FAILED, error=f"refused: {detail}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return SendResult(
            None,
            MessageStatus.FAILED,
            retryable=True,
            error=f"cannot connect to Twilio ({type(exc).__name__}); nothing was sent",
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
    if isinstance(exc, aiohttp.ClientError | OSError | TwilioException):
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


def created_at_or_after(created: dt.datetime | None, floor: dt.datetime) -> bool:
    """Whether a provider record (second resolution, UTC) may belong to an attempt since `floor`."""
    return created is None or created >= floor
