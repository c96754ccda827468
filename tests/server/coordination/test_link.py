"""The Redis link against a real redis-server: up, down when it dies, up again when back."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from server.config import CoordinationConfig
from server.coordination import RedisLink
from server.runner import start
from tests.support.app import make_config
from tests.support.redis import RedisServer
from vllm_sim import SimServer


async def until(check: object, timeout: float = 10.0) -> None:
    """Poll a zero-argument callable until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_link_follows_redis_down_and_back(redis_server: RedisServer,
                                                caplog: pytest.LogCaptureFixture) -> None:
    link = RedisLink(CoordinationConfig(redis_url=redis_server.url, health_interval_s=0.05,
                                        timeout_s=0.2))
    heard: list[bool] = []
    link.on_change(heard.append)
    await link.start()
    try:
        assert link.up and heard == [True]
        await link.client.set(link.key("probe"), b"1")
        assert await link.client.get("chatgate:probe") == b"1"
        with caplog.at_level(logging.ERROR, logger="server.coordination.link"):
            await redis_server.stop()
            await until(lambda: not link.up)
        assert heard == [True, False] and link.outages == 1
        assert any("per-process" in r.getMessage() for r in caplog.records)
        assert redis_server.url not in caplog.text  # the address may hold a password
        await redis_server.start()
        await until(lambda: link.up)
        assert heard == [True, False, True]
    finally:
        await link.close()


async def test_app_starts_and_serves_with_redis_unreachable(tmp_path: Path,
                                                            simulator: SimServer) -> None:
    config = make_config(tmp_path, simulator.url).replace(
        "coordination", redis_url="redis://127.0.0.1:9/0", timeout_s=0.2)
    running = await start(config)
    try:
        async with aiohttp.ClientSession(running.url) as s, s.get("/health") as resp:
            assert resp.status == 200
    finally:
        await running.stop()
