"""Template versions and four-eyes approval on SQLite and PostgreSQL (SPEC 15): each
refusal reason, lint failure, rollback, one-locale approval, the first-use import of the
shipped set and its byte-identical export, the daemon's approved set (two instances on
one database see the same approved version), and the audit trail."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.credentials import light_passwords
from dispatcher.domain import Channel
from dispatcher.roles import Role
from dispatcher.services.people import People
from dispatcher.services.template_files import (
    export_tree,
    import_tree,
    lint_approved_beyond,
    seed_if_empty,
    template_files,
)
from dispatcher.services.template_versions import (
    ApprovalDenied,
    TemplateVersionError,
    TemplateVersions,
    VersionStateError,
)
from dispatcher.settings import Settings
from dispatcher.store.db import make_engine
from dispatcher.store.tables import events_t, template_versions_t
from dispatcher.templates.approvals_file import load_approvals
from dispatcher.templates.context import build_context, opt_out_text
from dispatcher.templates.rendering import content_hash
from dispatcher.templates.stored import StoredTemplateSet
from dispatcher.testing import SAMPLE_PAYMENT_LINK, SAMPLE_TODAY, sample_case
from dispatcher.wiring import Runtime, SetupError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "templates"
SMS = "sms/dpd30/v1"


@pytest.fixture
def versions(engine: Engine, config: Config, fake_clock: FakeClock) -> TemplateVersions:
    tv = TemplateVersions(engine, config, fake_clock, config.resolve(config.templates.forbidden_phrases))
    assert seed_if_empty(tv, SHIPPED) is not None
    people = People(engine, fake_clock, light_passwords())
    for name, role in (("alice", Role.AUTHOR), ("bob", Role.AUTHOR), ("carol", Role.COMPLIANCE),
                       ("dave", Role.COMPLIANCE), ("eve", Role.COLLECTOR), ("gone", Role.COMPLIANCE)):
        people.add_user(name, frozenset({role}), "test-admin")
    people.disable_user("gone", "test-admin")
    return tv


def edited(tv: TemplateVersions, locale: str = "en-US", extra: str = " Thank you.") -> str:
    approved = tv.approved(SMS, locale)
    assert approved is not None
    return approved.content.rstrip("\n") + extra + "\n"


def sms_text(templates: StoredTemplateSet, locale: str = "en-US") -> tuple[str, int | None]:
    case = sample_case("us" if locale == "en-US" else "cn", dpd=35, today=SAMPLE_TODAY)
    ctx = build_context(case, config=templates.config, channel=Channel.SMS, today=SAMPLE_TODAY,
                        payment_link=SAMPLE_PAYMENT_LINK, opt_out=opt_out_text(Channel.SMS, locale, None),
                        locale=locale, unsubscribe_url=None)
    rendered = templates.render(SMS, locale, ctx, require_approved=True)
    return rendered.text, rendered.version


def audit(engine: Engine, kind: str) -> list[tuple[str | None, dict[str, object]]]:
    with engine.connect() as conn:
        rows = conn.execute(select(events_t.c.actor, events_t.c.data).where(events_t.c.kind == kind)
                            .order_by(events_t.c.id)).all()
    return [(r.actor, json.loads(r.data)) for r in rows]


# ------------------------------------------------------------ the shipped set, files


def test_the_shipped_set_is_approved_out_of_the_box_as_recorded(versions: TemplateVersions) -> None:
    approvals = load_approvals(SHIPPED)
    files = template_files(SHIPPED)
    summaries = versions.summaries()
    assert len(summaries) == len(files) == len(approvals)
    for s in summaries:
        assert s.state == "approved" and s.draft is None and s.approved is not None
        entry = approvals[s.approved.relpath]
        assert (s.approved.sha256, s.approved.approved_by, s.approved.approved_at) == (
            entry.sha256, entry.approved_by, entry.approved_at)
        assert s.approved.author == "import"
    assert seed_if_empty(versions, SHIPPED) is None  # once per database


def test_export_then_import_round_trips_byte_for_byte(versions: TemplateVersions, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    written = export_tree(versions, out)
    assert len(written) == len(template_files(SHIPPED))
    for ref in template_files(SHIPPED):
        assert (out / ref.relpath).read_bytes() == (SHIPPED / ref.relpath).read_bytes(), ref.relpath
    assert (out / "approvals.toml").read_bytes() == (SHIPPED / "approvals.toml").read_bytes()
    # importing the export again changes nothing
    assert {r.action for r in import_tree(versions, out, "alice")} == {"unchanged"}


def test_import_makes_an_edited_file_a_draft_by_the_importer(versions: TemplateVersions, tmp_path: Path) -> None:
    tree = tmp_path / "templates"
    shutil.copytree(SHIPPED, tree)
    path = tree / f"{SMS}.en-US.j2"
    path.write_text(edited(versions), encoding="utf-8")
    results = {r.relpath: r for r in import_tree(versions, tree, "alice")}
    changed = results[f"{SMS}.en-US.j2"]
    assert changed.action == "draft" and changed.problems == []
    assert {r.action for name, r in results.items() if name != changed.relpath} == {"unchanged"}
    draft = versions.get(changed.version)  # type: ignore[arg-type]
    assert draft is not None and (draft.state, draft.author) == ("draft", "alice")
    summary = next(s for s in versions.summaries() if (s.template_id, s.locale) == (SMS, "en-US"))
    assert summary.state == "awaiting approval" and summary.draft == draft
    diff = versions.diff(SMS, "en-US")
    assert diff.startswith("---") and "+" + draft.content.splitlines()[0] in diff
    assert versions.diff(SMS, "zh-CN") == ""
    # approved and exported, the approvals file records the checker, the file the new text
    versions.approve(SMS, draft.version, "carol", "ok")
    export_tree(versions, tree)
    entry = load_approvals(tree)[f"{SMS}.en-US.j2"]
    assert (entry.approved_by, entry.sha256) == ("carol", draft.sha256)
    assert path.read_text(encoding="utf-8") == draft.content


# ------------------------------------------------------------------------ four eyes


def test_the_author_cannot_approve_their_own_version(versions: TemplateVersions) -> None:
    draft, problems = versions.save(SMS, "en-US", edited(versions), "carol")  # a compliance user wrote it
    assert problems == []
    with pytest.raises(ApprovalDenied) as refused:
        versions.approve(SMS, draft.version, "Carol", None)  # names compare ignoring case
    assert refused.value.reason == "same_author"
    assert versions.get(draft.version).state == "draft"  # type: ignore[union-attr]
    versions.approve(SMS, draft.version, "dave", None)


@pytest.mark.parametrize(("checker", "reason"), [("bob", "not_compliance"), ("eve", "not_compliance"),
                                                 ("alice", "same_author"), ("nobody", "unknown_user"),
                                                 ("gone", "unknown_user"), ("bootstrap", "unknown_user")])
def test_only_another_compliance_user_may_approve(versions: TemplateVersions, checker: str, reason: str) -> None:
    draft, _ = versions.save(SMS, "en-US", edited(versions), "alice")
    with pytest.raises(ApprovalDenied) as refused:
        versions.approve(SMS, draft.version, checker, None)
    assert refused.value.reason == reason
    with pytest.raises(ApprovalDenied) as again:
        versions.reject(SMS, draft.version, checker, "no")
    assert again.value.reason == reason
    assert versions.approved(SMS, "en-US").author == "import"  # type: ignore[union-attr]


def test_a_version_that_fails_lint_is_saved_but_never_approved(versions: TemplateVersions, engine: Engine) -> None:
    draft, problems = versions.save(SMS, "en-US", edited(versions, extra=" Or the police will call."), "alice")
    assert any("forbidden phrase 'police'" in p.message for p in problems)
    assert all(p.line == 1 for p in problems)
    summary = next(s for s in versions.summaries() if (s.template_id, s.locale) == (SMS, "en-US"))
    assert summary.state == "draft" and summary.draft_problems == len(problems)
    with pytest.raises(ApprovalDenied) as refused:
        versions.approve(SMS, draft.version, "carol", None)
    assert refused.value.reason == "lint_failed" and refused.value.problems == problems
    assert audit(engine, "template_approved") == []


def test_approving_retires_the_previous_and_rollback_reapproves_it(versions: TemplateVersions,
                                                                   engine: Engine) -> None:
    first = versions.approved(SMS, "en-US")
    zh = versions.approved(SMS, "zh-CN")
    assert first is not None and zh is not None
    draft, _ = versions.save(SMS, "en-US", edited(versions), "alice")
    approved = versions.approve(SMS, draft.version, "carol", "clearer")
    assert (approved.state, approved.approved_by, approved.note) == ("approved", "carol", "clearer")
    assert versions.get(first.version).state == "retired"  # type: ignore[union-attr]
    assert versions.approved(SMS, "zh-CN") == zh  # the other locale is untouched, its sign-off too
    # rollback: the earlier version approved again by a checker
    back = versions.approve(SMS, first.version, "dave", "rollback")
    assert (back.state, back.approved_by, back.note) == ("approved", "dave", "rollback")
    assert versions.get(draft.version).state == "retired"  # type: ignore[union-attr]
    assert versions.approved(SMS, "en-US").version == first.version  # type: ignore[union-attr]
    assert [(a, d["version"], d["retired"], d["rollback"]) for a, d in audit(engine, "template_approved")] == [
        ("carol", draft.version, first.version, False), ("dave", first.version, draft.version, True)]
    assert [(a, d["version"]) for a, d in audit(engine, "template_saved")] == [("alice", draft.version)]
    with pytest.raises(VersionStateError):
        versions.approve(SMS, first.version, "carol", None)  # already approved


def test_rejecting_needs_a_note_and_ends_the_draft(versions: TemplateVersions, engine: Engine) -> None:
    draft, _ = versions.save(SMS, "zh-CN", edited(versions, "zh-CN", "谢谢。"), "alice")
    with pytest.raises(TemplateVersionError, match="needs a note"):
        versions.reject(SMS, draft.version, "carol", "  ")
    rejected = versions.reject(SMS, draft.version, "carol", "tone")
    assert (rejected.state, rejected.rejected_by, rejected.note) == ("rejected", "carol", "tone")
    assert versions.pending(SMS, "zh-CN") is None and versions.diff(SMS, "zh-CN") == ""
    with pytest.raises(VersionStateError):
        versions.approve(SMS, draft.version, "dave", None)
    assert audit(engine, "template_rejected") == [("carol", {"locale": "zh-CN", "note": "tone",
                                                             "template": SMS, "version": draft.version})]


def test_bad_requests_say_what_to_do(versions: TemplateVersions) -> None:
    with pytest.raises(TemplateVersionError, match="not a template id"):
        versions.save("sms/dpd30", "en-US", "x", "alice")
    with pytest.raises(TemplateVersionError, match="not supported"):
        versions.save(SMS, "fr-FR", "x", "alice")
    with pytest.raises(TemplateVersionError, match="empty"):
        versions.save(SMS, "en-US", "  ", "alice")
    with pytest.raises(TemplateVersionError, match="has no version 99999"):
        versions.approve(SMS, 99999, "carol", None)
    other = versions.approved("sms/dpd30/v2", "en-US")
    assert other is not None
    with pytest.raises(TemplateVersionError, match="has no version"):
        versions.approve(SMS, other.version, "carol", None)  # a version of another template


def test_at_most_one_approved_version_per_template_and_locale(versions: TemplateVersions, engine: Engine,
                                                              fake_clock: FakeClock) -> None:
    now = fake_clock.now()
    row = {"template_id": SMS, "locale": "en-US", "content": "x", "sha256": "0" * 64, "author": "x",
           "created_at": now, "state": "approved", "approved_by": "y", "approved_at": now}
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(template_versions_t).values(**row))
    with engine.begin() as conn:  # a draft, or another locale, is fine
        conn.execute(insert(template_versions_t).values(**(row | {"state": "draft"})))


# ------------------------------------------------------------- what the daemon sends


def test_the_daemon_renders_only_the_approved_version_on_every_instance(
        versions: TemplateVersions, engine: Engine, config: Config, fake_clock: FakeClock,
        request: pytest.FixtureRequest) -> None:
    # two instances: their own engine, TemplateVersions and template set over one database
    second_engine = make_engine(engine.url.render_as_string(hide_password=False))
    request.addfinalizer(second_engine.dispose)
    other = TemplateVersions(second_engine, config, fake_clock, config.resolve(config.templates.forbidden_phrases))
    one, two = StoredTemplateSet(config, source=versions), StoredTemplateSet(config, source=other)
    catalog = one.approved_catalog()
    assert two.approved_catalog() == catalog and SMS in catalog[(Channel.SMS, "dpd30", "en-US")]
    before, version_before = sms_text(one)
    draft, _ = versions.save(SMS, "en-US", edited(versions), "alice")
    one.approved_catalog()
    assert sms_text(one) == (before, version_before)  # a draft is never sent
    versions.approve(SMS, draft.version, "carol", None)
    for instance in (one, two):
        instance.approved_catalog()  # each pass checks the approved set
        text, version = sms_text(instance)
        assert text.endswith("Thank you.") and version == draft.version
    assert sms_text(one, "zh-CN")[1] == versions.approved(SMS, "zh-CN").version  # type: ignore[union-attr]


def test_a_stored_template_set_checks_for_changes_cheaply(versions: TemplateVersions, config: Config) -> None:
    calls: list[str] = []

    class Counting:
        def fingerprint(self) -> object:
            calls.append("fingerprint")
            return versions.fingerprint()

        def approved_templates(self) -> list[object]:
            calls.append("load")
            return versions.approved_templates()  # type: ignore[return-value]

    templates = StoredTemplateSet(config, source=Counting())  # type: ignore[arg-type]
    for _ in range(3):
        templates.approved_catalog()
    assert calls == ["fingerprint", "load", "fingerprint", "fingerprint"]
    draft, _ = versions.save(SMS, "en-US", edited(versions), "alice")
    templates.approved_catalog()
    assert calls[-1] == "fingerprint"  # a draft changes nothing
    versions.approve(SMS, draft.version, "carol", None)
    templates.approved_catalog()
    assert calls[-2:] == ["fingerprint", "load"]


def test_times_are_the_injected_clocks(versions: TemplateVersions, fake_clock: FakeClock) -> None:
    draft, _ = versions.save(SMS, "en-US", edited(versions), "alice")
    fake_clock.advance(dt.timedelta(hours=2))
    approved = versions.approve(SMS, draft.version, "carol", None)
    assert draft.created_at == fake_clock.now() - dt.timedelta(hours=2)
    assert approved.approved_at == fake_clock.now()


def test_start_up_lints_the_approved_versions_the_folder_does_not_hold(versions: TemplateVersions,
                                                                      engine: Engine) -> None:
    assert lint_approved_beyond(versions, SHIPPED) == []  # every approved version is a shipped file
    draft, _ = versions.save(SMS, "en-US", edited(versions), "alice")
    versions.approve(SMS, draft.version, "carol", None)
    assert lint_approved_beyond(versions, SHIPPED) == []  # differs from the folder, but clean
    # an approved text that no longer passes (e.g. the forbidden phrases grew since)
    threat = draft.content.replace("Thank you.", "Or the police will call.")
    with engine.begin() as conn:
        conn.execute(update(template_versions_t).where(template_versions_t.c.version == draft.version)
                     .values(content=threat, sha256=content_hash(threat.encode("utf-8"))))
    (problem,) = [p for p in lint_approved_beyond(versions, SHIPPED) if "police" in p.message]
    assert str(problem.path) == f"{SMS}.en-US.j2"


def test_two_checkers_approving_at_once_leave_one_approved_version(versions: TemplateVersions) -> None:
    first, _ = versions.save(SMS, "en-US", edited(versions, extra=" Thank you."), "alice")
    second, _ = versions.save(SMS, "en-US", edited(versions, extra=" Thanks."), "bob")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def approve(version: int, checker: str) -> None:
        try:
            barrier.wait()
            versions.approve(SMS, version, checker, None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=approve, args=(first.version, "carol")),
               threading.Thread(target=approve, args=(second.version, "dave"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    states = sorted(v.state for v in versions.versions(SMS, "en-US"))
    assert states.count("approved") == 1 and states.count("retired") == 2


def test_an_instance_without_the_folder_sends_from_the_database(versions: TemplateVersions, engine: Engine,
                                                                config: Config, fake_clock: FakeClock,
                                                                tmp_path: Path) -> None:
    elsewhere = config.model_copy(update={"templates": config.templates.model_copy(
        update={"directory": tmp_path / "no-such-folder"})})
    runtime = Runtime(Settings(signing_key="k"), fake_clock, config=elsewhere, engine=engine)
    catalog = runtime.templates.approved_catalog()
    assert SMS in catalog[(Channel.SMS, "dpd30", "zh-CN")]
    # an empty database and no folder: a clear refusal, not a daemon that sends nothing
    with engine.begin() as conn:
        conn.execute(update(template_versions_t).values(state="retired"))
    empty = Runtime(Settings(signing_key="k"), fake_clock, config=elsewhere, engine=engine)
    with pytest.raises(SetupError, match="does not exist and the database has no approved templates"):
        empty.templates  # noqa: B018
