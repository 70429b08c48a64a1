"""Preview: exactly what a debtor would read or hear, for a real or a sample case.

Previews use a clearly fake payment link of production length, so the SMS segment
count shown is the one a real message would have. Unapproved edits can be previewed;
the result says whether the content is approved.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from dispatcher.config import Config
from dispatcher.domain import PLAN_STAGE, Case, Channel
from dispatcher.templates.context import build_context, opt_out_text
from dispatcher.templates.rendering import RenderedMessage, TemplateSet, pick_locale
from dispatcher.templates.segments import SegmentInfo, sms_segments
from dispatcher.testing import (
    SAMPLE_TODAY,
    SAMPLE_UNSUBSCRIBE_URL,
    sample_case,
    sample_instalment,
    sample_payment_link,
)

_STATUS_TEXT = {
    "approved": "approved (this content may be sent)",
    "edited-not-approved": "edited, NOT approved (will not be sent until it is imported and approved by a checker)",
    "never-approved": "never approved (will not be sent until it is imported and approved by a checker)",
}


@dataclass(frozen=True, slots=True)
class PreviewResult:
    template_id: str
    locale: str
    channel: Channel
    case_id: str
    message: RenderedMessage
    approval: str  # approved | edited-not-approved | never-approved
    payment_link: str
    segments: SegmentInfo | None = None  # SMS
    html_path: Path | None = None  # e-mail: the HTML body written to a file

    def as_text(self) -> str:
        """A human-readable report (what `dispatcher templates preview` prints)."""
        m = self.message
        lines = [
            f"template: {self.template_id} ({self.locale})",
            f"case: {self.case_id}",
            f"approval: {_STATUS_TEXT.get(self.approval, self.approval)}",
            f"content sha256: {m.content_hash}",
            f"payment link (sample, not real): {self.payment_link}",
        ]
        if self.channel is Channel.SMS and self.segments is not None:
            s = self.segments
            lines += [f"sms: {s.encoding}, {s.units} units, {s.segments} segment(s)", "", m.text]
        elif self.channel is Channel.EMAIL:
            lines += [f"html body written to: {self.html_path}", "", f"Subject: {m.subject}", "", m.text]
        else:
            for block in ("identity", "script", "voicemail"):
                lines += ["", f"[{block}]", m.blocks[block]]
        return "\n".join(lines)


def sample_case_for_template(config: Config, template_id: str, locale: str | None = None) -> Case:
    """A sample case that fits the template: a DPD inside its stage, the China sample
    for zh-CN and the US sample for en-US (`locale` None: China), as of `SAMPLE_TODAY`."""
    parts = template_id.split("/")
    stage = config.stage_named(parts[1]) if len(parts) == 3 else None
    dpd = 45 if stage is None else (stage.dpd_min if stage.dpd_min <= 0 else stage.dpd_min + 5)
    jurisdiction = "us" if locale == "en-US" else "cn"
    case = sample_case(jurisdiction, dpd=dpd, today=SAMPLE_TODAY)
    return case if locale is None else dataclasses.replace(case, locale=locale)


def preview(
    template_set: TemplateSet,
    template_id: str,
    case: Case,
    locale: str | None,
    today: dt.date,
    out_dir: Path | None,
) -> PreviewResult:
    """Render `template_id` for `case` (in `locale`, or the case's with the profile's
    fallback); an e-mail's HTML is written under `out_dir` (None: not written)."""
    channel = Channel(template_id.split("/", 1)[0])
    if locale is None:
        profile = template_set.config.jurisdictions.get(case.jurisdiction)
        default = profile.default_locale if profile is not None else case.locale
        locale = pick_locale(template_set, template_id, case.locale, default)
    elif not template_set.has(template_id, locale):
        raise template_set.unknown(template_id, locale)
    unsubscribe = SAMPLE_UNSUBSCRIBE_URL if channel is Channel.EMAIL else None
    link = sample_payment_link(template_set.config.links.base_url)
    context = build_context(
        case,
        config=template_set.config,
        channel=channel,
        today=today,
        payment_link=link,
        opt_out=opt_out_text(channel, locale, unsubscribe),
        locale=locale,
        unsubscribe_url=unsubscribe,
        instalment=sample_instalment(case, locale, today) if template_id.split("/")[1:2] == [PLAN_STAGE] else None,
    )
    message = template_set.render(template_id, locale, context)
    segments = sms_segments(message.text) if channel is Channel.SMS else None
    html_path = None
    if channel is Channel.EMAIL and message.html is not None and out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        html_path = out_dir / f"{template_id.replace('/', '_')}.{locale}.html"
        html_path.write_text(message.html + "\n", encoding="utf-8")
    return PreviewResult(
        template_id=template_id,
        locale=locale,
        channel=channel,
        case_id=case.case_id,
        message=message,
        approval=template_set.approval_status(template_id, locale),
        payment_link=link,
        segments=segments,
        html_path=html_path,
    )
