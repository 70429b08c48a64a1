"""Template versions in the database and four-eyes approval (SPEC 15).

Every save is a new, immutable version of one template in one locale (a `draft`,
linted as it is saved). A version is approved only by a user with the `compliance`
role who is not its author, and only while it lints clean; approving retires the
version approved before it (of that template and locale only), and rolling back is
approving an earlier, retired version again. A draft can be rejected with a note.
The rule lives here alone: the CLI, the API and the console all call `approve`.

Only the approved version of each (template id, locale) is ever sent: the daemon's
`StoredTemplateSet` (`templates.stored`) reads them through `TemplateVersions`, and
every message stores the version it was rendered from (`messages.template_version`).

Every save, approval, rejection and import is an audit event (no case) with the
acting person as `actor`. Files: `services.template_files` (import and export of the
`templates/` folder with its `approvals.toml`).
"""

from __future__ import annotations

import datetime as dt
import difflib
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from dispatcher.clock import Clock
from dispatcher.config import Config
from dispatcher.roles import Permission, Principal, Role, name_key
from dispatcher.store.events import EventKind, record_event
from dispatcher.store.tables import template_versions_t, users_t
from dispatcher.templates.context import SUPPORTED_LOCALES
from dispatcher.templates.lint import LintProblem, lint_text
from dispatcher.templates.rendering import TEMPLATE_ID_RE, content_hash
from dispatcher.templates.stored import StoredTemplate

#: A template's text may not be longer than this (characters).
MAX_CONTENT = 64 * 1024
NOTE_MAX = 2000

DRAFT, APPROVED, REJECTED, RETIRED = "draft", "approved", "rejected", "retired"
STATES = (DRAFT, APPROVED, REJECTED, RETIRED)

#: The refusal reasons of `approve` (SPEC 15), as the CLI prints them and the API returns them.
SAME_AUTHOR, NOT_COMPLIANCE, UNKNOWN_USER, LINT_FAILED = "same_author", "not_compliance", "unknown_user", "lint_failed"


def four_eyes_refusal(author: str, checker: Principal) -> str | None:
    """The four-eyes rule, written here once: why `checker` may not approve or reject a
    version `author` wrote — `SAME_AUTHOR` (names compare as `roles.name_key`, ignoring
    case and runs of spaces), `NOT_COMPLIANCE` (approving is the compliance role's
    `templates.approve`, which the bootstrap credential never holds) — or None: they may.
    `TemplateVersions.approve`/`reject` refuse with it; the studio offers its buttons
    only when it says None."""
    if name_key(" ".join(checker.name.split())) == name_key(" ".join(author.split())):
        return SAME_AUTHOR
    if not checker.can(Permission.TEMPLATES_APPROVE):
        return NOT_COMPLIANCE
    return None


@dataclass(frozen=True)
class TemplateVersion:
    """One stored version (a row of `template_versions`)."""

    version: int
    template_id: str
    locale: str
    content: str
    sha256: str
    author: str
    created_at: dt.datetime
    state: str  # draft | approved | rejected | retired
    approved_by: str | None
    approved_at: dt.datetime | None
    note: str | None
    rejected_by: str | None = None
    rejected_at: dt.datetime | None = None

    @property
    def relpath(self) -> str:
        return f"{self.template_id}.{self.locale}.j2"

    def as_json(self, *, content: bool = True) -> dict[str, Any]:
        """The API's shape (times as ISO 8601)."""
        out: dict[str, Any] = {
            "version": self.version, "template_id": self.template_id, "locale": self.locale, "sha256": self.sha256,
            "author": self.author, "created_at": self.created_at.isoformat(), "state": self.state,
            "approved_by": self.approved_by,
            "approved_at": self.approved_at.isoformat() if self.approved_at else None, "note": self.note,
            "rejected_by": self.rejected_by,
            "rejected_at": self.rejected_at.isoformat() if self.rejected_at else None,
        }
        if content:
            out["content"] = self.content
        return out


@dataclass(frozen=True)
class TemplateSummary:
    """One (template id, locale): its approved version, and its newest draft newer than that."""

    template_id: str
    locale: str
    approved: TemplateVersion | None
    draft: TemplateVersion | None
    draft_problems: int = 0  # lint problems of `draft`

    @property
    def state(self) -> str:
        """`approved` (nothing pending), `awaiting approval` (a lint-clean draft a checker
        may approve) or `draft` (a draft that still fails lint, or nothing approved yet
        and nothing approvable)."""
        if self.draft is None:
            return "approved" if self.approved is not None else "draft"
        return "awaiting approval" if self.draft_problems == 0 else "draft"


class TemplateVersionError(ValueError):
    """A request about template versions that cannot be done; the message says what to do.
    `status` is the HTTP status the API answers with."""

    status = 400


class UnknownVersion(TemplateVersionError, LookupError):
    status = 404


class VersionStateError(TemplateVersionError):
    """The version is not in a state this action applies to (approving a rejected one)."""

    status = 409


class ApprovalDenied(Exception):
    """Four eyes said no. `reason`: same_author, not_compliance, unknown_user or
    lint_failed; `problems`: the lint problems (lint_failed)."""

    def __init__(self, reason: str, message: str, problems: list[LintProblem] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.problems = list(problems or [])


def version_of(row: Any) -> TemplateVersion:
    m = row._mapping
    return TemplateVersion(
        version=int(m["version"]), template_id=m["template_id"], locale=m["locale"], content=m["content"],
        sha256=m["sha256"], author=m["author"], created_at=m["created_at"], state=m["state"],
        approved_by=m["approved_by"], approved_at=m["approved_at"], note=m["note"],
        rejected_by=m["rejected_by"], rejected_at=m["rejected_at"])


def check_template_id(template_id: str) -> str:
    if TEMPLATE_ID_RE.match(template_id) is None:
        raise TemplateVersionError(f"{template_id!r} is not a template id; ids look like sms/dpd30/v1"
                                   " (<channel>/<stage>/<variant>)")
    return template_id


def check_locale(locale: str) -> str:
    if locale not in SUPPORTED_LOCALES:
        raise TemplateVersionError(f"locale {locale!r} is not supported: use {' or '.join(SUPPORTED_LOCALES)}")
    return locale


class TemplateVersions:
    """Template versions over the store, on the injected clock (`Runtime.template_versions`).

    It is also the `ApprovedSource` of the daemon's `StoredTemplateSet`."""

    def __init__(self, engine: Engine, config: Config, clock: Clock, forbidden_phrases: Path) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self.forbidden_phrases = Path(forbidden_phrases)
        self._lint_cache: dict[tuple[str, str, str], list[LintProblem]] = {}
        self._lint_lock = threading.Lock()

    # ---------------------------------------------------------------- reading

    def versions(self, template_id: str, locale: str | None = None) -> list[TemplateVersion]:
        """The versions of `template_id` (in `locale`, or every locale), newest first."""
        t = template_versions_t
        query = select(t).where(t.c.template_id == template_id)
        if locale is not None:
            query = query.where(t.c.locale == locale)
        with self.engine.connect() as conn:
            return [version_of(r) for r in conn.execute(query.order_by(t.c.version.desc()))]

    def get(self, version: int) -> TemplateVersion | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(template_versions_t).where(template_versions_t.c.version == version)).first()
        return None if row is None else version_of(row)

    def approved(self, template_id: str, locale: str) -> TemplateVersion | None:
        """The version sent for (template id, locale), if any."""
        t = template_versions_t
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.template_id == template_id, t.c.locale == locale,
                                               t.c.state == APPROVED)).first()
        return None if row is None else version_of(row)

    def pending(self, template_id: str, locale: str) -> TemplateVersion | None:
        """The newest draft newer than the approved version (what awaits a checker)."""
        return _pending(self.versions(template_id, locale))

    def template_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(conn.execute(select(template_versions_t.c.template_id).distinct()).scalars())

    def summaries(self) -> list[TemplateSummary]:
        """Per (template id, locale), sorted: approved version, pending draft and state."""
        t = template_versions_t
        with self.engine.connect() as conn:
            rows = [version_of(r) for r in conn.execute(
                select(t).order_by(t.c.template_id, t.c.locale, t.c.version.desc()))]
        grouped: dict[tuple[str, str], list[TemplateVersion]] = {}
        for v in rows:
            grouped.setdefault((v.template_id, v.locale), []).append(v)
        out = []
        for (template_id, locale), versions in grouped.items():
            approved = next((v for v in versions if v.state == APPROVED), None)
            draft = _pending(versions)
            problems = len(self.lint(draft)) if draft is not None else 0
            out.append(TemplateSummary(template_id, locale, approved, draft, problems))
        return out

    def diff(self, template_id: str, locale: str) -> str:
        """A unified diff of the pending draft against the approved version ("" when
        there is no draft; against nothing when nothing is approved yet)."""
        versions = self.versions(template_id, locale)
        draft = _pending(versions)
        if draft is None:
            return ""
        approved = next((v for v in versions if v.state == APPROVED), None)
        old = approved.content if approved is not None else ""
        old_name = f"{template_id}.{locale}.j2 (approved v{approved.version})" if approved else "/dev/null"
        return "".join(difflib.unified_diff(
            old.splitlines(keepends=True), draft.content.splitlines(keepends=True),
            old_name, f"{template_id}.{locale}.j2 (draft v{draft.version})"))

    def lint(self, version: TemplateVersion) -> list[LintProblem]:
        """The lint problems of a version (cached by content: lint renders sample cases)."""
        key = (version.template_id, version.locale, version.sha256)
        with self._lint_lock:
            found = self._lint_cache.get(key)
        if found is None:
            found = lint_text(version.template_id, version.locale, version.content, self.config,
                              self.forbidden_phrases)
            with self._lint_lock:
                if len(self._lint_cache) > 1000:
                    self._lint_cache.clear()
                self._lint_cache[key] = found
        return list(found)

    # ------------------------------------------------- the daemon's approved set

    def fingerprint(self) -> Hashable:
        """The ids of the approved versions: changes with every approval and rollback."""
        t = template_versions_t
        with self.engine.connect() as conn:
            return tuple(conn.execute(select(t.c.version).where(t.c.state == APPROVED)
                                      .order_by(t.c.version)).scalars())

    def approved_templates(self) -> list[StoredTemplate]:
        t = template_versions_t
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.c.template_id, t.c.locale, t.c.content, t.c.version)
                                .where(t.c.state == APPROVED)).all()
        return [StoredTemplate(r.template_id, r.locale, r.content, int(r.version)) for r in rows]

    # ---------------------------------------------------------------- writing

    def save(self, template_id: str, locale: str, content: str, by: str) -> tuple[TemplateVersion, list[LintProblem]]:
        """A new draft of `template_id` in `locale` by `by`, and its lint problems (a
        draft that fails lint is kept: it can be fixed by the next save)."""
        check_template_id(template_id)
        check_locale(locale)
        if not isinstance(content, str) or not content.strip():
            raise TemplateVersionError("the template's content is empty")
        if len(content) > MAX_CONTENT:
            raise TemplateVersionError(f"the template is {len(content)} characters; at most {MAX_CONTENT}")
        by = _actor(by)
        now = self.clock.now()
        with self.engine.begin() as conn:
            version = self.insert_version(conn, template_id, locale, content, by, now, DRAFT)
            record_event(conn, EventKind.TEMPLATE_SAVED, now, actor=by, template=template_id, locale=locale,
                         version=version.version, sha256=version.sha256)
        return version, self.lint(version)

    def approve(self, template_id: str, version: int, by: str, note: str | None = None) -> TemplateVersion:
        """Approve `version` of `template_id` as `by` (four eyes, lint-clean), retiring the
        version approved before it in the same locale. Raises `ApprovalDenied`, or
        `TemplateVersionError` for an unknown version or one already decided."""
        note = _note(note)
        for attempt in range(3):
            now = self.clock.now()
            try:
                with self.engine.begin() as conn:
                    target = self._target(conn, template_id, version)
                    if target.state not in (DRAFT, RETIRED):
                        raise VersionStateError(
                            f"version {version} of {template_id} ({target.locale}) is {target.state};"
                            " only a draft or a retired version can be approved (save a new version instead)")
                    approver = self._checker(conn, target, by)
                    problems = self.lint(target)
                    if problems:
                        raise ApprovalDenied(LINT_FAILED, f"version {version} fails lint ({len(problems)} problem(s));"
                                             " fix them in a new version", problems)
                    t = template_versions_t
                    previous = conn.execute(select(t.c.version).where(
                        t.c.template_id == template_id, t.c.locale == target.locale, t.c.state == APPROVED)).scalar()
                    if previous is not None:
                        conn.execute(update(t).where(t.c.version == previous).values(state=RETIRED))
                    conn.execute(update(t).where(t.c.version == version).values(
                        state=APPROVED, approved_by=approver, approved_at=now, note=note))
                    record_event(conn, EventKind.TEMPLATE_APPROVED, now, actor=approver, template=template_id,
                                 locale=target.locale, version=version, retired=previous, note=note,
                                 rollback=target.state == RETIRED)
                break
            except IntegrityError:  # a concurrent approval of the same template and locale won: try again
                if attempt == 2:
                    raise
        found = self.get(version)
        assert found is not None
        return found

    def reject(self, template_id: str, version: int, by: str, note: str | None) -> TemplateVersion:
        """Reject a draft with a note (the same four eyes as approval; no lint needed)."""
        note = _note(note)
        if not note:
            raise TemplateVersionError("say why: a rejection needs a note for the author")
        now = self.clock.now()
        with self.engine.begin() as conn:
            target = self._target(conn, template_id, version)
            if target.state != DRAFT:
                raise VersionStateError(f"version {version} of {template_id} ({target.locale}) is {target.state};"
                                        " only a draft can be rejected")
            checker = self._checker(conn, target, by)
            conn.execute(update(template_versions_t).where(template_versions_t.c.version == version)
                         .values(state=REJECTED, rejected_by=checker, rejected_at=now, note=note))
            record_event(conn, EventKind.TEMPLATE_REJECTED, now, actor=checker, template=template_id,
                         locale=target.locale, version=version, note=note)
        found = self.get(version)
        assert found is not None
        return found

    # ---------------------------------------------------------------- helpers

    def insert_version(self, conn: Connection, template_id: str, locale: str, content: str, author: str,
                       now: dt.datetime, state: str, approved_by: str | None = None,
                       approved_at: dt.datetime | None = None) -> TemplateVersion:
        """Insert one version in `conn`'s transaction (no event: the caller records it)."""
        values = {"template_id": template_id, "locale": locale, "content": content,
                  "sha256": content_hash(content.encode("utf-8")), "author": author, "created_at": now,
                  "state": state, "approved_by": approved_by, "approved_at": approved_at}
        result = conn.execute(insert(template_versions_t).values(**values))
        version = int(result.inserted_primary_key[0])  # type: ignore[index]
        return TemplateVersion(version=version, note=None, **values)  # type: ignore[arg-type]

    @staticmethod
    def _target(conn: Connection, template_id: str, version: int) -> TemplateVersion:
        row = conn.execute(select(template_versions_t).where(template_versions_t.c.version == version)).first()
        if row is None or row.template_id != template_id:
            raise UnknownVersion(f"{template_id} has no version {version}; see"
                                 f" `dispatcher templates history {template_id}`")
        return version_of(row)

    @staticmethod
    def _checker(conn: Connection, target: TemplateVersion, by: str) -> str:
        """The checker's name as stored, if they may decide on `target` (else ApprovalDenied)."""
        key = name_key(" ".join((by or "").split()))
        row = conn.execute(select(users_t.c.id, users_t.c.name, users_t.c.roles, users_t.c.disabled_at)
                           .where(users_t.c.name_key == key)).first() if key else None
        if row is None or row.disabled_at is not None:
            raise ApprovalDenied(UNKNOWN_USER, f"{by!r} is not an active user; a checker signs in as themselves"
                                 " (see `dispatcher users list`)")
        known = {r.value for r in Role}
        checker = Principal(row.name, frozenset(Role(r) for r in row.roles.split(",") if r in known), row.id)
        refusal = four_eyes_refusal(target.author, checker)
        if refusal == SAME_AUTHOR:
            raise ApprovalDenied(SAME_AUTHOR, f"{row.name} wrote version {target.version}; another person with"
                                 " the compliance role must review it (four eyes)")
        if refusal == NOT_COMPLIANCE:
            raise ApprovalDenied(NOT_COMPLIANCE, f"{row.name} does not have the compliance role; ask a compliance"
                                 f" user to review version {target.version}")
        return str(row.name)


def _pending(versions: list[TemplateVersion]) -> TemplateVersion | None:
    """From one (template, locale)'s versions, newest first: the newest draft newer than
    the approved version."""
    approved = next((v.version for v in versions if v.state == APPROVED), 0)
    return next((v for v in versions if v.state == DRAFT and v.version > approved), None)


def _actor(by: str) -> str:
    by = " ".join((by or "").split())
    if not by:
        raise TemplateVersionError("say who saves it: --by USER")
    return by[:64]


def _note(note: str | None) -> str | None:
    if note is None:
        return None
    note = note.strip()
    if len(note) > NOTE_MAX:
        raise TemplateVersionError(f"the note is {len(note)} characters; at most {NOTE_MAX}")
    return note or None
