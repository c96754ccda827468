"""Promises kept across three nodes (PostgreSQL + Redis, HAProxy in front): a revocation
reaches every node within a second, a per-user limit is one limit, a replica's cap is one cap."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.support.cluster import Cluster, Shape, start_cluster
from tests.support.resume import stream_chat

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

CAP = 3  # each replica's max_concurrency


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """One topology for the module; limits at their defaults (30 chats a minute per user)."""
    running = await start_cluster(tmp_path_factory.mktemp("cluster"), Shape(replica_cap=CAP))
    yield running
    await running.close()


async def _status(base: str, path: str, token: str) -> int:
    async with aiohttp.ClientSession(base) as s:
        async with s.get(path, headers={"Authorization": f"Bearer {token}"}) as resp:
            await resp.read()
            return resp.status


async def test_a_token_revoked_through_one_node_is_refused_by_the_others_within_a_second(
        cluster: Cluster) -> None:
    """Every node has the token in its verification cache; a logout through node A; nodes B
    and C refuse it within one second (measured on the poll), and so does the LB."""
    user = await cluster.register("revoked")
    a, b, c = cluster.nodes
    for node in cluster.nodes:  # each verifies once and caches the verification
        assert await _status(node.url, "/api/auth/verify", user.token) == 200
    async with aiohttp.ClientSession(a.url) as s:
        async with s.post("/api/auth/logout", headers=user.headers) as resp:
            assert resp.status == 204
    loop = asyncio.get_running_loop()
    start = loop.time()
    refused: dict[str, float] = {}
    while len(refused) < 2 and loop.time() - start < 10:
        for node in (b, c):
            if node.name not in refused and \
                    await _status(node.url, "/api/auth/verify", user.token) == 401:
                refused[node.name] = loop.time() - start
        await asyncio.sleep(0.02)
    assert set(refused) == {b.name, c.name}, f"still accepted after 10 s: {refused}"
    assert max(refused.values()) <= 1.0, refused
    assert await _status(cluster.url, "/api/auth/verify", user.token) == 401


async def test_a_per_user_chat_limit_is_one_limit_across_the_nodes(cluster: Cluster) -> None:
    """limits.chat_per_user_per_minute = 30 with three nodes: 45 chats through the LB, spread
    over the nodes, get 30 answers (plus what the minute's rate refilled while they ran),
    not 45 (each node's own 30)."""
    user = await cluster.register("limited")
    assert cluster.lb is not None
    before = await cluster.lb.sessions()
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def chat(i: int) -> tuple[int, str | None]:
        async with aiohttp.ClientSession(cluster.url) as s:
            async with s.post("/api/chat", json={"message": f"limit {i}"},
                              headers=user.headers) as resp:
                body = await resp.json()
                return resp.status, body.get("error", {}).get("code")

    results: list[tuple[int, str | None]] = []
    for batch in range(9):  # five at a time: the queue's own per-user caps never matter here
        results += await asyncio.gather(*(chat(batch * 5 + i) for i in range(5)))
    elapsed = loop.time() - start
    served = sum(1 for status, _ in results if status == 200)
    assert all(r == (429, "rate_limited") for r in results if r[0] != 200), results
    assert 30 <= served <= 30 + math.ceil(elapsed / 2), (served, elapsed)  # 1 every 2 s
    after = await cluster.lb.sessions()
    assert sum(after[n] > before[n] for n in after) == 3, "the chats did not reach every node"


async def test_a_replica_never_sees_more_than_its_cap_from_all_nodes(cluster: Cluster) -> None:
    """Each replica's max_concurrency is 3; 36 streaming chats at once through the LB, on all
    three nodes: neither replica ever answers more than 3 at a time (its own count, sampled
    during the load and its peak), and every chat is answered."""
    await cluster.set_replicas(tpot_ms=20, reply_tokens=15)
    await cluster.reset_replicas()
    users = [await cluster.register(f"capped{i}") for i in range(12)]
    samples: list[list[int]] = []

    async def sample() -> None:  # what each replica answers, read while the load runs
        while True:
            samples.append(await cluster.in_flight())
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        turns = await asyncio.gather(*(stream_chat(cluster.url, user, f"cap {i}")
                                       for user in users for i in range(3)))
    finally:
        sampler.cancel()
        await cluster.set_replicas(tpot_ms=10, reply_tokens=8)
    assert samples and max(max(s) for s in samples) <= CAP, max(samples, key=max)
    assert [t.end for t in turns] == ["done"] * 36, [t.end_data for t in turns if t.end != "done"]
    stats = await cluster.replica_stats()
    assert all(1 <= s["max_in_flight"] <= CAP for s in stats), stats
    assert sum(s["requests_total"] for s in stats) == 36, stats
