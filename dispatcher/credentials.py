"""Secrets people hold: passwords (argon2id at rest) and API tokens (shown once, stored
as a SHA-256 digest).

Why two hashes: a password is chosen by a person and may be guessable, so it is stored
with a slow, memory-hard hash (argon2id, `argon2-cffi`'s RFC 9106 defaults) that makes
guessing from a stolen database expensive. An API token is 256 random bits made here:
nobody can guess it, so a slow hash would add nothing but latency to every API request;
a plain SHA-256 digest (what GitHub and PyPI do for their tokens) keeps a stolen
database from yielding usable tokens, and lets the token be looked up by its digest (a
unique index) instead of comparing against every stored hash.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

#: Tokens start with this, so a leaked one is recognisable (secret scanners, logs).
TOKEN_PREFIX = "dsp_"
PASSWORD_MIN = 10
PASSWORD_MAX = 1024


class PasswordRefused(ValueError):
    """A new password that is not acceptable; the message says why."""


def check_new_password(password: str) -> str:
    """The password if acceptable (length only, as NIST SP 800-63B advises), else raises."""
    if len(password) < PASSWORD_MIN:
        raise PasswordRefused(f"a password needs at least {PASSWORD_MIN} characters (a passphrase is best)")
    if len(password) > PASSWORD_MAX:
        raise PasswordRefused(f"a password has at most {PASSWORD_MAX} characters")
    return password


class Passwords:
    """argon2id hashing and verification, and a dummy hash to verify against when there
    is no such user, so that a sign-in takes as long whether the name exists or not."""

    def __init__(self, hasher: PasswordHasher | None = None, *, max_concurrent: int = 4) -> None:
        self._hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile (64 MiB)
        # each hash takes 64 MiB and a core for a while: a flood of sign-ins queues here
        # instead of exhausting the server's memory
        self._slots = threading.BoundedSemaphore(max_concurrent)

    def hash(self, password: str) -> str:
        with self._slots:
            return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """True if `password` matches `stored`; with no stored hash, the same work is done
        against a dummy and False returned."""
        against = stored or self._dummy
        with self._slots:
            try:
                return self._hasher.verify(against, password) and stored is not None
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)

    @functools.cached_property
    def _dummy(self) -> str:
        return self.hash(secrets.token_urlsafe(16))


def light_passwords() -> Passwords:
    """argon2id with small parameters: for tests and the demo only, never for real users."""
    return Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def new_api_token() -> str:
    """A fresh API token: the prefix and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """The stored form of an API token (hex SHA-256); see the module docstring for why."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_session_id() -> str:
    """A console session's secret (the cookie's value); stored as `token_digest`."""
    return secrets.token_urlsafe(32)
