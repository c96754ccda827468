"""Summaries of older turns in a real browser: the summary the model is sent instead of the
turns above it shows, collapsed, under the last message it covers.

The module's server keeps a history of 4 messages and makes summaries; the simulator's
reply to the summary request stands for the summary.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import expect

from server import keys
from server.runner import Running, start
from tests.support.app import make_config
from tests.support.web import Web, messages
from vllm_sim import SimServer

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """The real server, summarising past a history of four messages."""
    running = await start(make_config(tmp_path_factory.mktemp("summaries"), sim.url,
                                      memory={"max_history_messages": 4},
                                      background={"summaries": True}))
    yield running
    await running.stop()


async def test_the_summary_shows_collapsed_under_the_last_message_it_covers(
        web: Web, app: Running) -> None:
    page = web.page
    await web.sim_config(echo=True)
    await web.user()
    await web.open("/")
    for n, text in enumerate(("My cat is called Miso", "She is three", "What is her name?")):
        await web.send(text)
        await expect(messages(page, "assistant")).to_have_count(n + 1)
        await web.idle()
    counts = app.app[keys.METRICS].background.counts
    deadline = asyncio.get_running_loop().time() + 30
    while counts.get(("summary", "done"), 0) < 1:  # a safety net, not a timing assertion
        assert asyncio.get_running_loop().time() < deadline, "no summary was made"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    await page.reload()
    summary = page.locator(".msg details.summary")
    await expect(summary).to_have_count(1)
    # Under the second reply (the first two turns are summarised), closed until asked.
    await expect(messages(page, "assistant").nth(1).locator("details.summary")).to_have_count(1)
    body = summary.locator("p")
    await expect(body).to_be_hidden()
    await summary.locator("summary").click()
    await expect(body).to_contain_text("My cat is called Miso")  # the echo of what it was asked
    await web.axe()

    # An edit of the first question: the new branch shows no summary until its own history
    # overflows, then its own; ‹ brings the old branch back with the old one.
    await messages(page, "user").first.get_by_role("button", name="Edit this message").click()
    editor = page.get_by_role("textbox", name="Edit your message")
    await editor.fill("My dog is called Rex")
    await editor.press("Enter")
    await web.idle()
    await expect(messages(page)).to_have_count(2)
    await expect(summary).to_have_count(0)
    for n, text in enumerate(("He is five", "What is his name?")):
        await web.send(text)
        await expect(messages(page, "assistant")).to_have_count(n + 2)
        await web.idle()
    while counts.get(("summary", "done"), 0) < 2:  # a safety net, not a timing assertion
        assert asyncio.get_running_loop().time() < deadline + 30, "no second summary"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    await page.reload()
    await expect(summary).to_have_count(1)
    await summary.locator("summary").click()
    await expect(body).to_contain_text("My dog is called Rex")
    await expect(body).not_to_contain_text("Miso")
    first = messages(page, "user").first
    await first.get_by_role("button", name="Previous version").click()
    await expect(messages(page)).to_have_count(6)
    await expect(summary).to_have_count(1)
    await summary.locator("summary").click()
    await expect(body).to_contain_text("My cat is called Miso")
