"""The template linter: run at start-up, by `dispatcher templates lint` and before
every approval.

Each template is checked statically (syntax, free names, `_` attributes that the
sandbox refuses, include/extends, required blocks, forbidden phrases in the source)
and then rendered with the sample cases of `dispatcher.testing` for its stage, in both
jurisdictions, with and without a daily penalty rate, in the template's own locale.
The renderings must state what SPEC section 7 requires, stay inside the SMS segment
limit, keep voice identity checks and voicemails free of any mention of the debt, and
contain no forbidden phrase. The automatic SMS replies (`sms/replies/<name>`, see
`dispatcher.templates.replies`) have rules of their own: no debt content is required
(they see no case), each states what its `ReplySpec` lists, and they keep to the
segment limit; they are rendered for every configured profile.

Problems print as ``path:line: problem`` (the path as given, the template line).
"""

from __future__ import annotations

import dataclasses
import functools
import html as html_lib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes
from markupsafe import escape

from dispatcher.config import Config
from dispatcher.domain import PLAN_CHANNELS, PLAN_STAGE, Case, Channel
from dispatcher.templates.approvals_file import APPROVALS_FILE, ApprovalError, load_approvals
from dispatcher.templates.context import (
    CONTEXT_KEYS,
    SUPPORTED_LOCALES,
    build_context,
    opt_out_text,
)
from dispatcher.templates.limits import TOO_DEEP
from dispatcher.templates.rendering import (
    REPLIES_FOLDER,
    REQUIRED_BLOCKS,
    RenderedMessage,
    RenderError,
    TemplateRef,
    TemplateSet,
    make_environment,
    parse_relpath,
)
from dispatcher.templates.replies import REPLIES, REPLY_CONTEXT_KEYS, ReplySpec, build_reply_context
from dispatcher.templates.segments import sms_segments
from dispatcher.templates.voice_rules import DEBT_RE, VOICE_OPTIONS, press
from dispatcher.testing import (
    SAMPLE_CASES,
    SAMPLE_TODAY,
    SAMPLE_UNSUBSCRIBE_URL,
    sample_cases_for_plans,
    sample_cases_for_stage,
    sample_instalment,
    sample_payment_link,
)

#: Top-level files that may sit next to the channel folders.
_ALLOWED_TOP_LEVEL = {APPROVALS_FILE, "README.md"}

#: Keys of the `case` variable (see `build_context`).
_CASE_KEYS = ("case_id", "name", "first_name", "product", "product_name")

#: What each channel must state, per block, and how to say it in a problem.
_REQUIRED: dict[Channel, dict[str, tuple[str, ...]]] = {
    Channel.SMS: {"text": ("outstanding", "penalty_explanation", "payment_link", "opt_out")},
    Channel.EMAIL: {
        "text": ("outstanding", "penalty_explanation", "payment_link", "opt_out"),
        "html": ("outstanding", "penalty_explanation", "payment_link", "opt_out"),
    },
    Channel.VOICE: {
        "script": ("outstanding", "penalty_explanation", "support_phone"),
        "voicemail": ("org_name", "support_phone"),
    },
}
_WHAT = {
    "outstanding": "the outstanding amount, what is owed after payments",
    "penalty_explanation": "the penalty explanation",
    "payment_link": "the payment link",
    "opt_out": "the opt-out instruction",
    "support_phone": "the callback number",
    "org_name": "the organisation's name",
}
#: Context money keys and the case attribute each formats.
_MONEY_KEYS = {
    "outstanding": "outstanding", "original_amount": "amount_due", "paid_total": "paid_total",
    "principal": "principal", "interest": "interest", "penalty": "penalty", "fees": "fees",
}

@dataclass(frozen=True, order=True)
class LintProblem:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


# -- forbidden phrases ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Phrase:
    text: str
    pattern: re.Pattern[str]
    needle: str  # the phrase in lower case, single-spaced


def load_forbidden_phrases(path: Path) -> list[str]:
    """One phrase per line; blank lines and `#` comments ignored."""
    phrases = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            phrases.append(line)
    return phrases


def _compile_phrase(phrase: str) -> _Phrase:
    body = r"\s+".join(re.escape(word) for word in phrase.split())
    # A Latin phrase must start at a word start ("arrest" matches "arrested", not
    # "unarrested"); Chinese has no word boundaries, so CJK phrases match anywhere.
    if phrase[0].isascii() and phrase[0].isalnum():
        body = r"(?<![A-Za-z0-9])" + body
    return _Phrase(phrase, re.compile(body, re.IGNORECASE), " ".join(phrase.lower().split()))


def _phrases_from(path: Path) -> tuple[list[_Phrase], list[LintProblem]]:
    try:
        return [_compile_phrase(p) for p in load_forbidden_phrases(path)], []
    except FileNotFoundError:
        return [], [LintProblem(Path(path), 1, "forbidden phrase list not found; restore it or fix"
                                " templates.forbidden_phrases in the configuration")]


# -- the tree ------------------------------------------------------------------------


def lint_tree(directory: Path, config: Config, forbidden_phrases_path: Path) -> list[LintProblem]:
    """Lint every file under the template directory; an empty list means all is well."""
    directory = Path(directory)
    if not directory.is_dir():
        return [LintProblem(directory, 1, "no such template directory")]
    phrases, problems = _phrases_from(forbidden_phrases_path)
    templates = TemplateSet(directory, config)

    for name, profile in sorted(config.jurisdictions.items()):
        if not profile.support_phone.strip():
            where = config.source or Path("config")
            problems.append(LintProblem(where, 1, f"jurisdictions.{name}.support_phone is empty; every"
                                        " message needs a customer-service number"))

    found: list[TemplateRef] = []
    for path in _walk(directory):
        rel = path.relative_to(directory).as_posix()
        if "/" not in rel and rel in _ALLOWED_TOP_LEVEL:
            continue
        ref = parse_relpath(rel)
        if ref is None:
            problems.append(LintProblem(path, 1, "misplaced file: templates go to"
                                        " <channel>/<stage>/<variant>.<locale>.j2 (channel sms, email or"
                                        " voice; variant like v1; locale like zh-CN)"))
            continue
        found.append(ref)
        problems += lint_template(path, config, forbidden_phrases_path, root=directory,
                                  _phrases=phrases, _templates=templates)

    if (directory / APPROVALS_FILE).exists():
        try:
            load_approvals(directory)
        except ApprovalError as exc:
            problems.append(LintProblem(directory / APPROVALS_FILE, 1, str(exc)))

    problems += _coverage(directory, config, found)
    return sorted(set(problems), key=lambda p: (str(p.path), p.line, p.message))


def lint_path(path: Path, config: Config, forbidden_phrases_path: Path) -> list[LintProblem]:
    """What `dispatcher templates lint [PATH]` runs: the whole tree for its root, one
    file for a file, or every file under a channel or stage folder of a tree."""
    path = Path(path)
    if path.is_file():
        return lint_template(path, config, forbidden_phrases_path, root=_root_of(path.parent))
    if not path.is_dir() or _is_root(path):
        return lint_tree(path, config, forbidden_phrases_path)
    root = _root_of(path)
    phrases, problems = _phrases_from(forbidden_phrases_path)
    templates = TemplateSet(root, config)
    for file in _walk(path):
        problems += lint_template(file, config, forbidden_phrases_path, root=root,
                                  _phrases=phrases, _templates=templates)
    return sorted(set(problems), key=lambda p: (str(p.path), p.line, p.message))


def _is_root(directory: Path) -> bool:
    return (directory / APPROVALS_FILE).exists() or any((directory / c.value).is_dir() for c in Channel)


def _root_of(directory: Path) -> Path:
    # <root>/<channel>/<stage>/: the root is at most two levels up.
    for candidate in (directory, directory.parent, directory.parent.parent):
        if _is_root(candidate):
            return candidate
    return directory.parent.parent


def _walk(directory: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def _coverage(directory: Path, config: Config, found: list[TemplateRef]) -> list[LintProblem]:
    """Every stage/channel needs a template in each profile's default locale (the
    fallback), or cases of that profile could not be contacted there at all."""
    have = {(r.channel, r.stage, r.locale) for r in found}
    problems = []
    defaults: dict[str, list[str]] = {}
    for name, profile in config.jurisdictions.items():
        defaults.setdefault(profile.default_locale, []).append(name)
    replies = {(r.variant, r.locale) for r in found if r.channel is Channel.SMS and r.stage == REPLIES_FOLDER}
    for spec in REPLIES.values():
        for locale in sorted(set(defaults) | set(SUPPORTED_LOCALES)):
            if (spec.name, locale) not in replies:
                problems.append(LintProblem(
                    directory / Channel.SMS.value / REPLIES_FOLDER, 1,
                    f"no {locale} file for the automatic reply {spec.template_id}; without it that"
                    " reply is not sent",
                ))
    wanted = [(s.name, tuple(s.channels)) for s in config.stages]
    if config.self_service.plans:  # plans offered: their instalment reminders need templates too
        wanted.append((PLAN_STAGE, PLAN_CHANNELS))
    for stage_name, channels in wanted:
        for channel in channels:
            for locale, profiles in sorted(defaults.items()):
                if (channel, stage_name, locale) not in have:
                    problems.append(LintProblem(
                        directory / channel.value / stage_name, 1,
                        f"no {locale} template for {channel.value}/{stage_name} ({locale} is the default"
                        f" locale of {'profiles' if len(profiles) > 1 else 'profile'} {', '.join(sorted(profiles))});"
                        " add a variant",
                    ))
    return problems


# -- one template --------------------------------------------------------------------


def lint_template(
    path: Path,
    config: Config,
    forbidden_phrases_path: Path,
    *,
    root: Path | None = None,
    _phrases: list[_Phrase] | None = None,
    _templates: TemplateSet | None = None,
) -> list[LintProblem]:
    """Lint one template file (`root` is the template directory; by default the
    file's great-grandparent, as in `<root>/<channel>/<stage>/<file>`)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parents[2]
    problems: list[LintProblem] = []
    if _phrases is None:
        _phrases, problems = _phrases_from(forbidden_phrases_path)
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.name
    ref = parse_relpath(rel)
    if ref is None:
        return [*problems, LintProblem(path, 1, "misplaced file: templates go to"
                                       " <channel>/<stage>/<variant>.<locale>.j2")]
    try:
        source: str | UnicodeDecodeError = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        source = exc
    return _lint_source(path, ref, source, config, _phrases, _templates or TemplateSet(root, config), problems)


def lint_text(template_id: str, locale: str, content: str, config: Config,
              forbidden_phrases_path: Path) -> list[LintProblem]:
    """Lint a template's text before it is stored or approved (problems name
    `<template_id>.<locale>.j2`, with the text's line numbers)."""
    from dispatcher.templates.stored import StoredTemplate, StoredTemplateSet

    ref = parse_relpath(f"{template_id}.{locale}.j2")
    path = Path(f"{template_id}.{locale}.j2")
    if ref is None:
        return [LintProblem(path, 1, "not a template id and locale like sms/dpd30/v1 and zh-CN")]
    phrases, problems = _phrases_from(forbidden_phrases_path)
    templates = StoredTemplateSet(config, [StoredTemplate(template_id, locale, content)], where="the draft")
    return _lint_source(path, ref, content, config, phrases, templates, problems)


def _lint_source(path: Path, ref: TemplateRef, source: str | UnicodeDecodeError, config: Config,
                 _phrases: list[_Phrase], templates: TemplateSet, problems: list[LintProblem]) -> list[LintProblem]:
    def problem(line: int, message: str) -> None:
        problems.append(LintProblem(path, line, message))

    reply: ReplySpec | None = None
    stage = config.stage_named(ref.stage)
    if ref.stage == REPLIES_FOLDER:
        reply = REPLIES.get(ref.variant)
        if ref.channel is not Channel.SMS or reply is None:
            problem(1, f"{REPLIES_FOLDER}/ holds the automatic SMS replies only: sms/{REPLIES_FOLDER}/"
                       f"{{{','.join(REPLIES)}}}.<locale>.j2")
            return problems
    elif ref.stage == PLAN_STAGE:
        if ref.channel not in PLAN_CHANNELS:
            problem(1, f"{PLAN_STAGE}/ holds instalment reminders for {', '.join(c.value for c in PLAN_CHANNELS)}")
    elif stage is None:
        problem(1, f"stage {ref.stage!r} is not in the configuration (stages:"
                   f" {', '.join(s.name for s in config.stages)})")
    elif ref.channel not in stage.channels:
        problem(1, f"stage {ref.stage} has no {ref.channel.value} channel in the configuration"
                   f" (it uses {', '.join(c.value for c in stage.channels)})")
    if ref.locale not in SUPPORTED_LOCALES:
        problem(1, f"locale {ref.locale} is not supported (use {' or '.join(SUPPORTED_LOCALES)})")
        return problems
    if isinstance(source, UnicodeDecodeError):
        problem(1, f"not UTF-8 text: {source}")
        return problems

    for phrase in _matching(_phrases, source):
        for match in phrase.pattern.finditer(source):
            problem(_line_at(source, match.start()), f"forbidden phrase {phrase.text!r}")

    findings, block_lines = _static_checks(source, ref.channel, _allowed_names(reply))
    static = [LintProblem(path, line, message) for line, message in findings]
    problems += static
    if any(p.message.startswith(("syntax error", "missing block")) for p in static):
        return _dedupe(problems)
    static_keys = {(p.line, p.message.split(":", 1)[0]) for p in static}
    if reply is not None:
        return _dedupe(problems + _reply_problems(path, ref, reply, config, templates, _phrases, source, static_keys))

    cases = _per_profile(_samples(config, ref), config)
    worst_sms: tuple[int, str] | None = None
    for case in cases:
        case = dataclasses.replace(case, locale=ref.locale)
        ctx = _sample_context(case, config, ref)
        try:
            rendered = templates.render(ref.template_id, ref.locale, ctx)
        except RenderError as exc:
            kind = exc.detail.split(":", 1)[0]
            if (exc.line, kind) not in static_keys:
                problem(exc.line, exc.detail)
            if exc.kind == "limit":
                break  # over a time or size limit: one sample says it (each may take the full time)
            continue
        for line, message in _content_checks(rendered, ref, case, ctx, block_lines, source, _phrases):
            problem(line, message)
        if ref.channel is Channel.SMS:
            info = sms_segments(rendered.text)
            if info.segments > config.templates.sms_max_segments and (
                worst_sms is None or info.segments > worst_sms[0]
            ):
                worst_sms = (info.segments, f"SMS is {info.segments} segments ({info.encoding},"
                             f" {info.units} units) for sample case {case.case_id}; the limit is"
                             f" {config.templates.sms_max_segments} (templates.sms_max_segments)")
    if worst_sms is not None:
        problem(1, worst_sms[1])
    return _dedupe(problems)


def _per_profile(cases: Iterable[Case], config: Config) -> list[Case]:
    """The sample cases of the configured profiles: each sample (`cn`, `us`), and a copy
    for every other profile of its currency whose support number differs (the only
    profile value a message shows, and its length counts for SMS segments)."""
    out = []
    profiles = config.jurisdictions
    for case in cases:
        home = profiles.get(case.jurisdiction)
        if home is not None:
            out.append(case)
        shown = {home.support_phone} if home is not None else set()
        for name, profile in sorted(profiles.items()):
            if profile.default_currency == case.currency and profile.support_phone not in shown:
                shown.add(profile.support_phone)
                out.append(dataclasses.replace(case, jurisdiction=name, case_id=f"{case.case_id}-{name}"))
    return out


def _matching(phrases: list[_Phrase], text: str) -> list[_Phrase]:
    """The phrases found in `text`. A plain substring test comes first: it is much
    cheaper than the regex, and most texts contain no phrase."""
    flat = " ".join(text.lower().split())
    return [p for p in phrases if p.needle in flat and p.pattern.search(text)]


def _dedupe(problems: list[LintProblem]) -> list[LintProblem]:
    return sorted(set(problems), key=lambda p: (p.line, p.message))


def _line_at(source: str, offset: int) -> int:
    return source.count("\n", 0, offset) + 1


def _samples(config: Config, ref: TemplateRef) -> Iterable[Case]:
    """A template's sample cases: its stage's (instalment reminders: see `sample_cases_for_plans`)."""
    if ref.stage == PLAN_STAGE:
        return sample_cases_for_plans(config) or SAMPLE_CASES
    stage = config.stage_named(ref.stage)
    return sample_cases_for_stage(stage) if stage is not None else SAMPLE_CASES


def sms_sizes(templates: TemplateSet, ref: TemplateRef, payment_link: str | None = None) -> list[tuple[Case, Any]]:
    """The sample renderings the linter measures for the SMS template `ref`: (case, its
    `SegmentInfo`) for every sample case of its stage and profile (`bench/sms_segments.py`)."""
    config = templates.config
    out = []
    for case in _per_profile(_samples(config, ref), config):
        case = dataclasses.replace(case, locale=ref.locale)
        ctx = _sample_context(case, config, ref, payment_link)
        out.append((case, sms_segments(templates.render(ref.template_id, ref.locale, ctx).text)))
    return out


def _sample_context(case: Case, config: Config, ref: TemplateRef, payment_link: str | None = None) -> dict[str, Any]:
    unsubscribe = SAMPLE_UNSUBSCRIBE_URL if ref.channel is Channel.EMAIL else None
    instalment = sample_instalment(case, ref.locale) if ref.stage == PLAN_STAGE else None
    return build_context(
        case,
        instalment=instalment,
        config=config,
        channel=ref.channel,
        today=SAMPLE_TODAY,
        payment_link=payment_link or sample_payment_link(config.links.base_url),
        opt_out=opt_out_text(ref.channel, ref.locale, unsubscribe),
        locale=ref.locale,
        unsubscribe_url=unsubscribe,
    )


_PARSER = make_environment(autoescape=False)


def _allowed_names(reply: ReplySpec | None) -> frozenset[str]:
    """The free names a template may use: the full context, or a reply's own."""
    if reply is None:
        return CONTEXT_KEYS
    return REPLY_CONTEXT_KEYS if reply.with_link else REPLY_CONTEXT_KEYS - {"payment_link"}


def _reply_problems(
    path: Path,
    ref: TemplateRef,
    reply: ReplySpec,
    config: Config,
    templates: TemplateSet,
    phrases: list[_Phrase],
    source: str,
    static_keys: set[tuple[int, str]],
) -> list[LintProblem]:
    """Render an automatic reply for every configured profile and check what it states,
    its forbidden phrases and its length."""
    out: list[LintProblem] = []
    worst: tuple[int, str] | None = None
    for name in sorted(config.jurisdictions):
        ctx = build_reply_context(config, name, ref.locale,
                                  payment_link=sample_payment_link(config.links.base_url) if reply.with_link else None)
        try:
            text = templates.render(ref.template_id, ref.locale, ctx).text
        except RenderError as exc:
            if (exc.line, exc.detail.split(":", 1)[0]) not in static_keys:
                out.append(LintProblem(path, exc.line, exc.detail))
            if exc.kind == "limit":
                break
            continue
        for key in reply.required:
            if str(ctx[key]) not in text:
                out.append(LintProblem(path, 1, f"missing {key}: the {reply.name} reply must contain"
                                                f" {_WHAT[key]} ({{{{ {key} }}}})"))
        for phrase in _matching(phrases, text):
            if not phrase.pattern.search(source):
                out.append(LintProblem(path, 1, f"forbidden phrase {phrase.text!r} in the rendered text"))
        info = sms_segments(text)
        if info.segments > config.templates.sms_max_segments and (worst is None or info.segments > worst[0]):
            worst = (info.segments, f"SMS is {info.segments} segments ({info.encoding}, {info.units} units) for"
                     f" profile {name}; the limit is {config.templates.sms_max_segments} (templates.sms_max_segments)")
    if worst is not None:
        out.append(LintProblem(path, 1, worst[1]))
    return out


@functools.lru_cache(maxsize=1024)
def _static_checks(
    source: str, channel: Channel, allowed: frozenset[str] = CONTEXT_KEYS
) -> tuple[tuple[tuple[int, str], ...], dict[str, int]]:
    """(line, problem) found without rendering, and the line of each block. Cached by
    content: approval lints the files that start-up lint has just seen."""
    try:
        return _static_findings(source, channel, allowed)
    except RecursionError:
        return ((1, f"syntax error: {TOO_DEEP}"),), {}


def _static_findings(
    source: str, channel: Channel, allowed: frozenset[str]
) -> tuple[tuple[tuple[int, str], ...], dict[str, int]]:
    env = _PARSER
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as exc:
        return ((exc.lineno or 1, f"syntax error: {exc.message}"),), {}
    out: list[tuple[int, str]] = []
    for stmt in tree.find_all((nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)):
        out.append((stmt.lineno, "not allowed: include, extends and import (a template"
                    " must be self-contained so its approval covers everything sent)"))
    for expr in tree.find_all((nodes.Getattr, nodes.Getitem)):
        attr = expr.attr if isinstance(expr, nodes.Getattr) else getattr(getattr(expr, "arg", None), "value", None)
        if isinstance(attr, str) and attr.startswith("_"):
            out.append((expr.lineno, f"sandbox violation: access to attribute {attr!r} is not allowed in templates"))
        elif (
            isinstance(expr, nodes.Getattr)
            and isinstance(expr.node, nodes.Name)
            and expr.node.name == "case"
            and expr.attr not in _CASE_KEYS
        ):
            out.append((expr.lineno, f"undefined name: case.{expr.attr} (case has {', '.join(_CASE_KEYS)})"))
    free = meta.find_undeclared_variables(tree) - allowed - set(env.globals)
    for name in sorted(free):
        line = next((n.lineno for n in tree.find_all(nodes.Name) if n.name == name), 1)
        out.append((line, f"undefined name: {name!r} is undefined"))
    blocks = {b.name: b.lineno for b in tree.find_all(nodes.Block)}
    for block in REQUIRED_BLOCKS[channel]:
        if block not in blocks:
            out.append((1, f"missing block {block!r}: {channel.value} templates define"
                           f" {', '.join(REQUIRED_BLOCKS[channel])}"))
    return tuple(out), blocks


def _content_checks(
    rendered: RenderedMessage,
    ref: TemplateRef,
    case: Case,
    ctx: dict[str, Any],
    block_lines: dict[str, int],
    source: str,
    phrases: list[_Phrase],
) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    blocks = dict(rendered.blocks)

    for block, keys in _REQUIRED[ref.channel].items():
        body = blocks[block]
        line = block_lines.get(block, 1)
        where = "SMS" if ref.channel is Channel.SMS else f"{block} block"
        for key in keys:
            value = str(ctx[key])
            wanted = str(escape(value)) if block == "html" else value
            if wanted not in body:
                out.append((line, f"missing {key}: the {where} must contain {_WHAT[key]} ({{{{ {key} }}}})"))

    if ref.channel is Channel.EMAIL and not blocks["subject"]:
        out.append((block_lines.get("subject", 1), "empty subject"))

    if ref.channel is Channel.VOICE:
        money = [str(ctx[k]) for k, attr in _MONEY_KEYS.items() if getattr(case, attr)]
        for block in ("identity", "voicemail"):
            body, line = blocks[block], block_lines.get(block, 1)
            words = sorted({m.group(0).lower() for m in DEBT_RE.finditer(body)})
            if words:
                out.append((line, f"the {block} must not name the debt: found {', '.join(map(repr, words))}"))
            if any(amount in body for amount in money):
                out.append((line, f"the {block} must not state an amount"))
        if not press(ref.locale, "1").search(blocks["identity"]):
            out.append((block_lines.get("identity", 1), "the identity check must ask the person to press 1"))
        for digit, meaning in VOICE_OPTIONS.items():
            if not press(ref.locale, digit).search(blocks["script"]):
                out.append((block_lines.get("script", 1), f"the script must offer option {digit} ({meaning})"))

    for block, body in blocks.items():
        text = html_lib.unescape(re.sub(r"<[^>]+>", " ", body)) if block == "html" else body
        for phrase in _matching(phrases, text):
            if not phrase.pattern.search(source):
                out.append((block_lines.get(block, 1), f"forbidden phrase {phrase.text!r} in the rendered"
                            f" {block if ref.channel is not Channel.SMS else 'text'}"))
    return out
