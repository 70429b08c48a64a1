"""The automatic SMS replies as templates: the shipped ones, their lint rules, and their
place outside the planner's catalog."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dispatcher.config import Config
from dispatcher.domain import Channel
from dispatcher.templates import TemplateSet, lint_template, lint_tree, sms_segments
from dispatcher.templates.replies import REPLIES, build_reply_context

ROOT = Path(__file__).resolve().parents[2]
PHRASES = ROOT / "config" / "forbidden_phrases.txt"
LINK = "https://hooks.example.test/p/a-token"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", target)
    return target


def problems(tree: Path, config: Config, rel: str, text: str) -> list[str]:
    path = tree / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    prefix = f"{path}:"
    return [str(p)[len(prefix):] for p in lint_template(path, config, PHRASES, root=tree)]


@pytest.mark.parametrize("name", sorted(REPLIES))
@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_every_reply_ships_approved_in_both_locales_and_says_what_it_must(
    config: Config, name: str, locale: str
) -> None:
    templates = TemplateSet(ROOT / "templates", config)
    spec = REPLIES[name]
    assert templates.is_approved(spec.template_id, locale)
    for jurisdiction in config.jurisdictions:
        ctx = build_reply_context(config, jurisdiction, locale, payment_link=LINK if spec.with_link else None)
        text = templates.render(spec.template_id, locale, ctx, require_approved=True).text
        assert config.organisation.name_for(locale) in text
        assert all(str(ctx[key]) in text for key in spec.required)
        assert sms_segments(text).segments <= config.templates.sms_max_segments


def test_the_wording_keeps_how_to_stop_and_how_to_come_back(config: Config) -> None:
    templates = TemplateSet(ROOT / "templates", config)

    def text(name: str, locale: str) -> str:
        spec = REPLIES[name]
        ctx = build_reply_context(config, "cn" if locale == "zh-CN" else "us", locale,
                                  payment_link=LINK if spec.with_link else None)
        return templates.render(spec.template_id, locale, ctx).text

    assert "START" in text("opt_out", "en-US") and "START" in text("opt_out", "zh-CN")
    assert "STOP" in text("opt_in", "en-US") and "TD" in text("opt_in", "zh-CN")
    assert config.jurisdictions["cn"].support_phone in text("help", "zh-CN")
    assert LINK in text("payment_link", "en-US")


def test_replies_are_not_stage_templates(config: Config) -> None:
    catalog = TemplateSet(ROOT / "templates", config).approved_catalog()
    assert not any(stage == "replies" for _channel, stage, _locale in catalog)
    assert any(channel is Channel.SMS for channel, _stage, _locale in catalog)


def test_a_reply_needs_no_amount_but_may_not_use_one(tree: Path, config: Config) -> None:
    assert problems(tree, config, "sms/replies/help.en-US.j2",
                    "{{ org_name }}: call {{ support_phone }}. {{ opt_out }}\n") == []
    found = problems(tree, config, "sms/replies/help.en-US.j2",
                     "{{ org_name }}: {{ amount_due }}. Call {{ support_phone }}. {{ opt_out }}\n")
    assert found == ["1: undefined name: 'amount_due' is undefined"]


def test_the_link_is_for_the_link_reply_only(tree: Path, config: Config) -> None:
    found = problems(tree, config, "sms/replies/opt_in.en-US.j2",
                     "{{ org_name }}: back in. {{ payment_link }} {{ opt_out }}\n")
    assert found == ["1: undefined name: 'payment_link' is undefined"]
    found = problems(tree, config, "sms/replies/payment_link.en-US.j2", "{{ org_name }}: here. {{ opt_out }}\n")
    assert found == ["1: missing payment_link: the payment_link reply must contain the payment link"
                     " ({{ payment_link }})"]


@pytest.mark.parametrize(("name", "missing"), [("opt_in", "opt_out"), ("help", "support_phone"),
                                               ("help", "opt_out"), ("opt_out", "org_name")])
def test_each_reply_states_its_own_facts(tree: Path, config: Config, name: str, missing: str) -> None:
    keys = [k for k in ("org_name", "support_phone", "opt_out") if k != missing]
    found = problems(tree, config, f"sms/replies/{name}.zh-CN.j2", " ".join(f"{{{{ {k} }}}}" for k in keys) + "\n")
    assert any(p.startswith(f"1: missing {missing}: the {name} reply") for p in found), found


def test_a_reply_keeps_to_the_segment_limit(tree: Path, config: Config) -> None:
    found = problems(tree, config, "sms/replies/opt_out.en-US.j2", "{{ org_name }}: " + "stopped. " * 60 + "\n")
    [problem] = found  # once, not once per profile
    assert problem.startswith("1: SMS is 4 segments")
    assert problem.endswith("the limit is 2 (templates.sms_max_segments)")


def test_forbidden_phrases_apply_to_replies(tree: Path, config: Config) -> None:
    phrase = next(line.strip() for line in PHRASES.read_text(encoding="utf-8").splitlines()
                  if line.strip() and not line.startswith("#"))
    found = problems(tree, config, "sms/replies/opt_out.en-US.j2", f"{{{{ org_name }}}}: {phrase}.\n")
    assert any("forbidden phrase" in p for p in found)


def test_only_the_known_replies_live_in_the_replies_folder(tree: Path, config: Config) -> None:
    assert problems(tree, config, "sms/replies/thanks.en-US.j2", "{{ org_name }}\n") == [
        "1: replies/ holds the automatic SMS replies only: sms/replies/{opt_out,opt_out_calls,opt_in,help,payment_link,"
        "self_service}.<locale>.j2"]
    assert problems(tree, config, "email/replies/help.en-US.j2", "{{ org_name }}\n")


def test_a_missing_reply_locale_is_reported_by_the_tree_lint(tree: Path, config: Config) -> None:
    (tree / "sms" / "replies" / "help.en-US.j2").unlink()
    found = [str(p) for p in lint_tree(tree, config, PHRASES)]
    assert found == [f"{tree / 'sms' / 'replies'}:1: no en-US file for the automatic reply sms/replies/help;"
                     " without it that reply is not sent"]


def test_replies_is_a_reserved_stage_name(config: Config) -> None:
    data = config.model_dump()
    data["stages"][0]["name"] = "replies"
    with pytest.raises(ValueError, match="'replies' is reserved"):
        Config.model_validate(data)
