"""Fixtures shared by the end-to-end tests: a page in a real headless Chromium.

Playwright drives the system's Chromium (Debian's `chromium`; `DISPATCHER_CHROMIUM`
names another binary). Without it, or without Playwright, the browser tests skip, unless
DISPATCHER_REQUIRE_BROWSER=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

#: no sandbox (containers), no GPU, and nothing that would reach the network by itself
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_executable() -> str:
    found = os.environ.get("DISPATCHER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        found = None
    if not found:
        message = ("no Chromium (install Debian's `chromium` or set DISPATCHER_CHROMIUM) or no Playwright"
                   " (pip install -e '.[dev]')")
        if os.environ.get("DISPATCHER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message}; DISPATCHER_REQUIRE_BROWSER=1 makes the browser tests mandatory", pytrace=False)
        pytest.skip(f"{message} — these tests are mandatory in CI (DISPATCHER_REQUIRE_BROWSER=1)")
    return found


@pytest.fixture
def page_viewport() -> dict[str, int] | None:
    """The page's viewport; None: Playwright's default (1280 x 720). A test module
    overrides this fixture for a bigger page."""
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium for tests that open several pages or contexts (each user signed
    in in their own context), closed afterwards."""
    executable = chromium_executable()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(page_viewport: dict[str, int] | None) -> AsyncIterator[Any]:
    """A fresh page in a headless Chromium (10 s default timeout), closed afterwards."""
    executable = chromium_executable()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            options: dict[str, Any] = {} if page_viewport is None else {"viewport": page_viewport}
            context = await browser.new_context(**options)
            context.set_default_timeout(10_000)
            yield await context.new_page()
        finally:
            await browser.close()
