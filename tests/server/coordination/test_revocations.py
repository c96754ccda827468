"""Revocations reach the other node through Redis pub/sub within a second: a signed-out
token, a deleted API key, a disabled user; and again after Redis restarts. A disabled or
deleted user's running reply on the other node stops too (a signed-out session's does not)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from server import keys
from server.runner import Running
from tests.support.admin import sign_in
from tests.support.app import User
from tests.support.pair import (
    Pair,
    blocked,
    chat,
    ending,
    reply_stored,
    slow_replies,
    streaming,
    until,
    user_on,
)
from tests.support.redis import RedisServer
from vllm_sim import SimServer

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


# --- a disabled or deleted user's jobs stop on every node --------------------------------------


async def test_a_user_disabled_on_a_has_their_reply_on_b_stopped_within_a_second(
        pair: Pair, simulator: SimServer) -> None:
    a, b = await pair()
    await subscribed(a, b)
    admin, user = await user_on(a), await user_on(a)  # the first account is the admin
    await slow_replies(simulator, True)
    async with aiohttp.ClientSession(b.url) as s:
        resp, conversation = await streaming(s, user)
        since = time.monotonic()
        assert await post(a, admin, f"/api/admin/users/{user.id}/disable") == 200
        name, data = await asyncio.wait_for(ending(resp), 10.0)
        took = time.monotonic() - since
        resp.close()
    print(f"disabled on a: the reply on b stopped after {took * 1000:.1f} ms")
    assert (name, data["error"]["code"]) == ("error", "cancelled"), (name, data)
    assert took < WITHIN_S
    await until(lambda: b.app[keys.POOL].stats.running == 0)
    assert await reply_stored(b, conversation) == "incomplete"  # by b's turn as it ended
    assert blocked(b, user.id)
    assert await chat(b, user) == 401  # and the user's token is dead there too

    await slow_replies(simulator, False)
    assert await post(a, admin, f"/api/admin/users/{user.id}/enable") == 200
    await until(lambda: not blocked(b, user.id))
    status, body = await sign_in(b, user.name, user.password)
    assert status == 200
    again = User({"user": body["user"], "access_token": body["access_token"]}, user.password)
    assert await chat(b, again) == 200


async def test_a_user_deleted_on_a_has_their_reply_on_b_stopped(
        pair: Pair, simulator: SimServer) -> None:
    a, b = await pair()
    await subscribed(a, b)
    admin, user = await user_on(a), await user_on(a)
    await slow_replies(simulator, True)
    async with aiohttp.ClientSession(b.url) as s:
        resp, _ = await streaming(s, user)
        since = time.monotonic()
        async with aiohttp.ClientSession(a.url) as admin_s:
            async with admin_s.delete(f"/api/admin/users/{user.id}",
                                      headers=admin.headers) as r:
                assert r.status == 204
        name, data = await asyncio.wait_for(ending(resp), 10.0)
        took = time.monotonic() - since
        resp.close()
    print(f"deleted on a: the reply on b stopped after {took * 1000:.1f} ms")
    assert (name, data["error"]["code"]) == ("error", "cancelled"), (name, data)
    assert took < WITHIN_S
    assert blocked(b, user.id)


async def test_a_password_change_or_logout_on_a_leaves_the_users_reply_on_b_running(
        pair: Pair, simulator: SimServer) -> None:
    """As on one node: only a disabled or deleted account's jobs stop, never a session's."""
    a, b = await pair()
    await subscribed(a, b)
    user = await user_on(a)
    status, body = await sign_in(a, user.name, user.password)  # a second session, to end
    other = User({"user": body["user"], "access_token": body["access_token"]}, user.password)
    heard, jobs = b.app[keys.REVOCATIONS].heard, b.app[keys.ACCOUNT_JOBS]
    async with aiohttp.ClientSession(b.url) as s:
        await slow_replies(simulator, True)
        resp, conversation = await streaming(s, user)
        reads = jobs.reads
        assert await post(a, other, "/api/auth/logout") == 204
        async with aiohttp.ClientSession(a.url) as s2:
            async with s2.post("/api/auth/password", headers=user.headers, json={
                    "current_password": user.password,
                    "new_password": "another-lantern-77"}) as r:
                assert r.status == 200, await r.text()
        await until(lambda: b.app[keys.REVOCATIONS].heard >= heard + 2)  # both reached b
        await until(lambda: jobs.reads > reads and not jobs.busy)  # b read the account
        assert jobs.stopped == 0 and b.app[keys.POOL].stats.running == 1  # still streaming
        await slow_replies(simulator, False)  # the rest of the reply comes fast
        name, _ = await asyncio.wait_for(ending(resp), 30.0)
        resp.close()
    assert name == "done"
    assert await reply_stored(b, conversation) == "complete"
    assert not blocked(b, user.id)
