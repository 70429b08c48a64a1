"""The approvals file: which exact template content compliance has signed off.

It is ``templates/approvals.toml``, one table per template file, written in a fixed
order so a change is a small diff that goes through code review with the edit::

    ["sms/dpd30/v1.zh-CN.j2"]
    approved_at = "2026-11-23T10:00:00+00:00"
    approved_by = "compliance-team"
    sha256 = "3f1c..."

The database holds what is sent (`services.template_versions`); this file carries
approvals through git: `templates import` makes a file whose sha256 matches its entry
the approved version, with the approver and time recorded here, and `templates export`
writes it back from the approved versions. This module only reads and writes the file.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

#: The approvals file, at the top of the templates directory.
APPROVALS_FILE = "approvals.toml"

_HEADER = (
    "# Template approvals: the sha256 of each approved template file, who approved it and when.\n"
    "# Written by `dispatcher templates export`; do not edit by hand.\n"
    "# `dispatcher templates import` approves a file only while it still matches its sha256 here.\n"
)


class ApprovalError(Exception):
    """An approval cannot be recorded (unknown template, bad input)."""


@dataclass(frozen=True, slots=True)
class Approval:
    path: str  # relative to the templates directory, with "/" separators
    sha256: str
    approved_by: str
    approved_at: dt.datetime


def load_approvals(directory: Path) -> dict[str, Approval]:
    """The approvals recorded under `directory`, keyed by relative file path."""
    path = Path(directory) / APPROVALS_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ApprovalError(f"{path}: not valid TOML ({exc}); restore it from version control") from None
    approvals: dict[str, Approval] = {}
    for rel, entry in raw.items():
        try:
            approved_at = entry["approved_at"]
            if isinstance(approved_at, str):
                approved_at = dt.datetime.fromisoformat(approved_at)
            approvals[rel] = Approval(rel, str(entry["sha256"]), str(entry["approved_by"]), approved_at)
        except (KeyError, TypeError, ValueError) as exc:
            raise ApprovalError(f"{path}: entry {rel!r} is incomplete or invalid ({exc})") from None
    return approvals


def write_approvals(directory: Path, approvals: dict[str, Approval]) -> None:
    """Write the approvals file deterministically (sorted), replacing it atomically."""
    path = Path(directory) / APPROVALS_FILE
    out = [_HEADER]
    for rel in sorted(approvals):
        a = approvals[rel]
        out.append(
            f"\n[{_toml_str(rel)}]\n"
            f"approved_at = {_toml_str(a.approved_at.isoformat())}\n"
            f"approved_by = {_toml_str(a.approved_by)}\n"
            f"sha256 = {_toml_str(a.sha256)}\n"
        )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".approvals.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("".join(out))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _toml_str(value: str) -> str:
    """A TOML basic string."""
    escaped = []
    for ch in value:
        if ch == "\\":
            escaped.append("\\\\")
        elif ch == '"':
            escaped.append('\\"')
        elif ch < " " or ch == "\x7f":
            escaped.append(f"\\u{ord(ch):04x}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'
