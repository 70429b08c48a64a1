"""Request parsing and authentication for the webhooks.

Twilio signs `<the URL it requested><sorted form params>`; behind a proxy the URL our
server sees differs from the one Twilio called, so the URL is rebuilt from the
configured public base URL + the request path (+ query), never from `request.url`.
E-mail bounces are authenticated with an HMAC-SHA256 of the raw body under the
operator's signing key.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl

from starlette.requests import Request
from twilio.request_validator import SIGNATURE_SETTINGS_HEADER, RequestValidator, get_signature_algorithm

#: Form fields beyond this many make a request malformed (Twilio sends about 20).
MAX_FIELDS = 200

BOUNCE_SIGNATURE_HEADER = "X-Dispatcher-Signature"


class Rejected(Exception):
    """Stop handling a request: answer `status` and count it as `result`."""

    def __init__(self, status: int, result: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.result = result
        self.detail = detail


class FormParams:
    """Form fields in order, with repeated names (`getall` is what Twilio's validator
    uses to sign every value of a repeated field)."""

    __slots__ = ("_items", "_first")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._first: dict[str, str] = {}
        for key, value in items:
            self._first.setdefault(key, value)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._first)

    def __contains__(self, key: object) -> bool:
        return key in self._first

    def __getitem__(self, key: str) -> str:
        return self._first[key]

    def __len__(self) -> int:
        return len(self._first)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._first.get(key, default)

    def getall(self, key: str) -> list[str]:
        return [v for k, v in self._items if k == key]


def parse_form(body: bytes, content_type: str | None) -> FormParams:
    """Parse an `application/x-www-form-urlencoded` body strictly (UTF-8, no NULs,
    bounded field count); `Rejected(400)` otherwise."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if body and media != "application/x-www-form-urlencoded":
        raise Rejected(400, "bad_request", "expected an application/x-www-form-urlencoded body")
    try:
        text = body.decode("utf-8")
        items = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict",
                          max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise Rejected(400, "bad_request", "the form body is not valid UTF-8 form data") from None
    for key, value in items:
        if "\x00" in key or "\x00" in value:
            raise Rejected(400, "bad_request", "the form body contains NUL characters")
    return FormParams(items)


def public_request_url(public_url: str, request: Request) -> str:
    """The URL the provider called: public base URL + path (+ query)."""
    query = request.scope.get("query_string", b"").decode("latin-1")
    path = request.scope.get("path", "/")
    return f"{public_url}{path}" + (f"?{query}" if query else "")


def check_twilio_signature(validator: RequestValidator | None, url: str, params: FormParams, request: Request) -> None:
    """`Rejected(403)` unless `X-Twilio-Signature` signs `url` + `params`."""
    signature = request.headers.get("x-twilio-signature")
    if validator is None or not signature:
        raise Rejected(403, "forbidden", "missing or unusable X-Twilio-Signature")
    algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
    try:
        valid = validator.validate(url, params, signature, algorithm)
    except (ValueError, TypeError, UnicodeError):
        valid = False
    if not valid:
        raise Rejected(403, "forbidden", "X-Twilio-Signature does not match")


def bounce_signature(key: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of the raw body (what the sandbox and MTAs' hooks send)."""
    return hmac.new(key.encode("utf-8"), body, hashlib.sha256).hexdigest()


def check_bounce_signature(key: str, body: bytes, request: Request) -> None:
    supplied = (request.headers.get(BOUNCE_SIGNATURE_HEADER) or "").strip().lower()
    if not key or not supplied:
        raise Rejected(403, "forbidden", f"missing {BOUNCE_SIGNATURE_HEADER}")
    if not hmac.compare_digest(bounce_signature(key, body).encode("ascii"), supplied.encode("utf-8", "replace")):
        raise Rejected(403, "forbidden", f"{BOUNCE_SIGNATURE_HEADER} does not match")
