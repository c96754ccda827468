"""The API keys page in a real browser: usage, a key made and shown once, the list, revoke.

One simulator, one server and one browser serve the whole module; every test gets a fresh
browser context (its own cookies) and a fresh user, and its page is watched for console
errors, uncaught exceptions, JavaScript dialogs and a missing Content-Security-Policy
(the fixtures are in conftest.py beside this file). Keys are used from the test itself, the way
a program would: `Authorization: Bearer cg-…` against `/v1`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

from tests.support.paths import ROOT
from tests.support.web import Web, messages

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


async def v1(base: str, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A call to the OpenAI-compatible API with an API key; the status and the JSON body."""
    async with aiohttp.ClientSession(base) as s:
        headers = {"Authorization": f"Bearer {key}"}
        async with s.request(method, path, json=body, headers=headers) as resp:
            return resp.status, await resp.json()


async def completion(base: str, key: str, text: str) -> dict[str, Any]:
    """One /v1/chat/completions call made with the key; returns its `usage`."""
    status, models = await v1(base, key, "GET", "/v1/models")
    assert status == 200, models
    status, body = await v1(base, key, "POST", "/v1/chat/completions", {
        "model": models["data"][0]["id"], "messages": [{"role": "user", "content": text}]})
    assert status == 200, body
    usage: dict[str, Any] = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    return usage


def stat(page: Any, term: str) -> Any:
    """The figure shown under a heading of the usage summary."""
    return page.locator(".stats > div").filter(has=page.get_by_text(term, exact=True)).locator("dd")


async def test_create_use_list_and_revoke_a_key(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web.url)
    loaded: list[str] = []
    page.on("request", lambda r: loaded.append(r.url))
    await web.open("/")
    await web.send("Hello before the keys page")
    await web.idle()
    conv = re.search(r"#/c/(\d+)$", page.url)
    assert conv, page.url
    assert not any(u.endswith(("/keys.js", "/keys.css")) for u in loaded), "not in the first load"

    # Reached from the sidebar; the chat is hidden, not torn down.
    await page.get_by_role("link", name="API keys").click()
    await expect(page).to_have_url(re.compile(r"#/keys$"))
    heading = page.get_by_role("heading", name="API keys", level=1)
    await expect(heading).to_be_focused()
    await expect(page.locator("#chat")).to_be_hidden()
    await expect(page.get_by_role("link", name="API keys")).to_have_attribute(
        "aria-current", "page")
    await expect(page.locator("#keys-page")).to_contain_text("No keys yet.")
    await expect(page).to_have_title("API keys · chatgate")

    # Create: the key is shown once, focused and selected, with a ready-to-paste example.
    expiry = dt.date.today() + dt.timedelta(days=30)
    await page.get_by_label("Name", exact=True).fill("  laptop script  ")
    await page.get_by_label("Requests per minute (optional)").fill("30")
    await page.get_by_label("Tokens per minute (optional)").fill("50000")
    await page.get_by_label("Expires on (optional)").fill(expiry.isoformat())
    await page.get_by_role("button", name="Create key").click()
    field = page.get_by_label("Your new API key")
    await expect(field).to_be_focused()
    key = await field.input_value()
    assert re.fullmatch(r"cg-[0-9a-f]{12}\S{20,}", key), key
    await expect(field).to_have_attribute("readonly", "")
    await expect(page.locator(".secret")).to_contain_text("You will not see it again")
    await expect(page.locator("#key-example")).to_have_text(
        f"OPENAI_BASE_URL={web.url}/v1\nOPENAI_API_KEY={key}")
    await expect(page.locator("#live")).to_contain_text("Copy it now")
    await page.get_by_role("button", name="Copy key").click()
    assert await page.evaluate("() => navigator.clipboard.readText()") == key
    await page.get_by_role("button", name="Copy the settings").click()
    assert (await page.evaluate("() => navigator.clipboard.readText()")).endswith(key)
    assert await page.evaluate("() => localStorage.length + sessionStorage.length") == 0

    # The key works for a program.
    status, models = await v1(web.url, key, "GET", "/v1/models")
    assert status == 200 and models["data"], models

    # Listed with its prefix, its limits and expiry, and never its secret.
    row = page.locator("#key-list > li")
    await expect(row).to_have_count(1)
    await expect(row.get_by_role("heading", level=3)).to_have_text("laptop script")
    await expect(row).to_contain_text(f"cg-{key[3:15]}…")
    await expect(row).to_contain_text("30 requests/min, 50,000 tokens/min")
    listed = await web.call(user, "GET", "/api/keys")
    assert [k["name"] for k in listed["keys"]] == ["laptop script"]
    end_of_day = dt.datetime.combine(expiry, dt.time(23, 59, 59))  # the browser's zone is ours
    assert listed["keys"][0]["expires_at"] == int(end_of_day.timestamp())
    assert [listed["keys"][0][k] for k in ("rpm", "tpm")] == [30, 50000]
    assert "key" not in listed["keys"][0] and key not in json.dumps(listed)

    # Leaving the page forgets the key; coming back shows the list (now used) without it.
    await page.get_by_role("link", name="Back to chat").click()
    await expect(page).to_have_url(re.compile(rf"#/c/{conv.group(1)}$"))
    await expect(page.locator("#chat")).to_be_visible()
    await expect(page.locator("#keys-page")).to_be_hidden()
    await expect(messages(page)).to_have_count(2)
    assert key not in await page.content()
    await page.go_back()
    await expect(heading).to_be_focused()
    await expect(page.locator(".secret")).to_be_hidden()
    assert key not in await page.content()
    await expect(row).not_to_contain_text("Never")  # last used: the /v1/models call above

    # Revoke asks first; Cancel keeps the key, Revoke removes the row and kills the key.
    revoke = row.get_by_role("button", name="Revoke “laptop script”")
    await revoke.click()
    confirm = page.locator("#confirm")
    await expect(confirm).to_contain_text("Revoke “laptop script”?")
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(row).to_have_count(1)
    await expect(revoke).to_be_focused()
    assert (await v1(web.url, key, "GET", "/v1/models"))[0] == 200
    await revoke.click()
    await confirm.get_by_role("button", name="Revoke").click()
    await expect(row).to_have_count(0)
    await expect(page.locator("#keys-page")).to_contain_text("No keys yet.")
    await expect(page.get_by_role("heading", name="Your keys")).to_be_focused()
    await expect(page.locator("#live")).to_contain_text("“laptop script” was revoked.")
    status, body = await v1(web.url, key, "GET", "/v1/models")
    assert status == 401, body
    assert (await web.call(user, "GET", "/api/keys"))["keys"] == []

    # The chat view still works after a round trip through the page.
    await page.get_by_role("link", name="Back to chat").click()
    await web.send("And after it")
    await web.idle()
    await expect(messages(page)).to_have_count(4)
    await expect(page).to_have_title(re.compile(r"^Hello before the keys page · chatgate$"))


async def test_usage_by_key_errors_and_accessibility(web: Web, tmp_path: Path) -> None:
    page = web.page
    await web.user(login=False)  # run alone, the first user would be an admin (and say so)
    user = await web.user(name="ada")
    await web.chat(user, "A turn through the web API")  # key_id 0: not through a key
    made = await web.call(user, "POST", "/api/keys", {"name": "batch job", "tpm": 100000})
    key = made["key"]
    used = await completion(web.url, key, "Count my tokens, please.")
    await web.open("/#/keys")  # straight from the URL
    await expect(page.get_by_role("heading", name="API keys", level=1)).to_be_focused()

    usage = await web.call(user, "GET", "/api/usage")
    totals = usage["totals"]
    assert totals["requests"] == 2 and usage["month_tokens"] > 0
    await expect(stat(page, "Requests, last 30 days")).to_have_text("2")
    for term, value in [("Tokens this month", usage["month_tokens"]),
                        ("Prompt tokens, last 30 days", totals["prompt_tokens"]),
                        ("Completion tokens, last 30 days", totals["completion_tokens"])]:
        await expect(stat(page, term)).to_have_text(f"{value:,}")
    table = page.get_by_role("table", name="Last 30 days by key")
    by_key = table.get_by_role("row").filter(has_text="batch job")
    await expect(by_key).to_contain_text(f"batch job (cg-{key[3:15]}…)")
    await expect(by_key.get_by_role("cell")).to_have_text(
        ["1", f"{used['prompt_tokens']:,}", f"{used['completion_tokens']:,}"])
    await expect(table.get_by_role("row").filter(has_text="This app").get_by_role("cell").first
                 ).to_have_text("1")
    assert key not in await page.content()

    # A second call shows after a visit elsewhere and back (the page reloads its figures).
    await completion(web.url, key, "Once more.")
    await page.get_by_role("link", name="Back to chat").click()
    await expect(page.locator("#chat")).to_be_visible()
    await page.get_by_role("link", name="API keys").click()
    await expect(by_key.get_by_role("cell").first).to_have_text("2")
    await expect(stat(page, "Requests, last 30 days")).to_have_text("3")

    # The server's refusal is said inline in a plain sentence (the date picker's own minimum is
    # lifted to get past the browser's check).
    await page.locator("#key-expires").evaluate("(el) => el.removeAttribute('min')")
    web.watched.allow(400, "/api/keys")
    await page.get_by_label("Name", exact=True).fill("too late")
    await page.get_by_label("Expires on (optional)").fill("2001-01-01")
    await page.get_by_role("button", name="Create key").click()
    await expect(page.locator("#keys-page").get_by_role("alert")).to_have_text(
        "The key was not created. The expiry date must be in the future.")
    await expect(page.locator("#key-list > li")).to_have_count(1)
    # An empty name never leaves the browser.
    await page.get_by_label("Name", exact=True).fill("   ")
    await page.get_by_role("button", name="Create key").click()
    assert await page.get_by_label("Name", exact=True).evaluate("(el) => !el.validity.valid")
    await expect(page.locator("#key-list > li")).to_have_count(1)

    # Revoking a key that is already gone (revoked elsewhere) just removes its row.
    await web.call(user, "DELETE", f"/api/keys/{made['id']}")
    web.watched.allow(404, f"/api/keys/{made['id']}")
    await page.get_by_role("button", name="Revoke “batch job”").click()
    await page.locator("#confirm").get_by_role("button", name="Revoke").click()
    await expect(page.locator("#key-list > li")).to_have_count(0)
    await expect(table.get_by_role("row").filter(has_text="Revoked keys")).to_be_visible()

    # Accessible light and dark, wide and narrow, with a freshly made key on screen.
    await page.get_by_label("Expires on (optional)").fill("")
    await page.get_by_label("Name", exact=True).fill("docs example")
    await page.get_by_role("button", name="Create key").click()
    await expect(page.get_by_label("Your new API key")).to_be_focused()
    await web.axe()
    # CHATGATE_SCREENSHOTS=1 refreshes docs/screenshot-keys.png (as for the chat view's).
    out = ROOT / "docs" if os.environ.get("CHATGATE_SCREENSHOTS") == "1" else tmp_path
    await page.set_viewport_size({"width": 1280, "height": 1180})
    await page.screenshot(path=str(out / "screenshot-keys.png"))
    assert (out / "screenshot-keys.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    await page.emulate_media(color_scheme="dark")
    await web.axe()
    await page.emulate_media(color_scheme="light")
    await page.set_viewport_size({"width": 390, "height": 760})
    await expect(page.get_by_role("link", name="Back to chat")).to_be_visible()
    assert await page.evaluate(
        "() => document.documentElement.scrollWidth <= innerWidth"
        " && document.querySelector('#keys-page .scroller').scrollWidth"
        " <= document.querySelector('#keys-page .scroller').clientWidth")
    await web.axe()


async def test_logout_forgets_the_page(web: Web) -> None:
    page = web.page
    await web.user()
    await web.open("/#/keys")
    await page.get_by_label("Name", exact=True).fill("short lived")
    await page.get_by_role("button", name="Create key").click()
    await expect(page.get_by_label("Your new API key")).to_have_value(re.compile(r"^cg-"))
    key = await page.get_by_label("Your new API key").input_value()
    await page.get_by_role("button", name="Log out").click()
    await expect(page.locator("#auth")).to_be_visible()
    await expect(page.locator("#keys-page")).to_be_hidden()
    assert key not in await page.content()
    assert "short lived" not in await page.locator("#keys-page").inner_html()
    # Someone else logs in: they see their own (empty) page.
    other = await web.user(login=False)
    await page.locator("#username").fill(other["user"]["username"])
    await page.locator("#password").fill(other["password"])
    await page.locator("#auth-submit").click()
    await expect(page.locator("#chat")).to_be_visible()
    await page.get_by_role("link", name="API keys").click()
    await expect(page.locator("#keys-page")).to_contain_text("No keys yet.")
