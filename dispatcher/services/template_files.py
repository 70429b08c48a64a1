"""The `templates/` folder and the database's versions: import, export and first use.

- `import_tree`: each `<channel>/<stage>/<variant>.<locale>.j2` becomes a version. A file
  whose sha256 matches its entry in `approvals.toml` becomes the approved version with the
  approver and time recorded there (the approval was reviewed in git); any other content
  becomes a draft by the importing user. Content that is already there (the approved
  version, or the newest version) is skipped, so importing twice changes nothing.
- `export_tree`: the approved versions written back as files, and `approvals.toml` with
  their sha256, approver and time: importing that folder into an empty database and
  exporting it again gives the same bytes.
- `seed_if_empty`: the first time a database is used for sending, the configured
  templates folder is imported (by `import`), so the shipped set is approved out of the
  box. It runs once per database (a `dedupe_keys` row, taken in the import's
  transaction, so instances starting together import once).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from dispatcher.services.template_versions import (
    APPROVED,
    RETIRED,
    TemplateVersionError,
    TemplateVersions,
    version_of,
)
from dispatcher.store.dedupe import claim
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.tables import dedupe_keys_t, template_versions_t
from dispatcher.templates.approvals_file import Approval, load_approvals, write_approvals
from dispatcher.templates.lint import LintProblem
from dispatcher.templates.rendering import TemplateRef, content_hash, parse_relpath

#: Who the first-use import is recorded as.
SEED_ACTOR = "import"
#: The `dedupe_keys` row marking that a database's first-use import has run.
SEED_KEY = "templates:seeded"


@dataclass(frozen=True)
class Imported:
    """What happened to one file: `approved`, `draft` or `unchanged`."""

    relpath: str
    action: str
    version: int | None
    problems: list[LintProblem] = field(default_factory=list)


def template_files(directory: Path) -> list[TemplateRef]:
    """The well-placed template files of a folder (`<channel>/<stage>/<file>.j2`), sorted."""
    found = []
    for path in Path(directory).glob("*/*/*.j2"):
        ref = parse_relpath(path.relative_to(directory).as_posix())
        if ref is not None:
            found.append(ref)
    return sorted(found, key=lambda r: (r.template_id, r.locale))


def import_tree(versions: TemplateVersions, directory: Path, by: str) -> list[Imported]:
    """Import the folder's templates (see the module docstring); one transaction."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TemplateVersionError(f"{directory}: no such folder; pass the templates folder")
    approvals = load_approvals(directory)
    with versions.engine.begin() as conn:
        return _import(versions, conn, directory, approvals, by)


def seed_if_empty(versions: TemplateVersions, directory: Path) -> list[Imported] | None:
    """Import `directory` if this database has never had templates (None if it has)."""
    now = versions.clock.now()
    with versions.engine.connect() as conn:  # the usual answer, without taking the write lock
        if conn.execute(select(dedupe_keys_t.c.key).where(dedupe_keys_t.c.key == SEED_KEY)).first() is not None:
            return None
    with versions.engine.begin() as conn:
        if not claim(conn, SEED_KEY, now):  # the write lock first: a second instance waits here
            return None
        if conn.execute(select(func.count()).select_from(template_versions_t)).scalar_one():
            return None
        return _import(versions, conn, Path(directory), load_approvals(Path(directory)), SEED_ACTOR)


def _import(versions: TemplateVersions, conn: Connection, directory: Path, approvals: dict[str, Approval],
            by: str) -> list[Imported]:
    by = " ".join(by.split())[:64]
    if not by:
        raise TemplateVersionError("say who imports: --by USER")
    now = versions.clock.now()
    t = template_versions_t
    results: list[Imported] = []
    for ref in template_files(directory):
        data = (directory / ref.relpath).read_bytes()
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TemplateVersionError(f"{directory / ref.relpath}: not UTF-8 text ({exc})") from None
        sha = content_hash(data)
        existing = [version_of(r) for r in conn.execute(
            select(t).where(t.c.template_id == ref.template_id, t.c.locale == ref.locale)
            .order_by(t.c.version.desc()))]
        current = next((v for v in existing if v.state == APPROVED), None)
        entry = approvals.get(ref.relpath)
        if entry is not None and entry.sha256 == sha:
            if current is not None and current.sha256 == sha:
                results.append(Imported(ref.relpath, "unchanged", current.version))
                continue
            if current is not None:
                conn.execute(update(t).where(t.c.version == current.version).values(state=RETIRED))
            approved_at = entry.approved_at if entry.approved_at.tzinfo is not None \
                else entry.approved_at.replace(tzinfo=dt.UTC)
            version = versions.insert_version(conn, ref.template_id, ref.locale, content, by, now, APPROVED,
                                              approved_by=entry.approved_by, approved_at=approved_at)
            record_event(conn, EventKind.TEMPLATE_IMPORTED, now, actor=by, template=ref.template_id,
                         locale=ref.locale, version=version.version, state=APPROVED,
                         approved_by=entry.approved_by, retired=current.version if current else None)
            results.append(Imported(ref.relpath, APPROVED, version.version))
            continue
        if (existing and existing[0].sha256 == sha) or (current is not None and current.sha256 == sha):
            results.append(Imported(ref.relpath, "unchanged", existing[0].version))
            continue
        version = versions.insert_version(conn, ref.template_id, ref.locale, content, by, now, "draft")
        record_event(conn, EventKind.TEMPLATE_IMPORTED, now, actor=by, template=ref.template_id,
                     locale=ref.locale, version=version.version, state="draft")
        results.append(Imported(ref.relpath, "draft", version.version, versions.lint(version)))
    return results


def export_tree(versions: TemplateVersions, directory: Path) -> list[str]:
    """Write the approved versions and `approvals.toml` under `directory`; the files written."""
    directory = Path(directory)
    t = template_versions_t
    with versions.engine.connect() as conn:
        approved = [version_of(r) for r in conn.execute(
            select(t).where(t.c.state == APPROVED).order_by(t.c.template_id, t.c.locale))]
    approvals = load_approvals(directory) if (directory / "approvals.toml").is_file() else {}
    written = []
    for v in approved:
        path = directory / v.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(path, v.content.encode("utf-8"))
        assert v.approved_by is not None and v.approved_at is not None
        approvals[v.relpath] = Approval(v.relpath, v.sha256, v.approved_by, v.approved_at)
        written.append(v.relpath)
    # entries of files that are no longer approved here would approve stale text on the next import
    exported = set(written)
    approvals = {rel: a for rel, a in approvals.items() if rel in exported or (
        (directory / rel).is_file() and content_hash((directory / rel).read_bytes()) == a.sha256)}
    directory.mkdir(parents=True, exist_ok=True)
    write_approvals(directory, approvals)
    return written


def _write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` atomically (a reader never sees half a template)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def lint_approved_beyond(versions: TemplateVersions, directory: Path) -> list[LintProblem]:
    """The lint problems of the approved versions whose text is not the same file in
    `directory` (start-up lints the folder; these are what is sent besides)."""
    t = template_versions_t
    with versions.engine.connect() as conn:
        approved = [version_of(r) for r in conn.execute(select(t).where(t.c.state == APPROVED))]
    problems: list[LintProblem] = []
    for v in approved:
        file = Path(directory) / v.relpath
        if not file.is_file() or file.read_bytes() != v.content.encode("utf-8"):
            problems += versions.lint(v)
    return problems
