"""The web client in a real browser (Debian's Chromium via Playwright's async API).

One simulator, one server and one browser serve the whole module; every test gets a fresh
browser context (its own cookies) and a fresh user, and its page is watched for console
errors, uncaught exceptions, JavaScript dialogs and a missing Content-Security-Policy.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web as aioweb
from axe_playwright_python.async_playwright import Axe
from browser import (Watched, api_user, launch, login_context, new_page, require_chromium,
                     sim_config)
from conftest import make_config
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from server import keys
from server.runner import Running, start
from vllm_sim import SimServer, SimSettings, start_simulator

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent
FIRST_LOAD_LIMIT = 60_000  # bytes, uncompressed
SIM_DEFAULTS: dict[str, Any] = {"echo": False, "ttft_ms": 5.0, "tpot_ms": 5.0, "reply_tokens": 12}
_names = itertools.count(1)


@pytest.fixture(scope="module")
def chromium_present() -> None:
    """Skip, or fail under CI=true, before anything starts when Chromium is missing."""
    require_chromium()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(chromium_present: None) -> AsyncIterator[SimServer]:
    """The vLLM simulator, shared by the module (each test resets its knobs)."""
    server = await start_simulator(SimSettings(**SIM_DEFAULTS))
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """The real server on a real socket, shared by the module."""
    running = await start(make_config(tmp_path_factory.mktemp("web"), sim.url))
    yield running
    await running.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium(chromium_present: None) -> AsyncIterator[Browser]:
    """One Chromium for the module."""
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        yield browser
        await browser.close()


@dataclass
class Web:
    """What a test drives: the watched page, its context, the server and the simulator."""

    app: Running
    sim: SimServer
    browser: Browser
    context: BrowserContext
    watched: Watched

    @property
    def page(self) -> Page:
        return self.watched.page

    @property
    def url(self) -> str:
        return self.app.url

    def count(self, route: str) -> int:
        """How many requests the server saw on a route, e.g. 'GET /api/auth/verify'."""
        return self.app.app[keys.REQUESTS][route]

    async def user(self, login: bool = True, name: str = "") -> dict[str, Any]:
        """A fresh user over the API; with `login`, this browser context holds its session."""
        user = await api_user(self.url, name or f"web{next(_names)}")
        if login:
            await login_context(self.context, self.url, user)
        return user

    async def call(self, user: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
        """An API call with the user's bearer token (not the browser's cookie)."""
        return await call(self.url, user, method, path, body)

    async def chat(self, user: dict[str, Any], message: str, conv: int | None = None) -> int:
        """One complete turn over the API; returns the conversation id."""
        body: dict[str, Any] = {"message": message}
        if conv is not None:
            body["conversation_id"] = conv
        return int((await self.call(user, "POST", "/api/chat", body))["conversation_id"])

    async def messages(self, user: dict[str, Any], conv: int) -> list[dict[str, Any]]:
        """The stored messages of a conversation."""
        return await stored_messages(self.url, user, conv)

    async def open(self, path: str = "/") -> None:
        """Load the app and wait until it is signed in and idle."""
        await self.page.goto(path)
        await expect(self.page.locator("#who")).not_to_be_empty()

    async def send(self, text: str) -> None:
        """Type a message and press Enter."""
        await self.page.locator("#input").fill(text)
        await self.page.locator("#input").press("Enter")

    async def idle(self, timeout: float = 15_000) -> None:
        """Wait until no reply is running."""
        await self.page.locator("#composer:not(.busy)").wait_for(timeout=timeout)

    async def sim_config(self, **knobs: Any) -> None:
        await sim_config(self.sim.root_url, **knobs)

    async def axe(self) -> None:
        """No serious or critical accessibility violations on the page as it is now."""
        results = await Axe().run(self.page)
        bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
               for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
        assert not bad, bad


async def call(base: str, user: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    """An API call with the user's bearer token."""
    async with aiohttp.ClientSession(base) as s:
        async with s.request(method, path, json=body, headers=user["headers"]) as resp:
            assert resp.status < 300, await resp.text()
            return None if resp.status == 204 else await resp.json()


async def stored_messages(base: str, user: dict[str, Any], conv: int) -> list[dict[str, Any]]:
    """The stored messages of a conversation."""
    return list((await call(base, user, "GET", f"/api/conversations/{conv}"))["messages"])


@pytest_asyncio.fixture(loop_scope="module")
async def web(chromium: Browser, app: Running, sim: SimServer) -> AsyncIterator[Web]:
    """A fresh context and watched page; fails the test on console errors, dialogs or no CSP."""
    await sim_config(sim.root_url, **SIM_DEFAULTS)
    app.app[keys.REQUESTS].clear()
    context, watched = await new_page(chromium, app.url, viewport={"width": 1280, "height": 800})
    yield Web(app, sim, chromium, context, watched)
    await context.close()
    assert watched.documents, "no page was loaded"
    watched.check()


def rows(page: Page) -> Any:
    return page.locator("#conv-list > li")


def messages(page: Page, role: str = "") -> Any:
    return page.locator(f"#messages > li.msg{'.' + role if role else ''}")


# ---- loading, login, first chat ---------------------------------------------------------------


async def test_login_page_is_small_cached_safe_and_accessible(web: Web) -> None:
    page = web.page
    sizes: dict[str, int] = {}
    pending: list[Any] = []

    async def size(resp: Any) -> None:
        if resp.url.startswith(web.url) and "/api/" not in resp.url:
            sizes[resp.url] = len(await resp.body())

    page.on("response", lambda resp: pending.append(asyncio.ensure_future(size(resp))))
    await page.goto("/")
    await expect(page.locator("#auth")).to_be_visible()
    await expect(page.locator("#username")).to_be_focused()
    await page.wait_for_load_state("networkidle")
    await asyncio.gather(*pending)
    total = sum(sizes.values())
    assert any(u.endswith(".js") for u in sizes) and any(u.endswith(".css") for u in sizes)
    assert total < FIRST_LOAD_LIMIT, f"first load is {total} bytes: {sizes}"
    assert web.count("GET /api/auth/verify") == 1
    # Revalidated by ETag, answered 304 when unchanged.
    async with aiohttp.ClientSession(web.url) as s:
        for path in ("/", "/static/js/app.js", "/static/app.css"):
            async with s.get(path) as resp:
                assert resp.status == 200 and resp.headers.get("ETag"), path
                assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
                etag = resp.headers["ETag"]
            async with s.get(path, headers={"If-None-Match": etag}) as resp:
                assert resp.status == 304, path
    assert await page.evaluate("() => localStorage.length + sessionStorage.length") == 0
    await web.axe()


PROBE = """() => {
  const probe = window.probe = {frames: 0, updates: 0, elements: 0, running: true};
  const seen = new Set();
  const frame = () => { if (probe.running) { probe.frames += 1; requestAnimationFrame(frame); } };
  requestAnimationFrame(frame);
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type !== "characterData" || !probe.running) continue;
      probe.updates += 1;
      seen.add(r.target.parentElement.closest("li"));
      probe.elements = seen.size;
    }
  }).observe(document.getElementById("messages"), {subtree: true, characterData: true});
}"""


async def test_register_chat_stream_reload(web: Web) -> None:
    page = web.page
    await web.sim_config(tpot_ms=25, reply_tokens=60)
    await page.goto("/")
    await page.locator("#auth-switch").click()
    await expect(page.locator("#auth-title")).to_have_text("Create your account")
    name = f"newcomer{next(_names)}"
    await page.locator("#username").fill(name)
    await page.locator("#password").fill("correct horse battery")
    await page.locator("#password").press("Enter")
    await expect(page.locator("#auth")).to_be_hidden()
    await expect(page.locator("#who")).to_have_text(name)
    await expect(page.locator("#input")).to_be_focused()

    # Count text updates while the reply streams: only the streaming message's text node may
    # change, and at most once per animation frame.
    await page.evaluate(PROBE)
    # Keyboard only: Shift+Enter makes a new line, Enter sends.
    await page.keyboard.type("My name is Ada.")
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("Remember it.")
    assert await page.locator("#input").input_value() == "My name is Ada.\nRemember it."
    await page.keyboard.press("Enter")
    await expect(page.locator("#send")).to_be_disabled()
    await expect(page.locator("#stop")).to_be_visible()
    await expect(page.locator("#live")).to_contain_text("replying")
    reply = messages(page, "assistant").last.locator(".body")
    await expect(reply).to_contain_text("Simulated reply")
    first = len(await reply.inner_text())
    await page.wait_for_timeout(300)
    assert await page.locator("#composer.busy").count() == 1, "the reply should still stream"
    assert len(await reply.inner_text()) > first, "the reply should grow while streaming"
    await web.idle()
    probe = await page.evaluate("() => { window.probe.running = false; return window.probe; }")
    assert probe["elements"] == 1 and 5 < probe["updates"] <= probe["frames"] + 1, probe
    await expect(page.locator("#live")).to_contain_text("complete")
    await expect(page.locator("#input")).to_be_focused()
    await expect(page.locator("#send")).to_be_enabled()
    await expect(messages(page, "user").first.locator(".body")).to_have_text(
        "My name is Ada.\nRemember it.")
    await expect(messages(page, "assistant").last.locator(".usage")).to_contain_text("tokens")
    assert page.url.split("#", 1)[1].startswith("/c/")
    await expect(rows(page)).to_have_count(1)
    await expect(rows(page).first).to_contain_text("My name is Ada.")

    await web.sim_config(tpot_ms=2)
    await web.send("What is my name?")
    await web.idle()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{web.sim.root_url}/sim/requests") as resp:
            sent = (await resp.json())[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == \
        ["My name is Ada.\nRemember it.", "What is my name?"], "earlier turns are remembered"

    # The session is the HttpOnly cookie alone: nothing readable, nothing stored.
    cookies = {c["name"]: c for c in await web.context.cookies()}
    session = cookies["chatgate_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    url = page.url
    await page.reload()
    await expect(messages(page)).to_have_count(4)
    await expect(page.locator("#auth")).to_be_hidden()
    assert page.url == url
    await expect(page.locator("#title")).to_have_text("My name is Ada.")
    await expect(messages(page, "assistant").first.locator(".body p")).not_to_be_empty()
    state = await page.evaluate(
        "() => ({storage: localStorage.length + sessionStorage.length, cookie: document.cookie})")
    assert state["storage"] == 0 and "chatgate_session" not in state["cookie"]
    assert web.count("GET /api/auth/verify") == 2  # one per page load, never per navigation
    await web.axe()


# ---- navigation, paging, search ---------------------------------------------------------------


async def test_ten_conversations_one_verify(web: Web) -> None:
    page = web.page
    user = await web.user()
    convs = [await web.chat(user, f"Topic number {i}") for i in range(10)]
    await web.open("/")
    await expect(rows(page)).to_have_count(10)
    for i, conv in enumerate(convs):
        link = page.locator(f'#conv-list a[href="#/c/{conv}"]')
        if i % 2:
            await link.click()
        else:
            await link.focus()
            await page.keyboard.press("Enter")
        await expect(page.locator("#title")).to_have_text(f"Topic number {i}")
        await expect(messages(page)).to_have_count(2)
        await expect(link).to_have_attribute("aria-current", "page")
    for i in (8, 7, 6):
        await page.go_back()
        await expect(page.locator("#title")).to_have_text(f"Topic number {i}")
    await page.go_forward()
    await expect(page.locator("#title")).to_have_text("Topic number 7")
    await page.locator("#new-chat").click()
    await expect(page.locator("#title")).to_have_text("New chat")
    await expect(page.locator("#empty")).to_be_visible()
    assert web.count("GET /api/auth/verify") == 1
    assert web.count("GET /api/conversations/{id}") >= 13


async def test_sidebar_pages_through_5000_conversations(web: Web) -> None:
    page = web.page
    user = await web.user()
    uid = user["user"]["id"]

    def seed(conn: Any) -> None:
        conn.executemany(
            "INSERT INTO conversations (user_id, title, created_at, updated_at) "
            "VALUES (?, ?, ?, ?)",
            [(uid, f"Chat {i:04d}", f"2024-01-01T00:00:00.{i:04d}Z",
              f"2024-01-01T00:00:00.{i:04d}Z") for i in range(5000)])

    await web.app.app[keys.STORAGE].db.write(seed)
    in_flight, most = 0, 0

    def started(request: Any) -> None:
        nonlocal in_flight, most
        if "/api/conversations?" in request.url:
            in_flight += 1
            most = max(most, in_flight)

    def ended(request: Any) -> None:
        nonlocal in_flight
        if "/api/conversations?" in request.url:
            in_flight -= 1

    page.on("request", started)
    page.on("requestfinished", ended)
    page.on("requestfailed", ended)
    await web.open("/")
    await expect(rows(page)).to_have_count(50)
    await expect(rows(page).first).to_have_text("Chat 4999")
    await page.wait_for_timeout(200)
    assert web.count("GET /api/conversations") == 1, "only the first page until the user scrolls"

    began = asyncio.get_running_loop().time()
    loaded = await page.evaluate("""async () => {
        const box = document.getElementById("lists");
        const list = document.getElementById("conv-list");
        const until = Date.now() + 30000;
        while (list.childElementCount < 5000 && Date.now() < until) {
            box.scrollTop = box.scrollHeight;
            await new Promise((r) => setTimeout(r, 10));
        }
        return list.childElementCount;
    }""")
    spent = asyncio.get_running_loop().time() - began
    assert loaded == 5000
    assert web.count("GET /api/conversations") == 100
    assert most == 1, "never more than one page request in flight"
    assert spent < 20, f"paging through 5,000 conversations took {spent:.1f}s"
    await expect(rows(page).last).to_have_text("Chat 0000")
    # Still quick to use with every row on the page.
    began = asyncio.get_running_loop().time()
    await page.locator("#conv-list > li", has_text="Chat 0001").locator("a").click()
    await expect(page.locator("#title")).to_have_text("Chat 0001")
    assert asyncio.get_running_loop().time() - began < 2
    await page.wait_for_timeout(100)
    assert web.count("GET /api/conversations") == 100, "no page requested after the end"


async def test_search_is_debounced_and_opens_the_hit(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.sim_config(reply_tokens=60, tpot_ms=0)
    await web.chat(user, "Nothing to see here")
    conv = await web.chat(user, "This is the first question: where do the zephyrine winds blow?")
    for i in range(8):
        await web.chat(user, f"Follow-up question {i}", conv)
    hit_id = (await web.messages(user, conv))[0]["id"]
    await web.open("/")
    await expect(rows(page)).to_have_count(2)

    search = page.locator("#search")
    await search.press_sequentially("zephyrine", delay=50)
    await expect(page.locator("#result-list > li")).to_have_count(1)
    await page.wait_for_timeout(400)
    assert web.count("GET /api/search") <= 2, "typing must not fire a request per letter"
    hit = page.locator("#result-list a.hit")
    await expect(hit.locator("mark")).to_have_text("zephyrine")
    await expect(hit).to_contain_text("where do the zephyrine winds blow?")
    assert await hit.get_attribute("href") == f"#/c/{conv}/m/{hit_id}"

    # A new query keeps the old results on screen until its answer arrives.
    await search.press_sequentially(" winds", delay=30)
    await expect(page.locator("#result-list > li")).to_have_count(1)
    await expect(hit.locator("mark")).to_have_count(2)

    await hit.click()
    assert page.url.endswith(f"#/c/{conv}/m/{hit_id}")
    target = page.locator(f'#messages > li[data-id="{hit_id}"]')
    await expect(target).to_have_class(re.compile(r"\bhit\b"))
    await expect(target).to_be_in_viewport()
    await expect(messages(page)).to_have_count(18)
    await expect(messages(page).last).not_to_be_in_viewport()
    await expect(page.locator("#jump")).to_be_visible()
    await page.locator("#jump").click()
    await expect(messages(page).last).to_be_in_viewport()
    await page.keyboard.press("Escape")  # focus is in the input: Esc with no reply does nothing
    await search.press("Escape")
    await expect(page.locator("#conv-nav")).to_be_visible()


# ---- stop, regenerate, edit, rename, delete ---------------------------------------------------


async def test_stop_mid_stream_keeps_the_partial_reply(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.sim_config(tpot_ms=0, reply_tokens=400)
    conv = await web.chat(user, "Start with something long")
    await web.sim_config(tpot_ms=50, reply_tokens=300)
    await page.set_viewport_size({"width": 900, "height": 560})
    await web.open(f"/#/c/{conv}")
    await expect(messages(page)).to_have_count(2)
    await web.send("Tell me a very long story")
    reply = messages(page, "assistant").last
    await expect(reply.locator(".body")).to_contain_text("Simulated reply")
    # Scrolling up stops the auto-scroll and offers a way back down.
    scroller = page.locator("#scroller")
    assert await scroller.evaluate("el => el.scrollHeight > el.clientHeight + 100")
    await scroller.evaluate("el => { el.scrollTop = 0; }")
    await expect(page.locator("#jump")).to_be_visible()
    await page.wait_for_timeout(300)
    assert await page.locator("#scroller").evaluate("el => el.scrollTop") == 0
    await page.locator("#jump").click()
    await expect(page.locator("#jump")).to_be_hidden()

    await page.keyboard.press("Escape")
    await web.idle(timeout=3000)
    await expect(page.locator("#input")).to_be_focused()
    await expect(reply.locator(".badge.incomplete")).to_be_visible()
    await expect(page.locator("#live")).to_contain_text("stopped")
    shown = await reply.locator(".body").inner_text()
    for _ in range(50):
        stored = await web.messages(user, conv)
        if len(stored) == 4:
            break
        await asyncio.sleep(0.05)
    assert stored[3]["status"] == "incomplete" and len(stored[3]["content"]) < 1500
    await page.reload()
    await expect(messages(page)).to_have_count(4)
    reply = messages(page, "assistant").last
    await expect(reply.locator(".badge.incomplete")).to_be_visible()
    assert (await reply.locator(".body").inner_text()).startswith(shown[:40])

    # A reload in the middle of a reply shows what the server kept of it.
    await web.send("Interrupted by a reload")
    await expect(messages(page, "assistant").last.locator(".body")).to_contain_text("Simulated")
    await page.reload()
    await expect(page.locator("#who")).not_to_be_empty()
    for _ in range(50):
        if len(await web.messages(user, conv)) == 6:
            break
        await asyncio.sleep(0.05)
    await page.reload()
    await expect(messages(page)).to_have_count(6)
    await expect(messages(page, "assistant").last.locator(".badge.incomplete")).to_be_visible()

    # The Stop button does the same, and focus goes back to the input.
    await web.send("Another long one")
    await expect(messages(page, "assistant").last.locator(".body")).to_contain_text("Simulated")
    await page.locator("#stop").click()
    await web.idle(timeout=3000)
    await expect(page.locator("#input")).to_be_focused()
    await expect(messages(page, "assistant").last.locator(".badge.incomplete")).to_be_visible()


async def test_regenerate_and_edit_the_last_turn(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.sim_config(echo=True)
    await web.open("/")
    await web.send("first question")
    await web.idle()
    reply = messages(page, "assistant").last
    await expect(reply.locator(".body")).to_have_text("first question")
    await web.sim_config(echo=False)
    await reply.get_by_role("button", name="Regenerate the last reply").click()
    await web.idle()
    await expect(messages(page)).to_have_count(2)
    await expect(messages(page, "assistant").last.locator(".body")).to_contain_text("Simulated")
    conv = int(page.url.rsplit("/", 1)[1])
    stored = await web.messages(user, conv)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"].startswith("Simulated reply")

    await web.sim_config(echo=True)
    edit = messages(page, "user").last.get_by_role("button",
                                                   name="Edit and resend your last message")
    await edit.click()
    editor = page.get_by_role("textbox", name="Edit your message")
    await expect(editor).to_be_focused()
    await editor.fill("second version")
    await editor.press("Enter")
    await web.idle()
    await expect(messages(page)).to_have_count(2)
    await expect(messages(page, "user").last.locator(".body")).to_have_text("second version")
    await expect(messages(page, "assistant").last.locator(".body")).to_have_text("second version")
    stored = await web.messages(user, conv)
    assert [m["content"] for m in stored] == ["second version", "second version"]
    await page.reload()
    await expect(messages(page, "user").locator(".body")).to_have_text(["second version"])


async def test_rename_and_delete(web: Web) -> None:
    page = web.page
    user = await web.user()
    keep = await web.chat(user, "Keep this one")
    doomed = await web.chat(user, "Rename me")
    await web.open(f"/#/c/{doomed}")
    await expect(page.locator("#title")).to_have_text("Rename me")
    row = page.locator(f'#conv-list > li[data-id="{doomed}"]')
    await row.get_by_role("button", name="Rename “Rename me”").click()
    box = page.get_by_role("textbox", name="Conversation title")
    await expect(box).to_be_focused()
    await box.fill("Renamed <b>bold</b>")
    await box.press("Enter")
    await expect(row.locator(".t")).to_have_text("Renamed <b>bold</b>")
    await expect(page.locator("#title")).to_have_text("Renamed <b>bold</b>")
    stored = await web.call(user, "GET", f"/api/conversations/{doomed}")
    assert stored["title"] == "Renamed <b>bold</b>"
    assert await row.locator("b").count() == 0

    delete = row.get_by_role("button", name="Delete “Renamed <b>bold</b>”")
    await delete.click()
    await expect(page.locator("#confirm")).to_be_visible()
    await page.locator("#confirm").get_by_role("button", name="Cancel").click()
    await expect(row).to_be_visible()
    await delete.click()
    await page.locator("#confirm").get_by_role("button", name="Delete").click()
    await expect(row).to_have_count(0)
    await expect(page.locator("#title")).to_have_text("New chat")
    assert page.url.endswith("#/")
    async with aiohttp.ClientSession(web.url) as s:
        async with s.get(f"/api/conversations/{doomed}", headers=user["headers"]) as resp:
            assert resp.status == 404
    await expect(rows(page)).to_have_count(1)
    await expect(page.locator(f'#conv-list > li[data-id="{keep}"]')).to_be_visible()


# ---- sessions and CSRF ------------------------------------------------------------------------


async def test_logout_locks_the_app(web: Web) -> None:
    page = web.page
    user = await web.user()
    conv = await web.chat(user, "Private matters")
    await web.open(f"/#/c/{conv}")
    await expect(messages(page)).to_have_count(2)
    old = {c["name"]: c["value"] for c in await web.context.cookies()}["chatgate_session"]
    await page.locator("#input").fill("a draft")
    await page.get_by_role("button", name="Log out").click()
    await expect(page.locator("#auth")).to_be_visible()
    await expect(page.locator("#auth-note")).to_be_hidden()
    await expect(messages(page)).to_have_count(0)
    await expect(rows(page)).to_have_count(0)
    await expect(page.locator("#who")).to_be_empty()
    assert await page.locator("#input").input_value() == ""
    web.watched.allow(401, "/api/conversations")
    status = await page.evaluate("async () => (await fetch('/api/conversations')).status")
    assert status == 401
    async with aiohttp.ClientSession(web.url) as s:  # the old cookie was revoked, not just dropped
        async with s.get("/api/auth/verify", headers={"Cookie": f"chatgate_session={old}"}) as resp:
            assert resp.status == 401
    await page.reload()
    await expect(page.locator("#auth")).to_be_visible()
    await expect(rows(page)).to_have_count(0)


async def test_expired_session_keeps_draft_and_place(web: Web) -> None:
    page = web.page
    user = await web.user()
    first = await web.chat(user, "First conversation")
    second = await web.chat(user, "Second conversation")
    await web.open(f"/#/c/{first}")
    await expect(page.locator("#title")).to_have_text("First conversation")
    await page.locator("#input").fill("my unsent draft")

    async def expire() -> None:  # the session ends behind the page's back
        resp = await web.context.request.post(f"{web.url}/api/auth/logout",
                                              headers={"Origin": web.url})
        assert resp.status == 204

    async def log_in_again() -> None:
        await expect(page.locator("#auth")).to_be_visible()
        await expect(page.locator("#auth-note")).to_be_visible()
        await page.locator("#username").fill(user["user"]["username"])
        await page.locator("#password").fill(user["password"])
        await page.locator("#password").press("Enter")
        await expect(page.locator("#auth")).to_be_hidden()

    web.watched.allow(401, "/api/conversations/")
    web.watched.allow(401, "/api/chat")
    await expire()
    await page.locator(f'#conv-list a[href="#/c/{second}"]').click()
    await log_in_again()
    await expect(page.locator("#title")).to_have_text("Second conversation")
    await expect(messages(page)).to_have_count(2)
    assert await page.locator("#input").input_value() == "my unsent draft"

    # A 401 on sending: the message comes back into the input, nothing half-sent stays.
    await expire()
    await page.locator("#input").press("Enter")
    await log_in_again()
    await expect(messages(page)).to_have_count(2)
    assert await page.locator("#input").input_value() == "my unsent draft"
    await page.locator("#input").press("Enter")
    await web.idle()
    await expect(messages(page)).to_have_count(4)
    assert web.count("GET /api/auth/verify") == 1


async def test_cross_site_post_with_the_cookie_is_refused(web: Web) -> None:
    user = await web.user()
    await web.open("/")
    evil_page = f"""<!doctype html><title>evil</title><script>
      fetch("{web.url}/api/conversations", {{method: "POST", credentials: "include",
        mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
        body: JSON.stringify({{title: "csrf"}})}})
        .finally(() => {{ document.title = "sent"; }});
    </script>"""

    async def evil(request: aioweb.Request) -> aioweb.Response:
        return aioweb.Response(text=evil_page, content_type="text/html")

    other = aioweb.Application()
    other.router.add_get("/", evil)
    runner = aioweb.AppRunner(other)
    await runner.setup()
    site = aioweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        attacker = await web.context.new_page()  # same browser profile, so the cookie goes along
        async with attacker.expect_response(f"{web.url}/api/conversations") as info:
            await attacker.goto(f"http://127.0.0.1:{port}/")
        response = await info.value
        # 403, not 401: the cookie went along and authenticated the request (the Origin check
        # runs after authentication), and the foreign Origin got it refused.
        assert response.status == 403
        await attacker.close()
    finally:
        await runner.cleanup()
    request = web.context.request
    refused = await request.post(f"{web.url}/api/conversations", data={"title": "csrf"},
                                 headers={"Origin": "https://evil.example"})
    assert refused.status == 403 and (await refused.json())["error"]["code"] == "csrf_rejected"
    listed = await web.call(user, "GET", "/api/conversations")
    assert listed["conversations"] == []
    allowed = await request.post(f"{web.url}/api/conversations", data={"title": "mine"},
                                 headers={"Origin": web.url})
    assert allowed.status == 201


# ---- hostile content --------------------------------------------------------------------------

HOSTILE = "\n".join([
    "<img src=x onerror=\"window.pwned=1;alert('img')\"> <script>window.pwned=2</script> onerror",
    "",
    "[click](javascript:alert('md')) [mixed](JaVaScRiPt:alert('case'))",
    "[spaced]( javascript:alert(1) )",
    "[entity](&#106;avascript:alert('entity')) [tab](java\tscript:alert(1)) "
    "[data](data:text/html,<script>alert('data')</script>) [vb](vbscript:msgbox(1))",
    "<javascript:alert('autolink')> <a href=\"javascript:alert('a')\">raw link</a>",
    "![pic](https://evil.example/x.png) <svg onload=\"window.pwned=3\"></svg> "
    "<iframe src=\"javascript:alert('iframe')\"></iframe> <object data=x></object>",
    "`<img src=x onerror=alert('code')>`",
    "",
    "```html",
    "<script>alert('fenced')</script>",
    "```",
    "",
    "[ok](https://example.com/safe) <https://example.com/auto> <mailto:a@example.com>",
])

INERT_CHECK = """() => {
  const root = document.getElementById("messages");
  const side = document.getElementById("sidebar");
  const bad = [];
  for (const el of [...root.querySelectorAll("*"), ...side.querySelectorAll("*")]) {
    const tag = el.tagName.toUpperCase();
    if (["IMG", "SCRIPT", "SVG", "IFRAME", "OBJECT", "EMBED", "STYLE", "FORM"].includes(tag))
      bad.push(tag);
    for (const a of el.attributes) {
      if (a.name.startsWith("on") || a.name === "style" || a.name === "srcdoc")
        bad.push(tag + "@" + a.name);
    }
  }
  const hrefs = [...root.querySelectorAll("a")].map((a) => a.getAttribute("href"));
  const rels = [...root.querySelectorAll(".body a")].map((a) => a.rel);
  return {bad, hrefs, rels, images: document.images.length, scripts: document.scripts.length};
}"""


async def assert_inert(page: Page) -> None:
    await page.wait_for_timeout(300)  # time for any onerror/onload to fire
    found = await page.evaluate(INERT_CHECK)
    assert found["bad"] == [], found
    assert found["images"] == 0 and found["scripts"] == 1  # only our own module
    safe = ("http://", "https://", "mailto:", "#/c/")
    assert all(h and h.startswith(safe) for h in found["hrefs"]), found["hrefs"]
    assert found["rels"] and all("noopener" in r and "noreferrer" in r for r in found["rels"])
    assert await page.evaluate("() => typeof window.pwned") == "undefined"


async def test_hostile_replies_and_messages_stay_inert(web: Web) -> None:
    page = web.page
    await web.user()
    await web.sim_config(echo=True)  # the reply is the user's hostile text, rendered as Markdown
    await web.open("/")
    await web.send(HOSTILE)
    await web.idle()
    user_body = messages(page, "user").last.locator(".body")
    assert await user_body.inner_text() == HOSTILE  # shown as typed, as text
    reply = messages(page, "assistant").last.locator(".body")
    await expect(reply.get_by_role("link", name="ok")).to_have_attribute(
        "href", "https://example.com/safe")
    await expect(reply).to_contain_text("<img src=x onerror=")
    await expect(reply.locator("pre code")).to_have_text("<script>alert('fenced')</script>\n")
    await expect(rows(page).first).to_contain_text("<img src=x onerror=")
    await expect(page.locator("#title")).to_contain_text("<img src=x")
    await assert_inert(page)
    # Search snippets are built from text too.
    await page.locator("#search").fill("onerror")
    await expect(page.locator("#result-list mark").first).to_have_text("onerror")
    await assert_inert(page)
    await page.locator("#search").press("Escape")
    # And the history the server renders after a reload.
    await page.reload()
    await expect(messages(page)).to_have_count(2)
    await expect(messages(page, "assistant").last.get_by_role("link", name="ok")).to_be_visible()
    await assert_inert(page)
    # The javascript: links never became links at all.
    for name in ("click", "mixed", "raw link"):
        link = messages(page, "assistant").last.get_by_role("link", name=name)
        assert await link.count() == 0
    assert web.watched.dialogs == []


# ---- queue, errors and retry ------------------------------------------------------------------


async def test_queue_position_errors_and_retry(web: Web, tmp_path: Path) -> None:
    page = web.page
    user = await web.user()
    # Upstream failing mid-turn: an inline error with Retry, which regenerates.
    await web.open("/")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{web.sim.root_url}/sim/faults",
                          json={"mode": "500", "count": 3}) as resp:
            assert resp.status == 200
    await web.send("Will this fail?")
    await web.idle()
    error = messages(page, "assistant").last.locator(".failure")
    await expect(error).to_be_visible()
    await expect(page.locator("#live")).to_contain_text("failed")
    async with aiohttp.ClientSession() as s:  # the model server recovers
        async with s.post(f"{web.sim.root_url}/sim/faults", json={"mode": "none"}) as resp:
            assert resp.status == 200
    await error.get_by_role("button", name="Retry").click()
    await web.idle()
    await expect(messages(page)).to_have_count(2)
    await expect(messages(page, "assistant").last.locator(".failure")).to_have_count(0)
    await expect(messages(page, "assistant").last.locator(".body")).to_contain_text("Simulated")
    conv = int(page.url.rsplit("/", 1)[1])
    assert [m["role"] for m in await web.messages(user, conv)] == ["user", "assistant"]

    # A server with one worker and a queue of two: show the position, then a full queue.
    small = await start(make_config(tmp_path, web.sim.url, queue={"workers": 1, "max_size": 2}))
    try:
        context, watched = await new_page(web.browser, small.url)
        watched.allow(503, "/api/chat")
        other = await api_user(small.url, "blocker")
        mine = await api_user(small.url, "queued")
        await login_context(context, small.url, mine)
        await web.sim_config(ttft_ms=900)
        q = watched.page
        await q.goto("/")
        await expect(q.locator("#who")).to_have_text("queued")

        async def block(text: str) -> None:
            async with aiohttp.ClientSession(small.url) as s:
                async with s.post("/api/chat", json={"message": text},
                                  headers=other["headers"]) as r:
                    assert r.status == 200, await r.text()

        async def backlog(n: int) -> list[asyncio.Task[None]]:
            tasks = [asyncio.ensure_future(block("running"))]
            pool = small.app[keys.POOL]
            while pool.stats.running < 1:
                await asyncio.sleep(0.01)
            tasks += [asyncio.ensure_future(block(f"waiting {i}")) for i in range(n)]
            while pool.queue.qsize() < n:
                await asyncio.sleep(0.01)
            return tasks

        blockers = await backlog(1)
        await q.locator("#input").fill("behind one")
        await q.locator("#input").press("Enter")
        await expect(q.locator("#messages .queue")).to_have_text("1 request ahead of you")
        await q.locator("#composer:not(.busy)").wait_for(timeout=10_000)
        await asyncio.gather(*blockers)

        blockers = await backlog(2)
        await q.locator("#input").fill("no room")
        await q.locator("#input").press("Enter")
        error = q.locator("#messages > li.msg.assistant").last.locator(".failure")
        await expect(error).to_contain_text("queue")
        retry = error.get_by_role("button")
        await expect(retry).to_have_text(re.compile(r"Retry in [12] s"))
        await expect(retry).to_be_disabled()
        await expect(retry).to_have_text("Retry", timeout=4000)
        await retry.click()
        await q.locator("#composer:not(.busy)").wait_for(timeout=10_000)
        last = q.locator("#messages > li.msg.assistant").last
        await expect(last.locator(".body")).to_contain_text("Simulated")
        await asyncio.gather(*blockers)
        conv = int(q.url.rsplit("/", 1)[1])
        stored = await stored_messages(small.url, mine, conv)
        assert [m["content"] for m in stored if m["role"] == "user"] == ["behind one", "no room"]
        await context.close()
        watched.check()
    finally:
        await small.stop()


# ---- copy, narrow screens, dark mode, screenshots -----------------------------------------------


async def test_copy_drawer_and_live_dark_mode(web: Web) -> None:
    page = web.page
    await web.user()
    await web.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web.url)
    await web.sim_config(echo=True)
    await web.open("/")
    text = "Run this:\n\n```python\nprint('hi')\n```"
    await web.send(text)
    await web.idle()
    reply = messages(page, "assistant").last
    await reply.get_by_role("button", name="Copy reply as Markdown").click()
    assert await page.evaluate("() => navigator.clipboard.readText()") == text
    await reply.get_by_role("button", name="Copy code").click()
    assert await page.evaluate("() => navigator.clipboard.readText()") == "print('hi')\n"
    await expect(page.locator("#live")).to_contain_text("Copied")

    background = "() => getComputedStyle(document.body).backgroundColor"
    light = await page.evaluate(background)
    await page.emulate_media(color_scheme="dark")
    dark = await page.evaluate(background)
    assert light != dark, "the colour scheme follows the system setting without a reload"
    await page.emulate_media(color_scheme="light")

    await page.set_viewport_size({"width": 390, "height": 760})
    await expect(page.locator("#sidebar")).to_be_hidden()
    menu = page.get_by_role("button", name="Show conversations")
    await expect(menu).to_be_visible()
    await menu.click()
    await expect(page.locator("#sidebar")).to_be_visible()
    await expect(menu).to_have_attribute("aria-expanded", "true")
    await page.keyboard.press("Escape")
    await expect(page.locator("#sidebar")).to_be_hidden()
    await menu.click()
    await page.locator("#new-chat").click()
    await expect(page.locator("#sidebar")).to_be_hidden()
    box = await page.locator("#composer").bounding_box()
    assert box and box["y"] + box["height"] <= 760
    await web.axe()


SCREENSHOT_CHAT = [
    ("user", "How do I read a file line by line in Python without loading it all into memory?"),
    ("assistant", "Iterate over the file object: Python reads it lazily, one line at a time.\n\n"
     "```python\nwith open(\"server.log\", encoding=\"utf-8\") as f:\n    for line in f:\n"
     "        if \"ERROR\" in line:\n            print(line.rstrip())\n```\n\n"
     "A few things worth knowing:\n\n- `with` closes the file even if an exception is raised.\n"
     "- Each `line` keeps its trailing newline; `rstrip()` drops it.\n"
     "- For huge files this uses **constant memory**, however large the file is.\n\n"
     "See the [tutorial](https://docs.python.org/3/tutorial/inputoutput.html) for more."),
    ("user", "And if I only need the last 10 lines?"),
    ("assistant", "Use a `deque` with `maxlen=10`; it keeps only the newest items:\n\n"
     "```python\nfrom collections import deque\n\nwith open(\"server.log\") as f:\n"
     "    tail = deque(f, maxlen=10)\n```"),
]


async def test_screenshots_light_and_dark(web: Web, tmp_path: Path) -> None:
    """Renders the chat view light and dark; CHATGATE_SCREENSHOTS=1 refreshes docs/ with them."""
    out = ROOT / "docs" if os.environ.get("CHATGATE_SCREENSHOTS") == "1" else tmp_path
    page = web.page
    user = await web.user(name="ada")
    for title in ("Trip ideas for the Alps", "Explain SQLite WAL mode", "Regex for ISO dates"):
        await web.chat(user, title)
    uid, now = user["user"]["id"], "2030-01-01T00:00:00.000Z"

    def seed(conn: Any) -> int:  # a hand-written exchange, so the picture shows real Markdown
        conv = int(conn.execute(
            "INSERT INTO conversations (user_id, title, created_at, updated_at) "
            "VALUES (?, ?, ?, ?)", (uid, "Reading a file line by line", now, now)).lastrowid)
        conn.executemany(
            "INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?, ?, ?, ?)",
            [(conv, role, text, now) for role, text in SCREENSHOT_CHAT])
        return conv

    conv = await web.app.app[keys.STORAGE].db.write(seed)
    await page.set_viewport_size({"width": 1280, "height": 860})
    await web.open(f"/#/c/{conv}")
    await expect(messages(page)).to_have_count(4)
    await page.locator("#input").fill("Thanks! Can it also follow the file as it grows?")
    await page.locator("#input").blur()
    await page.screenshot(path=str(out / "screenshot-light.png"))
    await page.emulate_media(color_scheme="dark")
    await page.screenshot(path=str(out / "screenshot-dark.png"))
    for name in ("screenshot-light.png", "screenshot-dark.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
