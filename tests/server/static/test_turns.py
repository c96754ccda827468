"""Replies that outlive the page, in a real browser: one stream per conversation, reload and
navigate away mid-reply, a failed turn after a reload, and the small fixes around them.

The simulator echoes the user's message word by word (`echo`), so the text a reply must end
with is known. The fixtures are in conftest.py beside this file.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Page, expect

from server import keys
from server.runner import Running, start
from tests.support.app import make_config
from tests.support.web import Web, messages
from vllm_sim import SimServer

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

DONE = 30_000  # ms: generous, for a reply of a few hundred words on a shared machine


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """The module's server: two replies of one user may run at once (two conversations), a
    reply nobody follows runs on for 30 s as configured by default (a page that goes away and
    comes back), and the model may take 12 s to start (a stalled reply)."""
    running = await start(make_config(tmp_path_factory.mktemp("turns"), sim.url,
                                      queue={"max_running_per_user": 2},
                                      chat={"detached_grace_s": 30},
                                      llm={"first_token_timeout_s": 20, "request_timeout_s": 40}))
    yield running
    await running.stop()


def words(n: int, tag: str) -> str:
    """A reply of n plain words (no Markdown, so the rendered text equals the sent text)."""
    return " ".join(f"{tag}{i}" for i in range(n))


def row(page: Page, conv: int) -> Any:
    return page.locator(f'#conv-list > li[data-id="{conv}"]')


async def conv_id(page: Page) -> int:
    await expect(page).to_have_url(re.compile(r"#/c/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


async def faults(web: Web, **body: Any) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{web.sim.root_url}/sim/faults", json=body) as resp:
            assert resp.status == 200, await resp.text()


async def test_two_conversations_stream_apart(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.sim_config(echo=True, tpot_ms=2)
    other = await web.chat(user, "short in B")
    await web.sim_config(tpot_ms=30)
    await web.open("/")
    long = words(250, "a")
    await web.send(long)
    await expect(messages(page, "assistant").last.locator(".body")).to_contain_text("a3")
    first = await conv_id(page)

    # B is usable while A streams: no Stop, Send enabled, Regenerate and Edit offered.
    await page.locator(f'#conv-list a[href="#/c/{other}"]').click()
    await expect(page.locator("#title")).to_have_text("short in B")
    await expect(messages(page)).to_have_count(2)
    await expect(page.locator("#stop")).to_be_hidden()
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#composer")).not_to_have_class(re.compile("busy"))
    await expect(messages(page, "assistant").last.get_by_role(
        "button", name="Regenerate the last reply")).to_be_visible()
    await expect(messages(page, "user").last.get_by_role(
        "button", name="Edit and resend your last message")).to_be_visible()
    await expect(row(page, first)).to_have_class(re.compile("running"))
    await expect(row(page, first).locator(".run")).to_be_visible()
    await expect(row(page, other)).not_to_have_class(re.compile("running"))

    # Escape in B does not stop A; a turn in B runs beside it.
    await page.locator("#input").focus()
    await page.keyboard.press("Escape")
    await web.send("second in B")
    await expect(messages(page, "assistant").last.locator(".body")).to_have_text("second in B",
                                                                                timeout=DONE)
    await web.idle()
    await expect(row(page, first)).to_have_class(re.compile("running"))
    stored = await web.messages(user, first)
    assert [m["role"] for m in stored] == ["user"], "A is still being written"

    # Back in A: its reply goes on to the end, with Stop shown there only.
    await page.locator(f'#conv-list a[href="#/c/{first}"]').click()
    await expect(page.locator("#stop")).to_be_visible()
    reply = messages(page, "assistant").last.locator(".body")
    await expect(reply).to_have_text(long, timeout=DONE)
    await web.idle()
    await expect(row(page, first)).not_to_have_class(re.compile("running"))
    stored = await web.messages(user, first)
    assert stored[-1]["content"] == long and stored[-1]["status"] == "complete"
    await web.axe()


async def test_reload_mid_stream_continues_to_the_end(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.sim_config(echo=True, tpot_ms=20)
    await web.open("/")
    long = words(160, "r")
    await web.send(long)
    reply = messages(page, "assistant").last.locator(".body")
    await expect(reply).to_contain_text("r1")
    conv = await conv_id(page)
    await page.wait_for_timeout(random.uniform(0, 1500))  # reload at a random moment
    await page.reload()
    await expect(messages(page)).to_have_count(2)
    await expect(reply).to_have_text(long, timeout=DONE)
    await web.idle()
    stored = await web.messages(user, conv)
    assert [m["content"] for m in stored] == [long, long]
    assert stored[1]["status"] == "complete"
    await expect(messages(page, "assistant").last.locator(".badge")).to_have_count(0)


async def test_navigate_away_and_back_mid_stream(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.sim_config(echo=True, tpot_ms=25)
    await web.open("/")
    long = words(160, "n")
    await web.send(long)
    await expect(messages(page, "assistant").last.locator(".body")).to_contain_text("n1")
    conv = await conv_id(page)
    # New chat (in the page) puts the focus in the composer; Back shows the reply going on.
    await page.locator("#new-chat").click()
    await expect(page.locator("#title")).to_have_text("New chat")
    await expect(page.locator("#input")).to_be_focused()
    await expect(page.locator("#stop")).to_be_hidden()
    await page.go_back()
    await expect(page.locator("#stop")).to_be_visible()
    await expect(messages(page, "assistant").last.locator(".body")).to_contain_text("n40")
    # Away to another page altogether, then back: the page attaches to the running reply.
    await page.goto("about:blank")
    await page.go_back()
    await expect(page.locator("#who")).not_to_be_empty()
    await expect(messages(page, "assistant").last.locator(".body")).to_have_text(long,
                                                                               timeout=DONE)
    await web.idle()
    stored = await web.messages(user, conv)
    assert stored[-1]["content"] == long and stored[-1]["status"] == "complete"


async def test_failed_turn_keeps_error_and_retry_after_reload(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.open("/")
    await faults(web, mode="500", count=3)
    await web.send("Will this fail?")
    await web.idle()
    failure = messages(page, "assistant").last.locator(".failure")
    await expect(failure).to_be_visible()
    conv = await conv_id(page)
    stored = await web.messages(user, conv)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["status"] == "error" and stored[1]["error"]["code"]

    await page.reload()
    await expect(messages(page)).to_have_count(2)
    failure = messages(page, "assistant").last.locator(".failure")
    await expect(failure).to_be_visible()
    text = await failure.locator("> span").inner_text()
    assert text[0].isupper() and "retry" in text.lower(), text  # a sentence saying what to do
    await expect(failure.locator("details")).to_contain_text(stored[1]["error"]["code"])
    await faults(web, mode="none")
    await failure.get_by_role("button", name="Retry").click()
    await web.idle()
    await expect(messages(page)).to_have_count(2)
    await expect(messages(page, "assistant").last.locator(".failure")).to_have_count(0)
    await expect(messages(page, "assistant").last.locator(".body")).to_contain_text("Simulated")
    stored = await web.messages(user, conv)
    assert [m["status"] for m in stored] == ["complete", "complete"]


async def test_stop_is_explicit_and_kept_after_reload(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.sim_config(echo=True, tpot_ms=40)
    await web.open("/")
    await web.send(words(200, "s"))
    reply = messages(page, "assistant").last
    await expect(reply.locator(".body")).to_contain_text("s2")
    conv = await conv_id(page)
    await page.keyboard.press("Escape")
    await web.idle(timeout=5000)
    await expect(reply.locator(".badge.incomplete")).to_be_visible()
    await expect(page.locator("#input")).to_be_focused()
    shown = await reply.locator(".body").inner_text()
    stored = await web.messages(user, conv)
    assert stored[-1]["status"] == "incomplete"
    assert stored[-1]["content"].startswith(shown[:20]) and len(stored[-1]["content"]) < 1000
    await page.reload()
    await expect(messages(page, "assistant").last.locator(".badge.incomplete")).to_be_visible()
    await expect(messages(page, "assistant").last.get_by_role(
        "button", name="Regenerate the last reply")).to_be_visible()


async def test_small_fixes_not_found_rename_and_stall(web: Web) -> None:
    page = web.page
    user = await web.user()
    conv = await web.chat(user, "Rename me")
    web.watched.allow(404, "/api/conversations/")
    await web.open("/#/c/999999")
    await expect(page.locator("#title")).to_have_text("Conversation not found")
    await expect(page.locator("#composer")).to_be_hidden()
    await page.get_by_role("link", name="Start a new chat").click()
    await expect(page.locator("#composer")).to_be_visible()
    await expect(page.locator("#input")).to_be_focused()

    # The rename field has the row to itself: the row's icons step aside.
    r = row(page, conv)
    await r.get_by_role("button", name="Rename “Rename me”").click()
    box = page.get_by_role("textbox", name="Conversation title")
    await expect(box).to_be_focused()
    await expect(r.locator("[data-act=delete]")).to_be_hidden()
    await box.press("Escape")
    await expect(r.locator("[data-act=delete]")).to_be_attached()

    # A reply that does not start for a while says that it is still waiting; the new chat's
    # title shows the words of its first line, not its Markdown marks, before and after a reload.
    await web.sim_config(ttft_ms=12_000)
    await web.send("```\n## A **slow** `one`\nmore")
    await expect(messages(page, "assistant").last.locator(".stall")).to_contain_text(
        "Still waiting", timeout=15_000)
    await web.idle(timeout=DONE)
    await expect(messages(page, "assistant").last.locator(".stall")).to_have_count(0)
    await expect(page.locator("#title")).to_have_text("A slow one")
    slow = await conv_id(page)
    await expect(row(page, slow)).to_have_text("A slow one")
    await page.reload()
    await expect(page.locator("#title")).to_have_text("A slow one")


async def test_dropped_connection_reattaches_after_the_last_event(web: Web) -> None:
    page = web.page
    user = await web.user()
    await web.sim_config(echo=True, tpot_ms=25)
    await web.open("/")
    long = words(160, "d")
    await web.send(long)
    reply = messages(page, "assistant").last.locator(".body")
    await expect(reply).to_contain_text("d5")
    conv = await conv_id(page)
    # Cut every connection to the server under the page: the turn goes on without its reader.
    server = web.app.runner.server
    assert server is not None
    for connection in list(server.connections):
        if connection.transport is not None:
            connection.transport.abort()
    await expect(reply).to_have_text(long, timeout=DONE)
    await web.idle()
    seen = web.app.app[keys.METRICS].requests_seen()
    assert sum(n for route, n in seen.items() if route.endswith("/events")) >= 1, seen
    stored = await web.messages(user, conv)
    assert stored[-1]["content"] == long and stored[-1]["status"] == "complete"
    # Chromium logs the cut stream itself; that one line is expected, nothing else.
    cut = [e for e in web.watched.errors if "ERR_INCOMPLETE_CHUNKED_ENCODING" in e]
    assert len(cut) <= 1 and all("/api/chat" in e for e in cut), cut
    web.watched.errors[:] = [e for e in web.watched.errors if e not in cut]
