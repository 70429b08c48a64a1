"""The few HTML pages the debtor sees (unsubscribe, link problems): static files under
`web/pages/`, filled with `string.Template` and HTML-escaped values."""

from __future__ import annotations

import functools
import html
from pathlib import Path
from string import Template

from fastapi.responses import HTMLResponse

PAGES_DIR = Path(__file__).resolve().parent / "pages"


@functools.cache
def _template(name: str) -> Template:
    return Template((PAGES_DIR / name).read_text(encoding="utf-8"))


def render_page(name: str, title: str, status: int = 200, **values: str) -> HTMLResponse:
    """Page `name` inside the base layout; every value is escaped."""
    content = _template(name).safe_substitute({k: html.escape(v) for k, v in values.items()})
    page = _template("base.html").safe_substitute(lang="en", title=html.escape(title), content=content)
    return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})


def link_problem(status: int, heading: str, message: str, message_zh: str) -> HTMLResponse:
    return render_page("link_problem.html", heading, status, heading=heading, message=message, message_zh=message_zh)
