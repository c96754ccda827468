"""Revocations reach the other node through Redis pub/sub within a second: a signed-out
token, a deleted API key, a disabled user; and again after Redis restarts."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from server import keys
from server.runner import Running
from tests.support.app import User
from tests.support.pair import Pair, until, user_on
from tests.support.redis import RedisServer

WITHIN_S = 1.0  # the promise: refused on every node within a second


async def status_of(server: Running, credential: str) -> int:
    """GET /api/auth/verify with a bearer token or API key: its status."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.get("/api/auth/verify",
                         headers={"Authorization": f"Bearer {credential}"}) as resp:
            return resp.status


async def refused_after(server: Running, credential: str, since: float) -> float:
    """Poll `server` (generously) until it refuses the credential; seconds since `since`."""
    deadline = since + 10.0
    while await status_of(server, credential) != 401:
        assert time.monotonic() < deadline, "still accepted 10 s later"
        await asyncio.sleep(0.01)
    return time.monotonic() - since


async def post(server: Running, user: User, path: str) -> int:
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post(path, headers=user.headers) as resp:
            return resp.status


async def subscribed(*nodes: Running) -> None:
    """Wait until each node listens for revocations (it subscribes at start-up)."""
    await until(lambda: all(n.app[keys.REVOCATIONS].subscribed.is_set() for n in nodes))


async def test_a_token_signed_out_on_a_is_refused_by_b_within_a_second(pair: Pair) -> None:
    a, b = await pair()
    await subscribed(a, b)
    user = await user_on(a)
    assert await status_of(b, user.token) == 200  # b has it cached now (for 5 minutes)
    assert await post(a, user, "/api/auth/logout") == 204
    took = await refused_after(b, user.token, time.monotonic())
    print(f"signed-out token refused by the other node after {took * 1000:.1f} ms")
    assert took < WITHIN_S


async def test_an_api_key_deleted_on_a_is_refused_by_b_within_a_second(pair: Pair) -> None:
    a, b = await pair()
    await subscribed(a, b)
    user = await user_on(a)
    async with aiohttp.ClientSession(a.url) as s:
        async with s.post("/api/keys", json={"name": "k"}, headers=user.headers) as resp:
            created = await resp.json()
    assert await status_of(b, created["key"]) == 200  # cached on b
    async with aiohttp.ClientSession(a.url) as s:
        async with s.delete(f"/api/keys/{created['id']}", headers=user.headers) as resp:
            assert resp.status == 204
    took = await refused_after(b, created["key"], time.monotonic())
    print(f"deleted key refused by the other node after {took * 1000:.1f} ms")
    assert took < WITHIN_S


async def test_a_user_disabled_on_a_is_refused_by_b_within_a_second(pair: Pair) -> None:
    a, b = await pair()
    await subscribed(a, b)
    admin = await user_on(a)  # the first account is the admin
    user = await user_on(a)
    assert await status_of(b, user.token) == 200
    assert await post(a, admin, f"/api/admin/users/{user.id}/disable") == 200
    took = await refused_after(b, user.token, time.monotonic())
    print(f"disabled user refused by the other node after {took * 1000:.1f} ms")
    assert took < WITHIN_S


async def test_revocations_still_reach_b_after_redis_restarts(
        pair: Pair, redis_server: RedisServer) -> None:
    a, b = await pair()
    await subscribed(a, b)
    before = b.app[keys.REVOCATIONS].subscriptions
    await redis_server.restart()
    await until(lambda: b.app[keys.REVOCATIONS].subscriptions > before)  # a new connection
    await subscribed(a, b)
    user = await user_on(a)
    assert await status_of(b, user.token) == 200
    assert await post(a, user, "/api/auth/logout") == 204
    took = await refused_after(b, user.token, time.monotonic())
    print(f"after a Redis restart: refused by the other node after {took * 1000:.1f} ms")
    assert took < WITHIN_S


async def test_a_password_changed_on_a_ends_the_old_token_on_b_within_a_second(
        pair: Pair) -> None:
    a, b = await pair()
    await subscribed(a, b)
    user = await user_on(a)
    assert await status_of(b, user.token) == 200
    async with aiohttp.ClientSession(a.url) as s:
        async with s.post("/api/auth/password", headers=user.headers, json={
                "current_password": user.password, "new_password": "another-lantern-77"}) as r:
            assert r.status == 200, await r.text()
    took = await refused_after(b, user.token, time.monotonic())
    print(f"token from before a password change refused by the other node after "
          f"{took * 1000:.1f} ms")
    assert took < WITHIN_S
