"""Templates held in memory rather than read from files: the approved versions in the
database (what the daemon sends), or a text being linted or previewed before it is saved.

`StoredTemplateSet` is a `TemplateSet` (the same sandboxed rendering, blocks and
errors) whose content is a snapshot of `StoredTemplate`s. Given a `source`, the snapshot
is the source's approved versions, and `refresh()` asks the source for a cheap
fingerprint (the ids of the approved versions) and reloads only when it changed: the
planner and the sender call `approved_catalog()` once per pass, which refreshes, so an
approval made on one instance is sent by every instance from their next pass on, with
no file on any of them. Between passes, a lookup refreshes at most every
`MAX_AGE_SECONDS` (the automatic replies render outside any pass).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Protocol

from dispatcher.config import Config
from dispatcher.domain import Channel
from dispatcher.templates.rendering import (
    REPLIES_FOLDER,
    TemplateRef,
    TemplateSet,
    UnknownTemplate,
    _Compiled,
    compile_source,
    content_hash,
)

#: How stale a lookup outside `approved_catalog()` may be, in seconds.
MAX_AGE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    """One template text: its id, locale, content and (when stored) its version."""

    template_id: str
    locale: str
    content: str
    version: int | None = None

    @property
    def sha256(self) -> str:
        return content_hash(self.content.encode("utf-8"))

    @property
    def relpath(self) -> str:
        return f"{self.template_id}.{self.locale}.j2"


class ApprovedSource(Protocol):
    """Where the approved versions come from (`services.template_versions`)."""

    def fingerprint(self) -> Hashable:
        """Changes whenever the set of approved versions changes; cheap to ask."""
        ...  # pragma: no cover - protocol

    def approved_templates(self) -> list[StoredTemplate]:
        """Every approved version."""
        ...  # pragma: no cover - protocol


class StoredTemplateSet(TemplateSet):
    """A template set over a snapshot of texts, every one of which counts as approved
    (a `source` gives only approved versions; a text being linted is rendered without
    `require_approved`)."""

    def __init__(self, config: Config, templates: Iterable[StoredTemplate] = (), *,
                 source: ApprovedSource | None = None, where: str = "the database") -> None:
        super().__init__(Path(where), config)
        self.source = source
        self.where = where
        self._snapshot: dict[tuple[str, str], StoredTemplate] = {(t.template_id, t.locale): t for t in templates}
        self._compiled_cache: dict[tuple[str, str], _Compiled] = {}
        self._fingerprint: Hashable = None
        self._checked_at: float | None = None
        self._lock = threading.Lock()

    # -- the snapshot --------------------------------------------------------------

    def refresh(self, *, max_age: float = 0.0) -> None:
        """Reload the approved versions if they changed (checked at most every `max_age` seconds)."""
        if self.source is None:
            return
        # a cache's age, not a business time: the injected clock may stand still
        now = time.monotonic()
        if self._checked_at is not None and now - self._checked_at < max_age:
            return
        with self._lock:
            fingerprint = self.source.fingerprint()
            if fingerprint != self._fingerprint or self._checked_at is None:
                found = self.source.approved_templates()
                self._snapshot = {(t.template_id, t.locale): t for t in found}
                self._compiled_cache = {}
                self._fingerprint = fingerprint
            self._checked_at = time.monotonic()

    def _current(self) -> dict[tuple[str, str], StoredTemplate]:
        self.refresh(max_age=MAX_AGE_SECONDS)
        return self._snapshot

    def stored(self, template_id: str, locale: str) -> StoredTemplate | None:
        """The text of `template_id` in `locale`, if there is one."""
        return self._current().get((template_id, locale))

    # -- lookup --------------------------------------------------------------------

    def refs(self) -> list[TemplateRef]:
        refs = []
        for template_id, locale in self._current():
            channel, stage, variant = template_id.split("/")
            refs.append(TemplateRef(Channel(channel), stage, variant, locale))
        return sorted(refs, key=lambda r: (r.template_id, r.locale))

    def locales_of(self, template_id: str) -> list[str]:
        self._check_id(template_id)
        return sorted(locale for tid, locale in self._current() if tid == template_id)

    def path_of(self, template_id: str, locale: str) -> Path:
        """A name for errors: there is no file."""
        found = self.path_for_errors(template_id, locale)
        if found is None:
            super().path_of(template_id, locale)  # the same checks of the id and locale
            return Path(f"{template_id}.{locale}.j2")
        return found

    def path_for_errors(self, template_id: str, locale: str) -> Path | None:
        item = self._current().get((template_id, locale))
        if item is None:
            return None
        suffix = f" (version {item.version})" if item.version is not None else ""
        return Path(f"{item.relpath}{suffix}")

    def has(self, template_id: str, locale: str) -> bool:
        self._check_id(template_id)
        return (template_id, locale) in self._current()

    def unknown(self, template_id: str, locale: str | None = None) -> UnknownTemplate:
        ids = self.template_ids()
        if template_id in ids and locale is not None:
            return UnknownTemplate(
                f"template {template_id} has no approved {locale} version in {self.where}; it has one in: "
                f"{', '.join(self.locales_of(template_id))}")
        close = get_close_matches(template_id, ids, n=5, cutoff=0.6)
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        return UnknownTemplate(f"no template {template_id} in {self.where}{hint}")

    def content_hash_of(self, template_id: str, locale: str) -> str:
        item = self._current().get((template_id, locale))
        if item is None:
            raise self.unknown(template_id, locale)
        return item.sha256

    # -- compile & approval --------------------------------------------------------

    def _compiled(self, template_id: str, locale: str) -> tuple[Path, _Compiled]:
        snapshot = self._current()
        item = snapshot.get((template_id, locale))
        if item is None:
            self._check_id(template_id)
            raise self.unknown(template_id, locale)
        path = self.path_for_errors(template_id, locale) or Path(item.relpath)
        key = (template_id, locale)
        cached = self._compiled_cache.get(key)
        if cached is not None and cached.version == item.version and cached.source == item.content:
            return path, cached
        compiled = compile_source(path, template_id, item.content, item.sha256, (0, len(item.content)),
                                  item.version)
        self._compiled_cache[key] = compiled
        return path, compiled

    def _approved_content(self, template_id: str, locale: str, compiled: _Compiled) -> bool:
        return True  # the snapshot holds approved versions only

    def approval_status(self, template_id: str, locale: str) -> str:
        return "approved" if self.has(template_id, locale) else "never-approved"

    def is_approved(self, template_id: str, locale: str) -> bool:
        return self.has(template_id, locale)

    def approved_catalog(self) -> dict[tuple[Channel, str, str], tuple[str, ...]]:
        """As `TemplateSet.approved_catalog`, from the approved versions (checked now)."""
        self.refresh()
        catalog: dict[tuple[Channel, str, str], list[str]] = {}
        for ref in self.refs():
            if ref.stage != REPLIES_FOLDER:
                catalog.setdefault((ref.channel, ref.stage, ref.locale), []).append(ref.template_id)
        return {key: tuple(sorted(ids)) for key, ids in sorted(catalog.items())}
