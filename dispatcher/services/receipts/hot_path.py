"""The hot path of status callbacks: the status SQL, PostgreSQL's pool, SQLite's group commit.

Status callbacks are most of the webhook traffic, so they get SQL of their own, built
and compiled once:

- Matching: the row named by `?m=` if its SID is unknown or the same, or else the row
  with that SID. The update happens only if the new status ranks higher (statuses never
  move backwards; a duplicate changes nothing), and learns the SID.
- PostgreSQL runs the update, its `status_received` event and, when nothing was
  updated, the look-up of the row in one autocommit statement: one round trip per
  callback, from the event loop (psycopg async, `psycopg_pool`), no worker thread.
- SQLite runs them in one transaction on one dedicated writer thread, many callbacks
  per transaction (`GroupCommit`): SQLite has one writer anyway, and one thread
  contends less for the GIL than a pool of them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import bindparam, case, text
from sqlalchemy.engine import Connection, Engine

from dispatcher.domain import Channel, MessageStatus
from dispatcher.policy.replies import STATUS_RANK, status_rank
from dispatcher.store.plan_state import INVALIDATE_SQL, invalidate
from dispatcher.store.tables import UTCDateTime, messages_t

#: Connections of the hot path's own pool on PostgreSQL, per process (more concurrent
#: commits share each WAL flush; the rest wait for a free connection).
HOT_POOL_SIZE = 8
#: Seconds to connect, and to wait for a free connection, before the request fails
#: (503): an unreachable server must not hang requests. A URL's `connect_timeout` wins.
CONNECT_TIMEOUT = 10
#: A pooled connection idle longer than this is checked (one round trip) before use: a
#: server or a proxy may have closed it. A busy connection has just proved itself, and
#: checking it would double the round trips of every callback.
CHECK_IDLE_AFTER = 10.0

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


def ranks_below(status: MessageStatus) -> Any:
    """SQL: the message's current status ranks below `status`."""
    return _RANK_SQL < status_rank(status)  # noqa: SIM300 (SQL expression, not a Yoda condition)


@dataclass(frozen=True, slots=True)
class Match:
    """The row a status callback is about: `applied` (its status moved up) or not."""

    applied: bool
    message_id: int
    case_id: str
    to_address: str | None
    status: str | None = None  # the row's status when not applied


def _pyformat(sql: str) -> str:
    """`:name` placeholders as psycopg's `%(name)s`."""
    return re.sub(r"(?<![:\w]):([a-z_]+)", r"%(\1)s", sql)


class LoopPool:
    """`psycopg_pool.AsyncConnectionPool` of autocommit connections, opened on the
    running loop at first use.

    A pool's tasks and connections belong to the loop that opened it. Should another
    loop use it (tests run one loop each), the old pool is dropped and a new one opened.
    On the loop, shut it down with `aclose()` before the loop ends (a lifespan's end, an
    async test's teardown): it stops the pool's worker tasks. Left to the loop's final
    cancellation, a worker caught opening a connection loses the cancellation (psycopg
    turns it into a failed connect, which the pool retries) and the loop never ends.
    `close()` closes every connection at once, from any thread, with or without a loop,
    for callers off the loop."""

    def __init__(self, conninfo: str, size: int) -> None:
        params = conninfo_to_dict(conninfo)
        self._timeout = float(params.get("connect_timeout") or CONNECT_TIMEOUT)
        params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
        params.setdefault("application_name", "dispatcher-status")  # tells its connections apart
        self._params = params
        self._size = size
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(size)
        #: every connection the current pool opened (to close them without its loop)
        self._connections: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()
        self._used: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = weakref.WeakKeyDictionary()

    async def _open(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        """The pool of the running loop, opened now (a new loop drops the old pool)."""
        self.close()
        connections, used = self._connections, self._used
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            kwargs={**self._params, "autocommit": True},
            min_size=1,
            max_size=self._size,
            open=False,
            timeout=self._timeout,
            check=self._check,
            configure=lambda conn: self._track(connections, used, conn),
            name="status-hot-path",
        )
        self._pool, self._loop = pool, asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self._size)
        await pool.open()
        return pool

    @staticmethod
    async def _track(connections: weakref.WeakSet[psycopg.AsyncConnection[Any]],
                     used: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float],
                     conn: psycopg.AsyncConnection[Any]) -> None:
        connections.add(conn)
        used[conn] = time.monotonic()  # just connected: no check needed

    def _forget_checks(self) -> None:
        """Make every pooled connection be checked at its next checkout."""
        for conn in list(self._used.keys()):
            self._used[conn] = 0.0

    async def _check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if time.monotonic() - self._used.get(conn, 0.0) > CHECK_IDLE_AFTER:
            await AsyncConnectionPool.check_connection(conn)

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement. A connection found broken is dropped by the pool and the
        statement runs again on another, checked one (the statements here are
        idempotent): up to three tries, so a server that killed every connection of the
        pool costs no callback a 503."""
        pool = self._pool
        if pool is None or self._loop is not asyncio.get_running_loop():
            pool = await self._open()
        # Requests queue on a semaphore with one slot per connection, not in the pool:
        # the pool's own queue (a timed wait per client) costs several times more CPU
        # than the semaphore when, as under load, every connection is busy. The wait for
        # a slot is bounded like the wait for a connection (TimeoutError: a 503).
        if self._slots.locked():
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        try:
            for attempt in (1, 2, 3):
                conn = await pool.getconn()  # PoolTimeout (an OperationalError) if none comes in time
                try:
                    cursor = await conn.execute(sql, params)
                    rows = await cursor.fetchall() if cursor.description else []
                    self._used[conn] = time.monotonic()
                    return rows
                except psycopg.OperationalError:
                    if attempt == 3:
                        raise
                    if attempt == 1:
                        # The server may have dropped every connection at once (a restart,
                        # `pg_terminate_backend`): check the idle ones now (`check_connection`
                        # on each; the broken are replaced), not one failed callback apiece.
                        self._forget_checks()
                finally:
                    await pool.putconn(conn)  # a broken one is closed and replaced by the pool
        finally:
            self._slots.release()
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the pool's connections now (synchronously) and forget the pool. Off the
        pool's loop only: its tasks stop with `aclose()` (see the class docstring)."""
        self._pool = self._loop = None
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                conn.pgconn.finish()
        self._connections = weakref.WeakSet()

    async def aclose(self) -> None:
        """Close the pool and stop its tasks, on its own loop (at shutdown)."""
        pool = self._pool
        if pool is not None and self._loop is asyncio.get_running_loop():
            self._pool = None
            await pool.close()
        self.close()


class GroupCommit:
    """SQLite status writes, many callbacks per transaction.

    SQLite has one writer, and per callback the transaction (and the hand-off to the
    writer thread) cost more than its two statements. Callbacks that arrive while a
    batch is being written join the next one; each batch is one transaction on the one
    writer thread, applied in arrival order, which is what one transaction each would
    have done. Every request still waits for its own commit before it is answered."""

    MAX_BATCH = 200

    def __init__(self, apply_many: Callable[[list[dict[str, Any]]], list[Any]],
                 executor: concurrent.futures.Executor) -> None:
        self._apply_many = apply_many
        self._executor = executor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[dict[str, Any], asyncio.Future[Any]]] = []
        self._writing = False

    async def submit(self, params: dict[str, Any]) -> Any:
        """Apply one callback's parameters with the next batch; its own result."""
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
                except Exception as exc:  # noqa: BLE001 - the executor itself failed (shut down): fail the batch
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


class StatusSQL:
    """The status update and its event as prepared SQL, on either backend (see the
    module docstring)."""

    _MATCH = (
        "channel = :channel AND ((id = :m AND (provider_id IS NULL OR provider_id = :sid))"
        " OR provider_id = :sid)"
    )
    _UPDATE = (
        "UPDATE messages SET status = :status, status_at = :now, provider_id = COALESCE(provider_id, :sid),"
        " sent_at = CASE WHEN :sets_sent = 1 THEN COALESCE(sent_at, :now) ELSE sent_at END,"
        " answered_by = COALESCE(answered_by, :answered_by),"
        # a call's billed duration: the largest any applied callback brought (the final one)
        " call_seconds = CASE WHEN CAST(:call_seconds AS INTEGER) IS NULL THEN call_seconds"
        " WHEN call_seconds IS NULL OR call_seconds < CAST(:call_seconds AS INTEGER)"
        " THEN CAST(:call_seconds AS INTEGER) ELSE call_seconds END"
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
        " SELECT case_id, id, :now, 'status_received', NULL, CAST(:data AS TEXT) FROM u),"
        # a status may change what the planner decides next (store.plan_state)
        f" i AS ({INVALIDATE_SQL.format(ids='SELECT case_id FROM u')})"
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
        self._pool: LoopPool | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        if self.postgres:
            conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._pool = LoopPool(conninfo, HOT_POOL_SIZE)
            self._pg_apply_sql = _pyformat(self._PG_APPLY)
            self._pg_learn_sql = _pyformat(self._LEARN_SID)
        else:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="status-sqlite")
            self._group = GroupCommit(self._apply_many_sqlite, self._executor)
        self._finalizer = weakref.finalize(self, StatusSQL._release, self._pool, self._executor)

    @staticmethod
    def _release(pool: LoopPool | None, executor: concurrent.futures.ThreadPoolExecutor | None) -> None:
        if pool is not None:
            pool.close()
        if executor is not None:
            executor.shutdown(wait=False)

    def close(self) -> None:
        """Close the PostgreSQL connections now and stop the SQLite writer thread."""
        self._finalizer()

    async def aclose(self) -> None:
        """`close`, closing the PostgreSQL pool on its loop (at lifespan shutdown)."""
        if self._pool is not None:
            await self._pool.aclose()
        self.close()

    @staticmethod
    def _params(channel: Channel, sid: str, status: MessageStatus, message_id: int | None, now: dt.datetime,
                answered_by: str | None, data: str, call_seconds: int | None = None) -> dict[str, Any]:
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
            "call_seconds": call_seconds,
        }

    def apply(self, channel: Channel, sid: str, status: MessageStatus, message_id: int | None, now: dt.datetime,
              answered_by: str | None, data: str, call_seconds: int | None = None) -> Match | None:
        """Move the matching row up to `status` (and log it, `data` being the event's
        encoded data; a call's duration kept on the row), or say which row matched
        without moving; None when no row matches. Blocking."""
        params = self._params(channel, sid, status, message_id, now, answered_by, data, call_seconds)
        if self.postgres:
            with self.engine.connect() as conn:
                row = conn.execute(self._pg_apply, params).first()
                if row is not None and not row.applied and row.provider_id is None:
                    conn.execute(self._learn, {"sid": sid, "id": row.id})
                conn.commit()
            return None if row is None else Match(bool(row.applied), row.id, row.case_id, row.to_address, row.status)
        with self.engine.begin() as conn:
            return self._apply_sqlite(conn, params)

    def _apply_sqlite(self, conn: Connection, params: dict[str, Any]) -> Match | None:
        updated = conn.execute(self._update, params).first()
        if updated is not None:
            conn.execute(self._event, {"case_id": updated.case_id, "message_id": updated.id, "now": params["now"],
                                       "data": params["data"]})
            invalidate(conn, [updated.case_id])  # a status may change what the planner decides next
            return Match(True, updated.id, updated.case_id, updated.to_address)
        found = conn.execute(self._find, params).first()
        if found is None:
            return None
        if found.provider_id is None:  # the callback beat the sender's record: learn the SID
            conn.execute(self._learn, {"sid": params["sid"], "id": found.id})
        return Match(False, found.id, found.case_id, found.to_address, found.status)

    def _apply_many_sqlite(self, batch: list[dict[str, Any]]) -> list[Match | None | BaseException]:
        """Several callbacks in one transaction, in arrival order (on the writer thread).
        Should the transaction fail, each is applied again on its own, so one bad
        callback fails only itself."""
        try:
            with self.engine.begin() as conn:
                return [self._apply_sqlite(conn, params) for params in batch]
        except Exception as exc:  # noqa: BLE001 - each callback is then applied alone: one bad one fails only itself
            if len(batch) == 1:
                return [exc]
        results: list[Match | None | BaseException] = []
        for params in batch:
            try:
                with self.engine.begin() as conn:
                    results.append(self._apply_sqlite(conn, params))
            except Exception as exc:  # noqa: BLE001 - handed to that callback's request
                results.append(exc)
        return results

    async def apply_async(self, channel: Channel, sid: str, status: MessageStatus, message_id: int | None,
                          now: dt.datetime, answered_by: str | None, data: str,
                          call_seconds: int | None = None) -> Match | None:
        """`apply` without blocking the event loop."""
        if self._pool is None:
            return await self._group.submit(
                self._params(channel, sid, status, message_id, now, answered_by, data, call_seconds))
        params = self._params(channel, sid, status, message_id, now.astimezone(dt.UTC), answered_by, data,
                              call_seconds)
        rows = await self._pool.fetch(self._pg_apply_sql, params)
        if not rows:
            return None
        applied, row_id, case_id, to_address, row_status, provider_id = rows[0]
        if not applied and provider_id is None:
            await self._pool.fetch(self._pg_learn_sql, {"sid": sid, "id": row_id})
        return Match(bool(applied), row_id, case_id, to_address, row_status)
