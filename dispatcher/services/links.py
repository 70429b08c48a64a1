"""Short payment links: `<links base URL>/p/<token>`, a random token kept in the store.

A token is `secrets.token_urlsafe(12)`: 16 characters of the URL-safe base64 alphabet
(A-Z a-z 0-9 - _), 96 random bits, so it can neither be guessed nor enumerated. It is
minted when a message is composed (`mint`) and stored with the message, the case and
its expiry (`link_tokens`). A link is short so that a reminder costs fewer SMS segments:
with a short base URL it takes about 40 characters, where a signed link took 75.

`resolve` is the one place that turns a token into what it points at; it also reads
the signed tokens of links sent before short links existed (`LinkSigner`), which keep
working until they expire. Whoever serves `/p/{token}` calls it and must show no debtor
data for an expired target or for None.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Engine

from dispatcher.config import Config
from dispatcher.links import LinkError, LinkSigner
from dispatcher.store.tables import link_tokens_t, messages_t

#: Random bytes per token: `token_urlsafe(12)` is 16 characters.
TOKEN_BYTES = 12
TOKEN_LENGTH = 16
_SHORT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


@dataclass(frozen=True, slots=True)
class LinkTarget:
    """What a payment-link token points at."""

    token: str
    case_id: str
    message_id: int
    expires_at: dt.datetime
    #: past its expiry: show the "link expired" page, never the debtor's data
    expired: bool
    #: an old signed link (sent before short links); False for a stored short token
    signed: bool = False


def new_token() -> str:
    """A fresh random token of 16 URL-safe characters."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def links_base_url(config: Config, public_url: str) -> str:
    """`[links] base_url`, or the service's public URL when it is not set."""
    return (config.links.base_url or public_url).rstrip("/")


def link_url(base_url: str, token: str) -> str:
    """The payment link of `token`: `<base_url>/p/<token>`."""
    return f"{base_url.rstrip('/')}/p/{token}"


def token_row(message_id: int, case_id: str, now: dt.datetime, expires_at: dt.datetime) -> dict[str, object]:
    """A fresh token's row for `link_tokens` (insert it with `insert_tokens`)."""
    return {"token": new_token(), "message_id": message_id, "case_id": case_id, "created_at": now,
            "expires_at": expires_at}


def insert_tokens(conn: Connection, rows: list[dict[str, object]]) -> None:
    """Store minted tokens (one executemany)."""
    if rows:
        conn.execute(insert(link_tokens_t), rows)


def mint(conn: Connection, message_id: int, case_id: str, now: dt.datetime, expires_at: dt.datetime) -> str:
    """Store a new token for `message_id` of `case_id`, valid until `expires_at`; the token."""
    row = token_row(message_id, case_id, now, expires_at)
    insert_tokens(conn, [row])
    return str(row["token"])


def resolve(engine: Engine, signer: LinkSigner, token: str, now: dt.datetime) -> LinkTarget | None:
    """What the payment-link token `token` points at, as of `now` (the injected clock).

    A stored short token, or an old signed token (its signature checked, its message
    looked up). None when the token is unknown, malformed, forged or its message gone;
    a known token past its expiry comes back with `expired=True`.
    """
    token = token.strip()
    if _SHORT_TOKEN.match(token):
        with engine.connect() as conn:
            row = conn.execute(
                select(link_tokens_t.c.case_id, link_tokens_t.c.message_id, link_tokens_t.c.expires_at)
                .where(link_tokens_t.c.token == token)
            ).first()
        if row is None:
            return None
        return LinkTarget(token, row.case_id, row.message_id, row.expires_at, expired=now >= row.expires_at)
    try:
        message_id, expires_at = signer.read_payment_token(token)
    except LinkError:
        return None
    with engine.connect() as conn:
        case_id = conn.execute(select(messages_t.c.case_id).where(messages_t.c.id == message_id)).scalar()
    if case_id is None:
        return None
    return LinkTarget(token, case_id, message_id, expires_at, expired=now >= expires_at, signed=True)
