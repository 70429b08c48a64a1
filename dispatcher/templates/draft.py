"""Previewing template content that is not (yet) stored: what the template studio and
`POST /api/templates/preview` show while someone types.

The content is rendered and linted in memory by exactly the code that renders and
lints stored versions (`preview` over a `StoredTemplateSet`, `lint_text`): an edit
previews the way it will be sent, and lints the way approval will lint it. The answer
carries what an author needs beside the text: the SMS encoding and segment count, the
cost of one message at the `[costs.<CURRENCY>]` prices of the case's currency, the lint
problems with their line numbers and the difference from the approved content.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from dispatcher.config import Config
from dispatcher.domain import Case, Channel
from dispatcher.templates.context import SUPPORTED_LOCALES
from dispatcher.templates.lint import lint_text
from dispatcher.templates.preview import preview
from dispatcher.templates.rendering import TEMPLATE_ID_RE, RenderError
from dispatcher.templates.stored import StoredTemplate, StoredTemplateSet

#: The longest template content accepted (as `TemplateVersions.save`; the shipped ones
#: are under 3 000 characters).
MAX_CONTENT_CHARS = 64 * 1024

#: Speaking rates for a voice script's length (a cost estimate: calls bill per started
#: minute): about 150 English words, or 240 Chinese characters, a minute.
_WORDS_PER_MINUTE = 150
_CJK_PER_MINUTE = 240
_CJK = re.compile(r"[\u2e80-\u9fff\uff00-\uffef]")


class DraftError(ValueError):
    """The request cannot be previewed (a bad id, locale or content); says what to send."""


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message}


@dataclass(frozen=True, slots=True)
class DraftPreview:
    """The content rendered for one case, or why it could not be (`error`)."""

    template_id: str
    locale: str
    channel: Channel
    case_id: str
    sample: bool  # a sample case, not one from the store
    subject: str | None
    text: str | None  # None when rendering failed
    html: str | None
    encoding: str | None  # SMS: GSM-7 or UCS-2
    units: int | None  # SMS: septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int | None  # SMS parts
    currency: str
    cost: Decimal | None  # one message at the configured prices; None without prices
    cost_basis: str  # what the cost counts, e.g. "2 SMS segment(s) x 0.045 CNY"
    problems: tuple[Problem, ...]  # lint, sorted by line
    error: Problem | None  # the render error, if the content does not render for this case
    diff: tuple[str, ...]  # unified diff from the approved content ("" lines: none approved)

    def as_json(self) -> dict[str, Any]:
        """The API's answer: `{subject?, text, html?, encoding, segments, cost, ...}`.
        Money is a decimal string (as in the reports)."""
        out: dict[str, Any] = {"template_id": self.template_id, "locale": self.locale,
                               "channel": self.channel.value, "case_id": self.case_id, "sample": self.sample}
        if self.subject is not None:
            out["subject"] = self.subject
        out["text"] = self.text
        if self.html is not None:
            out["html"] = self.html
        out |= {
            "encoding": self.encoding, "units": self.units, "segments": self.segments,
            "cost": None if self.cost is None else str(self.cost), "currency": self.currency,
            "cost_basis": self.cost_basis,
            "problems": [p.as_json() for p in self.problems],
            "error": None if self.error is None else self.error.as_json(),
            "diff": list(self.diff),
        }
        return out


def check_request(template_id: str, locale: str, content: str | None) -> None:
    """`DraftError` unless the id, locale and content can be previewed."""
    if not isinstance(template_id, str) or TEMPLATE_ID_RE.match(template_id) is None:
        raise DraftError(f"template_id {template_id!r} is not a template id; ids look like sms/dpd30/v1"
                         " (<channel>/<stage>/<variant>)")
    if locale not in SUPPORTED_LOCALES:
        raise DraftError(f"locale {locale!r} is not supported: use {' or '.join(SUPPORTED_LOCALES)}")
    if content is not None and len(content) > MAX_CONTENT_CHARS:
        raise DraftError(f"the content has {len(content)} characters; a template has at most {MAX_CONTENT_CHARS}")
    if content is not None and "\x00" in content:
        raise DraftError("the content contains a NUL character; remove it")


def preview_content(
    config: Config,
    forbidden_phrases_path: Path,
    template_id: str,
    locale: str,
    content: str,
    case: Case,
    today: dt.date,
    *,
    sample: bool,
    approved: str | None = None,
) -> DraftPreview:
    """Render `content` as template `template_id` in `locale` for `case` (as of
    `today`), lint it, price one message and diff it against `approved`."""
    check_request(template_id, locale, content)
    channel = Channel(template_id.split("/", 1)[0])
    case = dataclasses.replace(case, locale=locale)
    subject = text = html = encoding = None
    units = segments = None
    error: Problem | None = None
    templates = StoredTemplateSet(config, [StoredTemplate(template_id, locale, content)], where="the draft")
    try:
        result = preview(templates, template_id, case, locale, today, None)
    except RenderError as exc:
        error = Problem(exc.line, exc.detail)
    else:
        message = result.message
        subject, text, html = message.subject, message.text, message.html
        if result.segments is not None:
            encoding, units, segments = result.segments.encoding, result.segments.units, result.segments.segments
    problems = lint_text(template_id, locale, content, config, forbidden_phrases_path)
    cost, basis = _cost(config, channel, case.currency, segments, text)
    return DraftPreview(
        template_id=template_id, locale=locale, channel=channel, case_id=case.case_id, sample=sample,
        subject=subject, text=text, html=html, encoding=encoding, units=units, segments=segments,
        currency=case.currency, cost=cost, cost_basis=basis,
        problems=tuple(sorted({Problem(p.line, p.message) for p in problems}, key=lambda p: (p.line, p.message))),
        error=error, diff=diff_lines(approved, content),
    )


def diff_lines(approved: str | None, content: str, *, old: str = "approved", new: str = "this text") -> tuple[str, ...]:
    """A unified diff from the approved content to `content` (none when nothing is
    approved or nothing changed)."""
    if approved is None or approved == content:
        return ()
    return tuple(line.rstrip("\n") for line in difflib.unified_diff(
        approved.splitlines(keepends=True), content.splitlines(keepends=True), fromfile=old, tofile=new))


def spoken_minutes(text: str) -> int:
    """Started minutes a voice script takes to speak (at least 1): an estimate."""
    cjk = len(_CJK.findall(text))
    words = len(_CJK.sub(" ", text).split())
    return max(1, math.ceil(cjk / _CJK_PER_MINUTE + words / _WORDS_PER_MINUTE))


def _cost(config: Config, channel: Channel, currency: str, segments: int | None,
          text: str | None) -> tuple[Decimal | None, str]:
    prices = config.costs.get(currency)
    if prices is None:
        return None, f"no [costs.{currency}] prices in the configuration"
    if channel is Channel.SMS:
        if segments is None:
            return None, "the SMS does not render, so its segments are unknown"
        return prices.cost(segments=segments), f"{segments} SMS segment(s) x {prices.sms_segment} {currency}"
    if channel is Channel.EMAIL:
        return prices.cost(emails=1), f"1 e-mail x {prices.email} {currency}"
    if text is None:
        return None, "the script does not render, so its length is unknown"
    minutes = spoken_minutes(text)
    return (prices.cost(call_minutes=minutes),
            f"about {minutes} started call minute(s) x {prices.voice_minute} {currency} (an estimate from the"
            " script's length)")
