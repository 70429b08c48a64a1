"""The command line: the composition root. Reads settings, wires objects, runs commands.

Exit statuses (SPEC section 5): 0 success, 1 other failures, 2 bad usage or input,
3 partial success, 4 a one-off message refused by the compliance gate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dispatcher.clock import Clock, FakeClock, StartedClock, SystemClock, parse_instant
from dispatcher.config import Config, ConfigError, load_config
from dispatcher.settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PARTIAL, EXIT_REFUSED = 0, 1, 2, 3, 4

app = typer.Typer(
    name="dispatcher",
    help="Outbound collections reminders over SMS, e-mail and voice — lawfully, at scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
case_app = typer.Typer(help="A case's timeline, holds.", no_args_is_help=True)
templates_app = typer.Typer(help="Lint, preview and approve templates.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(case_app, name="case")
app.add_typer(templates_app, name="templates")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print an error that says what to do, and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@dataclass
class Runtime:
    """Everything a command needs, built lazily from the settings."""

    settings: Settings
    clock: Clock
    _closers: list[Any] = field(default_factory=list)

    @cached_property
    def config(self) -> Config:
        try:
            return load_config(self.settings.config_path)
        except ConfigError as exc:
            raise fail(str(exc)) from None

    @cached_property
    def engine(self):  # type: ignore[no-untyped-def]
        from dispatcher.store.db import ensure_schema, make_engine

        try:
            engine = make_engine(self.settings.db_url)
            ensure_schema(engine)
        except Exception as exc:  # noqa: BLE001 - any driver error: tell the operator what to check
            raise fail(
                f"cannot open the database {_safe_url(self.settings.db_url)}: {exc}. "
                "Check --db / DISPATCHER_DB_URL and that the server is running.",
                EXIT_FAILURE,
            ) from None
        self._closers.append(engine.dispose)
        return engine

    @cached_property
    def templates(self):  # type: ignore[no-untyped-def]
        from dispatcher.templates.render import TemplateSet

        return TemplateSet(self.config.resolve(self.config.templates.directory), self.config)

    @cached_property
    def signer(self):  # type: ignore[no-untyped-def]
        from dispatcher.links import LinkSigner

        key = self.settings.signing_key
        if not key:
            if self.settings.transport == "file" or self.settings.twilio_api_url:
                key = "dev-only-signing-key"  # offline/sandbox runs only; production must set it
            else:
                raise fail("DISPATCHER_SIGNING_KEY is not set; set it (e.g. in .env) to sign links", EXIT_FAILURE)
        return LinkSigner(key)

    def channels(self):  # type: ignore[no-untyped-def]
        from dispatcher.channels.registry import build_channels

        try:
            return build_channels(self.settings, timeout=self.config.sending.provider_timeout_seconds)
        except (ValueError, KeyError) as exc:
            raise fail(str(exc), EXIT_FAILURE) from None

    def sender(self, channels):  # type: ignore[no-untyped-def]
        from dispatcher.services.outbox import Sender

        return Sender(
            self.engine,
            self.config,
            self.templates,
            channels,
            self.clock,
            self.signer,
            self.settings.public_url,
            self.settings.instance_id,
        )

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer()


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def rt(ctx: typer.Context) -> Runtime:
    runtime = ctx.obj
    assert isinstance(runtime, Runtime)
    return runtime


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", envvar="DISPATCHER_CONFIG", help="configuration file")] = None,
    db: Annotated[str | None, typer.Option("--db", envvar="DISPATCHER_DB_URL", help="database URL")] = None,
    now: Annotated[
        str | None, typer.Option("--now", envvar="DISPATCHER_NOW", help="the clock for this command (ISO 8601)")
    ] = None,
) -> None:
    """Global options go before the command name."""
    settings = Settings.from_env()
    overrides: dict[str, Any] = {}
    if config is not None:
        overrides["config_path"] = config
    if db is not None:
        overrides["db_url"] = db
    if now is not None:
        overrides["now"] = now
    if overrides:
        from dataclasses import replace

        settings = replace(settings, **overrides)
    clock: Clock
    if settings.now:
        try:
            start = parse_instant(settings.now)
        except ValueError as exc:
            raise fail(f"--now: {exc}") from None
        clock = StartedClock(start) if ctx.invoked_subcommand == "run" else FakeClock(start)
    else:
        clock = SystemClock()
    runtime = Runtime(settings=settings, clock=clock)
    ctx.obj = runtime
    ctx.call_on_close(runtime.close)


# --------------------------------------------------------------------------- db


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or upgrade the schema (Alembic migrations)."""
    from dispatcher.store.db import schema_revision

    engine = rt(ctx).engine
    out.print(f"schema at revision {schema_revision(engine)}")


# ----------------------------------------------------------------------- import


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="cases as .csv (header row) or .jsonl")],
    rejects: Annotated[Path | None, typer.Option("--rejects", help="write rejected rows here (CSV)")] = None,
) -> None:
    """Import cases (upsert by case_id)."""
    from dispatcher.services.importer import ImportUsageError, import_file

    runtime = rt(ctx)
    try:
        report = import_file(file, runtime.engine, runtime.config, runtime.clock, rejects_path=rejects)
    except ImportUsageError as exc:
        raise fail(str(exc)) from None
    for error in report.errors:
        err.print(f"line {error.line}: {error.column}: {error.message}", highlight=False, markup=False)
    print(f"imported {report.imported}, updated {report.updated}, rejected {report.rejected}")
    if report.rejected:
        raise typer.Exit(EXIT_PARTIAL)


# ------------------------------------------------------------------------- plan


@app.command("plan")
def plan_cmd(
    ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or table")] = "jsonl",
    case: Annotated[list[str] | None, typer.Option("--case", help="only this case (repeatable)")] = None,
) -> None:
    """Dry run: one decision per case and channel at "now". Writes nothing."""
    from dispatcher.services.planner import plan_decisions

    if fmt not in ("jsonl", "table"):
        raise fail(f"--format {fmt!r}: use jsonl or table")
    runtime = rt(ctx)
    now = runtime.clock.now()
    catalog = runtime.templates.approved_catalog()
    if case:
        from dispatcher.store import repository

        with runtime.engine.connect() as conn:
            missing = repository.missing_case_ids(conn, case)
        if missing:
            raise fail(f"no such case: {', '.join(missing)}; check the id or import it first")
    stream = plan_decisions(runtime.engine, runtime.config, catalog, now, case_ids=case)
    if fmt == "jsonl":
        write = sys.stdout.write
        for _snapshot, decisions in stream:
            for decision in decisions:
                write(json.dumps(decision.as_json(), ensure_ascii=False) + "\n")
        return
    table = Table("case", "stage", "channel", "action", "reason", "template", "not_before", "detail")
    for _snapshot, decisions in stream:
        for d in decisions:
            table.add_row(
                d.case_id,
                d.stage or "-",
                d.channel.value if d.channel else "-",
                d.action.value,
                d.reason.value,
                d.template or "-",
                d.not_before.isoformat() if d.not_before else "-",
                d.detail,
            )
    out.print(table)


# ------------------------------------------------------------------------- tick


def _tick(runtime: Runtime, channels: dict[Any, Any]) -> dict[str, Any]:
    from dispatcher.services.planner import run_planner

    now = runtime.clock.now()
    planned = run_planner(runtime.engine, runtime.config, runtime.templates.approved_catalog(), now)
    sender = runtime.sender(channels)

    async def _send() -> Any:
        try:
            await sender.reconcile_stale()
            return await sender.send_due()
        finally:
            for adapter in channels.values():
                await adapter.aclose()

    sent = asyncio.run(_send())
    return {"planned": planned, "sent": sent}


@app.command("tick")
def tick_cmd(ctx: typer.Context) -> None:
    """One pass of the daemon: plan, enqueue, send what is due now, settle what came back."""
    runtime = rt(ctx)
    result = _tick(runtime, runtime.channels())
    planned, sent = result["planned"], result["sent"]
    table = Table("step", "count", title=f"tick at {runtime.clock.now().isoformat()}")
    if planned is None:
        table.add_row("plan", "skipped: another instance is planning")
    else:
        table.add_row("queued (send now)", str(planned.queued))
        table.add_row("queued (deferred)", str(planned.deferred))
        table.add_row("already queued", str(planned.already_queued))
        table.add_row("escalated", str(planned.escalated))
    table.add_row("claimed", str(sent.claimed))
    table.add_row("sent", str(sent.sent))
    table.add_row("deferred at send time", str(sent.deferred))
    table.add_row("retrying", str(sent.retried))
    table.add_row("cancelled", str(sent.cancelled))
    table.add_row("failed", str(sent.failed))
    out.print(table)
    if planned is not None and planned.by_reason:
        reasons = Table("decision", "count", title="decisions by reason")
        for key, count in sorted(planned.by_reason.items()):
            reasons.add_row(key, str(count))
        out.print(reasons)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()


_ = (Decimal, InvalidOperation, dt)  # used by commands added below
