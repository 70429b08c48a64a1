"""Idempotency of webhook steps by key, not by text.

Providers deliver a webhook late, twice and in parallel. A step that must take effect
once (an inbound SMS per `MessageSid`, a promise to pay per call, ...) first claims its
key in `dedupe_keys` with `INSERT ... ON CONFLICT DO NOTHING`, in the same transaction
as its effects: the first delivery inserts the key and applies the effects; a duplicate
finds the key taken and changes nothing. On PostgreSQL a concurrent duplicate waits on
the primary key until the first transaction ends (then sees its key, or takes it if
that one rolled back); on SQLite the insert takes the one write lock. No advisory
locks, no pattern matching on event JSON.

Keys are `<step>:<id>`; the steps are the constants below. An id too long for the
column (a forged SID) is replaced by its sha256, so distinct ids never share a key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from dispatcher.store.tables import dedupe_keys_t

#: An inbound SMS, per MessageSid.
INBOUND_SMS = "sms-in"
#: A person confirmed their identity on a call, per call's message id.
IVR_IDENTITY = "ivr-identity"
#: A promise to pay made on a call, per call's message id.
IVR_PROMISE = "ivr-promise"
#: A link asked for on a call, decided once (queued or refused by the gate), per the
#: link's message key (`ivr-link:<message id>`, `ivr-self-service:<message id>`).
IVR_LINK = "ivr-request"

_MAX_KEY = 200


def dedupe_key(step: str, ident: str | int) -> str:
    """The key of `step` for `ident` (a SID or a message id)."""
    key = f"{step}:{ident}"
    if len(key) <= _MAX_KEY:
        return key
    return f"{step}:sha256:{hashlib.sha256(str(ident).encode('utf-8')).hexdigest()}"


def claim(conn: Connection, key: str, at: dt.datetime) -> bool:
    """Take `key` in this transaction: True the first time, False when it was taken
    before (a duplicate delivery: apply nothing)."""
    name = conn.dialect.name
    if name not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"database {name!r} is not supported; use PostgreSQL or SQLite")
    dialect: Any = postgresql if name == "postgresql" else sqlite
    inserted = conn.execute(
        dialect.insert(dedupe_keys_t).values(key=key, at=at)
        .on_conflict_do_nothing(index_elements=[dedupe_keys_t.c.key])
        .returning(dedupe_keys_t.c.key)
    ).first()
    return inserted is not None


def is_claimed(conn: Connection, key: str) -> bool:
    """Whether `key` has been taken (by a committed transaction, or by this one)."""
    return conn.execute(select(dedupe_keys_t.c.key).where(dedupe_keys_t.c.key == key)).first() is not None
