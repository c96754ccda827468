"""Rate limits shared through a real redis-server: two app instances (two nodes) on one
database and one Redis, each limit counted once for both; Redis down: per-process limits,
said in /ready and /metrics; Redis back: global again."""

from __future__ import annotations

from typing import Any

import aiohttp

from server import keys
from server.runner import Running
from tests.support.app import User
from tests.support.pair import Pair, alternate, chat, names, until, user_on
from tests.support.redis import RedisServer
from vllm_sim.settings import DEFAULT_MODEL


async def test_chat_per_user_per_minute_counts_once_for_both_nodes(pair: Pair) -> None:
    a, b = await pair(limits={"chat_per_user_per_minute": 5})
    user = await user_on(a)
    statuses = await alternate(a, b, 10, lambda node: chat(node, user))
    assert statuses.count(200) == 5 and statuses.count(429) == 5, statuses


async def test_new_conversations_per_minute_count_once_for_both_nodes(pair: Pair) -> None:
    a, b = await pair(limits={"conversations_per_user_per_minute": 3})
    user = await user_on(a)

    async def create(node: Running) -> int:
        async with aiohttp.ClientSession(node.url) as s:
            async with s.post("/api/conversations", json={"title": "t"},
                              headers=user.headers) as resp:
                return resp.status

    statuses = await alternate(a, b, 8, create)
    assert statuses.count(201) == 3 and statuses.count(429) == 5, statuses


async def make_key(server: Running, user: User, **fields: Any) -> str:
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/keys", json={"name": "k", **fields},
                          headers=user.headers) as resp:
            assert resp.status == 201, await resp.text()
            return str((await resp.json())["key"])


async def completion(server: Running, key: str, max_tokens: int = 8) -> int:
    return (await completion_usage(server, key, max_tokens))[0]


async def completion_usage(server: Running, key: str, max_tokens: int = 8) -> tuple[int, int]:
    """One /v1 request; its status and the tokens it used."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": DEFAULT_MODEL, "max_tokens": max_tokens,
                                "messages": [{"role": "user", "content": "hi"}]}) as resp:
            body = await resp.json()
            return resp.status, int(body.get("usage", {}).get("total_tokens", 0))


async def test_a_keys_requests_per_minute_count_once_for_both_nodes(pair: Pair) -> None:
    a, b = await pair()
    key = await make_key(a, await user_on(a), rpm=4)
    statuses = await alternate(a, b, 10, lambda node: completion(node, key))
    assert statuses.count(200) == 4 and statuses.count(429) == 6, statuses


async def test_a_keys_tokens_per_minute_count_once_for_both_nodes(pair: Pair) -> None:
    a, b = await pair()
    user = await user_on(a)
    status, used = await completion_usage(a, await make_key(a, user))  # what one request uses
    assert status == 200 and used > 8
    # Each request reserves its max_tokens and a prompt estimate (the server's: a token per
    # four characters), and what it did not use comes back at its end: four fit in three
    # requests' use, one reservation and some room (together, on both nodes), where each
    # node alone would let four through.
    reserved = 8 + len(str([{"role": "user", "content": "hi"}])) // 4
    key = await make_key(a, user, tpm=int(3.5 * used) + reserved)
    statuses = await alternate(a, b, 8, lambda node: completion(node, key))
    assert statuses.count(200) == 4 and statuses.count(429) == 4, statuses


async def test_login_attempts_per_ip_count_once_for_both_nodes(pair: Pair) -> None:
    a, b = await pair(limits={"login_per_ip_per_minute": 4})

    async def login(node: Running) -> int:  # unknown names: no account's backoff involved
        async with aiohttp.ClientSession(node.url) as s:
            async with s.post("/api/auth/login", json={
                    "username": f"nobody{next(names)}", "password": "wrong-password"}) as resp:
                return resp.status

    statuses = await alternate(a, b, 8, login)
    assert statuses.count(401) == 4 and statuses.count(429) == 4, statuses


async def test_an_accounts_failed_logins_back_off_on_both_nodes(pair: Pair) -> None:
    a, b = await pair(limits={"login_failures_per_account": 2, "login_backoff_max_s": 300})
    user = await user_on(a)

    async def login(node: Running) -> int:
        async with aiohttp.ClientSession(node.url) as s:
            async with s.post("/api/auth/login", json={"username": user.name,
                                                       "password": "wrong-password"}) as resp:
                return resp.status

    # Two free failures in total, then each try waits (1 s, 2 s, ...): at once, refused.
    statuses = await alternate(a, b, 4, login)
    assert statuses[:2] == [401, 401] and statuses.count(429) >= 1, statuses


async def test_the_monthly_budget_counts_both_nodes_usage(pair: Pair) -> None:
    a, b = await pair(limits={"monthly_tokens_per_user": 40})
    user = await user_on(a)
    assert await chat(b, user) == 200  # b now knows this month's use: one turn's
    assert await chat(a, user) == 200  # the two turns together pass 40 tokens
    await a.app[keys.SHARED_LIMITS].flush()  # a's usage reaches Redis (else within 1 s)
    async with aiohttp.ClientSession(b.url) as s:
        async with s.post("/api/chat", json={"message": "more"}, headers=user.headers) as r:
            body = await r.json()
            assert r.status == 429 and body["error"]["code"] == "quota_exceeded", body


async def test_redis_down_limits_per_process_then_global_again(
        pair: Pair, redis_server: RedisServer) -> None:
    a, b = await pair(limits={"chat_per_user_per_minute": 3})
    admin = await user_on(a)  # the first account is the admin: /ready shows it all
    await redis_server.stop()
    user = await user_on(a)
    # Every request still succeeds within each node's own limit: 3 on each, 6 together.
    statuses = await alternate(a, b, 8, lambda node: chat(node, user))
    assert statuses.count(200) == 6 and statuses.count(429) == 2, statuses
    for node in (a, b):
        async with aiohttp.ClientSession(node.url) as s:
            async with s.get("/ready", headers=admin.headers) as r:
                ready = await r.json()
                assert r.status == 200 and ready["status"] == "degraded", ready
                assert ready["coordination"] == {"redis": "down", "limits": "per-process"}
                assert "redis_down" in [p["kind"] for p in ready["problems"]]
            async with s.get("/metrics") as r:
                metrics = await r.text()
        assert "chatgate_redis_up 0.0" in metrics
        fallbacks = [line for line in metrics.splitlines()
                     if line.startswith('chatgate_limit_fallbacks_total{limit="checks"}')]
        assert fallbacks and float(fallbacks[0].split()[-1]) >= 4, metrics
    await redis_server.start()
    await until(lambda: a.app[keys.COORDINATION].up and b.app[keys.COORDINATION].up)
    again = await user_on(a)
    statuses = await alternate(a, b, 6, lambda node: chat(node, again))
    assert statuses.count(200) == 3 and statuses.count(429) == 3, statuses
    async with aiohttp.ClientSession(a.url) as s:
        async with s.get("/ready", headers=admin.headers) as r:
            ready = await r.json()
            assert ready["status"] == "ok" and ready["coordination"] == {
                "redis": "up", "limits": "global"}
        async with s.get("/metrics") as r:
            assert "chatgate_redis_up 1.0" in await r.text()
