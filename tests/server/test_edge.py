"""The network edge against the real app: proxy hops, CORS on streams, headers, quiet logs."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from server.runner import start
from tests.support.app import make_config, register_over_http


async def test_login_limit_keys_on_the_proxys_own_forwarded_line(tmp_path: Path,
                                                                 simulator) -> None:
    """A proxy that adds its own X-Forwarded-For line: the client's extra line changes nothing,
    so guessing passwords from one address is still limited."""
    running = await start(make_config(tmp_path, simulator.url, server={"trust_forwarded": True},
                                      limits={"login_per_ip_per_minute": 3}))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            statuses = []
            for i in range(4):
                headers = CIMultiDict([("X-Forwarded-For", f"10.0.0.{i}"),
                                       ("X-Forwarded-For", "192.0.2.7")])
                async with s.post("/api/auth/login",
                                  json={"username": "victim", "password": f"guess-number-{i}"},
                                  headers=headers) as r:
                    statuses.append(r.status)
            assert statuses == [401, 401, 401, 429]
    finally:
        await running.stop()


async def test_trusted_proxy_hops_pick_the_outer_proxys_entry(tmp_path: Path,
                                                              simulator) -> None:
    """Two proxies (CDN, then ours): the client is the CDN's entry, not our proxy's."""
    running = await start(make_config(tmp_path, simulator.url,
                                      server={"trusted_proxy_hops": 2},
                                      limits={"login_per_ip_per_minute": 2}))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            async def attempt(spoof: str, client: str) -> int:
                forwarded = f"{spoof}, {client}, 10.0.0.2"
                async with s.post("/api/auth/login",
                                  json={"username": "victim", "password": "guess-number"},
                                  headers={"X-Forwarded-For": forwarded}) as r:
                    return r.status
            assert [await attempt(f"1.1.1.{i}", "203.0.113.9") for i in range(3)] \
                == [401, 401, 429]
            assert await attempt("1.1.1.1", "203.0.113.10") == 401  # another client
    finally:
        await running.stop()


async def test_streamed_chat_carries_cors_headers(tmp_path: Path, simulator) -> None:
    """The SSE answer's headers leave before the handler returns: a listed origin gets them."""
    origin = "https://app.example"
    running = await start(make_config(tmp_path, simulator.url,
                                      server={"cors_origins": [origin]}))
    try:
        user = await register_over_http(running.url, "streamer")
        async with aiohttp.ClientSession(running.url) as s:
            async with s.post("/api/chat", json={"message": "hi", "stream": True},
                              headers={**user.headers, "Origin": origin}) as r:
                assert r.status == 200 and r.content_type == "text/event-stream"
                await r.read()
                assert r.headers["Access-Control-Allow-Origin"] == origin
                assert r.headers["Access-Control-Allow-Credentials"] == "true"
                assert "X-Request-Id" in r.headers["Access-Control-Expose-Headers"]
                assert "Origin" in r.headers["Vary"]
    finally:
        await running.stop()
