"""The web client in a real browser: sign-up and the first chat, streaming, stop, edit, errors.

One simulator, one server and one browser serve the whole module; every test gets a fresh
browser context (its own cookies) and a fresh user, and its page is watched for console
errors, uncaught exceptions, JavaScript dialogs and a missing Content-Security-Policy
(the fixtures are in conftest.py beside this file).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect

from server import keys
from server.runner import start
from tests.support.app import make_config
from tests.support.browser import api_user, login_context, new_page
from tests.support.web import Web, messages, names, rows, stored_messages

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


# ---- sign-up and the first chat ---------------------------------------------------------------


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
    name = f"newcomer{next(names)}"
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


async def test_markdown_shows_formatted_while_the_reply_streams(web: Web) -> None:
    """The server renders the text so far about once a second (event: render): the code
    block is a block before the reply ends, and the end shows each word once."""
    page = web.page
    await web.user()
    await web.sim_config(demo=True, tpot_ms=80)
    await web.open("/")
    await web.send("How do I write a Python function that greets?")
    streaming = page.locator(".msg.assistant.streaming")
    await expect(streaming.locator(".body pre")).to_be_visible(timeout=15_000)
    await expect(streaming).to_have_count(1)  # still streaming when it was seen
    await web.idle(timeout=30_000)
    reply = messages(page, "assistant").last
    await expect(reply.locator("pre.hl")).to_have_count(1)
    body = await reply.locator(".body").inner_text()
    assert body.count("simulated reply") == 1 and body.count("def ") == 1, body
    await web.sim_config(demo=False)


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
