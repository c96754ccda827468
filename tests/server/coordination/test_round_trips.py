"""What each request costs in Redis, counted by Redis itself (INFO commandstats), and the
upstream rate shared by both nodes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from server.runner import Running
from tests.support.app import User
from tests.support.pair import Pair, user_on
from tests.support.redis import RedisServer
from vllm_sim.settings import DEFAULT_MODEL

# Each node PINGs Redis every health interval: that is no request's cost.
BACKGROUND = {"PING"}


class Monitor:
    """Redis's MONITOR: every command a client sent (a script's own commands left out)."""

    def __init__(self, redis_server: RedisServer) -> None:
        self._client = aioredis.Redis(port=redis_server.port)
        self.sent: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Monitor:
        ready = asyncio.Event()

        async def watch() -> None:
            async with self._client.monitor() as monitor:
                ready.set()
                async for entry in monitor.listen():
                    if entry.get("client_type") != "lua":
                        self.sent.append(str(entry["command"]).split()[0].upper())

        self._task = asyncio.create_task(watch())
        await ready.wait()
        await asyncio.sleep(0.05)  # MONITOR is on before anything is counted
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._client.aclose()

    def cost(self) -> dict[str, int]:
        """The commands requests sent: everything but the background's."""
        counted: dict[str, int] = {}
        for name in self.sent:
            if name not in BACKGROUND:
                counted[name] = counted.get(name, 0) + 1
        return counted


async def turn(server: Running, user: User, conversation_id: int | None = None) -> int:
    """One whole-reply chat turn; the conversation's id."""
    body: dict[str, Any] = {"message": "hello"}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/chat", json=body, headers=user.headers) as resp:
            assert resp.status == 200, await resp.text()
            return int((await resp.json())["conversation_id"])


async def test_a_chat_turn_costs_two_redis_round_trips(pair: Pair,
                                                       redis_server: RedisServer) -> None:
    # Usage reaches Redis once a minute here, so only the turns' own calls are counted.
    a, _ = await pair(limits={"monthly_tokens_per_user": 1_000_000},
                      usage={"flush_interval_s": 60})
    user = await user_on(a)
    conversation = await turn(a, user)  # scripts loaded, this month's use counted in Redis
    for conversation_id in (None, conversation):  # a new conversation, then an existing one
        async with Monitor(redis_server) as monitor:
            await turn(a, user, conversation_id)
            await asyncio.sleep(0.2)  # nothing more comes
        spent = monitor.cost()
        print(f"chat turn ({'new' if conversation_id is None else 'existing'} "
              f"conversation): {spent}")
        # One for the limits (chat rate, new conversation, budget), one for the upstream rate.
        assert spent == {"EVALSHA": 2}, spent


async def test_a_v1_request_costs_two_round_trips_and_one_more_for_tokens_given_back(
        pair: Pair, redis_server: RedisServer) -> None:
    a, _ = await pair(usage={"flush_interval_s": 60})
    user = await user_on(a)

    async def request(key: str) -> None:
        async with aiohttp.ClientSession(a.url) as s:
            async with s.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": DEFAULT_MODEL, "max_tokens": 50,
                                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200, await r.text()

    # The reply is 8 tokens of the 50 reserved: a key with a tpm gets the rest back.
    for fields, expected in (({"rpm": 100}, 2), ({"rpm": 100, "tpm": 100_000}, 3)):
        async with aiohttp.ClientSession(a.url) as s:
            async with s.post("/api/keys", json={"name": "k", **fields},
                              headers=user.headers) as resp:
                key = (await resp.json())["key"]
        await request(key)  # scripts loaded
        await asyncio.sleep(0.2)  # the warm-up's tokens given back are sent
        async with Monitor(redis_server) as monitor:
            await request(key)
            await asyncio.sleep(0.3)  # tokens given back go at once; nothing more comes
        spent = monitor.cost()
        print(f"/v1 request with a key limited by {sorted(fields)}: {spent}")
        assert spent == {"EVALSHA": expected}, spent


async def test_upstream_rps_is_one_rate_for_both_nodes(pair: Pair) -> None:
    # 2 a second (a burst of 2) for both nodes together: 8 requests need 3 s, where each
    # node alone (4 requests at its own 2 a second) would send its last after 1 s.
    a, b = await pair(limits={"upstream_rps": 2})
    users = [await user_on(a) for _ in range(8)]
    began = time.monotonic()
    statuses = await asyncio.gather(*(turn(a if i % 2 else b, u) for i, u in enumerate(users)))
    took = time.monotonic() - began
    print(f"8 turns at a global 2 requests/s took {took:.2f} s")
    assert len(statuses) == 8 and took >= 2.5
