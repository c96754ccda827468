"""The network edge against the real app: proxy hops, CORS on streams, headers, quiet logs."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from server.runner import start
from tests.support.app import make_config


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
