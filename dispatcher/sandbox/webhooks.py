"""Outgoing HTTP from the sandbox: requests signed exactly as Twilio signs them.

Twilio's signature (`X-Twilio-Signature`) is base64 HMAC-SHA1 over the full URL
followed by every POST parameter name and value, sorted by name; the official
`RequestValidator.compute_signature` computes it, so receivers validate with the
official `RequestValidator.validate` and nothing here re-implements it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

from dispatcher.channels.http11 import Http11Client, form_body

log = logging.getLogger("dispatcher.sandbox")

USER_AGENT = "TwilioProxy/1.1 (dispatcher sandbox)"


@dataclass(frozen=True, slots=True)
class WebhookReply:
    status: int | None  # None: no HTTP answer (connection refused, timeout)
    body: str
    error: str | None = None


class WebhookClient:
    """One keep-alive HTTP client for every callback, TwiML fetch, inbound and bounce POST."""

    def __init__(self, auth_token: str, timeout: float = 10.0) -> None:
        self.validator = RequestValidator(auth_token)
        self._timeout = timeout
        self._http = Http11Client(user_agent=USER_AGENT)

    async def signed(self, url: str, params: Mapping[str, str], method: str = "POST") -> WebhookReply:
        """Send a Twilio-signed form request (POST) or query request (GET)."""
        params = {k: str(v) for k, v in params.items()}
        if method.upper() == "GET":
            parts = urlsplit(url)
            query = "&".join(q for q in (parts.query, urlencode(params)) if q)
            full = urlunsplit(parts._replace(query=query))
            headers = {"X-Twilio-Signature": self.validator.compute_signature(full, {})}
            return await self._send("GET", full, None, headers)
        body = form_body(params.items())
        headers = {
            "X-Twilio-Signature": self.validator.compute_signature(url, params),
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        }
        return await self._send("POST", url, body, headers)

    async def raw_post(self, url: str, body: bytes, headers: Mapping[str, str]) -> WebhookReply:
        return await self._send("POST", url, body, dict(headers))

    async def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> WebhookReply:
        try:
            status, _headers, data = await self._http.request(
                method, url, headers=headers.items(), body=body, timeout=self._timeout)
            return WebhookReply(status, data.decode("utf-8", "replace"))
        except (TimeoutError, OSError, ValueError) as exc:
            log.debug("sandbox webhook %s %s failed: %s", method, urlsplit(url).path, type(exc).__name__)
            return WebhookReply(None, "", type(exc).__name__)

    async def aclose(self) -> None:
        await self._http.aclose()
