"""The shipped template set: complete, approved, lint-clean, and saying what it must."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import Config
from dispatcher.domain import PLAN_STAGE, Channel
from dispatcher.templates import TemplateSet, build_context, lint_tree, opt_out_text
from dispatcher.templates.context import instalment_context
from dispatcher.templates.rendering import REPLIES_FOLDER
from dispatcher.templates.segments import sms_segments
from dispatcher.testing import (
    SAMPLE_PAYMENT_LINK,
    SAMPLE_TODAY,
    SAMPLE_UNSUBSCRIBE_URL,
    sample_cases_for_plans,
    sample_cases_for_stage,
    sample_payment_link,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
LOCALES = ("zh-CN", "en-US")
MINIMUM = {Channel.SMS: 3, Channel.EMAIL: 3, Channel.VOICE: 2}


@pytest.fixture(scope="module")
def shipped(config: Config) -> TemplateSet:
    return TemplateSet(TEMPLATES, config)


def renderings(shipped: TemplateSet, config: Config, channel: Channel) -> list[tuple[str, Any, dict[str, Any], Any]]:
    """Every shipped template of `channel` rendered with its stage's sample cases (the
    automatic replies have a test file of their own)."""
    out = []
    for ref in shipped.refs():
        if ref.channel is not channel or ref.stage == REPLIES_FOLDER:
            continue
        if ref.stage == PLAN_STAGE:  # instalment reminders: cases in the stages plans are offered in and later
            cases = sample_cases_for_plans(config)
        else:
            stage = config.stage_named(ref.stage)
            assert stage is not None
            cases = sample_cases_for_stage(stage)
        for case in cases:
            case = dataclasses.replace(case, locale=ref.locale)
            unsub = SAMPLE_UNSUBSCRIBE_URL if channel is Channel.EMAIL else None
            instalment = (instalment_context(2, 3, SAMPLE_TODAY + dt.timedelta(days=3), Decimal("1234.56"),
                                             case.currency, ref.locale) if ref.stage == PLAN_STAGE else None)
            ctx = build_context(case, config=config, channel=channel, today=SAMPLE_TODAY,
                                payment_link=SAMPLE_PAYMENT_LINK, opt_out=opt_out_text(channel, ref.locale, unsub),
                                locale=ref.locale, unsubscribe_url=unsub, instalment=instalment)
            out.append((ref.relpath, case, ctx, shipped.render(ref.template_id, ref.locale, ctx)))
    return out


def test_the_shipped_set_lints_clean(config: Config) -> None:
    assert [str(p) for p in lint_tree(TEMPLATES, config, ROOT / "config" / "forbidden_phrases.txt")] == []


def test_every_stage_channel_and_locale_has_enough_approved_variants(shipped: TemplateSet, config: Config) -> None:
    catalog = shipped.approved_catalog()
    for stage in config.stages:
        for channel in stage.channels:
            for locale in LOCALES:
                ids = catalog.get((channel, stage.name, locale), ())
                assert len(ids) >= MINIMUM[channel], (channel, stage.name, locale, ids)


def test_every_file_is_approved(shipped: TemplateSet) -> None:
    refs = shipped.refs()
    assert len(refs) == 84  # 68 message templates, 4 instalment reminders and 12 automatic replies
    assert [r.relpath for r in refs if not shipped.is_approved(r.template_id, r.locale)] == []


def test_every_variant_exists_in_both_locales(shipped: TemplateSet) -> None:
    for template_id in shipped.template_ids():
        assert shipped.locales_of(template_id) == ["en-US", "zh-CN"], template_id


@pytest.mark.parametrize("channel", [Channel.SMS, Channel.EMAIL])
def test_sms_and_email_state_every_required_fact(shipped: TemplateSet, config: Config, channel: Channel) -> None:
    for rel, case, ctx, msg in renderings(shipped, config, channel):
        bodies = [msg.text] if channel is Channel.SMS else [msg.text, msg.html]
        for body in bodies:
            for key in ("amount_due", "penalty_explanation", "payment_link", "support_phone", "org_name", "opt_out"):
                assert ctx[key] in body, (rel, case.case_id, key)


def test_sms_fit_three_segments_and_english_stays_gsm7(shipped: TemplateSet, config: Config) -> None:
    for rel, case, _ctx, msg in renderings(shipped, config, Channel.SMS):
        info = sms_segments(msg.text)
        assert info.segments <= 3, (rel, case.case_id, info)
        if rel.endswith(".en-US.j2"):
            # SMS carry no names, so English stays GSM-7 for both jurisdictions' cases.
            assert info.encoding == "GSM-7", (rel, case.case_id, msg.text)


def test_sms_do_not_name_the_debtor(shipped: TemplateSet, config: Config) -> None:
    # Names are left out of SMS: they cost a third of a UCS-2 part and show on lock screens.
    for rel, case, _ctx, msg in renderings(shipped, config, Channel.SMS):
        assert case.name not in msg.text, rel


def test_emails_have_a_mobile_friendly_html_body_and_a_plain_text_twin(shipped: TemplateSet, config: Config) -> None:
    for rel, case, _ctx, msg in renderings(shipped, config, Channel.EMAIL):
        html = msg.html or ""
        assert html.startswith("<!DOCTYPE html>") and html.endswith("</html>"), rel
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html, rel
        assert "max-width:600px" in html, rel
        assert "<style" not in html and "<script" not in html, rel  # inline styles only
        button = re.search(r'<a href="([^"]+)" style="display:inline-block[^"]*">([^<]+)</a>', html)
        assert button is not None, rel
        assert button.group(1) == SAMPLE_PAYMENT_LINK
        assert button.group(2) == ("Pay now" if rel.endswith("en-US.j2") else "立即还款")
        assert f'href="{SAMPLE_UNSUBSCRIBE_URL}"' in html, rel
        assert msg.subject and "\n" not in msg.subject, rel
        assert "<" not in msg.text, rel
        assert (case.name in msg.text) and (case.name in html), rel


def test_chinese_emails_have_chinese_subjects(shipped: TemplateSet, config: Config) -> None:
    for rel, _case, _ctx, msg in renderings(shipped, config, Channel.EMAIL):
        has_cjk = re.search(r"[\u4e00-\u9fff]", msg.subject or "") is not None
        assert has_cjk == rel.endswith(".zh-CN.j2"), (rel, msg.subject)


def test_dpd90_messages_are_formal_notices(shipped: TemplateSet, config: Config) -> None:
    for channel in (Channel.SMS, Channel.EMAIL, Channel.VOICE):
        for rel, _case, _ctx, msg in renderings(shipped, config, channel):
            if "/dpd90/" in rel:
                assert re.search(r"formal notice|正式通知", msg.text, re.IGNORECASE), rel


def test_dpd60_messages_explain_the_credit_record_or_a_repayment_plan(shipped: TemplateSet, config: Config) -> None:
    for channel in (Channel.SMS, Channel.EMAIL, Channel.VOICE):
        for rel, _case, _ctx, msg in renderings(shipped, config, channel):
            if "/dpd60/" in rel:
                assert re.search(r"credit record|repayment (plan|options)|征信|信用记录|还款计划|分期", msg.text), rel


def test_legal_referral_is_only_ever_stated_as_a_possibility(shipped: TemplateSet, config: Config) -> None:
    for channel in (Channel.SMS, Channel.EMAIL, Channel.VOICE):
        for rel, _case, _ctx, msg in renderings(shipped, config, channel):
            for sentence in re.split(r"(?<=[.。;；])\s*", msg.text):
                if re.search(r"legal department|法务部门", sentence):
                    assert re.search(r"\bmay\b|可能", sentence), (rel, sentence)


def test_voice_scripts_have_identity_check_options_and_a_limited_voicemail(
    shipped: TemplateSet, config: Config
) -> None:
    for rel, case, ctx, msg in renderings(shipped, config, Channel.VOICE):
        zh = rel.endswith("zh-CN.j2")
        press = (lambda d: f"按{d}") if zh else (lambda d: f"press {d}")
        assert press("1") in msg.blocks["identity"].lower(), rel
        assert case.first_name in msg.blocks["identity"], rel
        script = msg.blocks["script"].lower()
        for digit in "1239":
            assert press(digit) in script, (rel, digit)
        assert ctx["amount_due"] in msg.blocks["script"] and ctx["support_phone"] in msg.blocks["script"]
        voicemail = msg.blocks["voicemail"]
        assert ctx["org_name"] in voicemail and ctx["support_phone"] in voicemail, rel
        assert ctx["amount_due"] not in voicemail, rel
        assert not re.search(
            r"debt|owe|overdue|past due|payment|loan|credit|欠|逾期|还款|贷款|信用卡", voicemail, re.I
        ), rel


def test_instalment_reminders_state_the_instalment_and_fit_two_segments(shipped: TemplateSet, config: Config) -> None:
    for channel in (Channel.SMS, Channel.EMAIL):
        for rel, _case, ctx, msg in renderings(shipped, config, channel):
            if "/plan/" not in rel:
                continue
            # a Chinese SMS has room for the instalment's number and date, not its amount as well
            if channel is Channel.EMAIL or "en-US" in rel:
                assert ctx["instalment"]["amount"] in msg.text, rel
            assert ctx["instalment"]["due_short" if channel is Channel.SMS else "due"] in msg.text, rel
            if channel is Channel.SMS:  # measured with a link of the configured base's length, as lint does
                text = msg.text.replace(SAMPLE_PAYMENT_LINK, sample_payment_link(config.links.base_url))
                assert sms_segments(text).segments <= 2, (rel, text)
