"""Driving the web client: a watched page plus its server and simulator, and API shortcuts."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, BrowserContext, Page, expect

from server import keys
from server.runner import Running
from tests.support.browser import Watched, api_user, login_context, sim_config
from vllm_sim import SimServer

SIM_DEFAULTS: dict[str, Any] = {"echo": False, "ttft_ms": 5.0, "tpot_ms": 5.0, "reply_tokens": 12}

names = itertools.count(1)  # usernames unique across every module


@dataclass
class Web:
    """What a test drives: the watched page, its context, the server and the simulator."""

    app: Running
    sim: SimServer
    browser: Browser
    context: BrowserContext
    watched: Watched
    before: Counter[str]  # requests the server had seen when this test began

    @property
    def page(self) -> Page:
        return self.watched.page

    @property
    def url(self) -> str:
        return self.app.url

    def count(self, route: str) -> int:
        """How many requests the server saw on a route, e.g. 'GET /api/auth/verify'."""
        return self.app.app[keys.METRICS].requests_seen()[route] - self.before[route]

    async def user(self, login: bool = True, name: str = "") -> dict[str, Any]:
        """A fresh user over the API; with `login`, this browser context holds its session."""
        user = await api_user(self.url, name or f"web{next(names)}")
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


def rows(page: Page) -> Any:
    return page.locator("#conv-list > li")


def messages(page: Page, role: str = "") -> Any:
    return page.locator(f"#messages > li.msg{'.' + role if role else ''}")
