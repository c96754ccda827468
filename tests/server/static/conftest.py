"""Fixtures for the browser tests: one simulator, server and Chromium per module, a page per test.

Every test gets a fresh browser context (its own cookies), and its page is watched for console
errors, uncaught exceptions, JavaScript dialogs and a missing Content-Security-Policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from server import keys
from server.runner import Running, start
from tests.support.app import make_config
from tests.support.browser import launch, new_page, require_chromium, sim_config
from tests.support.web import SIM_DEFAULTS, Web
from vllm_sim import SimServer, SimSettings, start_simulator


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


@pytest_asyncio.fixture(loop_scope="module")
async def web(chromium: Browser, app: Running, sim: SimServer) -> AsyncIterator[Web]:
    """A fresh context and watched page; fails the test on console errors, dialogs or no CSP."""
    await sim_config(sim.root_url, **SIM_DEFAULTS)
    before = app.app[keys.METRICS].requests_seen()
    context, watched = await new_page(chromium, app.url, viewport={"width": 1280, "height": 800})
    yield Web(app, sim, chromium, context, watched, before)
    await context.close()
    assert watched.documents, "no page was loaded"
    watched.check()
