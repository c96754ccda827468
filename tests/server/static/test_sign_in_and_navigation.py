"""The web client in a real browser: first load, sign-in and sessions, navigation, search.

One simulator, one server and one browser serve the whole module; every test gets a fresh
browser context (its own cookies) and a fresh user, and its page is watched for console
errors, uncaught exceptions, JavaScript dialogs and a missing Content-Security-Policy
(the fixtures are in conftest.py beside this file).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web as aioweb
from playwright.async_api import expect

from server import keys
from tests.support.web import Web, messages, rows

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

FIRST_LOAD_LIMIT = 60_000  # bytes, uncompressed
SIGNED_IN_WIRE_LIMIT = 100_000  # bytes on the wire, a signed-in first visit, API answers too


# ---- loading ----------------------------------------------------------------------------------


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


async def test_a_signed_in_first_visit_stays_under_100_kb_on_the_wire(web: Web) -> None:
    page = web.page
    await web.user()
    wire: dict[str, int] = {}
    pending: list[Any] = []

    async def size(resp: Any) -> None:
        if resp.url.startswith(web.url):
            wire[resp.url] = (await resp.request.sizes())["responseBodySize"]

    page.on("response", lambda resp: pending.append(asyncio.ensure_future(size(resp))))
    await web.open("/")
    await page.wait_for_load_state("networkidle")
    await asyncio.gather(*pending)
    assert any(u.endswith("/turns.js") for u in wire) and any("/api/" in u for u in wire)
    total = sum(wire.values())
    assert total < SIGNED_IN_WIRE_LIMIT, f"{total} bytes on the wire: {wire}"


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

    # The page keeps scrolling for at most 30 s; how fast it pages is for benchmarks, not
    # for a test on a shared machine (a 20 s bound here failed once at 20.5 s under load).
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
    assert loaded == 5000
    assert web.count("GET /api/conversations") == 100
    assert most == 1, "never more than one page request in flight"
    await expect(rows(page).last).to_have_text("Chat 0000")
    # Still usable with every row on the page (within expect's own 5 s wait).
    await page.locator("#conv-list > li", has_text="Chat 0001").locator("a").click()
    await expect(page.locator("#title")).to_have_text("Chat 0001")
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
    web.watched.allow(401, "/api/models")  # the picker's list, if it is asked for after expire()
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


async def test_sign_up_says_the_password_rules_and_why_one_is_refused(web: Web) -> None:
    page = web.page
    await page.goto("/")
    await expect(page.locator("#password-hint")).to_be_hidden()  # logging in: no rules shown
    await page.locator("#auth-switch").click()
    hint = page.locator("#password-hint")
    await expect(hint).to_be_visible()
    await expect(page.locator("#password")).to_have_attribute("aria-describedby", "password-hint")
    web.watched.allow(400, "/api/auth/register")
    await page.locator("#username").fill("picky")
    await page.locator("#password").fill("12345678")
    await page.locator("#password").press("Enter")
    await expect(page.locator("#auth-error")).to_contain_text("too common")
    await expect(page.locator("#auth")).to_be_visible()
    await page.locator("#password").fill("a longer phrase of mine")
    await page.locator("#password").press("Enter")
    await expect(page.locator("#auth")).to_be_hidden()
    await expect(page.locator("#who")).to_have_text("picky")
