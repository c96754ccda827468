"""Generated titles in a real browser: the sidebar and the header show the title a background
job wrote after the first reply, without a reload.

The module's server generates titles (the other browser modules' servers do not); its
simulator echoes, so a generated title is the title prompt's first line ("User: ...").
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import expect

from server.runner import Running, start
from tests.support.app import make_config
from tests.support.web import Web, messages, rows
from vllm_sim import SimServer

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """The real server, generating titles."""
    running = await start(make_config(tmp_path_factory.mktemp("titles"), sim.url,
                                      background={"titles": True}))
    yield running
    await running.stop()


async def test_the_sidebar_shows_the_generated_title_after_the_first_reply(web: Web) -> None:
    page = web.page
    await web.sim_config(echo=True)
    await web.user()
    await web.open("/")
    await web.send("Plan a trip to Lisbon\nwith two kids")
    await expect(messages(page, "assistant")).to_have_count(1)
    await web.idle()
    # At once the first line; a moment later the title the model gave, with no reload.
    row = rows(page).first
    await expect(row.locator(".t")).to_have_text("User: Plan a trip to Lisbon", timeout=20_000)
    await expect(page.locator("#title")).to_have_text("User: Plan a trip to Lisbon")
    await expect(row.get_by_role("button", name="Rename “User: Plan a trip to Lisbon”")) \
        .to_be_visible()
    assert web.count("GET /api/conversations") <= 3  # the first page, then one or two looks
