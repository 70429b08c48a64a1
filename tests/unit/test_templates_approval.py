"""Approval: only content that compliance approved is ever selected."""

from __future__ import annotations

import datetime as dt
import shutil
import tomllib
from pathlib import Path

import pytest

from dispatcher.config import Config
from dispatcher.domain import Action, CaseSnapshot, Channel, ContactPoint, MessageStatus, SentMessage
from dispatcher.policy import Gate
from dispatcher.templates import (
    Approval,
    ApprovalError,
    ApprovalRefused,
    TemplateSet,
    approve,
    load_approvals,
)
from dispatcher.templates.rendering import content_hash
from dispatcher.testing import sample_case

ROOT = Path(__file__).resolve().parents[2]
PHRASES = ROOT / "config" / "forbidden_phrases.txt"
NOW = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)  # Mon 10:00 in Shanghai
SMS_V = ("sms/dpd30/v1", "sms/dpd30/v2", "sms/dpd30/v3")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", target)
    return target


def edit(tree: Path, rel: str, new_text: str | None = None) -> None:
    path = tree / rel
    text = path.read_text(encoding="utf-8")
    path.write_text(new_text if new_text is not None else text.replace("还款：", "在线还款："), encoding="utf-8")


def snapshot_after(template: str) -> CaseSnapshot:
    """A DPD-30 China case whose last SMS (10 days ago) used `template`."""
    case = sample_case("cn", dpd=30, today=dt.date(2026, 12, 7))
    return CaseSnapshot(
        case=case,
        contacts=(ContactPoint(Channel.SMS, case.phone, consent=True),),
        history=(SentMessage(Channel.SMS, NOW - dt.timedelta(days=10), MessageStatus.DELIVERED, "dpd30", template),),
        zones=("Asia/Shanghai",),
    )


def chosen_sms(templates: TemplateSet, config: Config, last: str) -> str | None:
    [sms] = [d for d in Gate(config).decide_case(snapshot_after(last), templates.approved_catalog(), NOW)
             if d.channel is Channel.SMS]
    assert sms.action is Action.SEND
    return sms.template


def test_the_shipped_tree_is_fully_approved(config: Config) -> None:
    templates = TemplateSet(ROOT / "templates", config)
    approvals = load_approvals(ROOT / "templates")
    assert {r.relpath for r in templates.refs()} == set(approvals)
    assert all(templates.is_approved(r.template_id, r.locale) for r in templates.refs())
    assert {a.approved_by for a in approvals.values()} == {"compliance-team"}


def test_an_edited_variant_is_not_in_the_catalog_until_approved_again(tree: Path, config: Config) -> None:
    templates = TemplateSet(tree, config)
    key = (Channel.SMS, "dpd30", "zh-CN")
    assert templates.approved_catalog()[key] == SMS_V

    edit(tree, "sms/dpd30/v2.zh-CN.j2")
    assert templates.approved_catalog()[key] == ("sms/dpd30/v1", "sms/dpd30/v3")
    assert not templates.is_approved("sms/dpd30/v2", "zh-CN")
    assert templates.approval_status("sms/dpd30/v2", "zh-CN") == "edited-not-approved"
    # The other locale of the same id keeps its own approval.
    assert templates.approved_catalog()[(Channel.SMS, "dpd30", "en-US")] == SMS_V

    recorded = approve(tree, "sms/dpd30/v2", "reviewer-7", NOW, config, PHRASES)
    assert [a.path for a in recorded] == ["sms/dpd30/v2.en-US.j2", "sms/dpd30/v2.zh-CN.j2"]
    assert templates.approved_catalog()[key] == SMS_V
    assert templates.is_approved("sms/dpd30/v2", "zh-CN")


def test_the_policy_never_chooses_an_edited_unapproved_variant(tree: Path, config: Config) -> None:
    templates = TemplateSet(tree, config)
    # Rotation after v1 picks v2 ...
    assert chosen_sms(templates, config, "sms/dpd30/v1") == "sms/dpd30/v2"
    # ... but not while v2's current content is unapproved,
    edit(tree, "sms/dpd30/v2.zh-CN.j2")
    assert chosen_sms(templates, config, "sms/dpd30/v1") == "sms/dpd30/v3"
    # and approving the edit makes it eligible again.
    approve(tree, "sms/dpd30/v2", "compliance-team", NOW, config, PHRASES)
    assert chosen_sms(templates, config, "sms/dpd30/v1") == "sms/dpd30/v2"


def test_a_new_variant_is_previewable_but_not_sendable_until_approved(tree: Path, config: Config) -> None:
    templates = TemplateSet(tree, config)
    shutil.copy(tree / "sms/dpd30/v1.zh-CN.j2", tree / "sms/dpd30/v4.zh-CN.j2")
    assert templates.approval_status("sms/dpd30/v4", "zh-CN") == "never-approved"
    assert "sms/dpd30/v4" not in templates.approved_catalog()[(Channel.SMS, "dpd30", "zh-CN")]
    approve(tree, "sms/dpd30/v4", "compliance-team", NOW, config, PHRASES)
    assert "sms/dpd30/v4" in templates.approved_catalog()[(Channel.SMS, "dpd30", "zh-CN")]


def test_reverting_an_edit_restores_the_approval(tree: Path, config: Config) -> None:
    templates = TemplateSet(tree, config)
    original = (tree / "sms/dpd30/v2.zh-CN.j2").read_text(encoding="utf-8")
    edit(tree, "sms/dpd30/v2.zh-CN.j2")
    assert not templates.is_approved("sms/dpd30/v2", "zh-CN")
    edit(tree, "sms/dpd30/v2.zh-CN.j2", original)
    assert templates.is_approved("sms/dpd30/v2", "zh-CN")


def test_the_approvals_file_records_hash_approver_and_time(tree: Path, config: Config) -> None:
    edit(tree, "sms/dpd30/v2.zh-CN.j2")
    when = dt.datetime(2026, 12, 8, 9, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    approve(tree, "sms/dpd30/v2", "li.na", when, config, PHRASES)
    raw = tomllib.loads((tree / "approvals.toml").read_text(encoding="utf-8"))
    entry = raw["sms/dpd30/v2.zh-CN.j2"]
    assert entry == {
        "approved_at": "2026-12-08T09:30:15+08:00",
        "approved_by": "li.na",
        "sha256": content_hash((tree / "sms/dpd30/v2.zh-CN.j2").read_bytes()),
    }
    assert load_approvals(tree)["sms/dpd30/v2.zh-CN.j2"] == Approval(
        "sms/dpd30/v2.zh-CN.j2", entry["sha256"], "li.na", when.replace(microsecond=0)
    )


def test_re_approving_replaces_the_entry_and_keeps_the_file_sorted(tree: Path, config: Config) -> None:
    approve(tree, "email/dpd60/v3", "first", NOW, config, PHRASES)
    approve(tree, "email/dpd60/v3", "second", NOW + dt.timedelta(hours=1), config, PHRASES)
    text = (tree / "approvals.toml").read_text(encoding="utf-8")
    assert text.count('["email/dpd60/v3.en-US.j2"]') == 1
    approvals = load_approvals(tree)
    assert approvals["email/dpd60/v3.en-US.j2"].approved_by == "second"
    headers = [line for line in text.splitlines() if line.startswith("[")]
    assert headers == sorted(headers)
    assert len(headers) == 84  # 68 message templates, 4 instalment reminders and 12 automatic replies


def test_writing_is_deterministic(tree: Path, config: Config) -> None:
    approve(tree, "sms/pre_due/v1", "compliance-team", NOW, config, PHRASES)
    first = (tree / "approvals.toml").read_bytes()
    approve(tree, "sms/pre_due/v1", "compliance-team", NOW, config, PHRASES)
    assert (tree / "approvals.toml").read_bytes() == first
    # One table per file, keys in a fixed order: a small, reviewable diff.
    block = first.decode().split('["sms/pre_due/v1.en-US.j2"]\n', 1)[1].split("\n\n", 1)[0]
    assert [line.split(" = ")[0] for line in block.splitlines()] == ["approved_at", "approved_by", "sha256"]


def test_approver_names_are_escaped(tree: Path, config: Config) -> None:
    name = 'Zoë "Z" O\'Neil \\ 审核'
    approve(tree, "sms/pre_due/v1", name, NOW, config, PHRASES)
    assert load_approvals(tree)["sms/pre_due/v1.zh-CN.j2"].approved_by == name


def test_a_template_that_fails_lint_is_refused(tree: Path, config: Config) -> None:
    before = (tree / "approvals.toml").read_bytes()
    edit(tree, "sms/dpd30/v2.en-US.j2", "Pay or go to jail. {{ amount_due }}")
    with pytest.raises(ApprovalRefused) as info:
        approve(tree, "sms/dpd30/v2", "compliance-team", NOW, config, PHRASES)
    message = str(info.value)
    assert "sms/dpd30/v2 was not approved: it fails lint" in message
    assert f"{tree / 'sms/dpd30/v2.en-US.j2'}:1: forbidden phrase 'jail'" in message
    assert f"{tree / 'sms/dpd30/v2.en-US.j2'}:1: missing payment_link" in message
    assert any("forbidden phrase 'jail'" in str(p) for p in info.value.problems)
    # Nothing was recorded, not even for the locale that is fine.
    assert (tree / "approvals.toml").read_bytes() == before


def test_an_unknown_template_lists_close_matches(tree: Path, config: Config) -> None:
    with pytest.raises(ApprovalError, match="no template sms/dpd30/v4 .*did you mean: .*sms/dpd30/v1"):
        approve(tree, "sms/dpd30/v4", "compliance-team", NOW, config, PHRASES)
    with pytest.raises(ApprovalError, match="did you mean: .*email/dpd60/v1"):
        approve(tree, "email/dpd6/v1", "compliance-team", NOW, config, PHRASES)
    with pytest.raises(ApprovalError, match="not a template id"):
        approve(tree, "sms/dpd30/v1.zh-CN.j2", "compliance-team", NOW, config, PHRASES)


def test_approver_and_time_are_required(tree: Path, config: Config) -> None:
    with pytest.raises(ApprovalError, match="--by USER"):
        approve(tree, "sms/dpd30/v1", "  ", NOW, config, PHRASES)
    with pytest.raises(ApprovalError, match="timezone-aware"):
        approve(tree, "sms/dpd30/v1", "x", dt.datetime(2026, 12, 7, 10, 0), config, PHRASES)


def test_no_approvals_file_means_nothing_is_approved(tree: Path, config: Config) -> None:
    (tree / "approvals.toml").unlink()
    assert load_approvals(tree) == {}
    assert TemplateSet(tree, config).approved_catalog() == {}
    approve(tree, "voice/dpd90/v1", "compliance-team", NOW, config, PHRASES)
    assert TemplateSet(tree, config).approved_catalog() == {
        (Channel.VOICE, "dpd90", "en-US"): ("voice/dpd90/v1",),
        (Channel.VOICE, "dpd90", "zh-CN"): ("voice/dpd90/v1",),
    }


def test_a_damaged_approvals_file_is_a_clear_error(tree: Path) -> None:
    (tree / "approvals.toml").write_text('["sms/dpd30/v1.zh-CN.j2"]\nsha256 = "x"\n', encoding="utf-8")
    with pytest.raises(ApprovalError, match="incomplete or invalid"):
        load_approvals(tree)
