"""Overload degrades into quick, honest refusals; one user cannot starve the others."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from server import keys
from server.runner import start
from tests.support.app import User, make_config, register_over_http
from tests.support.sse import events


async def users_on(base: str, n: int, prefix: str) -> list[User]:
    """Register n users."""
    return [await register_over_http(base, f"{prefix}{i}") for i in range(n)]


async def test_five_times_capacity_gets_quick_refusals(tmp_path: Path, simulator) -> None:
    async with aiohttp.ClientSession(simulator.root_url) as s:
        await s.post("/sim/config", json={"ttft_ms": 150})
    running = await start(make_config(tmp_path, simulator.url, queue={
        "workers": 4, "max_size": 16, "max_per_user": 0}))
    pool = running.app[keys.POOL]
    try:
        users = await users_on(running.url, 10, "flood")
        capacity = 4 + 16
        peak = 0
        loop = asyncio.get_running_loop()

        async def one(s: aiohttp.ClientSession, i: int) -> tuple[int, float]:
            began = loop.time()
            async with s.post("/api/chat", json={"message": f"m{i}"},
                              headers=users[i % 10].headers) as resp:
                await resp.read()
                return resp.status, loop.time() - began

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, pool.queue.qsize())
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        async with aiohttp.ClientSession(running.url,
                                         connector=aiohttp.TCPConnector(limit=0)) as s:
            results = await asyncio.gather(*(one(s, i) for i in range(5 * capacity)))
        watcher.cancel()
        statuses = [status for status, _ in results]
        assert set(statuses) <= {200, 503}
        assert statuses.count(200) >= 16 and statuses.count(503) > 0
        assert peak <= 16  # the queue is the bound on memory
        refusals = sorted(t for status, t in results if status == 503)
        print(f"5x overload: {statuses.count(503)} refused, p99 refusal "
              f"{refusals[int(len(refusals) * 0.99) - 1] * 1000:.1f} ms")
        # Responsive the moment load drops.
        async with aiohttp.ClientSession(running.url) as s:
            async with s.post("/api/chat", json={"message": "after"},
                              headers=users[0].headers) as resp:
                assert resp.status == 200
        async with running.app[keys.STORAGE].db._writer.execute(
                "SELECT count(*) FROM messages WHERE role='assistant' AND status='complete'") as c:
            assert (await c.fetchone())[0] == statuses.count(200) + 1
    finally:
        await running.stop()


async def test_one_user_cannot_starve_another(tmp_path: Path, simulator) -> None:
    async with aiohttp.ClientSession(simulator.root_url) as s:
        await s.post("/sim/config", json={"ttft_ms": 20, "reply_tokens": 2})
    running = await start(make_config(tmp_path, simulator.url, queue={
        "workers": 1, "max_size": 512, "max_per_user": 0}))
    pool = running.app[keys.POOL]
    try:
        hog, other = await users_on(running.url, 2, "fair")
        async with aiohttp.ClientSession(running.url,
                                         connector=aiohttp.TCPConnector(limit=0)) as s:
            order: list[str] = []

            async def send(user: User, tag: str) -> None:
                async with s.post("/api/chat", json={"message": tag}, headers=user.headers) as r:
                    assert r.status == 200
                    order.append(tag)

            flood = [asyncio.create_task(send(hog, f"hog{i}")) for i in range(200)]
            while pool.queue.qsize() < 150:
                await asyncio.sleep(0.01)
            # Hog replies that finished before the second user asked do not count.
            done_before_asking = len(order)
            resp = await s.post("/api/chat", json={"message": "mine", "stream": True},
                                headers=other.headers)
            positions: list[int] = []
            async for name, data in events(resp):
                if name == "queued":
                    positions.append(data["position"])
                if name in ("done", "error"):
                    assert name == "done"
                    break
            order.append("other")
            hog_done_before = order.index("other") - done_before_asking
            for task in flood:
                task.cancel()
            await asyncio.gather(*flood, return_exceptions=True)
        # Round-robin: the second user is next in line, not behind 150 jobs.
        assert positions[0] <= 1
        assert hog_done_before <= 5
    finally:
        await running.stop()


async def test_per_user_queue_cap(tmp_path: Path, simulator) -> None:
    async with aiohttp.ClientSession(simulator.root_url) as s:
        await s.post("/sim/config", json={"ttft_ms": 500})
    running = await start(make_config(tmp_path, simulator.url, queue={
        "workers": 1, "max_size": 64, "max_per_user": 2}))
    pool = running.app[keys.POOL]
    try:
        user, = await users_on(running.url, 1, "capped")
        async with aiohttp.ClientSession(running.url) as s:
            tasks = [asyncio.create_task(s.post("/api/chat", json={"message": "a"},
                                                headers=user.headers))]
            while pool.stats.running < 1:
                await asyncio.sleep(0.01)
            tasks += [asyncio.create_task(s.post("/api/chat", json={"message": "b"},
                                                 headers=user.headers)) for _ in range(2)]
            while pool.queue.qsize() < 2:
                await asyncio.sleep(0.01)
            async with s.post("/api/chat", json={"message": "c"}, headers=user.headers) as resp:
                body: dict[str, Any] = await resp.json()
                assert resp.status == 429 and body["error"]["code"] == "too_many_queued"
                assert resp.headers["Retry-After"]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await running.stop()
