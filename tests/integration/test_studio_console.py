"""The template studio's pages and forms over ASGI, on SQLite and PostgreSQL: CSRF on
every form, a `<script>` in a template shown as text under a strict
Content-Security-Policy, lint-failing versions refused (`lint_failed`), rejection with a
note, rolling back by approving a retired version again, real cases only for users who
may read them, and nobody without templates.read."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.credentials import light_passwords
from dispatcher.roles import Principal, Role
from dispatcher.services.template_files import import_tree
from dispatcher.services.template_versions import ApprovalDenied, TemplateVersions, four_eyes_refusal
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime
from tests.integration.test_collector_api import imported
from tests.integration.test_console import PASSWORD, csrf_of, post_sign_in

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "sms/dpd30/v1"
EDITOR = f"/ui/templates/{TEMPLATE}"
GOOD = ("{{ org_name }}: {{ outstanding }} is {{ days_past_due }} days overdue. {{ penalty_explanation }}"
        " Pay: {{ payment_link }} Call {{ support_phone }}. {{ opt_out }}")

USERS = {"writer": {Role.AUTHOR}, "checker": {Role.COMPLIANCE}, "second": {Role.COMPLIANCE},
         "agent7": {Role.COLLECTOR}, "both": {Role.AUTHOR, Role.COMPLIANCE}}


@dataclass
class Studio:
    app: httpx.ASGITransport
    versions: TemplateVersions
    clients: list[httpx.AsyncClient]

    async def as_user(self, name: str) -> tuple[httpx.AsyncClient, str]:
        """A browser signed in as `name`, and its CSRF token."""
        c = httpx.AsyncClient(transport=self.app, base_url="https://d.example")
        self.clients.append(c)
        r = await post_sign_in(c, name, PASSWORD, next="/ui/templates")
        assert r.status_code == 303, r.text
        page = await c.get("/ui/templates")
        return c, csrf_of(page.text) if page.status_code == 200 else ""


@pytest.fixture
async def studio(engine: Engine, config: Config) -> AsyncIterator[Studio]:
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1")], clock.now())
    runtime = Runtime(Settings(public_url="https://d.example", signing_key="k"), clock, config=config, engine=engine,
                      passwords=light_passwords(), templates=TemplateSet(ROOT / "templates", config))
    import_tree(runtime.template_versions, ROOT / "templates", "test-admin")
    app = create_app(runtime.web())
    people = app.collaborators.people
    for name, roles in USERS.items():
        people.add_user(name, frozenset(roles), "test-admin")
        people.set_password(name, PASSWORD, "test-admin")
    world = Studio(httpx.ASGITransport(app=app), runtime.template_versions, [])
    yield world
    for c in world.clients:
        await c.aclose()
    await app.collaborators.receipts.aclose()


async def _save(c: httpx.AsyncClient, csrf: str, content: str, locale: str = "en-US") -> int:
    r = await c.post(f"{EDITOR}/versions", data={"csrf": csrf, "locale": locale, "content": content})
    assert r.status_code == 303, r.text
    return int(re.search(r"version=(\d+)", r.headers["location"]).group(1))  # type: ignore[union-attr]


async def test_every_form_needs_its_csrf_token(studio: Studio) -> None:
    writer, csrf = await studio.as_user("writer")
    r = await writer.post(f"{EDITOR}/versions", data={"locale": "en-US", "content": GOOD})
    assert r.status_code == 403 and "expired" in r.text
    r = await writer.post(f"{EDITOR}/versions", data={"csrf": "0" * 64, "locale": "en-US", "content": GOOD})
    assert r.status_code == 403
    r = await writer.post("/ui/templates/preview", data={"template_id": TEMPLATE, "locale": "en-US"})
    assert r.status_code == 403
    assert [v for v in studio.versions.versions(TEMPLATE, "en-US") if v.state == "draft"] == []
    version = await _save(writer, csrf, GOOD)
    checker, checker_csrf = await studio.as_user("checker")
    for action in ("approve", "reject"):
        r = await checker.post(f"{EDITOR}/versions/{version}/{action}", data={"note": "ok"})
        assert r.status_code == 403 and "expired" in r.text
    assert studio.versions.get(version).state == "draft"  # type: ignore[union-attr]
    r = await writer.post("/ui/templates/preview", data={"csrf": csrf, "template_id": TEMPLATE, "locale": "en-US",
                                                         "content": GOOD})
    assert r.status_code == 200 and r.json()["encoding"] == "GSM-7"


async def test_a_script_in_a_template_is_text_and_the_page_allows_no_inline_script(studio: Studio) -> None:
    writer, csrf = await studio.as_user("writer")
    script = "<script>alert(document.cookie)</script>"
    version = await _save(writer, csrf, GOOD + script)
    page = await writer.get(EDITOR, params={"locale": "en-US", "version": version})
    assert page.status_code == 200
    assert script not in page.text and html.escape(script, quote=False) in page.text
    assert sorted(re.findall(r"<script[^>]*>", page.text)) == [
        '<script src="/ui/static/studio.js" defer>', '<script src="/ui/static/times.js" defer>']
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in csp
    js = await writer.get("/ui/static/studio.js")
    assert js.status_code == 200 and "textContent" in js.text and "innerHTML" not in js.text


async def test_lint_failed_rejection_with_a_note_and_rollback(studio: Studio) -> None:
    writer, csrf = await studio.as_user("writer")
    checker, checker_csrf = await studio.as_user("checker")
    shipped = studio.versions.approved(TEMPLATE, "en-US")
    assert shipped is not None

    bad = await _save(writer, csrf, GOOD + "\nOr the police will come.")
    page = await writer.get(EDITOR, params={"locale": "en-US", "version": bad, "saved": bad, "problems": 1})
    assert "1 lint problem(s)" in page.text and 'data-line="2"' in page.text
    r = await checker.post(f"{EDITOR}/versions/{bad}/approve", data={"csrf": checker_csrf})
    assert r.status_code == 422 and "lint_failed" in r.text
    r = await checker.post(f"{EDITOR}/versions/{bad}/reject", data={"csrf": checker_csrf, "note": " "})
    assert r.status_code == 422 and "needs a note" in r.text
    r = await checker.post(f"{EDITOR}/versions/{bad}/reject", data={"csrf": checker_csrf, "note": "threatening"})
    assert r.status_code == 303
    rejected = studio.versions.get(bad)
    assert rejected is not None and (rejected.state, rejected.rejected_by, rejected.note) == (
        "rejected", "checker", "threatening")

    good = await _save(writer, csrf, GOOD)
    r = await checker.post(f"{EDITOR}/versions/{good}/approve", data={"csrf": checker_csrf, "note": "fine"})
    assert r.status_code == 303 and f"approved={good}" in r.headers["location"]
    assert studio.versions.get(shipped.version).state == "retired"  # type: ignore[union-attr]

    # roll back: the retired version offers "approve again" to a checker, not to its author
    page = await checker.get(EDITOR, params={"locale": "en-US", "version": shipped.version})
    assert 'id="approve"' in page.text and "roll back" in page.text and 'id="reject"' not in page.text
    r = await checker.post(f"{EDITOR}/versions/{shipped.version}/approve", data={"csrf": checker_csrf})
    assert r.status_code == 303
    again = studio.versions.approved(TEMPLATE, "en-US")
    assert again is not None and again.version == shipped.version
    page = await checker.get(EDITOR, params={"locale": "en-US"})
    history = page.text[page.text.index('id="history"'):]
    for version, state in ((shipped.version, "approved"), (good, "retired"), (bad, "rejected")):
        assert f'data-version="{version}" data-state="{state}"' in history


async def test_compliance_approving_their_own_version_is_refused(studio: Studio) -> None:
    # a compliance officer without the author role cannot save, so make the draft theirs directly
    version, _problems = studio.versions.save(TEMPLATE, "en-US", GOOD, "checker")
    checker, checker_csrf = await studio.as_user("checker")
    page = await checker.get(EDITOR, params={"locale": "en-US"})
    assert 'id="approve"' not in page.text and "four eyes" in page.text
    r = await checker.post(f"{EDITOR}/versions/{version.version}/approve", data={"csrf": checker_csrf})
    assert r.status_code == 403 and "same_author" in r.text
    second, second_csrf = await studio.as_user("second")
    page = await second.get(EDITOR, params={"locale": "en-US"})
    assert 'id="approve"' in page.text and 'id="reject"' in page.text


@pytest.mark.parametrize("author", ["writer", "checker", "both"])
async def test_the_buttons_follow_the_services_four_eyes_rule(studio: Studio, author: str) -> None:
    """One rule: the studio offers approve and reject exactly to those the service lets
    decide; its author never sees them, and the service refuses them with the reason."""
    draft, _problems = studio.versions.save(TEMPLATE, "en-US", GOOD, author)
    allowed = []
    for user in ("writer", "checker", "second", "both"):
        page = await (await studio.as_user(user))[0].get(EDITOR, params={"locale": "en-US",
                                                                          "version": draft.version})
        offered = 'id="approve"' in page.text and 'id="reject"' in page.text
        refusal = four_eyes_refusal(draft.author, Principal(user, frozenset(USERS[user]), 1))
        assert offered == (refusal is None), (user, refusal)
        if user == author:
            assert refusal == "same_author" and not offered and "four eyes" in page.text
        if refusal is None:
            allowed.append(user)
            continue
        for decide in (studio.versions.approve, studio.versions.reject):
            with pytest.raises(ApprovalDenied) as refused:
                decide(TEMPLATE, draft.version, user, "no")
            assert refused.value.reason == refusal
    assert allowed == [u for u in ("checker", "second", "both") if u != author]
    assert studio.versions.get(draft.version).state == "draft"  # type: ignore[union-attr]
    studio.versions.approve(TEMPLATE, draft.version, allowed[0], None)


async def test_a_chinese_speaking_checker_reads_the_refusal_in_chinese(studio: Studio) -> None:
    version, _problems = studio.versions.save(TEMPLATE, "en-US", GOOD, "checker")
    checker, csrf = await studio.as_user("checker")
    r = await checker.post("/ui/locale", data={"csrf": csrf, "locale": "zh-CN", "next": "/ui/templates"})
    assert r.status_code == 303
    checker.cookies.delete("dispatcher_locale")  # the choice is kept on the account
    page = await checker.get(EDITOR, params={"locale": "en-US"})
    assert "<title>模板 sms/dpd30/v1" in page.text and "四眼原则" in page.text
    r = await checker.post(f"{EDITOR}/versions/{version.version}/approve", data={"csrf": csrf})
    assert r.status_code == 403 and 'lang="zh-CN"' in r.text
    assert "<h1>已拒绝</h1>" in r.text
    assert (f"已拒绝：same_author — 版本 {version.version} 由 checker 编写：须由另一位具有合规角色的人员审核"
            "（四眼原则）。") in r.text
    assert "Refused" not in r.text and "must review" not in r.text
    r = await checker.post(f"{EDITOR}/versions/{version.version}/reject", data={"csrf": csrf})
    assert r.status_code == 422 and "请说明原因：驳回时须给作者留下说明。" in r.text
    r = await checker.get("/ui/templates/sms/dpd30/v1", params={"locale": "fr-FR"})
    assert r.status_code == 404 and "<h1>没有该模板</h1>" in r.text and 'href="/ui/templates" id="back"' in r.text
    r = await checker.post(f"{EDITOR}/versions/999999/approve", data={"csrf": csrf})
    assert r.status_code == 404 and "sms/dpd30/v1 没有版本 999999。" in r.text
    assert studio.versions.get(version.version).state == "draft"  # type: ignore[union-attr]


async def test_real_cases_only_for_readers_of_cases_and_no_studio_for_collectors(studio: Studio) -> None:
    writer, _csrf = await studio.as_user("writer")
    page = await writer.get(EDITOR, params={"locale": "zh-CN", "case_id": "A1"})
    assert page.status_code == 200 and 'id="preview-case"' not in page.text
    assert "sample-cn-" in page.text and "10,325.00" not in page.text
    checker, _ = await studio.as_user("checker")
    page = await checker.get(EDITOR, params={"locale": "zh-CN", "case_id": "A1"})
    assert page.status_code == 200 and "10,325.00" in page.text and 'id="preview-case-id">A1<' in page.text

    agent, agent_csrf = await studio.as_user("agent7")
    assert agent_csrf == ""  # the list itself is refused
    assert (await agent.get("/ui/templates")).status_code == 403
    assert (await agent.get(EDITOR)).status_code == 403
    page = await agent.get("/ui/cases/A1")
    assert 'id="nav-templates"' not in page.text
    r = await agent.post("/ui/templates/preview", data={"csrf": csrf_of(page.text), "template_id": TEMPLATE,
                                                        "locale": "en-US"})
    assert r.status_code == 403


async def test_an_author_writes_a_new_variant(studio: Studio) -> None:
    writer, csrf = await studio.as_user("writer")
    r = await writer.get("/ui/templates/new", params={"template_id": "sms/dpd30/v9", "locale": "en-US"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/templates/sms/dpd30/v9?locale=en-US"
    page = await writer.get(r.headers["location"])
    assert page.status_code == 200 and "a new text" in page.text and 'id="save"' in page.text
    r = await writer.get("/ui/templates/new", params={"template_id": "sms/../x", "locale": "en-US"})
    assert r.status_code == 422 and "not a template id" in r.text
    r = await writer.post("/ui/templates/sms/dpd30/v9/versions",
                          data={"csrf": csrf, "locale": "en-US", "content": GOOD})
    assert r.status_code == 303
    summary = next(s for s in studio.versions.summaries() if s.template_id == "sms/dpd30/v9")
    assert summary.approved is None and summary.draft is not None and summary.draft.author == "writer"


async def test_email_and_voice_editors(studio: Studio) -> None:
    writer, _csrf = await studio.as_user("writer")
    page = await writer.get("/ui/templates/email/dpd30/v1", params={"locale": "zh-CN"})
    assert page.status_code == 200
    frame = re.search(r'<iframe id="preview-html" sandbox="" [^>]*srcdoc="([^"]*)"', page.text)
    assert frame is not None and "&lt;" in frame.group(1)  # the HTML body, escaped into the sandboxed frame
    subject = re.search(r'id="preview-subject">([^<]*)<', page.text)
    assert subject is not None and subject.group(1).strip()  # the e-mail's subject
    assert "1 e-mail x" in page.text and "CNY" in page.text
    voice = next(iter(sorted((ROOT / "templates" / "voice").glob("*/*.zh-CN.j2"))))
    template_id = f"voice/{voice.parent.name}/{voice.name.split('.')[0]}"
    page = await writer.get(f"/ui/templates/{template_id}", params={"locale": "zh-CN"})
    assert page.status_code == 200 and "started call minute(s)" in page.text and "<iframe" not in page.text
