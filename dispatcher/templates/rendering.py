"""Sandboxed rendering of the template tree, with a cache of compiled templates.

Layout: ``<directory>/<channel>/<stage>/<variant>.<locale>.j2``; the template id is
``<channel>/<stage>/<variant>``. Every file is self-contained (no include, extends or
import), so the content hash that compliance approves covers every word that is sent.

- SMS: the whole file is the text.
- E-mail: blocks ``subject``, ``text`` and ``html``. Only ``html`` is autoescaped (it
  is compiled a second time in an autoescaping environment), so a name like O'Brien
  is not turned into an entity in the subject or the plain-text body.
- Voice: blocks ``identity`` (asked before anything is disclosed), ``script`` (spoken
  once the person confirmed) and ``voicemail`` (limited content for a machine).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, Template, TemplateNotFound, TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError

from dispatcher.config import Config
from dispatcher.domain import Channel
from dispatcher.templates.approvals_file import APPROVALS_FILE, load_approvals
from dispatcher.templates.limits import (
    RENDER_SECONDS,
    TOO_DEEP,
    BoundedSandbox,
    TemplateLimitError,
    deadline,
    render_bounded,
)

#: Blocks each channel's templates must define (SMS renders the whole file).
REQUIRED_BLOCKS: dict[Channel, tuple[str, ...]] = {
    Channel.SMS: (),
    Channel.EMAIL: ("subject", "text", "html"),
    Channel.VOICE: ("identity", "script", "voicemail"),
}

TEMPLATE_ID_RE = re.compile(r"^(sms|email|voice)/([a-z0-9_]+)/([a-z0-9_-]+)$")
FILE_NAME_RE = re.compile(r"^([a-z0-9_-]+)\.([a-z]{2}-[A-Z]{2})\.j2$")
#: The folder of the automatic SMS replies (`sms/replies/<name>`): not a stage, so never
#: in the planner's catalog (see `dispatcher.templates.replies`).
REPLIES_FOLDER = "replies"

_WS = re.compile(r"\s+")
_CJK_BREAK = re.compile(r"(?<=[\u2e80-\u9fff\uff00-\uffef])[ \t]*\n\s*(?=[\u2e80-\u9fff\uff00-\uffef])")


class TemplateSetError(Exception):
    """Base class of template lookup and rendering failures."""


class UnknownTemplate(TemplateSetError, LookupError):
    """No such template id or locale; the message lists close matches."""


class RenderError(TemplateSetError):
    """A template failed to render. `kind`: syntax, undefined, sandbox, limit (time or
    size, see `templates.limits`), structure, error."""

    def __init__(self, path: Path, line: int, kind: str, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.kind, self.detail = path, line, kind, message


class NotApproved(TemplateSetError):
    """The template's current content has no matching approval; it must not be sent."""


@dataclass(frozen=True)
class RenderedMessage:
    template_id: str
    variant: str
    locale: str
    content_hash: str  # sha256 hex of the template file's bytes
    subject: str | None
    text: str  # SMS text, e-mail plain-text body, voice script
    html: str | None
    blocks: Mapping[str, str]
    #: the stored version rendered (`template_versions.version`); None for a file
    version: int | None = None

    @property
    def channel(self) -> Channel:
        return Channel(self.template_id.split("/", 1)[0])


@dataclass(frozen=True, slots=True)
class TemplateRef:
    """Where one template file sits in the tree, parsed from its path."""

    channel: Channel
    stage: str
    variant: str
    locale: str

    @property
    def template_id(self) -> str:
        return f"{self.channel.value}/{self.stage}/{self.variant}"

    @property
    def relpath(self) -> str:
        return f"{self.template_id}.{self.locale}.j2"


def parse_relpath(relpath: str) -> TemplateRef | None:
    """`sms/dpd30/v1.zh-CN.j2` -> its parts, or None if it does not follow the layout."""
    parts = relpath.replace(os.sep, "/").split("/")
    if len(parts) != 3:
        return None
    match = FILE_NAME_RE.match(parts[2])
    if match is None or TEMPLATE_ID_RE.match(f"{parts[0]}/{parts[1]}/{match.group(1)}") is None:
        return None
    return TemplateRef(Channel(parts[0]), parts[1], match.group(1), match.group(2))


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _NoIncludes(BaseLoader):
    def get_source(self, environment: Any, template: str) -> Any:
        raise TemplateNotFound(
            f"{template} (templates must be self-contained: include, extends and import are"
            " not allowed, so the approved content hash covers everything that is sent)"
        )


def make_environment(*, autoescape: bool) -> BoundedSandbox:
    """The sandboxed, strict environment every template is compiled in, with time and
    size limits (`templates.limits`)."""
    return BoundedSandbox(
        loader=_NoIncludes(),
        undefined=StrictUndefined,
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )


_ENVIRONMENTS = {False: make_environment(autoescape=False), True: make_environment(autoescape=True)}


@functools.lru_cache(maxsize=1024)
def _template(source: str, sha: str, autoescape: bool) -> Template:
    """A compiled template, shared by every `TemplateSet` with the same content (lint
    and approval compile the same files again and again). The file name carried by the
    code is the content hash, which `error_line` uses to find the template's frames."""
    env = _ENVIRONMENTS[autoescape]
    code = env.compile(source, name=f"template-{sha[:12]}", filename=f"<template sha256:{sha}>")
    return env.template_class.from_code(env, code, env.make_globals(None), None)


@dataclass(frozen=True, slots=True)
class _Compiled:
    stamp: tuple[int, int]  # (mtime_ns, size) of the file when compiled
    content_hash: str
    source: str
    plain: Template
    html: Template | None  # e-mail only: compiled with autoescape
    version: int | None = None  # the stored version this is (None: a file)


def compile_source(path: Path, template_id: str, source: str, sha: str, stamp: tuple[int, int],
                   version: int | None = None) -> _Compiled:
    """Compile one template's text (`path` names it in errors)."""
    channel = Channel(template_id.split("/", 1)[0])
    try:
        plain = _template(source, sha, False)
        html = _template(source, sha, True) if channel is Channel.EMAIL else None
    except TemplateSyntaxError as exc:
        raise RenderError(path, exc.lineno or 1, "syntax", f"syntax error: {exc.message}") from None
    except (RecursionError, SyntaxError):  # Python's own limits on the code a template compiles to
        raise RenderError(path, 1, "syntax", f"syntax error: {TOO_DEEP}") from None
    return _Compiled(stamp, sha, source, plain, html, version)


def error_line(exc: BaseException, filename: str) -> int | None:
    """The template line an exception was raised at (jinja rewrites tracebacks so the
    template's frames carry its file name and line numbers)."""
    if isinstance(exc, TemplateSyntaxError):
        return exc.lineno
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            line = lineno
    return line


class TemplateSet:
    """The template tree under `directory`: lookup, rendering and approval state.

    Compiled templates are cached and recompiled only when a file changes on disk (one
    `stat` per render), so rendering thousands of messages a second stays cheap.
    """

    def __init__(self, directory: Path, config: Config) -> None:
        self.directory = Path(directory)
        self.config = config
        self._cache: dict[Path, _Compiled] = {}
        #: (template id, locale) -> (path, its str for os.stat, path relative to the tree)
        self._files: dict[tuple[str, str], tuple[Path, str, str]] = {}
        self._approvals_stamp: tuple[int, int] | None = None
        self._approvals: dict[str, Any] = {}

    # -- lookup ----------------------------------------------------------------------

    def refs(self) -> list[TemplateRef]:
        """Every well-placed template file in the tree, sorted."""
        found = []
        for channel in Channel:
            base = self.directory / channel.value
            if not base.is_dir():
                continue
            for path in base.glob("*/*.j2"):
                ref = parse_relpath(path.relative_to(self.directory).as_posix())
                if ref is not None:
                    found.append(ref)
        return sorted(found, key=lambda r: (r.template_id, r.locale))

    def template_ids(self) -> list[str]:
        return sorted({ref.template_id for ref in self.refs()})

    def locales_of(self, template_id: str) -> list[str]:
        self._check_id(template_id)
        channel, stage, variant = template_id.split("/")
        folder = self.directory / channel / stage
        if not folder.is_dir():
            return []
        locales = []
        for path in folder.glob(f"{variant}.*.j2"):
            match = FILE_NAME_RE.match(path.name)
            if match and match.group(1) == variant:
                locales.append(match.group(2))
        return sorted(locales)

    def path_of(self, template_id: str, locale: str) -> Path:
        """The file of `template_id` in `locale` (it may not exist)."""
        self._check_id(template_id)
        if not re.fullmatch(r"[a-z]{2}-[A-Z]{2}", locale):
            raise UnknownTemplate(f"{locale!r} is not a locale like zh-CN or en-US")
        return self.directory / f"{template_id}.{locale}.j2"

    def has(self, template_id: str, locale: str) -> bool:
        return self.path_of(template_id, locale).is_file()

    def _check_id(self, template_id: str) -> None:
        if TEMPLATE_ID_RE.match(template_id) is None:
            raise UnknownTemplate(
                f"{template_id!r} is not a template id; ids look like sms/dpd30/v1"
                " (<channel>/<stage>/<variant>)"
            )

    def unknown(self, template_id: str, locale: str | None = None) -> UnknownTemplate:
        """An error for a missing template that names the closest existing ones."""
        ids = self.template_ids()
        if template_id in ids and locale is not None:
            return UnknownTemplate(
                f"template {template_id} has no {locale} file; it exists in: "
                f"{', '.join(self.locales_of(template_id))}"
            )
        close = get_close_matches(template_id, ids, n=5, cutoff=0.6)
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        return UnknownTemplate(f"no template {template_id} under {self.directory}{hint}")

    # -- compile & render ------------------------------------------------------------

    def _file(self, template_id: str, locale: str) -> tuple[Path, str, str]:
        key = (template_id, locale)
        found = self._files.get(key)
        if found is None:
            path = self.path_of(template_id, locale)
            found = (path, str(path), path.relative_to(self.directory).as_posix())
            if len(self._files) > 10_000:  # ids come from the tree, but bound it anyway
                self._files.clear()
            self._files[key] = found
        return found

    def _compiled(self, template_id: str, locale: str) -> tuple[Path, _Compiled]:
        path, os_path, _rel = self._file(template_id, locale)
        try:
            st = os.stat(os_path)
        except FileNotFoundError:
            raise self.unknown(template_id, locale) from None
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached.stamp == stamp:
            return path, cached
        data = path.read_bytes()
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RenderError(path, 1, "error", f"not UTF-8 text: {exc}") from None
        compiled = compile_source(path, template_id, source, content_hash(data), stamp)
        self._cache[path] = compiled
        return path, compiled

    def content_hash_of(self, template_id: str, locale: str) -> str:
        """sha256 of the file as it is now (what an approval must match)."""
        path = self.path_of(template_id, locale)
        try:
            return content_hash(path.read_bytes())
        except FileNotFoundError:
            raise self.unknown(template_id, locale) from None

    def render(
        self,
        template_id: str,
        locale: str,
        context: Mapping[str, Any],
        *,
        require_approved: bool = False,
    ) -> RenderedMessage:
        """Render one template file. With `require_approved`, refuse (`NotApproved`)
        unless the exact content rendered has an approval (the sender's last gate)."""
        path, compiled = self._compiled(template_id, locale)
        if require_approved and not self._approved_content(template_id, locale, compiled):
            raise NotApproved(
                f"{template_id} ({locale}) has no approval for its current content;"
                f" run: dispatcher templates approve {template_id} --locale {locale} --by USER"
            )
        channel = Channel(template_id.split("/", 1)[0])
        variant = template_id.rsplit("/", 1)[1]
        ctx = dict(context)
        with deadline(RENDER_SECONDS):
            return self._render_blocks(template_id, locale, channel, variant, compiled, path, ctx)

    def _render_blocks(self, template_id: str, locale: str, channel: Channel, variant: str, compiled: _Compiled,
                       path: Path, ctx: dict[str, Any]) -> RenderedMessage:
        if channel is Channel.SMS:
            text = self._run(compiled.plain, None, ctx, path, channel).strip()
            return RenderedMessage(
                template_id, variant, locale, compiled.content_hash, None, text, None,
                MappingProxyType({"text": text}), compiled.version,
            )
        blocks: dict[str, str] = {}
        for name in REQUIRED_BLOCKS[channel]:
            template = compiled.html if name == "html" and compiled.html is not None else compiled.plain
            if name not in template.blocks:
                raise RenderError(
                    path, 1, "structure",
                    f"{channel.value} templates must define a block {name!r}"
                    f" ({{% block {name} %}}...{{% endblock %}})",
                )
            out = self._run(template, name, ctx, path, channel)
            if name == "html":
                blocks[name] = out.strip()
            elif name == "text":
                blocks[name] = _tidy_lines(out)
            else:
                # Subjects and spoken text are one line: this also keeps CR/LF out of headers.
                blocks[name] = _one_line(out)
        if channel is Channel.EMAIL:
            return RenderedMessage(
                template_id, variant, locale, compiled.content_hash, blocks["subject"],
                blocks["text"], blocks["html"], MappingProxyType(blocks), compiled.version,
            )
        return RenderedMessage(
            template_id, variant, locale, compiled.content_hash, None, blocks["script"], None,
            MappingProxyType(blocks), compiled.version,
        )

    @staticmethod
    def _run(template: Template, block: str | None, ctx: dict[str, Any], path: Path, channel: Channel) -> str:
        env = template.environment
        try:
            context = template.new_context(ctx)
            parts = template.root_render_func(context) if block is None else template.blocks[block](context)
            return render_bounded(parts, channel.value)
        except Exception as exc:  # noqa: BLE001 - every template failure becomes a RenderError
            rewritten = exc
            try:
                env.handle_exception()
            except Exception as again:  # noqa: BLE001
                rewritten = again
            line = error_line(rewritten, template.filename or "") or 1
            if isinstance(rewritten, TemplateLimitError):
                kind, message = "limit", f"too big or too slow: {rewritten}"
            elif isinstance(rewritten, RecursionError):
                kind, message = "limit", "too big or too slow: a macro calls itself without end; stop the recursion"
            elif isinstance(rewritten, SecurityError):
                kind, message = "sandbox", f"sandbox violation: {rewritten}"
            elif isinstance(rewritten, UndefinedError):
                kind, message = "undefined", f"undefined name: {rewritten}"
            elif isinstance(rewritten, TemplateNotFound):
                kind, message = "structure", f"not allowed: {rewritten.message}"
            else:
                kind, message = "error", f"render error: {type(rewritten).__name__}: {rewritten}"
            raise RenderError(path, line, kind, message) from rewritten

    # -- approvals -------------------------------------------------------------------

    def _load_approvals(self) -> dict[str, Any]:
        path = self.directory / APPROVALS_FILE
        try:
            st = path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._approvals_stamp or stamp is None:
            self._approvals = load_approvals(self.directory)
            self._approvals_stamp = stamp
        return self._approvals

    def _approved_content(self, template_id: str, locale: str, compiled: _Compiled) -> bool:
        """Whether `compiled` is approved content (the sender's last gate)."""
        return self._hash_approved(self._file(template_id, locale)[2], compiled.content_hash)

    def refresh(self) -> None:
        """Pick up approvals made elsewhere (files are checked on every use: nothing to do)."""

    def _hash_approved(self, relpath: str, sha: str) -> bool:
        approval = self._load_approvals().get(relpath)
        return approval is not None and approval.sha256 == sha

    def approval_status(self, template_id: str, locale: str) -> str:
        """`approved`, `edited-not-approved` or `never-approved`."""
        rel = f"{template_id}.{locale}.j2"
        approval = self._load_approvals().get(rel)
        if approval is None:
            return "never-approved"
        if approval.sha256 == self.content_hash_of(template_id, locale):
            return "approved"
        return "edited-not-approved"

    def is_approved(self, template_id: str, locale: str) -> bool:
        """True if the file's current content matches its recorded approval."""
        if not self.has(template_id, locale):
            return False
        return self.approval_status(template_id, locale) == "approved"

    def approved_catalog(self) -> dict[tuple[Channel, str, str], tuple[str, ...]]:
        """(channel, stage, locale) -> sorted ids of templates whose current content is
        approved. The policy's variant rotation chooses only among these; the automatic
        replies are not stage templates and are left out."""
        approvals = self._load_approvals()
        catalog: dict[tuple[Channel, str, str], list[str]] = {}
        for ref in self.refs():
            if ref.stage == REPLIES_FOLDER:
                continue
            approval = approvals.get(ref.relpath)
            if approval is None:
                continue
            try:
                data = (self.directory / ref.relpath).read_bytes()
            except FileNotFoundError:
                continue
            if content_hash(data) == approval.sha256:
                catalog.setdefault((ref.channel, ref.stage, ref.locale), []).append(ref.template_id)
        return {key: tuple(sorted(ids)) for key, ids in sorted(catalog.items())}


def _one_line(text: str) -> str:
    # Line breaks between two Chinese characters vanish (Chinese has no spaces between
    # words); every other run of whitespace becomes one space.
    text = _CJK_BREAK.sub("", text.strip())
    return _WS.sub(" ", text)


def _tidy_lines(text: str) -> str:
    # Plain-text e-mail: drop trailing spaces and runs of more than one blank line.
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out)


def pick_locale(
    template_set: TemplateSet,
    template_id: str,
    case_locale: str,
    profile_default: str,
    *,
    approved_only: bool = False,
) -> str:
    """The case's locale if the template has a file for it, else the profile's default.

    With `approved_only` (sending), a file counts only while its content is approved:
    the policy falls back to the default locale's catalog when the case's locale has no
    approved variant, and the sender must then render that same approved file.
    """
    candidates = [loc for loc in dict.fromkeys((case_locale, profile_default)) if loc]
    for locale in candidates:
        if template_set.has(template_id, locale) and (
            not approved_only or template_set.is_approved(template_id, locale)
        ):
            return locale
    if approved_only and any(template_set.has(template_id, loc) for loc in candidates):
        raise NotApproved(
            f"{template_id} has no approved file in {' or '.join(candidates)}; run:"
            f" dispatcher templates approve {template_id} --locale {candidates[0]} --by USER"
        )
    raise template_set.unknown(template_id, case_locale)
