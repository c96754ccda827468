"""The admin page in a real browser: approve, budget, reset password (shown once), disable and
enable, create, delete with confirmation, the audit log; and the gate that a waiting account or
one whose password was reset sees instead of the app.

The server of this module runs with `auth.registration: approval`; `boss` is its first account,
so its admin. Every test gets a fresh browser context and is watched for console errors,
uncaught exceptions, dialogs and a missing Content-Security-Policy (conftest.py).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import expect

from server.runner import Running, start
from tests.support.app import make_config
from tests.support.browser import api_user, login_context
from tests.support.web import Web, names
from vllm_sim import SimServer

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """The real server, with sign-ups waiting for approval."""
    running = await start(make_config(tmp_path_factory.mktemp("admin"), sim.url,
                                      auth={"registration": "approval"}))
    yield running
    await running.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def boss(app: Running) -> dict[str, Any]:
    """The module's first account: the admin."""
    user = await api_user(app.url, f"boss{next(names)}")
    assert user["user"]["role"] == "admin" and user["user"]["status"] == "active"
    return user


async def login(base: str, name: str, password: str) -> int:
    """The status of a login over the API."""
    async with aiohttp.ClientSession(base) as s:
        async with s.post("/api/auth/login", json={"username": name, "password": password}) as r:
            return r.status


async def test_admin_manages_users_and_reads_the_audit_log(web: Web, boss: dict[str, Any]) -> None:
    page = web.page
    bob = await web.user(login=False)
    name = bob["user"]["username"]
    assert bob["user"]["status"] == "pending"
    await login_context(web.context, web.url, boss)
    loaded: list[str] = []
    page.on("request", lambda r: loaded.append(r.url))
    await web.open("/")
    assert not any(u.endswith(("/admin.js", "/admin.css")) for u in loaded), "not in first load"

    await page.get_by_role("link", name="Admin").click()
    await expect(page).to_have_url(re.compile(r"#/admin$"))
    await expect(page.get_by_role("heading", name="Administration", level=1)).to_be_focused()
    await expect(page.locator("#chat")).to_be_hidden()
    await expect(page).to_have_title("Administration · chatgate")
    row = page.locator("#admin-users > li").filter(has=page.get_by_role("heading", name=name))
    await expect(row).to_contain_text("Waiting for approval")
    mine = page.locator("#admin-users > li").filter(
        has=page.get_by_role("heading", name=boss["user"]["username"]))
    await expect(mine).to_contain_text("Administrator")
    await expect(mine.get_by_role("button")).to_have_text(["Budget"])  # nothing refused

    # Approve.
    await row.get_by_role("button", name=f"Approve {name}").click()
    await expect(row).not_to_contain_text("Waiting for approval")
    assert (await web.call(bob, "GET", "/api/auth/verify"))["user"]["status"] == "active"

    # Budget: saved as the user's override, shown in the row.
    await row.get_by_role("button", name=f"Set the budget of {name}").click()
    await page.get_by_label(f"Monthly token budget for {name}").fill("1000")
    await page.get_by_role("button", name="Save budget").click()
    await expect(row).to_contain_text("1,000 tokens")
    assert (await web.call(bob, "GET", "/api/auth/verify"))["user"]["limits"] == {
        "monthly_tokens_per_user": 1000}

    # Reset password: asks first, shows the temporary password once, which then works.
    confirm = page.locator("#confirm")
    await row.get_by_role("button", name=f"Reset the password of {name}").click()
    await confirm.get_by_role("button", name="Reset password").click()
    admin_page = page.locator("#admin-page")
    field = admin_page.get_by_label("Temporary password", exact=True)
    await expect(field).to_be_focused()
    temp = await field.input_value()
    assert len(temp) >= 12
    await expect(row).to_contain_text("Must change password")
    assert await login(web.url, name, temp) == 200
    assert await login(web.url, name, bob["password"]) == 401
    await page.get_by_role("button", name="Done, I have passed it on").click()
    await expect(page.locator(".secret")).to_be_hidden()
    assert temp not in await page.content()

    # Disable, then enable.
    await row.get_by_role("button", name=f"Disable {name}").click()
    await confirm.get_by_role("button", name="Disable").click()
    await expect(row).to_contain_text("Disabled")
    assert await login(web.url, name, temp) == 403
    await row.get_by_role("button", name=f"Enable {name}").click()
    await expect(row).not_to_contain_text("Disabled")
    assert await login(web.url, name, temp) == 200

    # Create a user: its generated password is shown once.
    made = f"made{next(names)}"
    await admin_page.get_by_label("Username").fill(made)
    await page.get_by_role("button", name="Create user").click()
    await expect(field).to_be_focused()
    temp2 = await field.input_value()
    assert await login(web.url, made, temp2) == 200
    made_row = page.locator("#admin-users > li").filter(has=page.get_by_role("heading", name=made))
    await expect(made_row).to_contain_text("Must change password")

    # Delete asks first: Cancel keeps the user, Delete removes them.
    await made_row.get_by_role("button", name=f"Delete {made}").click()
    await expect(confirm).to_contain_text(f"Delete {made} and all their conversations")
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(made_row).to_have_count(1)
    await made_row.get_by_role("button", name=f"Delete {made}").click()
    await confirm.get_by_role("button", name="Delete").click()
    await expect(made_row).to_have_count(0)
    assert await login(web.url, made, temp2) == 401

    # The audit log names every action, newest first, and no password.
    audit = page.locator("#admin-audit > li")
    await expect(audit.first).to_contain_text(f"deleted {made}")
    for words in (f"approved {name}", f"changed the caps of {name}",
                  f"reset the password of {name}", f"disabled {name}", f"enabled {name}",
                  f"created {made}"):
        await expect(page.locator("#admin-audit")).to_contain_text(words)
    assert temp not in await page.content() and temp2 not in await page.content()
    await web.axe()


async def test_no_admin_page_for_a_user(web: Web, boss: dict[str, Any]) -> None:
    page = web.page
    user = await web.user()
    await web.call(boss, "POST", f"/api/admin/users/{user['user']['id']}/approve")
    loaded: list[str] = []
    page.on("request", lambda r: loaded.append(r.url))
    await web.open("/#/admin")
    await expect(page.locator("#chat")).to_be_visible()
    await expect(page.get_by_role("link", name="Admin")).to_be_hidden()
    await expect(page.locator("#admin-page")).to_have_count(0)
    assert not any(u.endswith("/admin.js") for u in loaded)


async def test_waiting_account_sees_the_gate_until_approved(web: Web,
                                                           boss: dict[str, Any]) -> None:
    page = web.page
    user = await web.user()
    asked: list[str] = []  # this page's requests (the server's count also sees other pages')
    page.on("request", lambda request: asked.append(request.url))
    await page.goto("/")
    gate = page.locator("#gate")
    await expect(gate).to_be_visible()
    await expect(gate).to_contain_text("waiting for an administrator's approval")
    assert not [url for url in asked if "/api/conversations" in url]
    await gate.get_by_role("button", name="Check again").click()
    await expect(gate).to_contain_text("Still waiting for approval.")
    await web.call(boss, "POST", f"/api/admin/users/{user['user']['id']}/approve")
    await gate.get_by_role("button", name="Check again").click()
    await expect(gate).to_be_hidden()
    await expect(page.locator("#input")).to_be_visible()
    await web.send("Hello after approval")
    await web.idle()


async def test_reset_password_must_be_changed_at_next_login(web: Web,
                                                             boss: dict[str, Any]) -> None:
    page = web.page
    user = await web.user(login=False)
    uid, name = user["user"]["id"], user["user"]["username"]
    await web.call(boss, "POST", f"/api/admin/users/{uid}/approve")
    temp = (await web.call(boss, "POST", f"/api/admin/users/{uid}/password"))["password"]
    await page.goto("/")
    await page.locator("#username").fill(name)
    await page.locator("#password").fill(temp)
    await page.get_by_role("button", name="Log in").click()
    gate = page.locator("#gate")
    await expect(gate.get_by_role("heading", name="Choose a new password")).to_be_visible()
    await gate.get_by_label("Temporary password").fill(temp)
    await gate.get_by_label("New password").fill("my own new secret")
    await gate.get_by_role("button", name="Change password").click()
    await expect(gate).to_be_hidden()
    await expect(page.locator("#input")).to_be_visible()
    assert await login(web.url, name, "my own new secret") == 200
