"""Signed tokens for payment links, unsubscribe links and VERP bounce addresses.

Built on `itsdangerous.Signer`, not its timed serializer: that one reads the system
clock, and here all time comes from the injected clock. The expiry instant travels in
the signed payload and is checked against the `now` the caller passes.

Payment links are now short random tokens kept in the store (`services.links`); the
signed payment tokens below are still read, so links sent before keep working until
they expire. Tokens are short on purpose (a payment link goes into an SMS): the payload is
``<message id hex>-<expiry unix seconds hex>`` and the signature HMAC-SHA1 in URL-safe
base64 (27 characters). HMAC-SHA1 is not weakened by SHA-1 collisions; a longer digest
would cost SMS characters for no practical gain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Sequence

from itsdangerous import BadSignature, Signer

_PAYMENT_SALT = "dispatcher.payment-link"
_UNSUBSCRIBE_SALT = "dispatcher.unsubscribe"
_VERP_SALT = "dispatcher.verp"
_VERP_SIG_LEN = 12  # hex characters: 48 bits, lower case (mail systems may fold case)
_VERP_LOCAL = re.compile(rf"^b-(\d{{1,19}})-([0-9a-f]{{{_VERP_SIG_LEN}}})$")


class LinkError(ValueError):
    """A token cannot be accepted. `reason` is `expired`, `bad_signature` or `malformed`."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class LinkSigner:
    """Signs and verifies per-message tokens with the operator's secret key.

    `previous_keys` are still accepted when verifying, so the key can be rotated
    without breaking links already sent.
    """

    def __init__(self, secret_key: str, *, previous_keys: Sequence[str] = ()) -> None:
        if not secret_key or not secret_key.strip():
            raise ValueError(
                "no signing key: set DISPATCHER_SIGNING_KEY (in the environment or .env) to a long"
                " random secret, e.g. the output of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        # itsdangerous signs with the last key and accepts any of them.
        keys = [*[k for k in previous_keys if k], secret_key]
        self._payment = Signer(keys, salt=_PAYMENT_SALT)
        self._unsubscribe = Signer(keys, salt=_UNSUBSCRIBE_SALT)
        self._verp_keys = [Signer(k, salt=_VERP_SALT).derive_key() for k in reversed(keys)]

    # -- payment links -------------------------------------------------------------

    def payment_token(self, message_id: int, expires_at: dt.datetime) -> str:
        """A token for the payment link of one message, valid until `expires_at`."""
        _require_aware(expires_at, "expires_at")
        _require_id(message_id)
        expiry = int(expires_at.timestamp())
        return self._payment.sign(f"{message_id:x}-{expiry:x}").decode("ascii")

    def verify_payment_token(self, token: str, now: dt.datetime) -> int:
        """The message id of a valid, unexpired payment token; `LinkError` otherwise."""
        _require_aware(now, "now")
        message_id, expires_at = self.read_payment_token(token)
        if now >= expires_at:
            raise LinkError("payment link has expired; a new reminder carries a fresh link", "expired")
        return message_id

    def read_payment_token(self, token: str) -> tuple[int, dt.datetime]:
        """The message id and expiry of a payment token with a valid signature, expired or
        not (`LinkError` for a bad signature or a malformed token)."""
        payload = self._unsign(self._payment, token, "payment link")
        try:
            id_hex, expiry_hex = payload.split("-")
            message_id, expiry = int(id_hex, 16), int(expiry_hex, 16)
            expires_at = dt.datetime.fromtimestamp(expiry, dt.UTC)
        except (ValueError, OverflowError, OSError):
            raise LinkError("payment link is malformed", "malformed") from None
        return message_id, expires_at

    def payment_link(self, public_url: str, message_id: int, expires_at: dt.datetime) -> str:
        """The full payment URL (`GET /p/{token}`) under the dispatcher's public URL."""
        return f"{public_url.rstrip('/')}/p/{self.payment_token(message_id, expires_at)}"

    # -- unsubscribe links -----------------------------------------------------------

    def unsubscribe_token(self, message_id: int) -> str:
        """A token for the e-mail unsubscribe link; it never expires (opt-outs must work)."""
        _require_id(message_id)
        return self._unsubscribe.sign(f"{message_id:x}").decode("ascii")

    def verify_unsubscribe_token(self, token: str) -> int:
        payload = self._unsign(self._unsubscribe, token, "unsubscribe link")
        try:
            return int(payload, 16)
        except ValueError:
            raise LinkError("unsubscribe link is malformed", "malformed") from None

    def unsubscribe_link(self, public_url: str, message_id: int) -> str:
        """The full one-click unsubscribe URL (`/email/unsubscribe/{token}`)."""
        return f"{public_url.rstrip('/')}/email/unsubscribe/{self.unsubscribe_token(message_id)}"

    # -- VERP return paths -----------------------------------------------------------

    def verp_address(self, message_id: int, domain: str) -> str:
        """A per-message envelope sender, `b-<id>-<sig>@domain`, so a bounce names its message."""
        _require_id(message_id)
        return f"b-{message_id}-{self._verp_sig(self._verp_keys[0], message_id)}@{domain}"

    def parse_verp(self, address: str) -> int | None:
        """The message id of a VERP address we signed, or None (not ours, or forged)."""
        address = address.strip().strip("<>").strip()
        local, at, _domain = address.rpartition("@")
        if not at:
            return None
        match = _VERP_LOCAL.match(local.lower())
        if match is None:
            return None
        message_id = int(match.group(1))
        for key in self._verp_keys:
            if hmac.compare_digest(self._verp_sig(key, message_id), match.group(2)):
                return message_id
        return None

    # -- internals -------------------------------------------------------------------

    @staticmethod
    def _verp_sig(key: bytes, message_id: int) -> str:
        return hmac.new(key, str(message_id).encode(), hashlib.sha256).hexdigest()[:_VERP_SIG_LEN]

    @staticmethod
    def _unsign(signer: Signer, token: str, what: str) -> str:
        try:
            return signer.unsign(token.strip()).decode("ascii")
        except BadSignature:
            raise LinkError(
                f"{what} signature is invalid (altered, truncated or signed with another key)",
                "bad_signature",
            ) from None
        except UnicodeError:
            raise LinkError(f"{what} is malformed", "malformed") from None


def _require_aware(value: dt.datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def _require_id(message_id: int) -> None:
    if isinstance(message_id, bool) or not isinstance(message_id, int) or message_id < 0:
        raise ValueError(f"message id must be a non-negative int, got {message_id!r}")
