"""Preview: what the debtor would read or hear, with the approval state."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dispatcher.config import Config
from dispatcher.domain import Channel
from dispatcher.templates import TemplateSet, UnknownTemplate, preview, sample_case_for_template
from dispatcher.templates.segments import SegmentInfo
from dispatcher.testing import SAMPLE_TODAY, SAMPLE_TOKEN, sample_case, sample_payment_link

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", target)
    return target


def test_sms_preview_shows_encoding_segments_and_approval(tree: Path, config: Config, tmp_path: Path) -> None:
    result = preview(TemplateSet(tree, config), "sms/dpd30/v1", sample_case("cn", dpd=45), None, SAMPLE_TODAY,
                     tmp_path / "out")
    assert (result.channel, result.locale, result.approval) == (Channel.SMS, "zh-CN", "approved")
    assert result.segments == SegmentInfo("UCS-2", len(result.message.text), 2)  # a short link
    assert result.html_path is None
    assert result.payment_link == sample_payment_link(config.links.base_url) and SAMPLE_TOKEN in result.payment_link
    assert result.payment_link in result.message.text
    report = result.as_text()
    assert "sms: UCS-2, " in report and "2 segment(s)" in report
    assert "approval: approved" in report
    assert report.endswith(result.message.text)


def test_email_preview_writes_the_html_file(tree: Path, config: Config, tmp_path: Path) -> None:
    out = tmp_path / "previews"
    result = preview(TemplateSet(tree, config), "email/dpd60/v2", sample_case("us", dpd=70), "en-US", SAMPLE_TODAY, out)
    assert result.html_path == out / "email_dpd60_v2.en-US.html"
    html = result.html_path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "Pay now" in html
    assert result.message.subject == "Repayment options for your overdue loan account"
    report = result.as_text()
    assert f"html body written to: {result.html_path}" in report
    assert "Subject: Repayment options for your overdue loan account" in report


def test_voice_preview_shows_all_three_blocks(tree: Path, config: Config, tmp_path: Path) -> None:
    result = preview(TemplateSet(tree, config), "voice/dpd90/v1", sample_case("cn", dpd=95), "zh-CN", SAMPLE_TODAY,
                     tmp_path)
    report = result.as_text()
    for block in ("[identity]", "[script]", "[voicemail]"):
        assert block in report
    assert result.message.blocks["voicemail"] in report


def test_edited_and_new_templates_are_previewable_and_say_so(tree: Path, config: Config, tmp_path: Path) -> None:
    path = tree / "sms/dpd30/v2.en-US.j2"
    path.write_text(path.read_text(encoding="utf-8").replace("Please pay", "Kindly pay"), encoding="utf-8")
    shutil.copy(path, tree / "sms/dpd30/v7.en-US.j2")
    templates = TemplateSet(tree, config)
    case = sample_case("us", dpd=40)
    edited = preview(templates, "sms/dpd30/v2", case, None, SAMPLE_TODAY, tmp_path)
    assert edited.approval == "edited-not-approved" and "Kindly pay" in edited.message.text
    assert "edited, NOT approved" in edited.as_text()
    new = preview(templates, "sms/dpd30/v7", case, None, SAMPLE_TODAY, tmp_path)
    assert new.approval == "never-approved" and "never approved" in new.as_text()


def test_locale_falls_back_to_the_profile_default(tree: Path, config: Config, tmp_path: Path) -> None:
    (tree / "sms/dpd30/v3.en-US.j2").unlink()
    case = sample_case("cn", dpd=45, locale="en-US")
    result = preview(TemplateSet(tree, config), "sms/dpd30/v3", case, None, SAMPLE_TODAY, tmp_path)
    assert result.locale == "zh-CN"
    with pytest.raises(UnknownTemplate, match="no en-US file"):
        preview(TemplateSet(tree, config), "sms/dpd30/v3", case, "en-US", SAMPLE_TODAY, tmp_path)


def test_unknown_template(tree: Path, config: Config, tmp_path: Path) -> None:
    with pytest.raises(UnknownTemplate, match="did you mean"):
        preview(TemplateSet(tree, config), "sms/dpd30/v0", sample_case(), None, SAMPLE_TODAY, tmp_path)


@pytest.mark.parametrize(
    ("template_id", "locale", "jurisdiction", "dpd"),
    [("sms/pre_due/v1", "zh-CN", "cn", -3), ("email/early/v2", "en-US", "us", 6),
     ("voice/dpd90/v1", None, "cn", 95), ("sms/dpd60/v3", "en-US", "us", 65)],
)
def test_a_sample_case_that_fits_the_template(
    config: Config, template_id: str, locale: str | None, jurisdiction: str, dpd: int
) -> None:
    case = sample_case_for_template(config, template_id, locale)
    assert case.jurisdiction == jurisdiction
    assert (SAMPLE_TODAY - case.due_date).days == dpd
    assert case.locale == (locale or "zh-CN")
    stage = config.stage_for(dpd)
    assert stage is not None and stage.name == template_id.split("/")[1]


def test_preview_of_every_shipped_template_with_its_sample_case(config: Config, tmp_path: Path) -> None:
    templates = TemplateSet(ROOT / "templates", config)
    for ref in templates.refs():
        case = sample_case_for_template(config, ref.template_id, ref.locale)
        result = preview(templates, ref.template_id, case, None, SAMPLE_TODAY, tmp_path)
        assert result.locale == ref.locale and result.approval == "approved"
