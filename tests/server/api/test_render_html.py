"""render=html on the real app: each reply rendered once, and a hostile reply costs bounded work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server import keys
from server.runner import Running, start
from server.services.render import RenderStats, render
from tests.support.app import User, make_config, register_over_http
from tests.support.sse import collect
from vllm_sim import SimServer

HOSTILE = "![" * 10000  # 20,000 characters whose parse costs ~40 µs each (nested link labels)


async def echoing(tmp_path: Path, simulator: SimServer, **render: Any) -> Running:
    """A server whose replies echo the user's message, with these render settings."""
    async with aiohttp.ClientSession() as s:
        async with s.post(simulator.root_url + "/sim/config", json={"echo": True}) as resp:
            assert resp.status == 200
    return await start(make_config(tmp_path, simulator.url, render=render))


@pytest.fixture
async def capped(tmp_path: Path, simulator: SimServer) -> AsyncIterator[Running]:
    """Small size caps: replies over 5,000 characters, requests over 6,000."""
    running = await echoing(tmp_path, simulator, max_reply_chars=5000,
                            max_chars_per_request=6000)
    yield running
    await running.stop()


@pytest.fixture
async def timed(tmp_path: Path, simulator: SimServer) -> AsyncIterator[Running]:
    """A small CPU-time cap per reply, and no size cap the hostile reply would hit."""
    running = await echoing(tmp_path, simulator, max_render_cpu_s=0.2)
    yield running
    await running.stop()


async def say(http: aiohttp.ClientSession, user: User, text: str, **body: Any) -> Any:
    """One turn whose reply echoes `text`; the JSON reply or the stream's events."""
    async with http.post("/api/chat", headers=user.headers,
                         json={"message": text, **body}) as resp:
        assert resp.status == 200, await resp.text()
        return await collect(resp) if body.get("stream") else await resp.json()


async def replies_html(http: aiohttp.ClientSession, user: User, conv: int) -> list[str | None]:
    """The `html` of each reply of a conversation read with render=html."""
    async with http.get(f"/api/conversations/{conv}?render=html", headers=user.headers) as resp:
        assert resp.status == 200
        messages = (await resp.json())["messages"]
    assert all("html" not in m for m in messages if m["role"] == "user")
    return [m["html"] for m in messages if m["role"] == "assistant"]


def stats(running: Running) -> RenderStats:
    """What the running app's renderer did so far."""
    return running.app[keys.RENDERER].stats


async def test_each_reply_is_rendered_once_across_requests(capped: Running) -> None:
    user = await register_over_http(capped.url, "reader")
    texts = ["**one**", "*two* [link](https://example.org)", "`three`"]
    async with aiohttp.ClientSession(capped.url) as http:
        # The streamed reply's `done.html` is rendered and kept for later reads.
        events = await say(http, user, texts[0], stream=True, render="html")
        conv = events[0][1]["conversation_id"]
        assert events[-1] == ("done", {**events[-1][1], "html": render(texts[0])})
        for text in texts[1:]:
            await say(http, user, text, conversation_id=conv)
        assert stats(capped).rendered == 1
        for _ in range(5):
            assert await replies_html(http, user, conv) == [render(t) for t in texts]
    # Three replies, five reads: three renders in all, every other answer from the cache.
    assert stats(capped).rendered == 3
    assert stats(capped).cache_hits == 1 + 4 * 3
    async with aiohttp.ClientSession(capped.url) as http:
        async with http.get("/metrics") as resp:
            exposed = await resp.text()
    assert 'chatgate_render_total{result="rendered"} 3.0' in exposed
    assert 'chatgate_render_total{result="cached"} 13.0' in exposed


async def test_hostile_reply_is_answered_without_rendering_it(capped: Running) -> None:
    user = await register_over_http(capped.url, "attacker")
    async with aiohttp.ClientSession(capped.url) as http:
        events = await say(http, user, HOSTILE, stream=True, render="html")
        conv = events[0][1]["conversation_id"]
        assert events[-1][0] == "done" and events[-1][1]["html"] is None
        whole = await say(http, user, HOSTILE, conversation_id=conv, render="html")
        assert len(whole["message"]["content"]) == len(HOSTILE)
        assert whole["message"]["html"] is None
        for _ in range(3):
            assert await replies_html(http, user, conv) == [None, None]
    # Over max_reply_chars: never handed to the renderer, however often it is asked for.
    assert stats(capped).rendered == 0 and stats(capped).skipped == 2 + 3 * 2


async def test_one_request_renders_at_most_its_budget_newest_first(capped: Running) -> None:
    user = await register_over_http(capped.url, "budget")
    texts = [f"reply {n}: " + "word " * 800 for n in range(3)]  # ~4,000 characters each
    async with aiohttp.ClientSession(capped.url) as http:
        conv = (await say(http, user, texts[0]))["conversation_id"]
        for text in texts[1:]:
            await say(http, user, text, conversation_id=conv)
        # 6,000 characters per request: the newest reply only; each later read adds one.
        assert await replies_html(http, user, conv) == [None, None, render(texts[2])]
        assert await replies_html(http, user, conv) == [None, render(texts[1]), render(texts[2])]
        assert await replies_html(http, user, conv) == [render(t) for t in texts]
    assert stats(capped).rendered == 3


async def test_reply_over_its_cpu_time_is_given_up_once(timed: Running) -> None:
    user = await register_over_http(timed.url, "slow")
    async with aiohttp.ClientSession(timed.url) as http:
        whole = await say(http, user, HOSTILE, render="html")  # ~0.5-1 s of CPU to parse
        assert whole["message"]["html"] is None
        conv = whole["conversation_id"]
        await say(http, user, "**fine**", conversation_id=conv)
        for _ in range(3):
            assert await replies_html(http, user, conv) == [None, render("**fine**")]
    # Given up once and remembered: not handed to the renderer again.
    assert stats(timed).failed == 1 and stats(timed).rendered == 1
