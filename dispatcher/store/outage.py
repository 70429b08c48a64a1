"""Surviving the database's absence: at start-up and at any moment after.

A lost connection is an *outage* (`is_outage`): the server refused, went away, killed our
backend (`pg_terminate_backend`, a restart, a fail-over) or a pool timed out waiting for
one. The daemon then waits and tries again with a capped exponential backoff
(`Backoff`) instead of exiting: `wait_for_store` at start-up, `survives_outage` around
every scheduled job. Anything else (a bad URL, a schema conflict, a bug) is not an
outage and is reported as before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import psycopg
from psycopg_pool import PoolTimeout
from sqlalchemy import exc as sa_exc

log = logging.getLogger("dispatcher.store")

T = TypeVar("T")
P = ParamSpec("P")


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the database cannot be reached."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError
                      | sa_exc.TimeoutError | psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout):
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass
class Backoff:
    """Capped exponential delays with jitter: first, 2 x first, ... at most `cap`."""

    first: float = 0.5
    cap: float = 30.0
    jitter: float = 0.2
    attempt: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * (2 ** self.attempt))
        self.attempt += 1
        return delay * (1 + self.jitter * (2 * random.random() - 1))

    def reset(self) -> None:
        self.attempt = 0


def wait_for_store(build: Callable[[], T], *, what: str, sleep: Callable[[float], None] = time.sleep,
                   backoff: Backoff | None = None, give_up_after: float | None = None) -> T:
    """`build()` once the database answers: an outage is logged and retried with backoff
    (for ever, or until `give_up_after` seconds); any other error is raised at once."""
    backoff = backoff or Backoff()
    started = time.monotonic()
    while True:
        try:
            return build()
        except Exception as exc:
            if not is_outage(exc) or (give_up_after is not None and time.monotonic() - started > give_up_after):
                raise
            delay = backoff.next_delay()
            log.warning("%s: the database is unavailable (%s); retrying in %.1f s", what, _reason(exc), delay)
            sleep(delay)


def _reason(exc: BaseException) -> str:
    """One line, no traceback: the first line of the innermost cause."""
    inner: BaseException = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0][:200]}" if text else type(inner).__name__


def survives_outage(job: Callable[P, Coroutine[Any, Any, None]], *, retries: int = 3,
                    backoff: Callable[[], Backoff] = Backoff) -> Callable[P, Coroutine[Any, Any, None]]:
    """A scheduled job that outlives a database outage: a lost connection is retried a
    few times with backoff, then left to the job's next run; logged without a traceback."""

    @functools.wraps(job)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        delays = backoff()
        for attempt in range(retries + 1):
            try:
                await job(*args, **kwargs)
                return
            except Exception as exc:
                if not is_outage(exc):
                    raise
                if attempt == retries:
                    log.warning("job %s: the database is unavailable (%s); trying again at its next run",
                                job.__name__, _reason(exc))
                    return
                delay = delays.next_delay()
                log.warning("job %s: the database is unavailable (%s); retrying in %.1f s", job.__name__,
                            _reason(exc), delay)
                await asyncio.sleep(delay)

    return guarded
