"""Script calls against a real redis-server: concurrent ones share a pipeline (not a
connection each), and a Redis that lost its scripts (NOSCRIPT) gets them loaded again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from server.config import CoordinationConfig
from server.coordination import RedisLink
from server.coordination.limits import RedisLimits
from server.services.limits import LocalLimits, Rate
from server.services.ratelimit import FailureBackoff, RateLimited
from tests.support.redis import RedisServer


async def nothing_used(user_id: int) -> int:
    return 0


@pytest.fixture
async def limits(redis_server: RedisServer) -> AsyncIterator[RedisLimits]:
    link = RedisLink(CoordinationConfig(redis_url=redis_server.url))
    await link.start()
    local = LocalLimits(nothing_used, FailureBackoff(5, 300))
    yield RedisLimits(link, local, nothing_used, 5, 300)
    await link.close()


async def clients(redis_server: RedisServer) -> int:
    """Connections Redis has now, this one's excluded."""
    probe = aioredis.Redis(port=redis_server.port)
    try:
        return int((await probe.info("clients"))["connected_clients"]) - 1
    finally:
        await probe.aclose()


async def test_concurrent_checks_share_one_connection(limits: RedisLimits,
                                                      redis_server: RedisServer) -> None:
    async def check(user: int) -> bool:
        try:
            await limits.check(Rate("chat", user, 3, "slow down"))
        except RateLimited:
            return False
        return True

    passed = await asyncio.gather(*(check(i % 10) for i in range(500)))
    assert sum(passed) == 30  # 3 each for 10 users: every check was counted, in Redis
    assert limits.fallbacks == 0
    # One connection for the batches (and the health check's PING shares it): 500 concurrent
    # checks did not open 500.
    assert await clients(redis_server) <= 2


async def test_scripts_are_loaded_again_after_redis_forgets_them(
        limits: RedisLimits, redis_server: RedisServer) -> None:
    rate = Rate("chat", 1, 2, "slow down")
    await limits.check(rate)
    probe = aioredis.Redis(port=redis_server.port)
    try:
        await probe.script_flush()
    finally:
        await probe.aclose()
    await limits.check(rate)  # NOSCRIPT: loaded again, the call made again
    with pytest.raises(RateLimited):
        await limits.check(rate)
    assert limits.fallbacks == 0
