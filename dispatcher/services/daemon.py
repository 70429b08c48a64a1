"""The daemon: APScheduler 3 (AsyncIOScheduler) runs the plan, send, reconcile, repair
and retention jobs; uvicorn serves the web app in the same event loop.

Start-up: the reconcile of what a previous life left in flight runs alongside the first
plan and send pass, not before it (a crash loop would otherwise never send anything).

SIGTERM/SIGINT: stop claiming and hand no more messages to the providers (those waiting
for their turn go back to the queue); let the provider calls under way finish and their
results be recorded, for at most `[sending] shutdown_grace_seconds`; stop the server;
exit 0. APScheduler 3.11 cancels the jobs that are running when it shuts down, so the
scheduler only *starts* jobs: each runs as a task of the daemon's own (`DaemonJobs.
_single`), awaited by the scheduler through `asyncio.shield`, which the daemon waits for
before it shuts the scheduler down.
Every job outlives a database outage (`store.outage.survives_outage`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.engine import Engine

from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.domain import Channel
from dispatcher.policy import Gate
from dispatcher.services.calendar_notice import warn_estimated
from dispatcher.services.outbox import Sender
from dispatcher.services.planner import IncrementalPlanner
from dispatcher.services.repair import StatusRepair
from dispatcher.store.outage import survives_outage
from dispatcher.store.retention import purge_older_than, purge_records

log = logging.getLogger("dispatcher.daemon")


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM (and exits 0)."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_listening is not None:  # its sockets listen now
            self._on_listening()


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
    instance_id: str | None = None  # names this instance's partition leases
    #: the incremental planner, made at the first plan (kept: it adopts orphan cases once)
    planner: IncrementalPlanner | None = None
    #: the jobs' work running now, by job name: one run of each at a time
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def _single(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work` as a task of the daemon's own, unless the same job is still running
        (the start-up pass and the scheduler's first run may meet). The caller (the
        scheduler) awaits it shielded: cancelling the caller leaves the work running."""
        current = self.running.get(name)
        if self.sender.stopping or (current is not None and not current.done()):
            return  # stopping: nothing new starts (a run the scheduler had already submitted)
        task = asyncio.create_task(work(), name=f"job-{name}")
        self.running[name] = task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                return  # cut short at the end of the shutdown grace; logged there
            raise

    async def wait_running(self, grace: float) -> list[str]:
        """Wait up to `grace` seconds for the running jobs; cancel (and return the names
        of) those still running then."""
        tasks = {name: t for name, t in self.running.items() if not t.done()}
        if tasks:
            await asyncio.wait(tasks.values(), timeout=grace)
        late = [name for name, t in tasks.items() if not t.done()]
        for name in late:
            tasks[name].cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await asyncio.sleep(0)  # let the shielded callers see their tasks end
        return late

    async def plan(self) -> None:
        await self._single("plan", self._plan)

    async def send(self) -> None:
        await self._single("send", self._send)

    async def reconcile(self) -> None:
        await self._single("reconcile", self._reconcile)

    async def repair_status(self) -> None:
        await self._single("repair", self._repair_status)

    async def retention(self) -> None:
        await self._single("retention", self._retention)

    async def startup(self) -> None:
        """Plan and send once at start (after the first plan: what it queued is due)."""
        await self.plan()
        if not self.sender.stopping:
            await self.send()

    @survives_outage
    async def _plan(self) -> None:
        now = self.clock.now()
        if self.after_plan is not None:
            await asyncio.to_thread(self.after_plan, self.engine, now)
        if self.planner is None:
            cfg = self.config.scheduler
            self.planner = IncrementalPlanner(self.engine, self.gate, instance_id=self.instance_id,
                                              lease_seconds=cfg.plan_lease_seconds, batch_size=cfg.plan_batch)
        summary = await asyncio.to_thread(self.planner.run, self.catalog(), now)
        warn_estimated(self.config)  # once per profile and year (SPEC 12); logged to stderr
        log.info("plan: evaluated %d case(s) in %d partition(s), queued %d, deferred %d, escalated %d",
                 summary.evaluated, summary.partitions, summary.queued, summary.deferred, summary.escalated)

    @survives_outage
    async def _send(self) -> None:
        summary = await self.sender.send_due()
        if summary.claimed:
            log.info("send: claimed %d, sent %d, unconfirmed %d, deferred %d, retrying %d, failed %d",
                     summary.claimed, summary.sent, summary.unconfirmed, summary.deferred, summary.retried,
                     summary.failed)

    @survives_outage
    async def _reconcile(self) -> None:
        settled = await self.sender.reconcile_stale()
        if settled:
            log.info("reconcile: settled %d in-flight message(s)", settled)

    @survives_outage
    async def _repair_status(self) -> None:
        if self.repair is not None:
            await self.repair.run()

    @survives_outage
    async def _retention(self) -> None:
        """Delete the records older than the archive period (default 5 years): messages,
        events, and the agreements, plans, holds and done tasks whose life ended before
        it (`store.retention`), `[scheduler] retention_batch` rows per transaction: each
        short transaction locks only its own rows, so the planner and the sender are never
        held up behind one large delete."""
        cutoff = self.clock.now() - dt.timedelta(days=365 * self.config.retention.years + 1)
        removed = await asyncio.to_thread(
            purge_records, self.engine, cutoff, self.clock.now(), batch=self.config.scheduler.retention_batch,
            stop=lambda: self.sender.stopping)
        if any(removed.values()):
            log.info("retention: removed %s older than %s",
                     ", ".join(f"{n} {kind}" for kind, n in removed.items()), cutoff.date())


def purge_before(engine: Engine, cutoff: dt.datetime, now: dt.datetime | None = None) -> tuple[int, int]:
    """Delete the messages and events older than `cutoff` (with the payment-link tokens
    of those messages, and the dedupe keys), and the API's stored idempotent answers
    expired at `now`; the numbers of messages and events deleted. In small transactions:
    `store.retention.purge_older_than`."""
    return purge_older_than(engine, cutoff, now)


def _report_startup(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("start-up pass failed (%s: %s); the scheduled jobs carry on", type(exc).__name__, exc)


async def run_daemon(jobs: DaemonJobs, web_app: Any, host: str, port: int,
                     stop_event: asyncio.Event | None = None,
                     on_listening: Callable[[], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop_event`). Returns the exit status.
    `on_listening` is called once the web server accepts connections (the demo says
    "ready" then, not before: a newcomer's first click must not be refused)."""
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
                                         access_log=False, log_config=None), on_listening)  # our JSON handler
    server_task = asyncio.create_task(server.serve())

    scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    scheduler.add_job(jobs.plan, "interval", seconds=cfg.plan_every_seconds, id="plan")
    scheduler.add_job(jobs.send, "interval", seconds=cfg.send_every_seconds, id="send")
    # the first reconcile at once, alongside the start-up pass below
    scheduler.add_job(jobs.reconcile, "interval", seconds=cfg.reconcile_every_seconds, id="reconcile",
                      next_run_time=dt.datetime.now(dt.UTC))
    scheduler.add_job(jobs.retention, "interval", seconds=cfg.retention_every_seconds, id="retention")
    scheduler.add_job(jobs.repair_status, "interval", seconds=cfg.repair_every_seconds, id="repair")
    scheduler.start()
    startup = asyncio.create_task(jobs.startup(), name="startup")
    startup.add_done_callback(_report_startup)
    log.info("dispatcher running on http://%s:%d", host, port)

    await stop.wait()
    grace = jobs.config.sending.shutdown_grace_seconds
    log.info("stopping: no new claims; finishing the provider calls under way (at most %g s)", grace)
    jobs.sender.stop_claiming()
    scheduler.pause()  # starts nothing more; the jobs running carry on (see the module docstring)
    late = await jobs.wait_running(grace)
    if late:
        log.warning("stopping: %s still running after %g s, cut short; what it left in flight is reconciled "
                    "by the next instance", ", ".join(late), grace)
    await asyncio.gather(startup, return_exceptions=True)
    scheduler.shutdown(wait=False)
    server.should_exit = True
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server_task, timeout=2)
    for adapter in jobs.sender.channels.values():
        await adapter.aclose()
    log.info("stopped")
    return 0
