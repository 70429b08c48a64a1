"""Approving the files of a template folder: lint every locale file of it, then record
the sha256 of each in the approvals file (`approvals_file`).

This is the file-only workflow's approval, kept for file template sets (tests, tooling).
The product approves versions in the database with four eyes
(`services.template_versions`); `dispatcher templates approve` goes there, never here.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dispatcher.config import Config
from dispatcher.templates.approvals_file import Approval, ApprovalError, load_approvals, write_approvals
from dispatcher.templates.lint import LintProblem, lint_template
from dispatcher.templates.rendering import TemplateSet, content_hash


class ApprovalRefused(ApprovalError):
    """The template fails lint; `problems` lists why."""

    def __init__(self, template_id: str, problems: list[LintProblem]) -> None:
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(
            f"{template_id} was not approved: it fails lint ({len(problems)} problem(s)); fix these"
            f" and approve again:\n{lines}"
        )
        self.problems = problems


class ApprovalUsageError(ApprovalError):
    """The request itself is wrong (an unknown template id, no approver): bad usage."""


def approve(
    directory: Path,
    template_id: str,
    by: str,
    now: dt.datetime,
    config: Config,
    forbidden_phrases_path: Path,
) -> list[Approval]:
    """Lint every locale file of `template_id`, then record their current content as approved.

    Raises `ApprovalRefused` (with the lint problems) if any file fails, and
    `ApprovalUsageError` for an unknown id (naming close matches) or a missing approver.
    """
    by = by.strip()
    if not by:
        raise ApprovalUsageError("say who approves: --by USER")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ApprovalError("approval time must be timezone-aware")
    directory = Path(directory)
    templates = TemplateSet(directory, config)
    try:
        locales = templates.locales_of(template_id)
    except LookupError as exc:
        raise ApprovalUsageError(str(exc)) from None
    if not locales:
        raise ApprovalUsageError(str(templates.unknown(template_id)))

    problems: list[LintProblem] = []
    for locale in locales:
        problems += lint_template(
            templates.path_of(template_id, locale), config, forbidden_phrases_path, root=directory
        )
    if problems:
        raise ApprovalRefused(template_id, problems)

    approvals = load_approvals(directory)
    recorded = []
    for locale in locales:
        rel = f"{template_id}.{locale}.j2"
        sha = content_hash(templates.path_of(template_id, locale).read_bytes())
        approval = Approval(rel, sha, by, now.replace(microsecond=0))
        approvals[rel] = approval
        recorded.append(approval)
    write_approvals(directory, approvals)
    return recorded
