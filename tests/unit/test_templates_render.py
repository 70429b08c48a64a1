"""Rendering: the sandbox, strict undefined names, blocks per channel, the context."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import Config
from dispatcher.domain import Channel, Product
from dispatcher.templates import (
    NotApproved,
    RenderError,
    TemplateSet,
    UnknownTemplate,
    build_context,
    opt_out_text,
    pick_locale,
)
from dispatcher.testing import SAMPLE_PAYMENT_LINK, SAMPLE_TODAY, SAMPLE_UNSUBSCRIBE_URL, sample_case

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "templates"
UNSUB = SAMPLE_UNSUBSCRIBE_URL


@pytest.fixture
def shipped(config: Config) -> TemplateSet:
    return TemplateSet(SHIPPED, config)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(SHIPPED, target)
    return target


def ctx(config: Config, channel: Channel, locale: str, case: Any = None, **kw: Any) -> dict[str, Any]:
    case = case or sample_case("cn" if locale == "zh-CN" else "us", dpd=45)
    unsub = UNSUB if channel is Channel.EMAIL else None
    return build_context(
        case, config=config, channel=channel, today=SAMPLE_TODAY, payment_link=SAMPLE_PAYMENT_LINK,
        opt_out=opt_out_text(channel, locale, unsub), locale=locale, unsubscribe_url=unsub, **kw,
    )


def write(tree: Path, rel: str, text: str) -> Path:
    path = tree / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- lookup -------------------------------------------------------------------------


def test_ids_locales_and_paths(shipped: TemplateSet) -> None:
    ids = shipped.template_ids()
    assert "sms/dpd30/v1" in ids and "email/pre_due/v3" in ids and "voice/dpd90/v2" in ids
    assert ids == sorted(ids)
    assert shipped.locales_of("sms/dpd30/v1") == ["en-US", "zh-CN"]
    assert shipped.path_of("sms/dpd30/v1", "zh-CN") == SHIPPED / "sms" / "dpd30" / "v1.zh-CN.j2"


@pytest.mark.parametrize("bad", ["../../etc/passwd", "sms/dpd30", "fax/dpd30/v1", "sms/dpd30/v1.zh-CN.j2", "sms/../v1"])
def test_ids_that_are_not_ids_are_refused(shipped: TemplateSet, bad: str) -> None:
    with pytest.raises(UnknownTemplate, match="not a template id"):
        shipped.path_of(bad, "zh-CN")


def test_an_unknown_id_names_close_matches(shipped: TemplateSet, config: Config) -> None:
    with pytest.raises(UnknownTemplate, match="did you mean: sms/dpd30/v1"):
        shipped.render("sms/dpd30/v11", "zh-CN", ctx(config, Channel.SMS, "zh-CN"))


def test_a_missing_locale_names_the_existing_ones(shipped: TemplateSet, config: Config) -> None:
    with pytest.raises(UnknownTemplate, match="no fr-FR file; it exists in: en-US, zh-CN"):
        shipped.render("sms/dpd30/v1", "fr-FR", ctx(config, Channel.SMS, "zh-CN"))


# -- SMS ----------------------------------------------------------------------------


def test_sms_renders_the_whole_file(shipped: TemplateSet, config: Config) -> None:
    msg = shipped.render("sms/dpd30/v1", "zh-CN", ctx(config, Channel.SMS, "zh-CN"))
    assert msg.text == (
        "【调度银行】已逾期45天，应还¥10,345.00。罚息=本金×日0.05%×45天=¥225.00。"
        f"还款{SAMPLE_PAYMENT_LINK} 客服95555 回TD退订"
    )
    assert (msg.template_id, msg.variant, msg.locale, msg.channel) == ("sms/dpd30/v1", "v1", "zh-CN", Channel.SMS)
    assert msg.subject is None and msg.html is None
    assert dict(msg.blocks) == {"text": msg.text}
    expected = hashlib.sha256((SHIPPED / "sms/dpd30/v1.zh-CN.j2").read_bytes()).hexdigest()
    assert msg.content_hash == expected


def test_rendered_message_is_immutable(shipped: TemplateSet, config: Config) -> None:
    msg = shipped.render("sms/dpd30/v1", "en-US", ctx(config, Channel.SMS, "en-US"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.text = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        msg.blocks["text"] = "x"  # type: ignore[index]


# -- e-mail -------------------------------------------------------------------------


def test_email_has_subject_text_and_html_with_a_chinese_subject(shipped: TemplateSet, config: Config) -> None:
    msg = shipped.render("email/dpd30/v1", "zh-CN", ctx(config, Channel.EMAIL, "zh-CN"))
    assert msg.subject == "逾期通知：您的信用卡账户已逾期45天"
    assert set(msg.blocks) == {"subject", "text", "html"}
    assert msg.text.startswith("尊敬的张伟：")
    assert "¥10,345.00" in msg.text and "¥10,345.00" in (msg.html or "")
    assert (msg.html or "").startswith("<!DOCTYPE html>")
    assert f'href="{SAMPLE_PAYMENT_LINK}"' in (msg.html or "")
    assert f'href="{UNSUB}"' in (msg.html or "")


def test_only_the_html_block_is_escaped(shipped: TemplateSet, config: Config) -> None:
    case = sample_case("us", dpd=45, name="Pat O'Brien <Jr>")
    msg = shipped.render("email/dpd30/v1", "en-US", ctx(config, Channel.EMAIL, "en-US", case))
    assert "Dear Pat O'Brien <Jr>," in msg.text
    assert "Pat O&#39;Brien &lt;Jr&gt;" in (msg.html or "")
    assert "<Jr>" not in (msg.html or "")


def test_subject_is_always_one_line(tree: Path, config: Config) -> None:
    write(tree, "email/dpd30/v9.en-US.j2",
          "{% block subject %}Overdue\n  notice\r\nBcc: x@example.com{% endblock %}"
          "{% block text %}t{% endblock %}{% block html %}h{% endblock %}")
    msg = TemplateSet(tree, config).render("email/dpd30/v9", "en-US", ctx(config, Channel.EMAIL, "en-US"))
    assert msg.subject == "Overdue notice Bcc: x@example.com"


def test_email_without_a_block_is_a_structure_error(tree: Path, config: Config) -> None:
    write(tree, "email/dpd30/v9.en-US.j2", "{% block subject %}s{% endblock %}{% block text %}t{% endblock %}")
    with pytest.raises(RenderError, match="block 'html'") as info:
        TemplateSet(tree, config).render("email/dpd30/v9", "en-US", ctx(config, Channel.EMAIL, "en-US"))
    assert info.value.kind == "structure"


# -- voice --------------------------------------------------------------------------


def test_voice_blocks_and_script_as_text(shipped: TemplateSet, config: Config) -> None:
    msg = shipped.render("voice/dpd60/v1", "en-US", ctx(config, Channel.VOICE, "en-US"))
    assert set(msg.blocks) == {"identity", "script", "voicemail"}
    assert msg.text == msg.blocks["script"]
    assert msg.blocks["identity"] == (
        "Hello, this is an automated call from Dispatcher Bank for Alex Morgan."
        " If you are Alex, please press 1 now. If you are not, please hang up. Thank you."
    )
    assert "$2,490.00" in msg.text and "times 0.05% times 45 days" in msg.text
    assert msg.blocks["voicemail"] == (
        "Hello, this is a message for Alex Morgan from Dispatcher Bank."
        " Please call us back at +1 800 555 0100. Thank you."
    )


def test_chinese_voice_lines_join_without_spaces(shipped: TemplateSet, config: Config) -> None:
    msg = shipped.render("voice/dpd60/v1", "zh-CN", ctx(config, Channel.VOICE, "zh-CN"))
    assert msg.blocks["voicemail"] == "您好，这是给张伟的留言，这里是调度银行。请您方便时回电95555。谢谢。"
    assert "\n" not in msg.text


# -- strictness and the sandbox -----------------------------------------------------


def test_undefined_names_fail_with_their_line(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v9.en-US.j2", "Hello\n{{ amount_due }}\n{{ debtor_phone }}\n")
    with pytest.raises(RenderError) as info:
        TemplateSet(tree, config).render("sms/dpd30/v9", "en-US", ctx(config, Channel.SMS, "en-US"))
    assert (info.value.kind, info.value.line) == ("undefined", 3)
    assert "'debtor_phone' is undefined" in str(info.value)
    assert str(info.value).startswith(f"{tree / 'sms/dpd30/v9.en-US.j2'}:3: ")


def test_undefined_attributes_fail_too(tree: Path, config: Config) -> None:
    # The context holds no contact details: templates cannot print a phone number.
    write(tree, "sms/dpd30/v9.en-US.j2", "{{ case.phone }}")
    with pytest.raises(RenderError) as info:
        TemplateSet(tree, config).render("sms/dpd30/v9", "en-US", ctx(config, Channel.SMS, "en-US"))
    assert info.value.kind == "undefined"


def test_undefined_in_a_block_reports_the_block_line(tree: Path, config: Config) -> None:
    write(
        tree,
        "email/dpd30/v9.en-US.j2",
        "{% block subject %}s{% endblock %}\n{% block text %}\nok\n{{ nope }}\n{% endblock %}\n"
        "{% block html %}h{% endblock %}",
    )
    with pytest.raises(RenderError) as info:
        TemplateSet(tree, config).render("email/dpd30/v9", "en-US", ctx(config, Channel.EMAIL, "en-US"))
    assert (info.value.kind, info.value.line) == ("undefined", 4)


@pytest.mark.parametrize(
    "expr",
    [
        "''.__class__.__mro__",
        "case.__class__",
        "amount_due.__class__.__base__",
        "lipsum.__globals__",
        "cycler.__init__",
    ],
)
def test_the_sandbox_refuses_private_attributes(tree: Path, config: Config, expr: str) -> None:
    write(tree, "sms/dpd30/v9.en-US.j2", "line one\n{{ " + expr + " }}\n")
    with pytest.raises(RenderError) as info:
        TemplateSet(tree, config).render("sms/dpd30/v9", "en-US", ctx(config, Channel.SMS, "en-US"))
    assert info.value.kind in {"sandbox", "undefined"}
    assert info.value.line == 2


def test_class_mro_is_a_sandbox_violation(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v9.en-US.j2", "x\n{{ ''.__class__.__mro__ }}")
    with pytest.raises(RenderError, match="sandbox violation") as info:
        TemplateSet(tree, config).render("sms/dpd30/v9", "en-US", ctx(config, Channel.SMS, "en-US"))
    assert (info.value.kind, info.value.line) == ("sandbox", 2)


def test_templates_cannot_include_other_files(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v9.en-US.j2", "{% include 'sms/dpd30/v1.en-US.j2' %}")
    with pytest.raises(RenderError, match="self-contained"):
        TemplateSet(tree, config).render("sms/dpd30/v9", "en-US", ctx(config, Channel.SMS, "en-US"))


def test_syntax_errors_carry_the_line(tree: Path, config: Config) -> None:
    write(tree, "sms/dpd30/v9.en-US.j2", "a\nb\n{% if %}\n")
    with pytest.raises(RenderError) as info:
        TemplateSet(tree, config).render("sms/dpd30/v9", "en-US", ctx(config, Channel.SMS, "en-US"))
    assert (info.value.kind, info.value.line) == ("syntax", 3)


# -- cache and approval gate --------------------------------------------------------


def test_compiled_templates_are_reused_until_the_file_changes(tree: Path, config: Config) -> None:
    path = write(tree, "sms/dpd30/v9.en-US.j2", "first {{ amount_due }}")
    templates = TemplateSet(tree, config)
    c = ctx(config, Channel.SMS, "en-US")
    first = templates.render("sms/dpd30/v9", "en-US", c)
    compiled = templates._cache[path]
    assert templates.render("sms/dpd30/v9", "en-US", c).text == first.text
    assert templates._cache[path] is compiled
    path.write_text("second edition {{ amount_due }}", encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = templates.render("sms/dpd30/v9", "en-US", c)
    assert second.text.startswith("second edition") and second.content_hash != first.content_hash


def test_require_approved_refuses_unapproved_content(tree: Path, config: Config) -> None:
    templates = TemplateSet(tree, config)
    c = ctx(config, Channel.SMS, "en-US")
    assert templates.render("sms/dpd30/v1", "en-US", c, require_approved=True).text
    path = tree / "sms/dpd30/v1.en-US.j2"
    path.write_text(path.read_text(encoding="utf-8") + " ", encoding="utf-8")
    with pytest.raises(NotApproved, match="dispatcher templates approve sms/dpd30/v1"):
        templates.render("sms/dpd30/v1", "en-US", c, require_approved=True)
    # Previews and lint may still render it.
    assert templates.render("sms/dpd30/v1", "en-US", c).text


# -- locale fallback ----------------------------------------------------------------


def test_pick_locale_prefers_the_case_then_the_profile_default(tree: Path, config: Config) -> None:
    templates = TemplateSet(tree, config)
    assert pick_locale(templates, "sms/dpd30/v1", "en-US", "zh-CN") == "en-US"
    (tree / "sms/dpd30/v1.en-US.j2").unlink()
    assert pick_locale(templates, "sms/dpd30/v1", "en-US", "zh-CN") == "zh-CN"
    with pytest.raises(UnknownTemplate):
        pick_locale(templates, "sms/dpd30/v1", "en-US", "en-US")


def test_pick_locale_for_sending_skips_unapproved_files(tree: Path, config: Config) -> None:
    templates = TemplateSet(tree, config)
    path = tree / "sms/dpd30/v1.en-US.j2"
    path.write_text(path.read_text(encoding="utf-8") + " ", encoding="utf-8")
    # Previews still see the edited file; the sender renders the approved fallback.
    assert pick_locale(templates, "sms/dpd30/v1", "en-US", "zh-CN") == "en-US"
    assert pick_locale(templates, "sms/dpd30/v1", "en-US", "zh-CN", approved_only=True) == "zh-CN"
    with pytest.raises(NotApproved, match="no approved file in en-US"):
        pick_locale(templates, "sms/dpd30/v1", "en-US", "en-US", approved_only=True)


# -- context ------------------------------------------------------------------------


def test_context_keys_and_locale_formatting(config: Config) -> None:
    case = sample_case("cn", dpd=45)
    c = build_context(case, config=config, channel=Channel.SMS, today=SAMPLE_TODAY,
                      payment_link="https://p/1", opt_out="回复退订或TD退订")
    assert {"case", "amount_due", "principal", "interest", "penalty", "fees", "days_past_due", "due_date",
            "penalty_explanation", "payment_link", "support_phone", "org_name", "opt_out", "currency"} <= set(c)
    assert c["case"] == {"case_id": case.case_id, "name": "张伟", "first_name": "张伟",
                         "product": "credit_card", "product_name": "信用卡账户"}
    assert (c["amount_due"], c["principal"], c["penalty"], c["fees"]) == (
        "¥10,345.00",
        "¥10,000.00",
        "¥225.00",
        "¥0.00",
    )
    assert (c["days_past_due"], c["due_date"], c["currency"]) == (45, "2026年10月23日", "CNY")
    assert (c["support_phone"], c["org_name"], c["payment_link"]) == ("95555", "调度银行", "https://p/1")


def test_context_in_english_for_a_us_case(config: Config) -> None:
    case = sample_case("us", dpd=-3, product=Product.CREDIT_CARD)
    c = build_context(case, config=config, channel=Channel.SMS, today=SAMPLE_TODAY,
                      payment_link="https://p/1", opt_out="Reply STOP to opt out")
    assert (c["amount_due"], c["due_date"], c["days_past_due"], c["days_until_due"]) == (
        "$2,436.00", "December 10, 2026", -3, 3)
    assert (c["support_phone"], c["org_name"], c["case"]["product_name"]) == (
        "+1 800 555 0100", "Dispatcher Bank", "credit card account")


def test_context_follows_the_template_locale_not_the_case(config: Config) -> None:
    case = sample_case("us", dpd=45)
    c = build_context(case, config=config, channel=Channel.SMS, today=SAMPLE_TODAY,
                      payment_link="https://p/1", opt_out="x", locale="zh-CN")
    assert (c["amount_due"], c["org_name"], c["due_date"]) == ("US$2,490.00", "调度银行", "2026年10月23日")


def test_context_never_holds_contact_details(config: Config) -> None:
    case = sample_case("us", dpd=45)
    flat = repr(build_context(case, config=config, channel=Channel.SMS, today=SAMPLE_TODAY,
                              payment_link="https://p/1", opt_out="x"))
    assert case.phone not in flat and case.email not in flat  # type: ignore[operator]


def test_email_context_needs_the_unsubscribe_url(config: Config) -> None:
    with pytest.raises(ValueError, match="unsubscribe_url"):
        build_context(sample_case("us"), config=config, channel=Channel.EMAIL, today=SAMPLE_TODAY,
                      payment_link="https://p/1", opt_out="x")


def test_unknown_jurisdiction_is_a_clear_error(config: Config) -> None:
    with pytest.raises(ValueError, match="jurisdiction 'eu' is not configured"):
        build_context(dataclasses.replace(sample_case("us"), jurisdiction="eu"), config=config, channel=Channel.SMS,
                      today=SAMPLE_TODAY, payment_link="https://p/1", opt_out="x")


def test_opt_out_texts() -> None:
    assert opt_out_text(Channel.SMS, "en-US", None) == "Reply STOP to opt out"
    assert opt_out_text(Channel.SMS, "zh-CN", None) == "回TD退订"
    assert opt_out_text(Channel.EMAIL, "en-US", "https://u/1") == (
        "To stop receiving these e-mails, unsubscribe here: https://u/1")
    assert opt_out_text(Channel.EMAIL, "zh-CN", "https://u/1") == "如不希望再收到此类邮件，请点击链接退订：https://u/1"
    with pytest.raises(ValueError):
        opt_out_text(Channel.EMAIL, "en-US", None)
    assert "9" in opt_out_text(Channel.VOICE, "en-US", None)


def test_rendering_is_cheap(shipped: TemplateSet, config: Config) -> None:
    # Thousands a second: a generous bound that still catches recompiling per call.
    import time

    contexts: list[Mapping[str, Any]] = [ctx(config, Channel.EMAIL, "zh-CN") for _ in range(3)]
    shipped.render("email/dpd30/v1", "zh-CN", contexts[0])
    start = time.perf_counter()
    for i in range(300):
        shipped.render("email/dpd30/v1", "zh-CN", contexts[i % 3])
    assert (time.perf_counter() - start) / 300 < 0.005
