"""GET /metrics: what operators scrape, who may scrape it, and what it must never show."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from server.runner import Running, start
from tests.support.app import User, make_config
from vllm_sim import SimServer


def sample(text: str, name: str, labels: str = "") -> float:
    """One sample's value from the exposition text (0 when absent)."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def scrape(server: Running) -> str:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{server.url}/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            return await resp.text()


async def new_key(server: Running, user: User) -> str:
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/keys", json={"name": "m"}, headers=user.headers) as resp:
            return str((await resp.json())["key"])


async def test_requests_tokens_overhead_and_no_secrets(
        server: Running, register: Callable[..., Awaitable[User]], caplog) -> None:  # type: ignore[no-untyped-def]
    user = await register()
    key = await new_key(server, user)
    body = {"model": "vllm-simulator", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3}
    with caplog.at_level(logging.INFO):
        async with aiohttp.ClientSession(server.url) as s:
            for headers in ({"Authorization": f"Bearer {key}"}, user.headers):
                async with s.post("/v1/chat/completions", json=body, headers=headers) as resp:
                    assert resp.status == 200
            async with s.post("/api/chat", json={"message": "hi"}, headers=user.headers) as r:
                assert r.status == 200
            async with s.post("/v1/chat/completions", json={**body, "model": "x"},
                              headers=user.headers) as resp:
                assert resp.status == 404
    text = await scrape(server)
    route = 'method="POST",route="/v1/chat/completions"'
    assert sample(text, "chatgate_requests_total", route + ',status="200"') == 2
    assert sample(text, "chatgate_requests_total", route + ',status="404"') == 1
    # Only requests that reached the model count (the unknown model was refused before).
    assert sample(text, "chatgate_overhead_seconds_count", 'route="/v1/chat/completions"') == 2
    assert sample(text, "chatgate_overhead_seconds_count", 'route="/api/chat"') == 1
    assert sample(text, "chatgate_tokens_total", 'direction="out"') == 3 + 3 + 8
    assert sample(text, "chatgate_upstream_first_token_seconds_count") == 3
    assert sample(text, "chatgate_token_cache_total", 'result="hit"') >= 2
    # The chat turn's question and reply at least, sharing commits (or not, alone here).
    writes = sample(text, "chatgate_db_writes_total", 'kind="write"')
    assert writes >= 2 and 1 <= sample(text, "chatgate_db_writes_total", 'kind="batch"') <= writes
    assert sample(text, "chatgate_db_writes_total", 'kind="retry"') == 0
    for secret in (key, user.token, user.password):
        assert secret not in text
        assert not any(secret in r.getMessage() for r in caplog.records)


@pytest.fixture
async def busy_server(tmp_path: Path, make_sim: Callable[..., Awaitable[SimServer]]
                      ) -> AsyncIterator[Running]:
    """Two workers in front of a model that takes a moment per reply."""
    sim = await make_sim(ttft_ms=400, reply_tokens=2)
    running = await start(make_config(tmp_path, sim.url, queue={
        "workers": 2, "max_size": 64, "max_per_user": 0, "max_running_per_user": 2}))
    yield running
    await running.stop()


async def test_the_queue_fills_and_drains(busy_server: Running,
                                          tmp_path: Path) -> None:
    async with aiohttp.ClientSession(busy_server.url) as s:
        async with s.post("/api/auth/register",
                          json={"username": "loader", "password": "pass phrase"}) as resp:
            headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}

        async def one() -> int:
            async with s.post("/api/chat", json={"message": "hi"}, headers=headers) as r:
                return r.status

        load = [asyncio.create_task(one()) for _ in range(10)]
        # Polled, not slept: each turn first stores its message (slower on a loaded machine
        # or over PostgreSQL's round trips), then queues.
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            during = await scrape(busy_server)
            seen = (sample(during, "chatgate_workers_busy"),
                    sample(during, "chatgate_queue_depth"))
            if seen == (2, 8) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        assert seen == (2, 8)
        assert await asyncio.gather(*load) == [200] * 10
    after = await scrape(busy_server)
    assert sample(after, "chatgate_queue_depth") == 0
    assert sample(after, "chatgate_workers_busy") == 0
    assert sample(after, "chatgate_queue_wait_seconds_count") == 10
    assert sample(after, "chatgate_queue_wait_seconds_sum") > 0.1  # some of them waited


@pytest.mark.parametrize("metrics", [{"allow_from": ["10.0.0.0/8"]}, {"enabled": False}])
async def test_not_open_to_the_world(tmp_path: Path, simulator: SimServer,
                                     metrics: dict[str, object]) -> None:
    running = await start(make_config(tmp_path, simulator.url, metrics=metrics))
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{running.url}/metrics") as resp:
                assert resp.status == 404
    finally:
        await running.stop()


async def test_behind_a_proxy_on_this_host_the_forwarded_client_is_judged(
        tmp_path: Path, simulator: SimServer) -> None:
    """Every peer of a same-host proxy is loopback: the client it forwards for decides."""
    running = await start(make_config(tmp_path, simulator.url,
                                      server={"trusted_proxy_hops": 1}))
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{running.url}/metrics",
                             headers={"X-Forwarded-For": "8.8.8.8"}) as resp:
                assert resp.status == 404  # from the internet, through the proxy
            async with s.get(f"{running.url}/metrics",
                             headers={"X-Forwarded-For": "8.8.8.8, 127.0.0.1"}) as resp:
                assert resp.status == 200  # the proxy says: from loopback (a local scraper)
            async with s.get(f"{running.url}/metrics") as resp:
                assert resp.status == 200  # scraped directly, not through the proxy
    finally:
        await running.stop()


async def test_rejections_are_counted_by_reason(
        tmp_path: Path, simulator: SimServer) -> None:
    running = await start(make_config(tmp_path, simulator.url,
                                      limits={"chat_per_user_per_minute": 1}))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            async with s.post("/api/auth/register",
                              json={"username": "eager", "password": "pass phrase"}) as resp:
                headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
            statuses = []
            for _ in range(3):
                async with s.post("/api/chat", json={"message": "hi"}, headers=headers) as r:
                    statuses.append(r.status)
        assert statuses == [200, 429, 429]
        text = await scrape(running)
        assert sample(text, "chatgate_rejections_total", 'reason="rate_limited"') == 2
    finally:
        await running.stop()


async def test_request_id_is_returned_and_reaches_the_model_server(
        server: Running, simulator: SimServer, register: Callable[..., Awaitable[User]]) -> None:
    user = await register()
    body = {"model": "vllm-simulator", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2}
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/v1/chat/completions", json=body,
                          headers={**user.headers, "X-Request-Id": "trace-42"}) as resp:
            assert resp.headers["X-Request-Id"] == "trace-42"
            answer = await resp.json()
    assert "trace-42" in answer["id"]  # vLLM names the completion after the request id
