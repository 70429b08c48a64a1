"""Two-segment reminders: the shipped configuration allows 2 SMS segments, and every
shipped SMS template, in both locales, lints within them for the linter's worst-case
sample cases (both profiles, both currencies, long amounts, partly paid) with a link of
production length. The shorter SMS penalty explanations still state true figures."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

from dispatcher.config import Config
from dispatcher.domain import PLAN_STAGE, Channel
from dispatcher.services.links import link_url, new_token
from dispatcher.templates import TemplateSet
from dispatcher.templates.context import build_context, opt_out_text, penalty_explanation
from dispatcher.templates.lint import lint_tree, sms_sizes
from dispatcher.templates.rendering import REPLIES_FOLDER
from dispatcher.testing import SAMPLE_TODAY, partly_paid, sample_case, sample_instalment, sample_payment_link

ROOT = Path(__file__).resolve().parents[2]
PHRASES = ROOT / "config" / "forbidden_phrases.txt"


def test_the_shipped_config_allows_two_segments_and_a_short_link_base(config: Config) -> None:
    assert config.templates.sms_max_segments == 2
    assert config.links.base_url is not None
    assert len(sample_payment_link(config.links.base_url)) == len(link_url(config.links.base_url, new_token())) <= 40


def test_every_shipped_reminder_sms_fits_in_two_segments_in_both_locales(config: Config) -> None:
    templates = TemplateSet(ROOT / "templates", config)
    refs = [r for r in templates.refs() if r.channel is Channel.SMS and r.stage != REPLIES_FOLDER]
    assert {r.locale for r in refs} == {"zh-CN", "en-US"}
    assert len(refs) == 32  # 5 stages x 3 variants x 2 locales, and the instalment reminder in 2
    for ref in refs:
        sizes = sms_sizes(templates, ref)
        assert {c.currency for c, _ in sizes} == {"CNY", "USD"}, ref.relpath  # both profiles' amounts
        worst = max(info.segments for _, info in sizes)
        assert worst <= 2, (ref.relpath, max(sizes, key=lambda s: s[1].units))


def test_the_shipped_tree_lints_clean_at_two_segments(config: Config) -> None:
    assert [str(p) for p in lint_tree(ROOT / "templates", config, PHRASES)] == []


def test_every_reminder_states_amount_explanation_link_support_number_and_opt_out(config: Config) -> None:
    templates = TemplateSet(ROOT / "templates", config)
    case = partly_paid(sample_case("us", dpd=365))
    link = sample_payment_link(config.links.base_url)
    for ref in templates.refs():
        if ref.channel is not Channel.SMS or ref.stage == REPLIES_FOLDER:
            continue
        ctx = build_context(case, config=config, channel=Channel.SMS, today=SAMPLE_TODAY, payment_link=link,
                            opt_out=opt_out_text(Channel.SMS, ref.locale, None), locale=ref.locale,
                            instalment=sample_instalment(case, ref.locale) if ref.stage == PLAN_STAGE else None)
        text = templates.render(ref.template_id, ref.locale, ctx).text
        for key in ("outstanding", "penalty_explanation", "payment_link", "support_phone", "opt_out", "org_name"):
            assert str(ctx[key]) in text, (ref.relpath, key)


def test_the_variants_of_a_stage_say_it_differently(config: Config) -> None:
    templates = TemplateSet(ROOT / "templates", config)
    for stage in config.stages:
        for locale in ("zh-CN", "en-US"):
            texts = {templates.path_of(f"sms/{stage.name}/{v}", locale).read_text(encoding="utf-8")
                     for v in ("v1", "v2", "v3")}
            assert len(texts) == 3, (stage.name, locale)


def test_the_short_sms_explanations_state_true_figures() -> None:
    overdue = sample_case("cn", dpd=45)  # principal 10,000.00, 0.05 % a day
    assert penalty_explanation(overdue, "zh-CN", SAMPLE_TODAY, terse=True) == "罚息=本金×日0.05%×45天=¥225.00。"
    assert overdue.principal * Decimal("0.0005") * 45 == Decimal("225.00")
    us = sample_case("us", dpd=45)
    assert penalty_explanation(us, "en-US", SAMPLE_TODAY, terse=True) == (
        "Late charges: principal $2,400.00 x 0.05% a day x 45 days = $54.00.")
    before = sample_case("us", dpd=-3)
    assert penalty_explanation(before, "en-US", SAMPLE_TODAY, terse=True) == (
        "If paid late, late charges of $1.20 (0.05% of the principal) accrue per day.")
    assert penalty_explanation(sample_case("cn", dpd=-3), "zh-CN", SAMPLE_TODAY, terse=True) == (
        "逾期每日罚息¥5.00（本金×0.05%）。")
    flat = sample_case("cn", dpd=45, with_rate=False)
    assert penalty_explanation(flat, "zh-CN", SAMPLE_TODAY, terse=True) == "含利息¥120.00、罚息¥150.00，按合同计。"
    assert penalty_explanation(partly_paid(flat), "en-US", SAMPLE_TODAY, terse=True).endswith(" paid.")
    assert SAMPLE_TODAY - dt.timedelta(days=45) == overdue.due_date
