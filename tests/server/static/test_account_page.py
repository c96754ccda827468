"""The account page in a real browser: password, deleting the account, usage, the API keys link,
theme, default system prompt, memories, and the prompt preview of the conversation settings.

One simulator, one server and one browser serve the whole module; every test gets a fresh
browser context (its own cookies) and a fresh user, and its page is watched for console
errors, uncaught exceptions, JavaScript dialogs and a missing Content-Security-Policy
(the fixtures are in conftest.py beside this file).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect

from server import keys
from tests.support.browser import login_context, new_page
from tests.support.paths import ROOT
from tests.support.web import Web

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


async def status_with(base: str, headers: dict[str, str], path: str = "/api/auth/verify") -> int:
    """The status of a GET with these headers only (no cookie jar)."""
    async with aiohttp.ClientSession(base, cookie_jar=aiohttp.DummyCookieJar()) as s:
        async with s.get(path, headers=headers) as resp:
            return resp.status


async def open_account(web: Web) -> Page:
    """From the chat, through the user's name in the sidebar, to the account page."""
    page = web.page
    await web.open("/")
    await page.locator("#who").click()
    await expect(page).to_have_url(re.compile(r"#/account$"))
    await expect(page.get_by_role("heading", name="Account", level=1)).to_be_focused()
    return page


async def eventually(read: Callable[[], Awaitable[Any]], want: Any) -> None:
    """Poll until `read()` gives `want` (a generous deadline, no timing asserted)."""
    deadline = asyncio.get_running_loop().time() + 10
    while (got := await read()) != want:
        assert asyncio.get_running_loop().time() < deadline, f"still {got!r}, not {want!r}"
        await asyncio.sleep(0.05)


def stat(page: Page, term: str) -> Any:
    """The figure shown under a heading of the usage summary."""
    return page.locator("#account-page .stats > div").filter(
        has=page.get_by_text(term, exact=True)).locator("dd")


async def test_password_change_signs_out_every_other_session(web: Web) -> None:
    page = web.page
    user = await web.user()
    name = user["user"]["username"]
    loaded: list[str] = []
    page.on("request", lambda r: loaded.append(r.url))
    # Another browser signed in as the same user.
    other, watched = await new_page(web.browser, web.url)
    await login_context(other, web.url, user)
    await watched.page.goto("/")
    await expect(watched.page.locator("#who")).to_have_text(name)

    await web.open("/")
    assert not any(u.endswith(("/account.js", "/account.css", "/memories.js")) for u in loaded)
    who = page.get_by_role("link", name=f"Account ({name})")
    await who.focus()  # reached with the keyboard
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Account", level=1)).to_be_focused()
    await expect(page.locator("#chat")).to_be_hidden()
    await expect(who).to_have_attribute("aria-current", "page")
    await expect(page).to_have_title("Account · chatgate")
    await page.reload()  # the URL keeps the page
    await expect(page.get_by_role("heading", name="Account", level=1)).to_be_visible()

    # Two different new passwords never leave the browser; a wrong current one is refused.
    await page.get_by_label("Current password").fill("not my password")
    await page.get_by_label("New password", exact=True).fill("a fresh lantern")
    await page.get_by_label("New password again").fill("a fresh lantren")
    await page.get_by_role("button", name="Change password").click()
    assert await page.get_by_label("New password again").evaluate("(el) => !el.validity.valid")
    await page.get_by_label("New password again").fill("a fresh lantern")
    web.watched.allow(403, "/api/auth/password")
    await page.get_by_role("button", name="Change password").click()
    await expect(page.locator("#account-page").get_by_role("alert").filter(
        has_text="password")).to_have_text(
        "The password was not changed. The current password is not correct.")

    await page.get_by_label("Current password").fill(user["password"])
    await page.get_by_role("button", name="Change password").click()
    await expect(page.get_by_text("Password changed.")).to_be_visible()
    await expect(page.get_by_label("Current password")).to_have_value("")

    # This browser stays signed in (a new cookie), the other one is signed out, and the old
    # bearer token is refused.
    await page.reload()
    await expect(page.locator("#who")).to_have_text(name)
    await expect(page.get_by_role("heading", name="Account", level=1)).to_be_visible()
    watched.allow(401, "/api/")
    await watched.page.reload()
    await expect(watched.page.locator("#auth")).to_be_visible()
    assert await status_with(web.url, user["headers"]) == 401
    await other.close()
    watched.check()


async def test_delete_account_asks_for_the_username_and_ends_at_sign_in(web: Web) -> None:
    user = await web.user()
    name = user["user"]["username"]
    page = await open_account(web)
    await page.get_by_role("button", name="Delete my account…").click()
    dialog = page.get_by_role("dialog", name="Delete your account?")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label(re.compile("Type your username"))).to_be_focused()
    go = dialog.get_by_role("button", name="Delete my account")
    await expect(go).to_be_disabled()
    await dialog.get_by_label(re.compile("Type your username")).fill(name + "x")
    await expect(go).to_be_disabled()
    await dialog.get_by_label(re.compile("Type your username")).fill(name)
    await expect(go).to_be_enabled()
    await web.axe()
    # Esc or Cancel keep the account.
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("button", name="Delete my account…")).to_be_focused()
    await page.get_by_role("button", name="Delete my account…").click()
    await dialog.get_by_label(re.compile("Type your username")).fill(name)
    await dialog.get_by_label("Password").fill("not the password")
    web.watched.allow(403, "/api/auth/account")
    await go.click()
    await expect(dialog.get_by_role("alert")).to_have_text(
        "The account was not deleted. The password is not correct.")
    assert await status_with(web.url, user["headers"]) == 200

    await dialog.get_by_label("Password").fill(user["password"])
    await go.click()
    await expect(page.locator("#auth")).to_be_visible()
    await expect(page.locator("#who")).to_be_empty()
    await expect(page.locator("#account-page")).to_be_hidden()
    assert await status_with(web.url, user["headers"]) == 401
    # The account is gone: signing in with it fails.
    web.watched.allow(401, "/api/auth/login")
    await page.locator("#username").fill(name)
    await page.locator("#password").fill(user["password"])
    await page.locator("#auth-submit").click()
    await expect(page.locator("#auth-error")).to_have_text("wrong username or password")


async def test_usage_and_the_api_keys(web: Web) -> None:
    user = await web.user()
    await web.chat(user, "Count me in the usage.")
    page = await open_account(web)
    await expect(stat(page, "Requests, last 30 days")).to_have_text("1")
    await expect(stat(page, "Tokens this month")).not_to_have_text("0")
    table = page.locator("#account-page table")
    await expect(table.get_by_role("row")).to_have_count(2)  # the header and today
    await expect(table.get_by_role("row").nth(1).get_by_role("cell").first).to_have_text("1")
    # The API keys page is one link away and works as before.
    await page.get_by_role("link", name="Manage API keys and their usage").click()
    await expect(page.get_by_role("heading", name="API keys", level=1)).to_be_focused()
    await expect(page.locator("#account-page")).to_be_hidden()
    await page.get_by_label("Name", exact=True).fill("from the account page")
    await page.get_by_role("button", name="Create key").click()
    await expect(page.get_by_label("Your new API key")).to_have_value(re.compile(r"^cg-"))
    key = await page.get_by_label("Your new API key").input_value()
    assert await status_with(web.url, {"Authorization": f"Bearer {key}"}, "/v1/models") == 200
    await page.go_back()
    await expect(page.get_by_role("heading", name="Account", level=1)).to_be_visible()



async def test_theme_applies_at_once_and_follows_the_account(web: Web) -> None:
    user = await web.user()
    page = await open_account(web)
    html = page.locator("html")
    background = "() => getComputedStyle(document.body).backgroundColor"
    assert await page.evaluate(background) == "rgb(255, 255, 255)"  # the system's: light
    await expect(page.get_by_label("Same as the system")).to_be_checked()
    await page.get_by_label("Dark").check()  # applied at once, saved on the server
    await expect(html).to_have_attribute("data-theme", "dark")
    assert await page.evaluate(background) == "rgb(22, 23, 27)"
    await eventually(lambda: theme_of(web, user), "dark")
    # A reload paints dark from this device's copy, before the account is read.
    await page.reload()
    await expect(html).to_have_attribute("data-theme", "dark")
    await expect(page.get_by_label("Dark")).to_be_checked()
    # A fresh browser (nothing stored) gets it from the account after sign-in.
    fresh, watched = await new_page(web.browser, web.url)
    await login_context(fresh, web.url, user)
    await watched.page.goto("/")
    await expect(watched.page.locator("html")).to_have_attribute("data-theme", "dark")
    # Light wins over a dark system; "system" follows the system again and stores nothing.
    await page.emulate_media(color_scheme="dark")
    await page.get_by_label("Light").check()
    await expect(html).to_have_attribute("data-theme", "light")
    assert await page.evaluate(background) == "rgb(255, 255, 255)"
    await page.get_by_label("Same as the system").check()
    await expect(html).not_to_have_attribute("data-theme", re.compile("."))
    assert await page.evaluate(background) == "rgb(22, 23, 27)"
    await eventually(lambda: theme_of(web, user), "system")
    assert await page.evaluate("() => localStorage.length") == 0
    await fresh.close()
    watched.check()


async def theme_of(web: Web, user: dict[str, Any]) -> str:
    """The theme stored in the account."""
    return str((await web.call(user, "GET", "/api/account"))["settings"]["theme"])


async def test_default_system_prompt_is_saved_and_removed(web: Web) -> None:
    user = await web.user()
    page = await open_account(web)
    field = page.get_by_role("textbox", name="Default system prompt")
    await field.fill("Answer briefly.\nUse British spelling.")
    await page.get_by_role("button", name="Save").click()
    await eventually(lambda: prompt_of(web, user), "Answer briefly.\nUse British spelling.")
    await page.reload()
    await expect(field).to_have_value("Answer briefly.\nUse British spelling.")
    await page.get_by_role("button", name="Remove").click()
    await expect(field).to_have_value("")
    await eventually(lambda: prompt_of(web, user), None)


async def prompt_of(web: Web, user: dict[str, Any]) -> str | None:
    """The default system prompt stored in the account."""
    value = (await web.call(user, "GET", "/api/account"))["settings"]["system_prompt"]
    return None if value is None else str(value)



async def test_memories_add_edit_switch_delete_and_accept(web: Web) -> None:
    user = await web.user()
    uid = user["user"]["id"]
    page = await open_account(web)
    section = page.locator("#account-page section").filter(
        has=page.get_by_role("heading", name="Memories"))
    await expect(section).to_contain_text("No memories yet.")
    new = page.get_by_label("New memory")
    for text in ("I write Python 3.12", "Answer in Spanish"):
        await new.fill(text)
        await new.press("Enter")
        await expect(section.get_by_text(text, exact=True)).to_be_visible()
    await expect(new).to_be_focused()
    rows = section.locator(".memory-list").last.locator("> li")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("Answer in Spanish")  # newest first

    # Edit in place (Enter saves), switch off, delete after asking.
    await section.get_by_role("button", name="Edit “I write Python 3.12”").click()
    await section.get_by_label("Memory", exact=True).fill("I write Python 3.13")
    await section.get_by_label("Memory", exact=True).press("Enter")
    await expect(section.get_by_role("button", name="Edit “I write Python 3.13”")).to_be_focused()
    await section.get_by_label("Use “Answer in Spanish”").uncheck()
    await expect(rows.first).to_have_class(re.compile(r"\boff\b"))
    await section.get_by_role("button", name="Delete “I write Python 3.13”").click()
    await page.locator("#confirm").get_by_role("button", name="Delete").click()
    await expect(rows).to_have_count(1)
    stored = (await web.call(user, "GET", "/api/memories"))["memories"]
    assert [(m["content"], m["enabled"]) for m in stored] == [("Answer in Spanish", False)]

    # Suggestions wait for the user: accept one, reject the other.
    await web.app.app[keys.MEMORIES].propose(uid, ["Lives in Lisbon", "Has a cat"])
    await page.reload()
    suggested = section.locator(".proposed")
    await expect(suggested.locator("li")).to_have_count(2)
    await suggested.get_by_role("button", name="Accept “Lives in Lisbon”").click()
    await suggested.get_by_role("button", name="Reject “Has a cat”").click()
    await expect(suggested).to_be_hidden()
    await expect(rows).to_have_count(2)
    stored = (await web.call(user, "GET", "/api/memories"))["memories"]
    assert {(m["content"], m["state"]) for m in stored} == {
        ("Answer in Spanish", "active"), ("Lives in Lisbon", "active")}
    await web.axe()
    # A refusal is said in words, in the section.
    web.watched.allow(400, "/api/memories")
    await new.fill("x" * 500)
    await page.locator("#memory-new").evaluate("(el) => { el.maxLength = 2000; }")
    await new.fill("x" * 501)
    await new.press("Enter")
    await expect(section.get_by_role("alert").first).to_contain_text("The memory was not added.")


async def test_prompt_preview_shows_what_the_model_will_see(web: Web) -> None:
    user = await web.user()
    await web.call(user, "POST", "/api/memories", {"content": "Likes <b>bold</b> answers"})
    conv = await web.chat(user, "Hello there")
    await web.call(user, "PATCH", f"/api/conversations/{conv}",
                   {"settings": {"system_prompt": "Answer in verse."}})
    page = web.page
    await web.open(f"/#/c/{conv}")
    await page.get_by_role("button", name="Conversation settings").click()
    dialog = page.get_by_role("dialog", name="Conversation settings")
    preview = dialog.locator("details.preview")
    await expect(preview).not_to_have_attribute("open", re.compile(".*"))  # collapsed
    await dialog.get_by_text("What the model will see").click()
    items = preview.locator("li")
    await expect(items.first).to_contain_text("Answer in verse.")
    await expect(items.first).to_contain_text("Likes <b>bold</b> answers")  # as text
    assert await preview.locator("b").count() == 0
    await expect(items.nth(1)).to_contain_text("Hello there")
    sent = (await web.call(user, "GET", f"/api/conversations/{conv}/prompt"))["messages"]
    await expect(items).to_have_count(len(sent))
    await web.axe()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()


async def test_accessible_light_and_dark_with_screenshots(web: Web, tmp_path: Path) -> None:
    await web.user(login=False)  # run alone, the first user would be an admin (and say so)
    user = await web.user(name="grace")
    await web.chat(user, "How do I undo the last git commit but keep the changes?")
    for text in ("I write Python 3.12", "Answer in Spanish"):
        await web.call(user, "POST", "/api/memories", {"content": text})
    await web.app.app[keys.MEMORIES].propose(user["user"]["id"], ["Lives in Lisbon"])
    await web.call(user, "PATCH", "/api/account", {"settings": {"system_prompt": "Be concise."}})
    page = await open_account(web)
    await expect(stat(page, "Requests, last 30 days")).to_have_text("1")
    await expect(page.get_by_text("Lives in Lisbon")).to_be_visible()
    await page.get_by_label("Light").check()
    await expect(page.locator("html")).to_have_attribute("data-theme", "light")
    await page.emulate_media(color_scheme="dark")  # the account's choice wins over the system
    await web.axe()
    # CHATGATE_SCREENSHOTS=1 refreshes docs/screenshot-account-{light,dark}.png.
    out = ROOT / "docs" if os.environ.get("CHATGATE_SCREENSHOTS") == "1" else tmp_path
    await page.set_viewport_size({"width": 1280, "height": 1680})
    await page.screenshot(path=str(out / "screenshot-account-light.png"))
    await page.get_by_label("Dark").check()
    await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    await page.emulate_media(color_scheme="light")
    await web.axe()
    await page.screenshot(path=str(out / "screenshot-account-dark.png"))
    for name in ("light", "dark"):
        assert (out / f"screenshot-account-{name}.png").read_bytes()[:4] == b"\x89PNG"
    await page.set_viewport_size({"width": 390, "height": 760})
    assert await page.evaluate(
        "() => document.documentElement.scrollWidth <= innerWidth"
        " && document.querySelector('#account-page .scroller').scrollWidth"
        " <= document.querySelector('#account-page .scroller').clientWidth")
    await web.axe()
