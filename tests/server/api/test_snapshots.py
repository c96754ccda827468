"""A streaming reply's text so far, rendered at a bounded rate: `event: render` with the HTML
of the first `upto` characters, only with render=html, never when switched off."""

from __future__ import annotations

from typing import Any

import aiohttp

from server.runner import Running
from tests.support.app import register_over_http
from tests.support.sse import collect
from vllm_sim import SimServer


async def slow(simulator: SimServer) -> None:
    async with aiohttp.ClientSession() as s, s.post(
            f"{simulator.root_url}/sim/config",
            json={"tpot_ms": 25, "reply_tokens": 40, "ttft_ms": 0}) as r:
        assert r.status == 200


async def stream(running: Running, render: str) -> list[tuple[str, Any]]:
    user = await register_over_http(running.url, f"reader{render}{id(running) % 10**6}")
    async with aiohttp.ClientSession(running.url) as s, s.post(
            "/api/chat", json={"message": "tell me more", "stream": True, "render": render},
            headers=user.headers) as resp:
        assert resp.status == 200
        return await collect(resp)


async def test_the_text_so_far_is_rendered_while_it_streams(custom: Any,
                                                            simulator: SimServer) -> None:
    await slow(simulator)
    running = await custom(render={"stream_interval_s": 0.1})
    events = await stream(running, "html")
    text = "".join(data["delta"] for name, data in events if name == "message")
    renders = [data for name, data in events if name == "render"]
    assert renders, events  # a second of streaming: several
    for r in renders:
        assert 0 < r["upto"] <= len(text)
        assert r["html"].startswith("<p>") and text[:r["upto"]].split()[0] in r["html"]
    ups = [r["upto"] for r in renders]
    assert ups == sorted(ups)
    # Each comes after the text it covers (the client shows the rest as text after it).
    seen = 0
    for name, data in events:
        if name == "message":
            seen += len(data["delta"])
        elif name == "render":
            assert data["upto"] <= seen
    assert events[-1][0] == "done" and events[-1][1]["html"].startswith("<p>")


async def test_no_render_events_as_text_or_when_off(custom: Any, simulator: SimServer) -> None:
    await slow(simulator)
    on = await custom(render={"stream_interval_s": 0.1})
    assert not [e for e in await stream(on, "text") if e[0] == "render"]
    off = await custom(render={"stream_interval_s": 0})
    assert not [e for e in await stream(off, "html") if e[0] == "render"]
