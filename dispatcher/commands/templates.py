"""`dispatcher templates …`: lint, preview and approve templates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dispatcher.commands.common import EXIT_FAILURE, err, fail, rt

templates_app = typer.Typer(help="Lint, preview and approve templates.", no_args_is_help=True)


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
    """Render a template for a real or a sample case."""
    from dispatcher.templates import TemplateSetError
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
        result = preview(runtime.templates, template_id, case, locale, today, Path("var/preview"))
    except (TemplateSetError, KeyError, ValueError, LookupError) as exc:
        raise fail(str(exc)) from None
    print(result.as_text())


@templates_app.command("approve")
def templates_approve(
    ctx: typer.Context,
    template_id: Annotated[str, typer.Argument(help="e.g. sms/dpd30/v1")],
    by: Annotated[str, typer.Option("--by", help="the approver (audited)")],
) -> None:
    """Record approval of the template's current content (all its locales)."""
    from dispatcher.store.plan_state import invalidate_all
    from dispatcher.store.tables import TemplateApprovalRow
    from dispatcher.templates import ApprovalError, approve
    from dispatcher.templates.approval import ApprovalUsageError

    runtime = rt(ctx)
    config = runtime.config
    try:
        approvals = approve(
            config.resolve(config.templates.directory),
            template_id,
            by,
            runtime.clock.now(),
            config,
            config.resolve(config.templates.forbidden_phrases),
        )
    except ApprovalUsageError as exc:  # an unknown id: exit 2, as `templates preview` does
        raise fail(str(exc)) from None
    except ApprovalError as exc:  # it fails lint, or the approvals file is broken
        raise fail(str(exc), EXIT_FAILURE) from None
    with runtime.engine.begin() as conn:
        from sqlalchemy import insert

        conn.execute(
            insert(TemplateApprovalRow),
            [
                {"template_path": a.path, "content_hash": a.sha256, "approved_by": a.approved_by,
                 "approved_at": a.approved_at}
                for a in approvals
            ],
        )
        # every case's choice of template may change: the planner looks at all of them again
        invalidate_all(conn, f"template {template_id} approved by {by}", runtime.clock.now())
    for a in approvals:
        print(f"approved {a.path} sha256 {a.sha256[:12]} by {a.approved_by}")
