"""What comes back: delivery receipts, inbound SMS, keypresses, clicks, unsubscribes and
bounces, applied to the store (SPEC section 6). The web layer verifies and parses the
requests; this module decides nothing itself (the rules are in `policy.replies`) and
only writes: every change appends an event.

Concurrency rules, because providers deliver callbacks late, twice and in parallel:
- a status moves only up the rank order of `policy.replies`, in one conditional
  `UPDATE ... WHERE rank(status) < :new_rank`, so two callbacks racing on PostgreSQL
  cannot regress it and a duplicate changes nothing;
- an inbound SMS is applied once per `MessageSid`: its transaction is serialised on the
  SID (advisory lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite) and checks for the
  event an earlier delivery left; the reply it enqueues has the idempotency key
  `reply:<MessageSid>`;
- a call is a "conversation" when a person confirmed their identity *and* the call
  completed. Both facts are committed first and the flag is then set by one statement
  that checks both, run after each of them, so whichever commits last sets it, in any
  order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import bindparam, case, exists, func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine

from dispatcher.clock import Clock
from dispatcher.config import Config, Jurisdiction
from dispatcher.domain import Channel, MessageStatus, Reason
from dispatcher.links import LinkSigner
from dispatcher.logs import mask
from dispatcher.policy.calendar import WorkingCalendar
from dispatcher.policy.replies import (
    STATUS_RANK,
    ReplyIntent,
    UnknownStatusError,
    classify_reply,
    map_provider_status,
    promise_broken,
    status_rank,
)
from dispatcher.policy.window import is_legal
from dispatcher.store import repository
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.tables import (
    UTCDateTime,
    cases_t,
    contacts_t,
    events_t,
    holds_t,
    messages_t,
    payments_t,
)

log = logging.getLogger("dispatcher.receipts")


#: Event kind of an inbound SMS that was a keyword (free text is `reply_received`).
#: Not in `EventKind` yet: the string is the contract of the timeline.
KEYWORD_RECEIVED = "keyword_received"

#: Actors recorded on events and holds.
ACTOR_SMS = "sms"
ACTOR_IVR = "ivr"
ACTOR_EMAIL = "email"
ACTOR_SYSTEM = "system"

#: Twilio error codes on a failed message that mean the number cannot take SMS at all
#: (30005 unknown handset, 30006 landline/unreachable carrier) or that the carrier
#: holds an opt-out for it (21610).
_INVALID_NUMBER_CODES = frozenset({"30005", "30006"})
_CARRIER_OPT_OUT_CODES = frozenset({"21610"})

#: Connections of the status hot path's own async pool on PostgreSQL, per process (more
#: concurrent commits share each WAL flush; the rest wait for a free connection).
HOT_POOL_SIZE = 8

_MAX_TEXT = 1600  # characters of a reply kept on the timeline (10 SMS segments)

#: rank(status) in SQL; statuses the rank map does not know rank lowest
_RANK_SQL = case(
    {status.value: rank for status, rank in STATUS_RANK.items()}, value=messages_t.c.status, else_=-1
)


#: the same rank as SQL text, for the prepared statements
_RANK_CASE = (
    "CASE status "
    + " ".join(f"WHEN '{status.value}' THEN {rank}" for status, rank in STATUS_RANK.items())
    + " ELSE -1 END"
)


def _encode(data: dict[str, Any]) -> str:
    """Event data as `record_event` encodes it."""
    return json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)


def _ranks_below(status: MessageStatus) -> Any:
    """SQL: the message's current status ranks below `status`."""
    return _RANK_SQL < status_rank(status)  # noqa: SIM300 (SQL expression, not a Yoda condition)


# ----------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class StatusOutcome:
    """What one status callback did: `applied` (the status moved up), `stale` (a
    duplicate or a late lower status: nothing changed), `orphan` (no such message; kept
    as an orphan event) or `ignored` (a status value that says nothing about delivery)."""

    result: str
    message_id: int | None = None
    case_id: str | None = None
    status: MessageStatus | None = None


@dataclass(frozen=True, slots=True)
class InboundOutcome:
    intent: ReplyIntent
    case_ids: tuple[str, ...]
    reply_message_id: int | None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class CallContext:
    """What the voice flow needs to know about the call's message."""

    message_id: int
    case_id: str
    locale: str
    to_address: str | None
    parts: dict[str, str]
    profile: Jurisdiction | None
    zones: tuple[str, ...]
    org_name: str
    support_phone: str


@dataclass(frozen=True, slots=True)
class BounceOutcome:
    result: str  # "hard" | "soft" | "orphan"
    message_id: int | None = None
    case_ids: tuple[str, ...] = ()


# ----------------------------------------------------------------------- helpers


def _lock_key(value: str) -> int:
    """A signed 64-bit advisory-lock key for a string."""
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


@contextlib.contextmanager
def serialized(engine: Engine, key: str) -> Iterator[Connection]:
    """A write transaction serialised with every other one on the same `key`.

    PostgreSQL: a transaction-scoped advisory lock on the key. SQLite: `BEGIN IMMEDIATE`
    takes the database write lock up front, so a check-then-write inside cannot race
    (and cannot fail later with a stale read snapshot)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(key)})
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def _event_data_like(field: str, value: str) -> str:
    """A LIKE pattern for `"field": "value"` in an event's JSON data (as `record_event`
    encodes it: sort_keys, default separators)."""
    encoded = json.dumps({field: value}, ensure_ascii=False)[1:-1]
    return "%" + encoded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _clip(value: str | None, limit: int = 200) -> str | None:
    return None if value is None else value[:limit]


def _days(n: int) -> dt.timedelta:
    return dt.timedelta(days=n)


# ----------------------------------------------------------------------- reply texts


def _org_and_phone(config: Config, jurisdiction: str | None, locale: str) -> tuple[str, str]:
    profile = config.jurisdictions.get(jurisdiction or "")
    return config.organisation.name_for(locale), (profile.support_phone if profile else "")


def reply_text(intent: ReplyIntent, locale: str, org: str, support_phone: str) -> str | None:
    """The automatic SMS answer to a keyword, or None when the keyword gets none."""
    zh = locale.lower().startswith("zh")
    if intent is ReplyIntent.OPT_OUT:
        if zh:
            return f"【{org}】您已退订短信提醒，不会再收到我们的短信。回复START可重新订阅。"
        return f"{org}: You are unsubscribed and will receive no more text messages from us. Reply START to resubscribe."
    if intent is ReplyIntent.OPT_IN:
        if zh:
            return f"【{org}】您已重新订阅短信提醒。回复TD退订。"
        return f"{org}: You are subscribed to text reminders again. Reply STOP to unsubscribe."
    if intent is ReplyIntent.HELP:
        if zh:
            phone = f"，客服电话{support_phone}" if support_phone else ""
            return f"【{org}】账户还款提醒{phone}。回复TD退订。"
        phone = f" Call {support_phone} for help." if support_phone else ""
        return f"{org} account reminders.{phone} Reply STOP to unsubscribe."
    return None


def payment_link_text(locale: str, org: str, link: str) -> str:
    if locale.lower().startswith("zh"):
        return f"【{org}】您要求的还款链接：{link} 回复TD退订。"
    return f"{org}: here is the payment link you asked for: {link} Reply STOP to unsubscribe."


# ----------------------------------------------------------------------- service


@dataclass(frozen=True, slots=True)
class _Match:
    """The row a status callback is about: `applied` (its status moved up) or not."""

    applied: bool
    message_id: int
    case_id: str
    to_address: str | None
    status: str | None = None  # the row's status when not applied


def _pyformat(sql: str) -> str:
    """`:name` placeholders as psycopg's `%(name)s`."""
    return re.sub(r"(?<![:\w]):([a-z_]+)", r"%(\1)s", sql)


class _AsyncPgPool:
    """A few autocommit psycopg connections used on the running event loop, so the
    status hot path needs no worker thread. Connections belong to the loop that made
    them; on another loop (tests start one per test) the idle ones are dropped."""

    def __init__(self, conninfo: str, size: int) -> None:
        if "connect_timeout" not in conninfo:  # an unreachable server must not hang requests
            conninfo += ("&" if "?" in conninfo else "?") + "connect_timeout=10"
        self._conninfo = conninfo
        self._size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots: asyncio.Semaphore | None = None

    def _bind(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._slots is None:
            self.close()
            self._loop = loop
            self._slots = asyncio.Semaphore(self._size)
        return self._slots

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement; a pooled connection found dead is replaced once (the
        statements run here are idempotent, so running one again is harmless)."""
        async with self._bind():
            for attempt in (1, 2):
                pooled = bool(self._idle)
                conn = self._idle.pop() if pooled else await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True)
                try:
                    cursor = await conn.execute(sql, params)
                    rows = await cursor.fetchall() if cursor.description else []
                except psycopg.OperationalError:
                    self._discard(conn)
                    if not pooled or attempt == 2:
                        raise
                    continue
                except BaseException:  # a failed statement or a cancelled request: state unknown
                    self._discard(conn)
                    raise
                self._idle.append(conn)
                return rows
        raise AssertionError("unreachable")

    @staticmethod
    def _discard(conn: psycopg.AsyncConnection[Any]) -> None:
        with contextlib.suppress(Exception):
            conn.pgconn.finish()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)


class _GroupCommit:
    """SQLite status writes, many callbacks per transaction.

    SQLite has one writer, and per callback the transaction (and the hand-off to the
    writer thread) cost more than its two statements. Callbacks that arrive while a
    batch is being written join the next one; each batch is one transaction on the one
    writer thread, applied in arrival order, which is what one transaction each would
    have done. Every request still waits for its own commit before it is answered."""

    MAX_BATCH = 200

    def __init__(self, apply_many: Any, executor: concurrent.futures.Executor) -> None:
        self._apply_many = apply_many
        self._executor = executor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[dict[str, Any], asyncio.Future[Any]]] = []
        self._writing = False

    async def submit(self, params: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # tests run one loop each; a new loop starts afresh
            self._loop, self._pending, self._writing = loop, [], False
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((params, future))
        if not self._writing:
            self._writing = True
            loop.create_task(self._write())
        return await future

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending and self._loop is loop:
                batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
                try:
                    results = await loop.run_in_executor(self._executor, self._apply_many, [p for p, _ in batch])
                except Exception as exc:  # the executor itself failed (shut down): fail the batch
                    results = [exc] * len(batch)
                for (_params, future), result in zip(batch, results, strict=True):
                    if future.done():  # the request was cancelled meanwhile
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            if self._loop is loop:
                self._writing = False


class _StatusSQL:
    """The hot path of status callbacks as prepared SQL (built once, compiled once).

    Matching: the row named by `?m=` if its SID is unknown or the same, or else the
    row with that SID. The update happens only if the new status ranks higher, and
    learns the SID. PostgreSQL runs the update, its `status_received` event and, when
    nothing was updated, the look-up of the row in one autocommit statement: one round
    trip, made from the event loop (psycopg async), no worker thread. SQLite runs them
    in one transaction on one dedicated thread: SQLite has one writer anyway, and one
    thread contends less for the GIL than a pool of them (the store's engine queues
    in-process writers on a lock).
    """

    _MATCH = (
        "channel = :channel AND ((id = :m AND (provider_id IS NULL OR provider_id = :sid))"
        " OR provider_id = :sid)"
    )
    _UPDATE = (
        "UPDATE messages SET status = :status, status_at = :now, provider_id = COALESCE(provider_id, :sid),"
        " sent_at = CASE WHEN :sets_sent = 1 THEN COALESCE(sent_at, :now) ELSE sent_at END,"
        " answered_by = COALESCE(answered_by, :answered_by)"
        f" WHERE {_MATCH} AND {_RANK_CASE} < :rank"
        " RETURNING id, case_id, to_address"
    )
    _INSERT_EVENT = (
        "INSERT INTO events (case_id, message_id, at, kind, actor, data)"
        " VALUES (:case_id, :message_id, :now, 'status_received', NULL, :data)"
    )
    _FIND = (
        f"SELECT id, case_id, to_address, status, provider_id FROM messages WHERE {_MATCH}"
        " ORDER BY CASE WHEN id = :m THEN 0 ELSE 1 END LIMIT 1"
    )
    _PG_APPLY = (
        f"WITH u AS ({_UPDATE}),"
        " e AS (INSERT INTO events (case_id, message_id, at, kind, actor, data)"
        " SELECT case_id, id, :now, 'status_received', NULL, CAST(:data AS TEXT) FROM u)"
        " SELECT TRUE AS applied, id, case_id, to_address, CAST(NULL AS VARCHAR) AS status,"
        " CAST(NULL AS VARCHAR) AS provider_id FROM u"
        " UNION ALL (SELECT FALSE, id, case_id, to_address, status, provider_id FROM messages"
        f" WHERE {_MATCH} AND NOT EXISTS (SELECT 1 FROM u) ORDER BY CASE WHEN id = :m THEN 0 ELSE 1 END LIMIT 1)"
    )
    _LEARN_SID = "UPDATE messages SET provider_id = :sid WHERE id = :id AND provider_id IS NULL"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        now = bindparam("now", type_=UTCDateTime())
        self._update = text(self._UPDATE).bindparams(now)
        self._event = text(self._INSERT_EVENT).bindparams(now)
        self._find = text(self._FIND)
        self._learn = text(self._LEARN_SID)
        self._pg_apply = text(self._PG_APPLY).bindparams(now)
        self._pool: _AsyncPgPool | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        if self.postgres:
            conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._pool = _AsyncPgPool(conninfo, HOT_POOL_SIZE)
            self._pg_apply_sql = _pyformat(self._PG_APPLY)
            self._pg_learn_sql = _pyformat(self._LEARN_SID)
        else:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="status-sqlite")
            self._group = _GroupCommit(self._apply_many_sqlite, self._executor)
        self._finalizer = weakref.finalize(self, _StatusSQL._release, self._pool, self._executor)

    @staticmethod
    def _release(pool: _AsyncPgPool | None, executor: concurrent.futures.ThreadPoolExecutor | None) -> None:
        if pool is not None:
            pool.close()
        if executor is not None:
            executor.shutdown(wait=False)

    def close(self) -> None:
        self._finalizer()

    @staticmethod
    def _params(channel: Channel, sid: str, status: MessageStatus, message_id: int | None, now: dt.datetime,
                answered_by: str | None, data: str) -> dict[str, Any]:
        return {
            "channel": channel.value,
            "sid": sid,
            "m": message_id,
            "status": status.value,
            "rank": status_rank(status),
            "now": now,
            # the provider has it: a crash before the sender recorded it must not hide it
            "sets_sent": 1 if status_rank(status) >= status_rank(MessageStatus.SENT) else 0,
            "answered_by": answered_by[:32] if answered_by else None,
            "data": data,
        }

    def apply(self, channel: Channel, sid: str, status: MessageStatus, message_id: int | None, now: dt.datetime,
              answered_by: str | None, data: str) -> _Match | None:
        """Move the matching row up to `status` (and log it), or say which row matched
        without moving; None when no row matches. Blocking."""
        params = self._params(channel, sid, status, message_id, now, answered_by, data)
        if self.postgres:
            with self.engine.connect() as conn:
                row = conn.execute(self._pg_apply, params).first()
                if row is not None and not row.applied and row.provider_id is None:
                    conn.execute(self._learn, {"sid": sid, "id": row.id})
                conn.commit()
            return None if row is None else _Match(bool(row.applied), row.id, row.case_id, row.to_address, row.status)
        with self.engine.begin() as conn:
            return self._apply_sqlite(conn, params)

    def _apply_sqlite(self, conn: Connection, params: dict[str, Any]) -> _Match | None:
        updated = conn.execute(self._update, params).first()
        if updated is not None:
            conn.execute(self._event, {"case_id": updated.case_id, "message_id": updated.id, "now": params["now"],
                                       "data": params["data"]})
            return _Match(True, updated.id, updated.case_id, updated.to_address)
        found = conn.execute(self._find, params).first()
        if found is None:
            return None
        if found.provider_id is None:  # the callback beat the sender's record: learn the SID
            conn.execute(self._learn, {"sid": params["sid"], "id": found.id})
        return _Match(False, found.id, found.case_id, found.to_address, found.status)

    def _apply_many_sqlite(self, batch: list[dict[str, Any]]) -> list[_Match | None | BaseException]:
        """Several callbacks in one transaction, in arrival order (on the writer thread).
        Should the transaction fail, each is applied again on its own, so one bad
        callback fails only itself."""
        try:
            with self.engine.begin() as conn:
                return [self._apply_sqlite(conn, params) for params in batch]
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
        results: list[_Match | None | BaseException] = []
        for params in batch:
            try:
                with self.engine.begin() as conn:
                    results.append(self._apply_sqlite(conn, params))
            except Exception as exc:  # noqa: BLE001 - handed to that callback's request
                results.append(exc)
        return results

    async def apply_async(self, channel: Channel, sid: str, status: MessageStatus, message_id: int | None,
                          now: dt.datetime, answered_by: str | None, data: str) -> _Match | None:
        """`apply` without blocking the event loop."""
        if self._pool is None:
            return await self._group.submit(self._params(channel, sid, status, message_id, now, answered_by, data))
        params = self._params(channel, sid, status, message_id, now.astimezone(dt.UTC), answered_by, data)
        rows = await self._pool.fetch(self._pg_apply_sql, params)
        if not rows:
            return None
        applied, row_id, case_id, to_address, row_status, provider_id = rows[0]
        if not applied and provider_id is None:
            await self._pool.fetch(self._pg_learn_sql, {"sid": sid, "id": row_id})
        return _Match(bool(applied), row_id, case_id, to_address, row_status)


class Receipts:
    """Applies what comes back to the store. One instance per app; thread-safe (each
    call uses its own connection)."""

    def __init__(self, engine: Engine, config: Config, clock: Clock, signer: LinkSigner, public_url: str) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self._status_sql = _StatusSQL(engine)

    def close(self) -> None:
        """Release the connections of the status hot path (PostgreSQL)."""
        self._status_sql.close()

    # -- status callbacks ----------------------------------------------------------

    def _prepare_status(
        self, sid: str, provider_status: str, answered_by: str | None, error_code: str | None, duration: str | None
    ) -> StatusOutcome | tuple[MessageStatus, dt.datetime, dict[str, Any]]:
        try:
            status = map_provider_status(provider_status)
        except UnknownStatusError:
            log.warning("status callback %s: unknown status %r ignored", sid[:40], provider_status[:40])
            return StatusOutcome("ignored")
        if status is None:
            return StatusOutcome("ignored")
        data: dict[str, Any] = {"status": status.value, "provider_status": provider_status[:40], "sid": sid}
        if error_code:
            data["error_code"] = error_code[:16]
        if answered_by:
            data["answered_by"] = answered_by[:32]
        if duration:
            data["duration"] = duration[:16]
        return status, self.clock.now(), data

    @staticmethod
    def _needs_follow_up(channel: Channel, status: MessageStatus, match: _Match | None, error_code: str | None) -> bool:
        if match is None:
            return True  # orphan event
        if channel is Channel.VOICE and status is MessageStatus.COMPLETED:
            return True
        return bool(match.applied and error_code and status in (MessageStatus.FAILED, MessageStatus.UNDELIVERED))

    def _follow_up(self, channel: Channel, sid: str, status: MessageStatus, message_id: int | None,
                   now: dt.datetime, data: dict[str, Any], match: _Match | None, error_code: str | None
                   ) -> StatusOutcome:
        if match is None:
            with self.engine.begin() as conn:
                record_event(conn, EventKind.ORPHAN_CALLBACK, now, channel=channel.value, m=message_id, **data)
            log.info("status callback for unknown %s %s (m=%s) kept as orphan", channel.value, sid[:40], message_id)
            return StatusOutcome("orphan", status=status)
        if channel is Channel.VOICE and status is MessageStatus.COMPLETED:
            self._settle_conversation(match.message_id)
        if match.applied and error_code and match.to_address and status in (
            MessageStatus.FAILED, MessageStatus.UNDELIVERED
        ):
            self._apply_error_code(channel, error_code, match.to_address, now)
        return self._outcome(match, status)

    @staticmethod
    def _outcome(match: _Match, status: MessageStatus) -> StatusOutcome:
        if match.applied:
            return StatusOutcome("applied", match.message_id, match.case_id, status)
        current = MessageStatus(match.status) if match.status else None
        return StatusOutcome("stale", match.message_id, match.case_id, current)

    def apply_status(
        self,
        channel: Channel,
        sid: str,
        provider_status: str,
        message_id: int | None = None,
        *,
        answered_by: str | None = None,
        error_code: str | None = None,
        duration: str | None = None,
    ) -> StatusOutcome:
        """Apply one SMS or call status callback (see the module docstring). Blocking."""
        prepared = self._prepare_status(sid, provider_status, answered_by, error_code, duration)
        if isinstance(prepared, StatusOutcome):
            return prepared
        status, now, data = prepared
        match = self._status_sql.apply(channel, sid, status, message_id, now, answered_by, _encode(data))
        return self._follow_up(channel, sid, status, message_id, now, data, match, error_code)

    async def apply_status_async(
        self,
        channel: Channel,
        sid: str,
        provider_status: str,
        message_id: int | None = None,
        *,
        answered_by: str | None = None,
        error_code: str | None = None,
        duration: str | None = None,
    ) -> StatusOutcome:
        """`apply_status` for the event loop: the common case (a status moves, or a
        duplicate) costs one statement and no worker thread on PostgreSQL."""
        prepared = self._prepare_status(sid, provider_status, answered_by, error_code, duration)
        if isinstance(prepared, StatusOutcome):
            return prepared
        status, now, data = prepared
        match = await self._status_sql.apply_async(channel, sid, status, message_id, now, answered_by,
                                                   _encode(data))
        if self._needs_follow_up(channel, status, match, error_code):
            return await asyncio.to_thread(
                self._follow_up, channel, sid, status, message_id, now, data, match, error_code)
        assert match is not None
        return self._outcome(match, status)

    def _apply_error_code(self, channel: Channel, error_code: str, to_address: str, now: dt.datetime) -> None:
        code = error_code.strip()
        if channel is not Channel.SMS:
            return
        with self.engine.begin() as conn:
            if code in _INVALID_NUMBER_CODES:
                repository.mark_address_invalid(conn, Channel.SMS, to_address, now)
            elif code in _CARRIER_OPT_OUT_CODES:
                repository.set_opt_out(conn, Channel.SMS, to_address, True, now, source=f"carrier:{code}")

    # -- voice ---------------------------------------------------------------------

    def call_context(self, message_id: int | None) -> CallContext | None:
        """The call's message, case and profile; None for an unknown message."""
        if message_id is None:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                select(messages_t.c.id, messages_t.c.case_id, messages_t.c.locale, messages_t.c.parts,
                       messages_t.c.to_address, cases_t.c.locale.label("case_locale"), cases_t.c.jurisdiction,
                       cases_t.c.zones)
                .join_from(messages_t, cases_t, messages_t.c.case_id == cases_t.c.case_id)
                .where(messages_t.c.id == message_id, messages_t.c.channel == Channel.VOICE.value)
            ).first()
        if row is None:
            return None
        try:
            parts = json.loads(row.parts) if row.parts else {}
            if not isinstance(parts, dict):
                parts = {}
        except ValueError:
            parts = {}
        locale = row.locale or row.case_locale or "en-US"
        profile = self.config.jurisdictions.get(row.jurisdiction)
        zones = tuple(z for z in (row.zones or "").split(",") if z) or (
            tuple(profile.default_timezones) if profile else ()
        )
        org, phone = _org_and_phone(self.config, row.jurisdiction, locale)
        return CallContext(
            message_id=row.id,
            case_id=row.case_id,
            locale=locale,
            to_address=row.to_address,
            parts={str(k): str(v) for k, v in parts.items()},
            profile=profile,
            zones=zones,
            org_name=org,
            support_phone=phone,
        )

    def record_answer(self, ctx: CallContext, call_sid: str | None, answered_by: str | None, outcome: str) -> None:
        """The call was picked up (by a person or a machine): `call_answered` event."""
        now = self.clock.now()
        m = messages_t.c
        values: dict[str, Any] = {}
        if answered_by:
            values["answered_by"] = func.coalesce(m.answered_by, answered_by[:32])
        if call_sid:
            values["provider_id"] = func.coalesce(m.provider_id, call_sid[:128])
        with self.engine.begin() as conn:
            if values:
                conn.execute(update(messages_t).where(m.id == ctx.message_id).values(**values))
            record_event(conn, EventKind.CALL_ANSWERED, now, case_id=ctx.case_id, message_id=ctx.message_id,
                         answered_by=_clip(answered_by, 32), outcome=outcome, sid=_clip(call_sid, 64))

    def record_keypress(self, ctx: CallContext, step: str, digits: str, *, identity_confirmed: bool = False) -> None:
        now = self.clock.now()
        data: dict[str, Any] = {"step": step[:16], "digits": digits[:8]}
        if identity_confirmed:
            data["identity_confirmed"] = True
        with self.engine.begin() as conn:
            record_event(conn, EventKind.KEYPRESS, now, case_id=ctx.case_id, message_id=ctx.message_id,
                         actor=ACTOR_IVR, **data)
        if identity_confirmed:
            self._settle_conversation(ctx.message_id)

    def _settle_conversation(self, message_id: int) -> None:
        """Set `conversation` when the call completed and a person confirmed identity,
        whichever of the two was committed last (see the module docstring)."""
        m = messages_t.c
        confirmed = exists().where(
            events_t.c.message_id == message_id,
            events_t.c.kind == EventKind.KEYPRESS.value,
            events_t.c.data.like('%"identity_confirmed": true%'),
        )
        with self.engine.begin() as conn:
            conn.execute(
                update(messages_t)
                .where(m.id == message_id, m.status == MessageStatus.COMPLETED.value, m.conversation.is_(False),
                       confirmed)
                .values(conversation=True, answered_by="human")
            )

    def send_payment_link(self, ctx: CallContext) -> int | None:
        """Option 1: queue a system SMS with this call's payment link (once per call)."""
        if not ctx.to_address:
            return None
        now = self.clock.now()
        link = self.signer.payment_link(self.public_url, ctx.message_id, now + _days(self.config.links.payment_link_days))
        body = payment_link_text(ctx.locale, ctx.org_name, link)
        with self.engine.begin() as conn:
            return _enqueue_system_sms(conn, ctx.case_id, ctx.to_address, body, ctx.locale,
                                       f"ivr-link:{ctx.message_id}", now, reason="payment_link")

    def promise_to_pay(self, ctx: CallContext) -> dt.datetime:
        """Option 2: a `promise_to_pay` hold for the configured days (once per call)."""
        now = self.clock.now()
        until = now + _days(self.config.replies.promise_to_pay_days)
        note = f"ivr call message {ctx.message_id}"
        with serialized(self.engine, f"ivr-promise:{ctx.message_id}") as conn:
            existing = conn.execute(
                select(holds_t.c.until).where(holds_t.c.case_id == ctx.case_id, holds_t.c.note == note,
                                              holds_t.c.reason == Reason.PROMISE_TO_PAY.value)
            ).first()
            if existing is not None:
                return existing.until or until
            repository.place_hold(conn, ctx.case_id, Reason.PROMISE_TO_PAY, until, ACTOR_IVR, now, note=note)
        return until

    def stop_calls(self, ctx: CallContext) -> None:
        """Option 9: opt the called number out of voice (every case with it)."""
        if not ctx.to_address:
            return
        now = self.clock.now()
        with self.engine.begin() as conn:
            repository.set_opt_out(conn, Channel.VOICE, ctx.to_address, True, now, source=ACTOR_IVR)

    def agent_available(self, ctx: CallContext) -> bool:
        """Option 3 connects only inside the profile's contact window."""
        if ctx.profile is None or not ctx.zones or not ctx.support_phone:
            return False
        try:
            return is_legal(self.clock.now(), ctx.zones, ctx.profile, WorkingCalendar.for_profile(ctx.profile))
        except ValueError:
            return False

    # -- inbound SMS ---------------------------------------------------------------

    def inbound_sms(self, sid: str, from_number: str, body: str) -> InboundOutcome:
        """Act on an inbound SMS once per `MessageSid` (see the module docstring)."""
        intent = classify_reply(body)
        now = self.clock.now()
        number = from_number.strip()
        with serialized(self.engine, f"inbound:{sid}") as conn:
            case_ids = tuple(sorted(set(conn.execute(
                select(contacts_t.c.case_id).where(contacts_t.c.channel == Channel.SMS.value,
                                                   contacts_t.c.address == number)
            ).scalars())))
            if self._inbound_seen(conn, sid, case_ids):
                return InboundOutcome(intent, case_ids, None, duplicate=True)
            kind = EventKind.REPLY_RECEIVED.value if intent is ReplyIntent.FREE_TEXT else KEYWORD_RECEIVED
            text_kept = body[:_MAX_TEXT]
            if not case_ids:
                record_event(conn, kind, now, actor=ACTOR_SMS, sid=sid, intent=intent.value, text=text_kept,
                             matched=False)
            for case_id in case_ids:
                record_event(conn, kind, now, case_id=case_id, actor=ACTOR_SMS, sid=sid, intent=intent.value,
                             text=text_kept)

            if intent is ReplyIntent.OPT_OUT and number:
                repository.set_opt_out(conn, Channel.SMS, number, True, now, source=ACTOR_SMS)
            elif intent is ReplyIntent.OPT_IN and number:
                repository.set_opt_out(conn, Channel.SMS, number, False, now, source=ACTOR_SMS)
            elif intent is ReplyIntent.PAID:
                until = now + _days(self.config.replies.payment_claimed_hold_days)
                for case_id in case_ids:
                    repository.place_hold(conn, case_id, Reason.PAYMENT_CLAIMED, until, ACTOR_SMS, now,
                                          note=f"sms {sid}")
                    record_event(conn, EventKind.COLLECTOR_TASK, now, case_id=case_id, actor=ACTOR_SMS,
                                 task="verify_payment_claim", sid=sid, text=text_kept)
            elif intent is ReplyIntent.DISPUTE:
                for case_id in case_ids:
                    repository.place_hold(conn, case_id, Reason.DISPUTE_HOLD, None, ACTOR_SMS, now,
                                          note=f"sms {sid}")
                    record_event(conn, EventKind.COLLECTOR_TASK, now, case_id=case_id, actor=ACTOR_SMS,
                                 task="review_dispute", sid=sid, text=text_kept)

            reply_id = None
            if case_ids and number:
                reply_case, locale, jurisdiction = self._reply_case(conn, case_ids, number)
                org, phone = _org_and_phone(self.config, jurisdiction, locale)
                reply = reply_text(intent, locale, org, phone)
                if reply is not None:
                    reply_id = _enqueue_system_sms(conn, reply_case, number, reply, locale, f"reply:{sid}", now,
                                                   reason=intent.value)
        log.info("inbound sms %s from %s: %s, %d case(s)", sid[:40], mask(number), intent.value, len(case_ids))
        return InboundOutcome(intent, case_ids, reply_id)

    @staticmethod
    def _inbound_seen(conn: Connection, sid: str, case_ids: tuple[str, ...]) -> bool:
        e = events_t.c
        scope = e.case_id.in_(case_ids) if case_ids else e.case_id.is_(None)
        return conn.execute(
            select(e.id)
            .where(scope, e.kind.in_([EventKind.REPLY_RECEIVED.value, KEYWORD_RECEIVED]),
                   e.data.like(_event_data_like("sid", sid), escape="\\"))
            .limit(1)
        ).first() is not None

    @staticmethod
    def _reply_case(conn: Connection, case_ids: tuple[str, ...], number: str) -> tuple[str, str, str]:
        """The case a reply is filed under: the one we texted last from this number's
        cases (the conversation the debtor is answering), else the first."""
        latest = conn.execute(
            select(messages_t.c.case_id)
            .where(messages_t.c.case_id.in_(case_ids), messages_t.c.channel == Channel.SMS.value,
                   messages_t.c.to_address == number)
            .order_by(messages_t.c.scheduled_at.desc(), messages_t.c.id.desc())
            .limit(1)
        ).scalar()
        chosen = latest or case_ids[0]
        row = conn.execute(
            select(cases_t.c.locale, cases_t.c.jurisdiction).where(cases_t.c.case_id == chosen)
        ).one()
        return chosen, row.locale or "en-US", row.jurisdiction

    # -- e-mail --------------------------------------------------------------------

    def unsubscribe_email(self, message_id: int) -> tuple[str, ...] | None:
        """RFC 8058 one-click: opt the message's address out of e-mail on every case
        with it. Returns the case ids, or None if the message is unknown."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(messages_t.c.case_id, messages_t.c.to_address, messages_t.c.channel)
                .where(messages_t.c.id == message_id)
            ).first()
            if row is None:
                return None
            address = row.to_address
            if not address or row.channel != Channel.EMAIL.value:
                address = conn.execute(
                    select(contacts_t.c.address).where(contacts_t.c.case_id == row.case_id,
                                                       contacts_t.c.channel == Channel.EMAIL.value)
                ).scalar()
            if not address:
                return (row.case_id,)
            cases = repository.set_opt_out(conn, Channel.EMAIL, address, True, now, source=ACTOR_EMAIL)
        log.info("e-mail unsubscribe for %s (message %s)", mask(address), message_id)
        return tuple(cases) or (row.case_id,)

    def message_for_link(self, message_id: int) -> tuple[str, str] | None:
        """(case_id, channel) of a message, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(messages_t.c.case_id, messages_t.c.channel).where(messages_t.c.id == message_id)
            ).first()
        return None if row is None else (row.case_id, row.channel)

    def record_click(self, message_id: int) -> str | None:
        """Log a payment-link click on the case; returns the case id (None: unknown message)."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(messages_t.c.case_id, messages_t.c.channel).where(messages_t.c.id == message_id)
            ).first()
            if row is None:
                return None
            record_event(conn, EventKind.LINK_CLICKED, now, case_id=row.case_id, message_id=message_id,
                         channel=row.channel)
        return row.case_id

    def bounce(self, return_path: str, kind: str, diagnostic: str | None) -> BounceOutcome:
        """A bounce matched by its VERP return path: hard marks the e-mail address
        invalid (every case with it), soft is logged. Unmatched ones are orphans."""
        now = self.clock.now()
        message_id = self.signer.parse_verp(return_path)
        hard = kind.strip().lower() == "hard"
        diag = _clip(diagnostic, 500)
        with self.engine.begin() as conn:
            row = None
            if message_id is not None:
                row = conn.execute(
                    select(messages_t.c.case_id, messages_t.c.to_address, messages_t.c.channel)
                    .where(messages_t.c.id == message_id)
                ).first()
            if row is None:
                record_event(conn, EventKind.ORPHAN_CALLBACK, now, channel=Channel.EMAIL.value, source="bounce",
                             type=kind[:8], diagnostic=diag, m=message_id)
                return BounceOutcome("orphan", message_id)
            record_event(conn, EventKind.BOUNCE, now, case_id=row.case_id, message_id=message_id,
                         actor=ACTOR_EMAIL, type="hard" if hard else "soft", diagnostic=diag)
            changed: list[str] = []
            if hard:
                conn.execute(
                    update(messages_t)
                    .where(messages_t.c.id == message_id,
                           _ranks_below(MessageStatus.UNDELIVERED))
                    .values(status=MessageStatus.UNDELIVERED.value, status_at=now)
                )
                # the address the message went to; for a row without one (written before
                # the sender recorded it), the case's e-mail address
                address = row.to_address if row.channel == Channel.EMAIL.value else None
                address = address or conn.execute(
                    select(contacts_t.c.address).where(contacts_t.c.case_id == row.case_id,
                                                       contacts_t.c.channel == Channel.EMAIL.value)
                ).scalar()
                if address:
                    changed = repository.mark_address_invalid(conn, Channel.EMAIL, address, now)
        log.info("%s bounce for message %s (%s)", "hard" if hard else "soft", message_id, mask(row.to_address))
        return BounceOutcome("hard" if hard else "soft", message_id, tuple(changed))

    # -- metrics -------------------------------------------------------------------

    def message_counts(self) -> list[tuple[str, str, int]]:
        """(channel, status, count) over the outbox."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(messages_t.c.channel, messages_t.c.status, func.count())
                .group_by(messages_t.c.channel, messages_t.c.status)
            ).all()
        return [(r[0], r[1], int(r[2])) for r in rows]

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


def _enqueue_system_sms(
    conn: Connection, case_id: str, to: str, body: str, locale: str, key: str, now: dt.datetime, *, reason: str
) -> int | None:
    """Queue a `system` SMS (sent by the sender without the template gate) once per
    idempotency key; returns its id (the existing one for a repeated key)."""
    existing = conn.execute(select(messages_t.c.id).where(messages_t.c.idempotency_key == key)).scalar()
    if existing is not None:
        return int(existing)
    message_id = conn.execute(
        insert(messages_t)
        .values(
            case_id=case_id,
            channel=Channel.SMS.value,
            kind="system",
            locale=locale,
            to_address=to,
            body=body,
            status=MessageStatus.QUEUED.value,
            idempotency_key=key,
            scheduled_at=now,
            created_at=now,
            created_by=ACTOR_SYSTEM,
        )
        .returning(messages_t.c.id)
    ).scalar_one()
    record_event(conn, EventKind.MESSAGE_QUEUED, now, case_id=case_id, message_id=message_id,
                 channel=Channel.SMS.value, message_kind="system", reason=reason)
    return int(message_id)


# ----------------------------------------------------------------------- promises


def resume_broken_promises(engine: Engine, now: dt.datetime) -> int:
    """Release every `promise_to_pay` hold whose date has passed: with a
    `promise_broken` event when no payment was recorded since it was placed (contact
    resumes, and the next templates can be firmer), silently when one was. Returns the
    number of broken promises. Safe to run on several instances at once: each hold is
    released by one conditional update."""
    h = holds_t.c
    paid_since = (
        select(func.count())
        .where(payments_t.c.case_id == h.case_id, payments_t.c.at >= h.placed_at)
        .scalar_subquery()
    )
    with engine.connect() as conn:
        due = conn.execute(
            select(h.id, h.case_id, h.until, h.placed_at, paid_since.label("payments"))
            .where(h.reason == Reason.PROMISE_TO_PAY.value, h.released_at.is_(None), h.until.is_not(None),
                   h.until <= now)
            .order_by(h.id)
        ).all()
    broken = 0
    for hold in due:
        is_broken = promise_broken(hold.until, now, paid_since_promise=hold.payments > 0)
        with engine.begin() as conn:
            released = conn.execute(
                update(holds_t)
                .where(h.id == hold.id, h.released_at.is_(None))
                .values(released_at=now, released_by=ACTOR_SYSTEM,
                        # the snapshot reads this note: firmer templates until a payment
                        note=repository.BROKEN_PROMISE_NOTE if is_broken else h.note)
            ).rowcount
            if not released:
                continue
            record_event(conn, EventKind.HOLD_RELEASED, now, case_id=hold.case_id, actor=ACTOR_SYSTEM,
                         hold_id=hold.id, reason=Reason.PROMISE_TO_PAY.value,
                         why="promise broken" if is_broken else "promise kept")
            if is_broken:
                record_event(conn, EventKind.PROMISE_BROKEN, now, case_id=hold.case_id, actor=ACTOR_SYSTEM,
                             hold_id=hold.id, promised_by=hold.until.isoformat())
                broken += 1
    if broken:
        log.info("resumed contact on %d broken promise(s) to pay", broken)
    return broken
