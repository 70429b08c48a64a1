"""The command line: the composition root. Reads settings, wires objects, runs commands.

Exit statuses (SPEC section 5): 0 success, 1 other failures, 2 bad usage or input,
3 partial success, 4 a one-off message refused by the compliance gate.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dispatcher.commands.calendar import calendar_cmd
from dispatcher.commands.case import case_app
from dispatcher.commands.common import (
    EXIT_FAILURE,
    EXIT_PARTIAL,
    EXIT_REFUSED,
    EXIT_USAGE,
    err,
    fail,
    out,
    rt,
)
from dispatcher.commands.people import tokens_app, users_app
from dispatcher.commands.report import report_cmd
from dispatcher.commands.templates import templates_app
from dispatcher.settings import Settings
from dispatcher.wiring import Runtime, SetupError, build_clock

app = typer.Typer(
    name="dispatcher",
    help="Outbound collections reminders over SMS, e-mail and voice — lawfully, at scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(case_app, name="case")
app.add_typer(templates_app, name="templates")
app.command("calendar")(calendar_cmd)
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", envvar="DISPATCHER_CONFIG", help="configuration file")
    ] = None,
    db: Annotated[str | None, typer.Option("--db", envvar="DISPATCHER_DB_URL", help="database URL")] = None,
    now: Annotated[
        str | None, typer.Option("--now", envvar="DISPATCHER_NOW", help="the clock for this command (ISO 8601)")
    ] = None,
) -> None:
    """Global options, before or after the command name."""
    settings = Settings.from_env()
    overrides: dict[str, Any] = {}
    if config is not None:
        overrides["config_path"] = config
    if db is not None:
        overrides["db_url"] = db
    if now is not None:
        overrides["now"] = now
    if overrides:
        settings = replace(settings, **overrides)
    try:
        # the daemon's clock runs on from --now; a one-shot command's stands still there
        clock = build_clock(settings, advancing=ctx.invoked_subcommand == "run")
    except ValueError as exc:
        from typer._click.core import ParameterSource

        given = ctx.get_parameter_source("now") is ParameterSource.COMMANDLINE
        raise fail(f"{'--now' if given else 'DISPATCHER_NOW (environment or .env)'}: {exc}") from None
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
    encoding: Annotated[str | None, typer.Option(
        "--encoding", help="the file's encoding, e.g. gbk (default: detected, UTF-8 or GBK/GB 18030)")] = None,
) -> None:
    """Import cases (upsert by case_id)."""
    from dispatcher.services.importer import ImportUsageError, import_file

    runtime = rt(ctx)
    try:
        report = import_file(file, runtime.engine, runtime.config, runtime.clock, rejects_path=rejects,
                             encoding=encoding)
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
    import gc

    from dispatcher.services.calendar_notice import warn_estimated
    from dispatcher.services.planner import PLAN_GC_THRESHOLD, decision_line, plan_decisions

    if fmt not in ("jsonl", "table"):
        raise fail(f"--format {fmt!r}: use jsonl or table")
    # Fewer cyclic collections while the plan streams (why: planner.PLAN_GC_THRESHOLD), for
    # this command's own run only, never inside a server that also plans; restored on close.
    saved = gc.get_threshold()
    if 0 < saved[0] < PLAN_GC_THRESHOLD:  # a higher threshold, or 0 (collector off), is left alone
        gc.set_threshold(PLAN_GC_THRESHOLD, *saved[1:])
        ctx.call_on_close(lambda: gc.set_threshold(*saved))
    runtime = rt(ctx)
    now = runtime.clock.now()
    catalog = runtime.templates.approved_catalog()
    if case:
        from dispatcher.store import repository

        with runtime.engine.connect() as conn:
            missing = repository.missing_case_ids(conn, case)
        if missing:
            raise fail(f"no such case: {', '.join(missing)}; check the id or import it first")
    stream = plan_decisions(runtime.engine, runtime.gate, catalog, now, case_ids=case)
    # an estimated calendar year (SPEC 12) is said once the decisions that used it are out
    ctx.call_on_close(lambda: warn_estimated(runtime.config, sys.stderr))
    if fmt == "jsonl":
        write = sys.stdout.write
        for _snapshot, decisions in stream:
            for decision in decisions:
                write(decision_line(decision))
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
    from dispatcher.services.plan_check import after_planning
    from dispatcher.services.planner import run_planner
    from dispatcher.services.repair import StatusRepair

    now = runtime.clock.now()
    after_planning(runtime.config)(runtime.engine, now)
    planned = run_planner(runtime.engine, runtime.gate, runtime.templates.approved_catalog(), now)
    sender = runtime.sender(channels)

    repair = StatusRepair(runtime.engine, runtime.config, runtime.clock, channels)

    async def _send() -> tuple[Any, Any]:
        try:
            await sender.reconcile_stale()
            sent = await sender.send_due()
            return sent, await repair.run()
        finally:
            for adapter in channels.values():
                await adapter.aclose()

    sent, repaired = asyncio.run(_send())
    return {"planned": planned, "sent": sent, "repaired": repaired}


@app.command("tick")
def tick_cmd(ctx: typer.Context) -> None:
    """One pass of the daemon: plan, enqueue, send what is due now, settle what came back."""
    from dispatcher.services.calendar_notice import warn_estimated

    runtime = rt(ctx)
    result = _tick(runtime, runtime.channels())
    warn_estimated(runtime.config, sys.stderr)
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
    table.add_row("sent, unconfirmed", str(sent.unconfirmed))
    table.add_row("deferred at send time", str(sent.deferred))
    table.add_row("retrying", str(sent.retried))
    table.add_row("cancelled", str(sent.cancelled))
    table.add_row("failed", str(sent.failed))
    table.add_row("statuses repaired", str(result["repaired"].repaired))
    out.print(table)
    if planned is not None and planned.by_reason:
        reasons = Table("decision", "count", title="decisions by reason")
        for key, count in sorted(planned.by_reason.items()):
            reasons.add_row(key, str(count))
        out.print(reasons)


# ------------------------------------------------------------------------- send


@app.command("send")
def send_cmd(
    ctx: typer.Context,
    case_id: Annotated[str, typer.Argument(help="the case")],
    channel: Annotated[str, typer.Option("--channel", help="sms, email or voice")],
    by: Annotated[str, typer.Option("--by", help="who asks for it (audited)")],
    template: Annotated[str | None, typer.Option("--template", help="template id, e.g. sms/dpd30/v2")] = None,
) -> None:
    """A one-off message through the compliance gate (exit 4 with the reason when refused)."""
    from dispatcher.domain import Action, Channel
    from dispatcher.services.oneoff import request_one_off
    from dispatcher.store.repository import CaseNotFound

    try:
        chan = Channel(channel)
    except ValueError:
        raise fail(f"--channel {channel!r}: use sms, email or voice") from None
    runtime = rt(ctx)
    try:
        result = request_one_off(
            runtime.engine,
            runtime.gate,
            runtime.templates.approved_catalog(),
            runtime.clock.now(),
            case_id=case_id,
            channel=chan,
            template=template,
            by=by,
        )
    except CaseNotFound as exc:
        raise fail(str(exc)) from None
    decision = result.decision
    if result.refused:
        print(f"refused: {decision.reason.value}")
        err.print(decision.detail, highlight=False, markup=False)
        raise typer.Exit(EXIT_REFUSED)
    if decision.action is Action.DEFER:
        assert decision.not_before is not None
        print(f"queued message {result.message_id} for {decision.not_before.isoformat()} ({decision.reason.value})")
        return
    channels = runtime.channels()
    sender = runtime.sender(channels)

    async def _go() -> Any:
        try:
            return await sender.send_due(only_ids=[result.message_id])  # type: ignore[list-item]
        finally:
            for adapter in channels.values():
                await adapter.aclose()

    summary = asyncio.run(_go())
    if summary.sent:
        print(f"sent message {result.message_id} ({decision.template})")
    else:
        print(f"queued message {result.message_id} ({decision.template}); the sender will retry it")


@app.command("payment")
def payment_cmd(
    ctx: typer.Context,
    case_id: Annotated[str, typer.Argument()],
    amount: Annotated[str, typer.Argument(help="decimal amount, e.g. 1250.00")],
    by: Annotated[str, typer.Option("--by")] = "cli",
) -> None:
    """Record a payment; a fully paid case closes and its queued messages are cancelled."""
    from dispatcher.store import repository

    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise fail(f"AMOUNT {amount!r} is not a decimal number; write e.g. 1250.00") from None
    if value <= 0 or value != value.quantize(Decimal("0.01")):
        raise fail(f"AMOUNT {amount}: must be > 0 with at most 2 decimals")
    runtime = rt(ctx)
    with runtime.engine.begin() as conn:
        try:
            outcome = repository.record_payment(conn, case_id, value, by, runtime.clock.now())
        except repository.CaseNotFound as exc:
            raise fail(str(exc)) from None
    remaining = outcome.amount_due - outcome.paid_total
    line = f"recorded payment of {outcome.amount} on {case_id}; paid {outcome.paid_total} of {outcome.amount_due}"
    if outcome.closed:
        line += (
            f"; case closed ({outcome.status.value}), {len(outcome.cancelled_message_ids)} queued message(s) cancelled"
        )
    elif remaining > 0:
        line += f"; {remaining} still due"
    print(line)


# ---------------------------------------------------------------------- sandbox


@app.command("sandbox")
def sandbox_cmd(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    twilio_port: Annotated[int, typer.Option("--twilio-port")] = 8081,
    smtp_port: Annotated[int, typer.Option("--smtp-port")] = 8025,
    latency_ms: Annotated[int, typer.Option("--latency-ms")] = 0,
    fail_ratio: Annotated[float, typer.Option("--fail-ratio")] = 0.0,
    faults: Annotated[
        str | None, typer.Option("--faults", help='e.g. "429:0.05,500:0.05,timeout:0.02,reset:0.02"')
    ] = None,
    clock_offset_seconds: Annotated[float, typer.Option(
        "--clock-offset-seconds", help="run the provider's clock this far ahead (negative: behind)")] = 0.0,
    records: Annotated[str | None, typer.Option(
        "--records", help="keep the records in this file (JSON lines); a restart reads them back")] = None,
    drop_callbacks: Annotated[float, typer.Option(
        "--drop-callbacks", help="share of status callbacks lost (0..1)")] = 0.0,
    account_sid: Annotated[str | None, typer.Option(
        "--account-sid", envvar="TWILIO_ACCOUNT_SID", show_envvar=True,
        help="the account the sandbox accepts (default: its own test account)")] = None,
    auth_token: Annotated[str | None, typer.Option(
        "--auth-token", envvar="TWILIO_AUTH_TOKEN", show_envvar=True,
        help="the token it checks requests with and signs callbacks with")] = None,
) -> None:
    """A local Twilio-compatible API and an SMTP sink, for demos and tests.

    It takes TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN from the environment, as the
    dispatcher does, so one environment serves both. A reply from a debtor is simulated
    with `POST /sandbox/inbound` {"from", "to", "body", "url"} on its HTTP port: it posts a
    signed inbound SMS to `url` (the dispatcher's /twilio/sms/inbound)."""
    from dispatcher.sandbox.server import serve

    credentials = {k: v for k, v in (("account_sid", account_sid), ("auth_token", auth_token)) if v}
    try:
        serve(host=host, twilio_port=twilio_port, smtp_port=smtp_port, latency_ms=latency_ms,
              fail_ratio=fail_ratio, faults=faults, clock_offset_seconds=clock_offset_seconds,
              records_path=records, drop_callback_ratio=drop_callbacks, **credentials)
    except ValueError as exc:
        raise fail(str(exc)) from None


# ----------------------------------------------------------------------- report


app.command("report")(report_cmd)


# ------------------------------------------------------------------------- demo


@app.command("demo")
def demo_cmd(
    ctx: typer.Context,
    cases: Annotated[int, typer.Option("--cases", min=10, help="generated portfolio size")] = 5000,
    days: Annotated[int, typer.Option("--days", min=1, help="simulated days")] = 21,
    workdir: Annotated[Path, typer.Option("--workdir", help="where the demo database and report go")] = Path(
        "var/demo"),
    seed: Annotated[int, typer.Option("--seed")] = 7,
    serve: Annotated[bool, typer.Option(
        "--serve", help="afterwards keep the daemon, console and sandbox running on the demo's data (Ctrl-C stops)")
    ] = False,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="with --serve: the port (0: a free one)")] = 0,
) -> None:
    """The embedded-default end-to-end run: SQLite, sandbox providers, simulated weeks."""
    from dispatcher.demo import print_summary, run_demo

    runtime = rt(ctx)
    if serve and port:
        import socket

        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise fail(f"--port {port} is in use; choose another or leave it out (a free port)") from None
    result = run_demo(runtime.config, workdir, cases=cases, days=days, seed=seed, console=out,
                      serve_port=port if serve else None)
    if not serve:
        print_summary(result, out)


# -------------------------------------------------------------------------- run


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """The daemon: scheduler + webhook/API server + sender, until SIGTERM."""
    from dispatcher.logs import configure_logging
    from dispatcher.services.daemon import DaemonJobs, run_daemon
    from dispatcher.services.plan_check import after_planning
    from dispatcher.services.repair import StatusRepair
    from dispatcher.store.outage import wait_for_store
    from dispatcher.web.app import create_app

    configure_logging(log_level.upper())
    # SIGTERM before the daemon's own handler is installed (still waiting for the database,
    # starting up): nothing is claimed yet, so stop at once, and with status 0.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _check_listen(host, port)
    runtime = rt(ctx)
    # The database may not be up yet (a host's boot, a fail-over): wait for it, never exit.
    wait_for_store(lambda: runtime.engine, what="start-up")
    wait_for_store(lambda: runtime.templates, what="start-up")  # the approved versions, from the store
    # asks the store whether anyone can sign in and lints the approved versions: a connection
    # lost meanwhile is waited out like the ones above, not the end of the process
    wait_for_store(lambda: _startup_lint(runtime), what="start-up")
    channels = runtime.channels()
    sender = runtime.sender(channels)
    jobs = DaemonJobs(
        engine=runtime.engine,
        config=runtime.config,
        gate=runtime.gate,
        clock=runtime.clock,
        sender=sender,
        catalog=runtime.templates.approved_catalog,
        after_plan=after_planning(runtime.config),
        repair=StatusRepair(runtime.engine, runtime.config, runtime.clock, channels),
        instance_id=runtime.settings.instance_id,
    )
    web = wait_for_store(runtime.web, what="start-up")

    async def serve() -> int:
        try:
            return await run_daemon(jobs, create_app(web), host, port)
        finally:
            # the daemon serves without a lifespan: the hot path's pool is closed here, on its loop
            await web.receipts.aclose()

    raise typer.Exit(asyncio.run(serve()))


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _check_listen(host: str, port: int) -> None:
    """Refuse to start, saying why, when the address cannot be listened on (uvicorn would
    find out only after the start-up pass, and leave with its own exit status)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop what uses it or choose"
                   " another --host/--port", EXIT_FAILURE) from None


def _startup_lint(runtime: Runtime) -> None:
    """Lint at start-up (SPEC section 7): the templates folder, and the approved versions
    in the database that differ from it (a change of configuration or forbidden phrases
    may break an approved text). Problems are reported; what is sent stays approved."""
    import logging

    from dispatcher.services.template_files import lint_approved_beyond
    from dispatcher.templates.lint import lint_tree

    config = runtime.config
    folder = config.resolve(config.templates.directory)
    problems = lint_tree(folder, config, config.resolve(config.templates.forbidden_phrases)) \
        if folder.is_dir() else []
    problems += lint_approved_beyond(runtime.template_versions, folder)  # what is sent, if not in the folder
    log = logging.getLogger("dispatcher")
    for problem in problems:
        log.warning("template lint: %s", problem)
    if not runtime.people.anyone_can_sign_in():
        log.warning("no user can sign in to the console yet: add one with `dispatcher users add NAME --role ROLE`"
                    " and `dispatcher users password NAME`")


#: the global options (`main_options`), also accepted after the command name
GLOBAL_OPTIONS = ("--config", "--db", "--now")


def hoist_global_options(argv: list[str]) -> list[str]:
    """`dispatcher plan --now T` as `dispatcher --now T plan`: the global options given
    anywhere after the command (before a `--`) move in front of it, where click wants
    them. No command has an option of the same name."""
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        i += 2 if argv[i] in GLOBAL_OPTIONS else 1
    head, rest = argv[:i], argv[i:]
    moved: list[str] = []
    kept: list[str] = []
    j = 0
    while j < len(rest):
        arg = rest[j]
        if arg == "--":
            kept += rest[j:]
            break
        if arg in GLOBAL_OPTIONS and j + 1 < len(rest):
            moved += rest[j:j + 2]
            j += 2
            continue
        if arg.startswith(tuple(f"{o}=" for o in GLOBAL_OPTIONS)):
            moved.append(arg)
        else:
            kept.append(arg)
        j += 1
    return head + moved + kept


def _command_of(args: list[str]) -> str | None:
    """The command name in `args` (after the global options)."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in GLOBAL_OPTIONS else 1
    return args[i] if i < len(args) else None


def main() -> None:
    """Console entry point."""
    from dispatcher.logs import json_logging_active, log_failure
    from dispatcher.policy import NoLegalInstantError

    def report(message: str) -> None:
        # the daemon logs JSON lines (a log shipper reads them); other commands talk to a person
        if json_logging_active():
            log_failure(message)
        else:
            err.print(f"[bold red]error:[/] {message}", highlight=False)

    args = hoist_global_options(sys.argv[1:])
    if _command_of(args) == "run":
        from dispatcher.logs import configure_logging

        configure_logging()  # the daemon's start-up failures are JSON lines too
    try:
        app(args=args, prog_name="dispatcher")
    except SetupError as exc:
        # a collaborator the command needs cannot be built (bad configuration file,
        # unreachable database, missing secret): exit 2 for the operator's input, 1 else
        report(str(exc))
        raise SystemExit(EXIT_USAGE if exc.usage else EXIT_FAILURE) from None
    except NoLegalInstantError as exc:
        report(f"{exc}. Check the case's timezone and the profile's hours, calendar and extra_holidays"
               " in the configuration.")
        raise SystemExit(EXIT_FAILURE) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a JSON log line, never a bare traceback
        log_failure(f"unexpected failure: {type(exc).__name__}: {exc}; this is a bug, please report it with"
                    " this line", exc)
        raise SystemExit(EXIT_FAILURE) from None


if __name__ == "__main__":
    main()

