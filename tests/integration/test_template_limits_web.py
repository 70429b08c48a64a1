"""Templates over a time or size limit, through the web, on SQLite and PostgreSQL: the
preview API and the studio's live preview answer 422 with what to change (never hang,
never 500), the editor page shows the error, a saved version carries the lint problem
and cannot be approved (`lint_failed`). Every request has a deadline of its own, so a
regression fails the test instead of hanging it."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Awaitable
from typing import TypeVar

from dispatcher.roles import Role
from tests.integration.test_studio_console import EDITOR, GOOD, TEMPLATE, Studio, _save, studio  # noqa: F401
from tests.integration.test_template_preview_api import URL, Client, client  # noqa: F401

T = TypeVar("T")
#: Three nested loops of 1,000 steps: a billion steps, stopped by the 1 s deadline.
SLOW = ("{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}{% endfor %}{% endfor %}"
        "{% endfor %}")
HUGE = "{{ 'x' * 10**10 }}"


async def within(seconds: float, call: Awaitable[T]) -> T:
    """`call`'s answer, failing the test if it takes longer than `seconds`."""
    start = time.monotonic()
    answer = await asyncio.wait_for(call, timeout=seconds)
    assert time.monotonic() - start < seconds
    return answer


async def test_the_preview_api_refuses_a_slow_or_huge_template_with_what_to_change(client: Client) -> None:  # noqa: F811
    auth = client.token_of("writer", Role.AUTHOR)
    for content, phrase in ((GOOD + SLOW, "took longer than 1 s"), (GOOD + HUGE, "at most 100,000 characters"),
                            ("{% for i in range(10**9) %}x{% endfor %}", "loop over at most 1,000")):
        r = await within(20, client.http.post(URL, json={"template_id": "sms/dpd30/v1", "locale": "en-US",
                                                         "content": content}, headers=auth))
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"].startswith("line 1: too big or too slow: ") and phrase in body["error"]
        assert body["text"] is None and body["segments"] is None
        assert any(phrase in p["message"] for p in body["problems"])  # lint says it too
    deep = "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}"
    r = await within(20, client.http.post(URL, json={"template_id": "sms/dpd30/v1", "locale": "en-US",
                                                     "content": deep}, headers=auth))
    assert r.status_code == 422 and "nested too deeply" in r.json()["error"]


async def test_the_studio_previews_shows_and_refuses_to_approve_such_a_template(studio: Studio) -> None:  # noqa: F811
    writer, csrf = await studio.as_user("writer")
    r = await within(20, writer.post("/ui/templates/preview", data={
        "csrf": csrf, "template_id": TEMPLATE, "locale": "en-US", "content": GOOD + SLOW}))
    assert r.status_code == 422 and "took longer than 1 s" in r.json()["error"]

    version = await within(30, _save(writer, csrf, GOOD + HUGE))
    saved = studio.versions.get(version)
    assert saved is not None and saved.state == "draft"
    page = await within(20, writer.get(EDITOR, params={"locale": "en-US", "version": version}))
    assert page.status_code == 200
    assert html.escape("at most 100,000 characters", quote=False) in page.text

    checker, checker_csrf = await studio.as_user("checker")
    r = await within(20, checker.post(f"{EDITOR}/versions/{version}/approve", data={"csrf": checker_csrf}))
    assert r.status_code == 422 and "lint_failed" in r.text
    assert studio.versions.get(version).state == "draft"  # type: ignore[union-attr]


async def test_saving_through_the_api_reports_the_limit_as_a_lint_problem(client: Client) -> None:  # noqa: F811
    auth = client.token_of("writer", Role.AUTHOR)
    r = await within(20, client.http.post(f"/api/templates/{TEMPLATE}/versions",
                                          json={"locale": "en-US", "content": GOOD + SLOW}, headers=auth))
    assert r.status_code == 201, r.text
    assert any("took longer than 1 s" in p["message"] and "remove long or nested loops" in p["message"]
               for p in r.json()["problems"])
    checker = client.token_of("checker", Role.COMPLIANCE)
    refused = await within(20, client.http.post(f"/api/templates/{TEMPLATE}/versions/{r.json()['version']}/approve",
                                                json={}, headers=checker))
    assert refused.status_code == 422 and refused.json()["reason"] == "lint_failed"
