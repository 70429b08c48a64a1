"""`dispatcher templates …`: lint and preview template files; import them into the
database and export them back; the versions' history and diff; four-eyes approval and
rejection (`services.template_versions` decides, as for the API and the console)."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from dispatcher.services.template_versions import TemplateVersion, TemplateVersions
    from dispatcher.wiring import Runtime

from dispatcher.commands.common import EXIT_FAILURE, EXIT_REFUSED, err, fail, out, rt

templates_app = typer.Typer(help="Lint, preview, import, export, review and approve templates.",
                            no_args_is_help=True)


@templates_app.command("lint")
def templates_lint(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Argument(help="templates folder, a channel/stage folder or one file")] = None,
) -> None:
    """Render every template with sample cases; exit 1 on any problem."""
    from dispatcher.templates.lint import lint_path

    runtime = rt(ctx)
    config = runtime.config
    target = path or config.resolve(config.templates.directory)
    if not target.exists():
        raise fail(f"{target}: no such file or directory; pass the templates folder, a stage folder or a .j2 file")
    problems = lint_path(target, config, config.resolve(config.templates.forbidden_phrases))
    for problem in problems:
        print(str(problem))
    if problems:
        err.print(f"{len(problems)} problem(s); fix them, then run `dispatcher templates lint` again", highlight=False)
        raise typer.Exit(EXIT_FAILURE)
    print("all templates pass")


@templates_app.command("preview")
def templates_preview(
    ctx: typer.Context,
    template_id: Annotated[str, typer.Argument(help="e.g. sms/dpd30/v1")],
    case_id: Annotated[str | None, typer.Option("--case", help="render for this case from the store")] = None,
    locale: Annotated[str | None, typer.Option("--locale", help="zh-CN or en-US")] = None,
) -> None:
    """Render a template file of the templates folder for a real or a sample case."""
    from dispatcher.templates import TemplateSet, TemplateSetError
    from dispatcher.templates.preview import preview, sample_case_for_template
    from dispatcher.testing import SAMPLE_TODAY

    runtime = rt(ctx)
    now = runtime.clock.now()
    if case_id:
        from dispatcher.store.snapshots import iter_snapshots

        snapshot = next(iter(iter_snapshots(runtime.engine, case_ids=[case_id], now=now)), None)
        if snapshot is None:
            raise fail(f"no such case: {case_id}; check the id or import it first")
        from dispatcher.policy.zones import local_date, primary_zone

        # days past due on the debtor's local date (SPEC 11), as the sender counts them
        zone = primary_zone(snapshot.zones, runtime.config.jurisdictions.get(snapshot.case.jurisdiction))
        case, today = snapshot.case, local_date(now, zone)
    else:
        case, today = sample_case_for_template(runtime.config, template_id, locale), SAMPLE_TODAY
    try:
        files = TemplateSet(runtime.config.resolve(runtime.config.templates.directory), runtime.config)
        result = preview(files, template_id, case, locale, today, Path("var/preview"))
    except (TemplateSetError, KeyError, ValueError, LookupError) as exc:
        raise fail(str(exc)) from None
    # what is sent is the database's approved version: is this file's content that version?
    sent = _versions(runtime).approved(result.template_id, result.locale)
    status = "never-approved" if sent is None else \
        "approved" if sent.sha256 == result.message.content_hash else "edited-not-approved"
    print(dataclasses.replace(result, approval=status).as_text())


def _versions(runtime: Runtime) -> TemplateVersions:
    from dispatcher.wiring import SetupError

    # a new database imports the templates folder first; with neither, the commands say
    # "no template ..." and `templates import PATH` is how to start
    with contextlib.suppress(SetupError):
        runtime.templates  # noqa: B018
    return runtime.template_versions


def _folder(runtime: Runtime, path: Path | None) -> Path:
    return path or runtime.config.resolve(runtime.config.templates.directory)


@templates_app.command("import")
def templates_import(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Argument(help="the templates folder (default: the configuration's)")] = None,
    by: Annotated[str, typer.Option("--by", help="who imports (the author of the drafts; audited)")] = "",
) -> None:
    """Load template files into the database: a file matching its approvals.toml entry
    becomes the approved version (approver as recorded), any other content a draft by --by."""
    from dispatcher.services.template_files import import_tree
    from dispatcher.services.template_versions import TemplateVersionError
    from dispatcher.templates import ApprovalError

    if not by.strip():
        raise fail("say who imports: --by USER")
    runtime = rt(ctx)
    folder = _folder(runtime, path)
    try:
        results = import_tree(runtime.template_versions, folder, by)
    except (TemplateVersionError, ApprovalError) as exc:
        raise fail(str(exc)) from None
    counts = {"approved": 0, "draft": 0, "unchanged": 0}
    for r in results:
        counts[r.action] += 1
        if r.action == "unchanged":
            continue
        print(f"{r.action} {r.relpath} version {r.version}"
              + (f" ({len(r.problems)} lint problem(s))" if r.problems else ""))
        for problem in r.problems:
            print(f"  {problem}")
    print(f"imported from {folder}: {counts['approved']} approved, {counts['draft']} draft(s),"
          f" {counts['unchanged']} unchanged")


@templates_app.command("export")
def templates_export(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Argument(help="where to write (default: the configuration's folder)")] = None,
) -> None:
    """Write the approved versions and approvals.toml as files, for review in git."""
    from dispatcher.services.template_files import export_tree

    runtime = rt(ctx)
    folder = _folder(runtime, path)
    try:
        written = export_tree(_versions(runtime), folder)
    except OSError as exc:
        raise fail(f"cannot write to {folder}: {exc.strerror or exc}; choose another folder") from None
    print(f"exported {len(written)} approved version(s) and approvals.toml to {folder}")


def _pick(versions: TemplateVersions, template_id: str, locale: str | None, version: int | None,
          *, what: str) -> TemplateVersion:
    """The version to approve or reject: `version`, or the draft awaiting a checker."""
    from dispatcher.services.template_versions import TemplateVersionError, check_locale, check_template_id

    try:
        check_template_id(template_id)
        if locale is not None:
            check_locale(locale)
    except TemplateVersionError as exc:
        raise fail(str(exc)) from None
    if not versions.versions(template_id):
        raise fail(f"no template {template_id} in the database; see `dispatcher templates history` of an"
                   " existing id, or `dispatcher templates import`")
    if version is not None:
        found = versions.get(version)
        if found is None or found.template_id != template_id or (locale and found.locale != locale):
            raise fail(f"{template_id} has no version {version}{f' in {locale}' if locale else ''};"
                       f" see `dispatcher templates history {template_id}`")
        return found
    locales = [locale] if locale else sorted({v.locale for v in versions.versions(template_id)})
    pending = [p for p in (versions.pending(template_id, loc) for loc in locales) if p is not None]
    if not pending:
        raise fail(f"no draft of {template_id}{f' in {locale}' if locale else ''} awaits {what}")
    if len(pending) > 1:
        raise fail(f"{template_id} has drafts in {', '.join(p.locale for p in pending)}; say which: --locale L")
    return pending[0]


@templates_app.command("approve")
def templates_approve(
    ctx: typer.Context,
    template_id: Annotated[str, typer.Argument(help="e.g. sms/dpd30/v1")],
    by: Annotated[str, typer.Option("--by", help="the checker: a compliance user who did not write it")],
    locale: Annotated[str | None, typer.Option("--locale", help="zh-CN or en-US")] = None,
    version: Annotated[int | None, typer.Option("--version", help="this version (a rollback) instead of"
                                                " the newest draft")] = None,
    note: Annotated[str | None, typer.Option("--note", help="the checker's note")] = None,
) -> None:
    """Approve the newest draft of a template in one locale (four eyes: a compliance user
    who is not its author, lint-clean). A refusal exits 4 and prints its reason code."""
    from dispatcher.services.template_versions import ApprovalDenied, TemplateVersionError

    runtime = rt(ctx)
    versions = _versions(runtime)
    target = _pick(versions, template_id, locale, version, what="approval")
    try:
        approved = versions.approve(template_id, target.version, by, note)
    except ApprovalDenied as exc:
        print(f"refused: {exc.reason}")
        err.print(str(exc), highlight=False, markup=False)
        for problem in exc.problems:
            err.print(f"  {problem}", highlight=False, markup=False)
        raise typer.Exit(EXIT_REFUSED) from None
    except TemplateVersionError as exc:
        raise fail(str(exc)) from None
    print(f"approved {approved.relpath} version {approved.version} sha256 {approved.sha256[:12]}"
          f" by {approved.approved_by}")


@templates_app.command("reject")
def templates_reject(
    ctx: typer.Context,
    template_id: Annotated[str, typer.Argument(help="e.g. sms/dpd30/v1")],
    by: Annotated[str, typer.Option("--by", help="the checker: a compliance user who did not write it")],
    note: Annotated[str, typer.Option("--note", help="why, for the author")],
    locale: Annotated[str | None, typer.Option("--locale", help="zh-CN or en-US")] = None,
    version: Annotated[int | None, typer.Option("--version", help="this draft instead of the newest")] = None,
) -> None:
    """Reject the newest draft of a template in one locale, with a note (exit 4 if refused)."""
    from dispatcher.services.template_versions import ApprovalDenied, TemplateVersionError

    runtime = rt(ctx)
    versions = _versions(runtime)
    target = _pick(versions, template_id, locale, version, what="review")
    try:
        rejected = versions.reject(template_id, target.version, by, note)
    except ApprovalDenied as exc:
        print(f"refused: {exc.reason}")
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(EXIT_REFUSED) from None
    except TemplateVersionError as exc:
        raise fail(str(exc)) from None
    print(f"rejected {rejected.relpath} version {rejected.version} by {rejected.rejected_by}")


@templates_app.command("history")
def templates_history(
    ctx: typer.Context,
    template_id: Annotated[str, typer.Argument(help="e.g. sms/dpd30/v1")],
    locale: Annotated[str | None, typer.Option("--locale", help="only this locale")] = None,
) -> None:
    """Every version of a template, newest first: state, author, checker, note."""
    from rich.table import Table

    runtime = rt(ctx)
    versions = _versions(runtime).versions(template_id, locale)
    if not versions:
        raise fail(f"no template {template_id}{f' in {locale}' if locale else ''} in the database;"
                   " `dispatcher templates import` loads the templates folder")
    table = Table("version", "locale", "state", "author", "created", "decided by", "decided", "note",
                  title=f"{template_id}: versions, newest first")
    for v in versions:
        decided_by = v.approved_by or v.rejected_by or "-"
        decided = v.approved_at or v.rejected_at
        table.add_row(str(v.version), v.locale, v.state, v.author, v.created_at.isoformat(timespec="seconds"),
                      decided_by, decided.isoformat(timespec="seconds") if decided else "-", v.note or "")
    out.print(table)


@templates_app.command("diff")
def templates_diff(
    ctx: typer.Context,
    template_id: Annotated[str, typer.Argument(help="e.g. sms/dpd30/v1")],
    locale: Annotated[str | None, typer.Option("--locale", help="only this locale")] = None,
) -> None:
    """The newest draft against the approved version (unified diff), per locale."""
    runtime = rt(ctx)
    versions = _versions(runtime)
    found = versions.versions(template_id, locale)
    if not found:
        raise fail(f"no template {template_id}{f' in {locale}' if locale else ''} in the database;"
                   " `dispatcher templates import` loads the templates folder")
    for loc in sorted({v.locale for v in found}):
        text = versions.diff(template_id, loc)
        if text:
            print(text, end="" if text.endswith("\n") else "\n")
        else:
            print(f"{template_id} ({loc}): no draft awaits approval")
