"""Browser-test helpers: Debian's Chromium driven by Playwright's async API.

Every page a test opens is watched: console errors, uncaught exceptions and JavaScript
dialogs are collected (any of them fails the test), and every document load must carry the
Content-Security-Policy header.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    Playwright,
    Response,
)

CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = "apt-get install chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CSP_MUST_HAVE = ("script-src 'self'", "style-src 'self'", "object-src 'none'")
# What Chromium itself logs for a fetch answered with an error status (not a script error).
_STATUS_LOG = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


def require_chromium() -> None:
    """Skip (or, under CI=true, fail) when Debian's Chromium is not installed."""
    if os.path.exists(CHROMIUM):
        return
    reason = f"Chromium not found at {CHROMIUM}; install it with `{INSTALL_HINT}`"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the browser tests)", pytrace=False)
    pytest.skip(reason)


async def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless, with a fresh profile."""
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                            headless=True)


@dataclass
class Watched:
    """A page plus everything suspicious it did."""

    page: Page
    base_url: str
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)
    missing_csp: list[str] = field(default_factory=list)
    allowed: set[tuple[int, str]] = field(default_factory=set)

    def allow(self, status: int, path: str) -> None:
        """An expected error status on an API path (the browser logs those to the console)."""
        self.allowed.add((status, path))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        found = _STATUS_LOG.search(msg.text)
        url = msg.location.get("url", "") if msg.location else ""
        path = url[len(self.base_url):].split("?", 1)[0] if url.startswith(self.base_url) else url
        if found and any(int(found.group(1)) == s and path.startswith(p) for s, p in self.allowed):
            return
        self.errors.append(f"console: {msg.text} ({url})")

    async def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    def _response(self, response: Response) -> None:
        if response.request.resource_type != "document":
            return
        if not response.url.startswith(self.base_url):
            return
        self.documents.append(response.url)
        csp = response.headers.get("content-security-policy", "")
        if not all(part in csp for part in CSP_MUST_HAVE):
            self.missing_csp.append(f"{response.url}: {csp!r}")

    def attach(self) -> Watched:
        """Start listening."""
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda err: self.errors.append(f"pageerror: {err}"))
        self.page.on("dialog", self._dialog)
        self.page.on("response", self._response)
        self.allow(401, "/api/auth/verify")  # booting without a session: the login form shows
        return self

    def check(self) -> None:
        """Fail on any console error, page error, dialog, or a document without the CSP."""
        assert not self.dialogs, f"a JavaScript dialog opened: {self.dialogs}"
        assert not self.errors, "\n".join(self.errors)
        assert not self.missing_csp, f"documents without the CSP: {self.missing_csp}"


async def new_page(browser: Browser, base_url: str,
                   **options: Any) -> tuple[BrowserContext, Watched]:
    """A fresh context (own cookies) with one watched page."""
    context = await browser.new_context(base_url=base_url, **options)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    return context, Watched(page, base_url).attach()


async def api_user(base_url: str, name: str, password: str = "correct horse") -> dict[str, Any]:
    """Register a user over the API; returns the body (user, access_token) plus the password."""
    async with aiohttp.ClientSession(base_url) as s:
        async with s.post("/api/auth/register",
                          json={"username": name, "password": password}) as resp:
            assert resp.status == 201, await resp.text()
            body: dict[str, Any] = await resp.json()
    body["password"] = password
    body["headers"] = {"Authorization": f"Bearer {body['access_token']}"}
    return body


async def login_context(context: BrowserContext, base_url: str, user: dict[str, Any]) -> None:
    """Give the browser context the user's session cookie (as the login form would)."""
    resp = await context.request.post(f"{base_url}/api/auth/login",
                                      data={"username": user["user"]["username"],
                                            "password": user["password"]})
    assert resp.status == 200, await resp.text()


async def sim_config(sim_root: str, **knobs: Any) -> None:
    """Change the simulator's runtime knobs."""
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{sim_root}/sim/config", json=knobs) as resp:
            assert resp.status == 200, await resp.text()
