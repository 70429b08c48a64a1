"""The "in flight" stamp of each message, committed just before its own provider call.

A stamp (`status_at` = now, `attempts` + 1) says "from here on the provider may have
it": a crash afterwards leaves the row for reconcile, a crash before leaves it merely
claimed (re-queued, nothing to ask). Stamping the whole claimed batch up front would
make every message of it "maybe sent" although most were still waiting at the rate
limiter; so each message is stamped alone, after its turn at the rate limiter.

One commit per message would cost a transaction per provider call; the stamps asked for
while a commit is running go together in the next one (group commit), so at 16 calls in
flight a commit carries several stamps and each call still waits for its own. A stamp is
written only while the row is still in flight under the claim it was made with, and only
if it was not stamped since the claim: a row another instance re-queued (its lease ran
out) is never stamped, so never sent, by its old owner.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine

from dispatcher.domain import MessageStatus
from dispatcher.services.claims import Claimed, unstamped
from dispatcher.store.tables import messages_t

_GATHER_PASSES = 4


class StampQueue:
    """Commits per-message stamps, grouping those asked for together."""

    def __init__(self, engine: Engine, now: Callable[[], dt.datetime]) -> None:
        self.engine = engine
        self.now = now
        self._pending: list[tuple[Claimed, asyncio.Future[dt.datetime | None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0  # transactions written (for tests and benchmarks)

    async def stamp(self, item: Claimed) -> dt.datetime | None:
        """Commit the stamp of `item`; returns its instant, or None when the row is no longer
        ours to send (re-queued or settled by someone else). Raises when the store fails."""
        future: asyncio.Future[dt.datetime | None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        # The rate limiter hands its tokens out one event-loop pass after another: a few
        # passes' wait lets the turns given together share a commit.
        for _ in range(_GATHER_PASSES):
            await asyncio.sleep(0)
        while self._pending:
            group, self._pending = self._pending, []
            at = self.now()
            try:
                stamped = await asyncio.to_thread(self._write, [item for item, _f in group], at)
            except Exception as exc:  # noqa: BLE001 - each caller gets the error (and sends nothing)
                for _item, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for item, future in group:
                if not future.done():
                    future.set_result(at if item.id in stamped else None)

    def _write(self, items: list[Claimed], at: dt.datetime) -> set[int]:
        by_claim: dict[tuple[str | None, dt.datetime], list[int]] = defaultdict(list)
        for item in items:
            by_claim[(item.claimed_by, item.claimed_at)].append(item.id)
        stamped: set[int] = set()
        with self.engine.begin() as conn:
            for (owner, claimed_at), ids in by_claim.items():
                rows = conn.execute(_STAMP, {"b_ids": ids, "b_owner": owner, "b_claimed": claimed_at, "b_at": at})
                stamped.update(int(i) for i in rows.scalars())
        self.commits += 1
        return stamped


def _stamp_statement() -> Any:
    """Built once: constructing the statement cost more than running it."""
    m = messages_t.c
    return (update(messages_t)
            .where(m.id.in_(bindparam("b_ids", expanding=True)), m.status == MessageStatus.SENDING.value,
                   m.claimed_by.is_not_distinct_from(bindparam("b_owner", type_=m.claimed_by.type)),
                   m.claimed_at == bindparam("b_claimed"), unstamped())
            .values(status_at=bindparam("b_at"), attempts=m.attempts + 1)
            .returning(m.id))


_STAMP = _stamp_statement()
