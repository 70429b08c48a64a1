"""The template studio in a real headless Chromium (Playwright on the system's Chromium)
against the app served by uvicorn on loopback, on SQLite with the shipped templates
imported as approved versions.

An author edits an SMS and watches the live preview, its segments and cost change as
they type, sees a lint problem on its line, and saves a draft; they get no approve
button, and a forced approval is refused (`same_author` for an author who is also a
compliance officer). Another compliance officer sees the diff and approves; the history
lists both versions with who, when and the note. A collector gets no link and a 403. A
`<script>` in a template is shown as text. A template over the time limit shows the
error in the preview within seconds, and the studio goes on. Screenshots at 1280 and 390 pixels wide go
to var/screenshots/ (named in the README).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from dispatcher.clock import FakeClock
from dispatcher.config import Config
from dispatcher.credentials import light_passwords
from dispatcher.roles import Role
from dispatcher.sandbox.asgi_server import serve_in_thread
from dispatcher.services.template_files import import_tree
from dispatcher.settings import Settings
from dispatcher.store import repository as repo
from dispatcher.store.db import ensure_schema, make_engine
from dispatcher.templates import TemplateSet
from dispatcher.web.app import create_app
from dispatcher.wiring import Runtime
from tests.integration.test_collector_api import imported

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
PASSWORD = "correct horse battery staple"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
TEMPLATE = "sms/dpd30/v1"
EDITOR = f"/ui/templates/{TEMPLATE}?locale=en-US"
#: A complete English SMS, shorter than the shipped one (within the segment limit).
SHORT = ("{{ org_name }}: {{ outstanding }} is {{ days_past_due }} days overdue. {{ penalty_explanation }}"
         " Pay: {{ payment_link }} Call {{ support_phone }}. {{ opt_out }}")
THANKS = " Thank you."
EXTRA = " We are here to help: reply HELP for options, or call us on any working day before 21:00."


@pytest.fixture
def served(tmp_path: Path, config: Config) -> Iterator[tuple[str, Engine, Runtime]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'studio.db'}")
    ensure_schema(engine)
    clock = FakeClock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=SHANGHAI))
    with engine.begin() as conn:
        repo.upsert_cases(conn, [imported("A1")], clock.now())
    settings = Settings(public_url="http://127.0.0.1", signing_key="studio-key")
    runtime = Runtime(settings, clock, config=config, engine=engine, passwords=light_passwords(),
                      templates=TemplateSet(ROOT / "templates", config))
    import_tree(runtime.template_versions, ROOT / "templates", "test-admin")  # the shipped set, approved
    app = create_app(runtime.web())
    people = app.collaborators.people
    for name, roles in [("writer", {Role.AUTHOR}), ("mei", {Role.AUTHOR, Role.COMPLIANCE}),
                        ("checker", {Role.COMPLIANCE}), ("agent7", {Role.COLLECTOR})]:
        people.add_user(name, frozenset(roles), "test-admin")
        people.set_password(name, PASSWORD, "test-admin")
    try:
        with serve_in_thread(app, name="studio-web") as port:
            yield f"http://127.0.0.1:{port}", engine, runtime
    finally:
        app.collaborators.receipts.close()
        engine.dispose()


async def _signed_in(browser: Any, base: str, name: str, *, width: int = 1280, locale: str = "en-US") -> Any:
    context = await browser.new_context(viewport={"width": width, "height": 900}, locale=locale)
    context.set_default_timeout(10_000)
    page = await context.new_page()
    errors: list[str] = []
    # script errors, and failed requests other than the favicon the console does not have
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    page.errors = errors
    await page.goto(f"{base}/ui/login")
    await page.fill("#user", name)
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_load_state()
    return page


async def _previews(page: Any) -> int:
    return int(await page.get_attribute("#studio", "data-previews") or "0")


async def _type_and_wait(page: Any, text: str) -> None:
    """Replace the editor's text as a person would (input events) and wait for the preview."""
    before = await _previews(page)
    await page.fill("#content", text)
    # (a CSS selector: the page's Content-Security-Policy forbids the eval wait_for_function needs)
    await page.wait_for_selector(f"#studio:not([data-previews='{before}'])", state="attached")


async def test_an_author_edits_sees_the_live_preview_and_saves_a_draft(
        served: tuple[str, Engine, Runtime], browser: Any, config: Config) -> None:
    base, _engine, runtime = served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = await _signed_in(browser, base, "writer")
    await page.click("#nav-templates")
    await page.wait_for_url(f"{base}/ui/templates")
    cell = page.locator(f'#templates tr[data-template="{TEMPLATE}"] td[data-locale="en-US"] [data-state]')
    assert await cell.get_attribute("data-state") == "approved"

    await page.goto(f"{base}{EDITOR}")
    await page.wait_for_selector("#studio[data-ready='1']")
    price = config.costs["USD"].sms_segment

    def cost(segments: int) -> str:  # as the page shows it: 4 decimal places and the currency
        return f"{(segments * price).quantize(Decimal('0.0001'))} USD"

    original = await page.input_value("#content")
    limit = config.templates.sms_max_segments
    assert await page.inner_text("#sms-encoding") == "GSM-7"
    assert await page.inner_text("#sms-segments") == str(limit)  # the shipped text uses what it may
    assert await page.inner_text("#cost") == cost(limit)
    assert await page.is_visible("#no-problems")

    # a sentence more, typed key by key as a person types: once they pause, the preview
    # shows one segment more, its cost, and lint says the SMS is now over the limit
    await page.focus("#content")
    await page.keyboard.press("Control+End")
    await page.locator("#content").press_sequentially(EXTRA, delay=10)
    await page.wait_for_selector(f"#sms-segments:text-is('{limit + 1}')")
    await page.wait_for_selector(f"#preview-text:has-text('{EXTRA.strip()}')")
    assert await page.inner_text("#cost") == cost(limit + 1)
    assert await page.input_value("#content") == original + EXTRA
    over = await page.inner_text("#problems")
    assert f"SMS is {limit + 1} segments" in over and f"the limit is {limit}" in over
    assert f"+{EXTRA}" in (await page.inner_text("#diff")).splitlines()  # the change from the approved text

    # a forbidden phrase on line 2: listed with its line, the line marked in the margin
    await _type_and_wait(page, SHORT + "\nOr the police will visit you.")
    problem = page.locator('#problems li[data-line="2"]')
    assert "forbidden phrase 'police'" in await problem.inner_text()
    assert await page.get_attribute("#gutter div:nth-child(2)", "class") == "bad"
    await page.screenshot(path=str(SCREENSHOTS / "studio-editor-author.png"), full_page=True)

    # a Chinese word makes it UCS-2
    await _type_and_wait(page, SHORT + " 谢谢")
    assert await page.inner_text("#sms-encoding") == "UCS-2"

    await _type_and_wait(page, SHORT + THANKS)
    assert await page.is_visible("#no-problems")
    await page.click("#save")
    await page.wait_for_selector("#result")
    assert "Saved as draft" in await page.inner_text("#result")
    assert await page.inner_text("#shown-state") == "draft"
    assert await page.locator("#approve").count() == 0  # an author cannot approve
    assert await page.locator("#reject").count() == 0
    drafts = [v for v in runtime.template_versions.versions(TEMPLATE, "en-US") if v.state == "draft"]
    assert [(v.author, v.content) for v in drafts] == [("writer", SHORT + THANKS)]

    # a forced approval from the author's session is refused: no permission
    csrf = await page.get_attribute("#studio", "data-csrf")
    forced = await page.request.post(f"{base}/ui/templates/{TEMPLATE}/versions/{drafts[0].version}/approve",
                                     form={"csrf": csrf, "note": "self"})
    assert forced.status == 403 and "templates.approve" in await forced.text()
    assert page.errors == []

    phone = await _signed_in(browser, base, "writer", width=390)
    await phone.goto(f"{base}{EDITOR}")
    await phone.wait_for_selector("#studio[data-ready='1']")
    await phone.screenshot(path=str(SCREENSHOTS / "studio-editor-author-phone.png"), full_page=True)


async def test_four_eyes_the_author_cannot_approve_another_compliance_officer_does(
        served: tuple[str, Engine, Runtime], browser: Any) -> None:
    base, _engine, runtime = served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    mei = await _signed_in(browser, base, "mei")  # author and compliance officer
    await mei.goto(f"{base}{EDITOR}")
    await mei.wait_for_selector("#studio[data-ready='1']")
    original = await mei.input_value("#content")
    await _type_and_wait(mei, SHORT + THANKS)
    await mei.click("#save")
    await mei.wait_for_selector("#result")
    assert await mei.locator("#approve").count() == 0
    assert "four eyes" in await mei.inner_text("#no-decision")
    draft = next(v for v in runtime.template_versions.versions(TEMPLATE, "en-US") if v.state == "draft")
    csrf = await mei.get_attribute("#studio", "data-csrf")
    forced = await mei.request.post(f"{base}/ui/templates/{TEMPLATE}/versions/{draft.version}/approve",
                                    form={"csrf": csrf, "note": "mine"})
    assert forced.status == 403 and "same_author" in await forced.text()
    no_csrf = await mei.request.post(f"{base}/ui/templates/{TEMPLATE}/versions/{draft.version}/approve",
                                     form={"note": "mine"})
    assert no_csrf.status == 403 and "expired" in await no_csrf.text()

    checker = await _signed_in(browser, base, "checker")
    await checker.goto(f"{base}/ui/templates")
    cell = checker.locator(f'#templates tr[data-template="{TEMPLATE}"] td[data-locale="en-US"] [data-state]')
    assert await cell.get_attribute("data-state") == "awaiting"
    await checker.screenshot(path=str(SCREENSHOTS / "studio-list.png"), full_page=True)
    await cell.click()
    await checker.wait_for_selector("#studio[data-ready='1']")
    assert await checker.inner_text("#shown-state") == "draft"
    diff = await checker.inner_text("#diff")
    assert f"+{SHORT + THANKS}" in diff.splitlines() and f"-{original.rstrip()}" in diff.splitlines()
    await checker.fill("#approve-note", "checked against the SOP")
    await checker.screenshot(path=str(SCREENSHOTS / "studio-review-compliance.png"), full_page=True)
    await checker.click("#approve")
    await checker.wait_for_selector("#result")
    assert "Approved" in await checker.inner_text("#result")
    approved = runtime.template_versions.approved(TEMPLATE, "en-US")
    assert approved is not None and (approved.version, approved.approved_by) == (draft.version, "checker")

    rows = checker.locator("#history tr[data-version]")
    texts = [await rows.nth(i).inner_text() for i in range(await rows.count())]
    mine = next(t for t in texts if t.startswith(f"v{draft.version}"))
    assert "mei" in mine and "checker" in mine and "checked against the SOP" in mine and "approved" in mine
    assert any("retired" in t for t in texts)  # the previously approved version
    await checker.screenshot(path=str(SCREENSHOTS / "studio-history.png"), full_page=True)
    assert mei.errors == [] and checker.errors == []


async def test_a_collector_gets_no_studio(served: tuple[str, Engine, Runtime], browser: Any) -> None:
    base, _engine, _runtime = served
    page = await _signed_in(browser, base, "agent7")
    await page.wait_for_url(f"{base}/ui/queue")  # a collector starts at the task queue
    assert await page.locator("#nav-templates").count() == 0
    response = await page.goto(f"{base}/ui/templates")
    assert response is not None and response.status == 403
    assert "lacks the permission templates.read" in await page.inner_text("main")
    response = await page.goto(f"{base}{EDITOR}")
    assert response is not None and response.status == 403


async def test_a_script_in_a_template_is_shown_as_text(served: tuple[str, Engine, Runtime], browser: Any) -> None:
    base, _engine, _runtime = served
    page = await _signed_in(browser, base, "writer")
    await page.goto(f"{base}{EDITOR}")
    await page.wait_for_selector("#studio[data-ready='1']")
    original = await page.input_value("#content")
    script = "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"
    await _type_and_wait(page, original + script)
    assert script in await page.inner_text("#preview-text")
    await page.click("#save")
    await page.wait_for_selector("#result")
    assert script in await page.input_value("#content")  # the saved draft, from the server
    assert await page.evaluate("window.pwned") is None
    csp = (await page.request.get(f"{base}{EDITOR}")).headers["content-security-policy"]
    assert "script-src 'self'" in csp


async def test_a_template_over_the_time_limit_shows_an_error_in_the_preview_and_the_studio_goes_on(
        served: tuple[str, Engine, Runtime], browser: Any) -> None:
    """A billion loop steps typed into the editor: within seconds the preview says what to
    change (the server stopped it at its 1 s deadline), and a fixed text previews again."""
    base, _engine, _runtime = served
    page = await _signed_in(browser, base, "writer")
    await page.goto(f"{base}{EDITOR}")
    await page.wait_for_selector("#studio[data-ready='1']")
    slow = SHORT + ("{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}"
                    "{% endfor %}{% endfor %}{% endfor %}")
    await _type_and_wait(page, slow)  # the page's default timeout (10 s) bounds the wait
    problems = await page.inner_text("#problems")
    assert "took longer than 1 s" in problems and "remove long or nested loops" in problems
    assert "took longer than 1 s" in await page.inner_text("#preview-status")
    assert await page.get_attribute("#preview-status", "class") == "error"
    assert await page.locator('#problems li[data-line="1"]').count() >= 1
    assert "undefined" not in problems  # every problem listed has its line and its words
    await _shots(page, "studio-limit-error")
    await page.set_viewport_size({"width": 1280, "height": 900})
    await _type_and_wait(page, SHORT + THANKS)
    assert await page.is_visible("#no-problems")
    assert THANKS.strip() in await page.inner_text("#preview-text")
    assert [e for e in page.errors if not e.startswith("422 ")] == []  # the slow text's 422, nothing else


async def _shots(page: Any, name: str) -> None:
    """Full-page screenshots at 1280 and 390 px (var/screenshots/NAME-1280.png, -390.png),
    each without horizontal scrolling."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 390):
        await page.set_viewport_size({"width": width, "height": 900})
        assert await page.evaluate("document.documentElement.scrollWidth") <= width, name
        await page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)


async def test_a_refusal_page_speaks_the_readers_language(served: tuple[str, Engine, Runtime],
                                                          browser: Any) -> None:
    """A Chinese-speaking author asks for a template in a language it does not have: the
    404 page says so in Chinese and leads back to the templates."""
    base, _engine, _runtime = served
    page = await _signed_in(browser, base, "mei", locale="zh-CN")
    response = await page.goto(f"{base}{EDITOR}?locale=fr-FR")
    assert response is not None and response.status == 404
    assert await page.inner_text("h1") == "没有该模板"
    assert await page.get_attribute("#back", "href") == "/ui/templates"
    await _shots(page, "studio-refusal-zh")
