"""The daemon: APScheduler 3 (AsyncIOScheduler) runs the plan, send, reconcile and
retention jobs; uvicorn serves the web app in the same event loop.

SIGTERM/SIGINT: stop claiming, let in-flight sends finish, stop the server, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import col

from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.domain import Channel
from dispatcher.policy import Gate
from dispatcher.services.calendar_notice import warn_estimated
from dispatcher.services.outbox import Sender
from dispatcher.services.planner import run_planner
from dispatcher.services.repair import StatusRepair
from dispatcher.store.tables import EventRow, MessageRow, dedupe_keys_t

log = logging.getLogger("dispatcher.daemon")


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM (and exits 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class DaemonJobs:
    """The collaborators of the scheduled jobs."""

    engine: Engine
    config: Config
    gate: Gate  # the planner's compliance gate, kept across ticks
    clock: Clock
    sender: Sender
    catalog: Callable[[], Mapping[tuple[Channel, str, str], Sequence[str]]]
    after_plan: Callable[[Engine, dt.datetime], Any] | None = None  # e.g. resume broken promises
    repair: StatusRepair | None = None  # the status repair job (lost callbacks)

    async def plan(self) -> None:
        now = self.clock.now()
        if self.after_plan is not None:
            await asyncio.to_thread(self.after_plan, self.engine, now)
        summary = await asyncio.to_thread(run_planner, self.engine, self.gate, self.catalog(), now)
        warn_estimated(self.config)  # once per profile and year (SPEC 12); logged to stderr
        if summary is None:
            log.info("plan: another instance holds the planner lock; skipped")
        else:
            log.info("plan: queued %d, deferred %d, escalated %d", summary.queued, summary.deferred,
                     summary.escalated)

    async def send(self) -> None:
        summary = await self.sender.send_due()
        if summary.claimed:
            log.info("send: claimed %d, sent %d, deferred %d, retrying %d, failed %d", summary.claimed,
                     summary.sent, summary.deferred, summary.retried, summary.failed)

    async def reconcile(self) -> None:
        settled = await self.sender.reconcile_stale()
        if settled:
            log.info("reconcile: settled %d in-flight message(s)", settled)

    async def repair_status(self) -> None:
        if self.repair is not None:
            await self.repair.run()

    async def retention(self) -> None:
        """Delete communication records older than the archive period (default 5 years)."""
        cutoff = self.clock.now() - dt.timedelta(days=365 * self.config.retention.years + 1)

        def _purge() -> tuple[int, int]:
            with self.engine.begin() as conn:
                m = conn.execute(delete(MessageRow).where(col(MessageRow.created_at) < cutoff)).rowcount
                e = conn.execute(delete(EventRow).where(col(EventRow.at) < cutoff)).rowcount
                # a webhook step's key outlives no provider's retries, but lives as long as its events
                conn.execute(delete(dedupe_keys_t).where(dedupe_keys_t.c.at < cutoff))
            return m, e

        messages, events = await asyncio.to_thread(_purge)
        if messages or events:
            log.info("retention: removed %d messages and %d events older than %s", messages, events,
                     cutoff.date())


async def run_daemon(jobs: DaemonJobs, web_app: Any, host: str, port: int,
                     stop_event: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop_event`). Returns the exit status."""
    cfg = jobs.config.scheduler
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop() -> None:
        # Stop claiming at once: the start-up pass below may still be running, and it
        # would otherwise drain the whole outbox before the stop is even looked at.
        jobs.sender.stop_claiming()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, request_stop)

    server = _QuietServer(uvicorn.Config(web_app, host=host, port=port, log_level="warning", lifespan="off",
                                         access_log=False))
    server_task = asyncio.create_task(server.serve())

    # Plan and send once at start, then on the configured intervals.
    await jobs.reconcile()
    await jobs.plan()
    await jobs.send()

    scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    scheduler.add_job(jobs.plan, "interval", seconds=cfg.plan_every_seconds, id="plan")
    scheduler.add_job(jobs.send, "interval", seconds=cfg.send_every_seconds, id="send")
    scheduler.add_job(jobs.reconcile, "interval", seconds=cfg.reconcile_every_seconds, id="reconcile")
    scheduler.add_job(jobs.retention, "interval", seconds=cfg.retention_every_seconds, id="retention")
    scheduler.add_job(jobs.repair_status, "interval", seconds=cfg.repair_every_seconds, id="repair")
    scheduler.start()
    log.info("dispatcher running on http://%s:%d", host, port)

    await stop.wait()
    log.info("stopping: no new claims; finishing in-flight messages")
    jobs.sender.stop_claiming()
    scheduler.shutdown(wait=False)
    # Let running jobs (an in-flight send pass) finish, bounded so we exit within 10 s.
    running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t is not server_task]
    if running:
        await asyncio.wait(running, timeout=7)
    server.should_exit = True
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server_task, timeout=2)
    for adapter in jobs.sender.channels.values():
        await adapter.aclose()
    log.info("stopped")
    return 0
