"""The model picker in a real browser: two models, each on a simulator of its own; one model, none.

The module's server is configured with two models (`alpha`, the default, and `beta`), each with
one replica: a simulator that serves only that name. Every test gets a fresh browser context and
user, and its page is watched as in the other browser tests (conftest.py beside this file).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, expect

from server.config import build_config
from server.runner import Running, start
from tests.support.app import make_config
from tests.support.browser import api_user, login_context, new_page
from tests.support.web import SIM_DEFAULTS, Web, messages, rows
from vllm_sim import SimServer, SimSettings, start_simulator

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(chromium_present: None) -> AsyncIterator[SimServer]:
    """The simulator of `alpha`, the default model (each test resets its knobs)."""
    server = await start_simulator(SimSettings(**SIM_DEFAULTS, model="alpha"))
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def second(chromium_present: None) -> AsyncIterator[SimServer]:
    """The simulator of `beta`, the second model."""
    server = await start_simulator(SimSettings(**SIM_DEFAULTS, model="beta"))
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(sim: SimServer, second: SimServer,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """The real server with two models, one replica each."""
    models = build_config({"models": [{"name": "alpha", "replicas": [{"url": sim.url}]},
                                      {"name": "beta", "replicas": [{"url": second.url}]}]})
    config = dataclasses.replace(make_config(tmp_path_factory.mktemp("models"), sim.url),
                                 models=models.models)
    running = await start(config)
    yield running
    await running.stop()


def picker(page: Page) -> Any:
    return page.get_by_label("Model", exact=True)


async def models_say(base: str, user: dict[str, Any], name: str, available: bool) -> None:
    """Poll GET /api/models until `name` is (un)available: the prober sees it within seconds."""
    deadline = asyncio.get_running_loop().time() + 15
    async with aiohttp.ClientSession(base) as s:
        while True:
            async with s.get("/api/models", headers=user["headers"]) as resp:
                found = {m["name"]: m["available"] for m in (await resp.json())["models"]}
            if found.get(name) is available:
                return
            assert asyncio.get_running_loop().time() < deadline, found
            await asyncio.sleep(0.1)


async def test_pick_a_model_and_the_conversation_keeps_it(web: Web, second: SimServer) -> None:
    page = web.page
    user = await web.user()
    await web.open("/")
    choice = picker(page)
    await expect(choice).to_be_visible()
    await expect(choice.locator("option")).to_have_text(["alpha", "beta"])
    await expect(choice).to_have_value("alpha")  # a new chat starts on the default

    # Keyboard only: the picker is the next stop after the message box.
    await page.locator("#input").fill("Which model is this?")
    await page.keyboard.press("Tab")
    await expect(choice).to_be_focused()
    await page.keyboard.press("ArrowDown")
    await expect(choice).to_have_value("beta")
    alpha_before, beta_before = web.sim.stats.completed, second.stats.completed
    await page.locator("#input").press("Enter")
    await web.idle()
    reply = messages(page, "assistant").last
    await expect(reply.locator(".body")).to_contain_text("Simulated reply")
    await expect(reply.locator(".by")).to_have_text("beta")  # replies name their model
    assert second.stats.completed == beta_before + 1  # answered by beta's own server
    assert web.sim.stats.completed == alpha_before
    conv = int(page.url.rsplit("/", 1)[1])
    stored = await web.call(user, "GET", f"/api/conversations/{conv}")
    assert stored["model"] == "beta"
    assert [m.get("model") for m in stored["messages"]] == [None, "beta"]

    # A new chat shows the default again; reopening the conversation shows its model.
    await page.locator("#new-chat").click()
    await expect(choice).to_have_value("alpha")
    await rows(page).first.locator(".conv-link").click()
    await expect(messages(page)).to_have_count(2)
    await expect(choice).to_have_value("beta")
    await page.reload()
    await expect(messages(page)).to_have_count(2)
    await expect(choice).to_have_value("beta")
    await expect(messages(page, "assistant").last.locator(".by")).to_have_text("beta")

    # The next turn goes on with the conversation's model.
    await web.send("And again?")
    await web.idle()
    assert second.stats.completed == beta_before + 2
    assert web.sim.stats.completed == alpha_before

    # Changed mid-conversation: alpha answers from the next turn on, and the chat keeps it.
    await choice.select_option("alpha")
    await web.send("Over to alpha?")
    await web.idle()
    await expect(messages(page, "assistant").last.locator(".by")).to_have_text("alpha")
    assert (web.sim.stats.completed, second.stats.completed) == (alpha_before + 1,
                                                                 beta_before + 2)
    await page.reload()
    await expect(messages(page)).to_have_count(6)
    await expect(choice).to_have_value("alpha")
    await expect(messages(page, "assistant").nth(1).locator(".by")).to_have_text("beta")
    await web.axe()
    await page.emulate_media(color_scheme="dark")
    await web.axe()


async def test_an_unavailable_model_is_marked_and_its_error_said(web: Web,
                                                                second: SimServer) -> None:
    page = web.page
    web.watched.allow(503, "/api/chat")
    user = await web.user()
    await second.down()
    try:
        await models_say(web.url, user, "beta", False)
        await web.open("/")
        choice = picker(page)
        await expect(choice.locator("option")).to_have_text(["alpha", "beta (unavailable)"])
        await choice.select_option("beta")  # still selectable
        await web.send("Anyone there?")
        await web.idle()
        failure = messages(page, "assistant").last.locator(".failure")
        await expect(failure).to_contain_text(
            "The model “beta” is not answering right now: its servers are down or restarting. "
            "Try again in a moment, or pick another model.")
        await expect(failure.get_by_role("button")).to_have_text(re.compile(r"Retry in \d+ s"))
        assert await rows(page).count() == 0  # nothing was stored
        # Another model, then Retry: the same text goes to alpha.
        await choice.select_option("alpha")
        await expect(failure.get_by_role("button")).to_have_text("Retry", timeout=8000)
        await failure.get_by_role("button").click()
        await web.idle()
        await expect(messages(page)).to_have_count(2)
        await expect(messages(page, "assistant").last.locator(".by")).to_have_text("alpha")
    finally:
        await second.up()
    await models_say(web.url, user, "beta", True)
    await page.reload()
    await expect(choice.locator("option")).to_have_text(["alpha", "beta"])


async def test_one_model_shows_no_picker(chromium: Browser, sim: SimServer,
                                         tmp_path: Path) -> None:
    single = await start(make_config(tmp_path, sim.url))  # llm.base_url: one model
    try:
        context, watched = await new_page(chromium, single.url)
        page = watched.page
        user = await api_user(single.url, "solo")
        await login_context(context, single.url, user)
        async with page.expect_response(re.compile(r"/api/models$")) as answer:
            await page.goto("/")
        assert [m["name"] for m in (await (await answer.value).json())["models"]] == ["alpha"]
        await page.locator("#input").fill("Just the one model?")
        await page.locator("#input").press("Enter")
        await page.locator("#composer:not(.busy)").wait_for(timeout=15_000)
        await expect(page.locator("#messages > li.msg.assistant .body")).to_contain_text(
            "Simulated reply")
        # The composer is as it always was: the message box, Stop and Send; no model names.
        assert await page.locator("#composer .box > :not(.sr-only)").evaluate_all(
            "els => els.map((e) => e.id)") == ["input", "stop", "send"]
        await expect(page.locator("#model")).to_have_count(0)
        await expect(page.locator("#messages .by")).to_have_count(0)
        await context.close()
        watched.check()
    finally:
        await single.stop()
