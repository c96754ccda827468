"""Shared fixtures: the real app on a real socket, a real SQLite file, the simulator over TCP.

Fixtures only; the helpers they use live in tests/support/ (import them from there).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.config import Config
from server.runner import Running, start
from tests.support import postgres
from tests.support.app import User, make_config, use_database
from tests.support.engines import require
from tests.support.redis import RedisServer, start_redis
from vllm_sim import SimCluster, SimServer, SimSettings, start_replicas, start_simulator

_names = itertools.count(1)


@pytest.fixture
async def simulator() -> AsyncIterator[SimServer]:
    """A fast vLLM simulator on a free port, honouring the test headers."""
    sim = await start_simulator(SimSettings(ttft_ms=5, tpot_ms=1, reply_tokens=8,
                                            allow_test_headers=True))
    yield sim
    await sim.close()


@pytest.fixture
async def make_sim() -> AsyncIterator[Callable[..., Awaitable[SimServer]]]:
    """Start simulators with fast timings (keywords are SimSettings); close them after."""
    servers: list[SimServer] = []

    async def make(**kw: Any) -> SimServer:
        kw.setdefault("ttft_ms", 1)
        kw.setdefault("tpot_ms", 1)
        server = await start_simulator(SimSettings(**kw))
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.PgCluster]:
    """A throwaway PostgreSQL cluster on loopback, started once per test session, on first
    use (skipped where Debian's PostgreSQL is not installed)."""
    require("PostgreSQL", str(postgres.PG_BIN / "postgres"))
    cluster = postgres.start_cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: postgres.PgCluster) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of its own for one test; its URL."""
    name = postgres.run_sync(pg_cluster.create_database())
    yield pg_cluster.url(name)
    postgres.run_sync(pg_cluster.drop_database(name))


@pytest.fixture(scope="session")
def pg_shared(pg_cluster: postgres.PgCluster) -> str:
    """A migrated database that tests share, emptied before each (`on_postgres`); its name."""
    return postgres.run_sync(pg_cluster.create_database())


@pytest.fixture
def on_postgres(pg_cluster: postgres.PgCluster, pg_shared: str) -> Iterator[str]:
    """Every config and server process of the test uses PostgreSQL: the session's shared
    database, emptied first; its URL."""
    postgres.run_sync(pg_cluster.empty_database(pg_shared))
    url = pg_cluster.url(pg_shared)
    use_database(url)
    yield url
    use_database(None)


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A real Redis on a loopback port, empty, for this test only."""
    server = await start_redis(tmp_path / "redis")
    yield server
    await server.stop()


@pytest.fixture
def config(tmp_path: Path, simulator: SimServer) -> Config:
    """The default test config, pointed at the simulator."""
    return make_config(tmp_path, simulator.url)


@pytest.fixture
async def server(config: Config) -> AsyncIterator[Running]:
    """The real app serving `config` on 127.0.0.1."""
    running = await start(config)
    yield running
    await running.stop()


@pytest.fixture
async def http(server: Running) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session aimed at the server (its own cookie jar)."""
    async with aiohttp.ClientSession(server.url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


@pytest.fixture
def register(server: Running) -> Callable[..., Awaitable[User]]:
    """Register a fresh user (own session, so no cookie leaks between users)."""

    async def make(name: str | None = None, password: str = "correct horse") -> User:
        name = name or f"user{next(_names)}"
        async with aiohttp.ClientSession(server.url) as s:
            async with s.post("/api/auth/register",
                              json={"username": name, "password": password}) as resp:
                assert resp.status == 201, await resp.text()
                return User(await resp.json(), password)

    return make


@pytest.fixture
async def custom(tmp_path: Path,
                 simulator: SimServer) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Start servers with some config sections changed (one database, so a restart keeps
    it); all stopped after the test."""
    started: list[Running] = []

    async def make(**sections: dict[str, Any]) -> Running:
        running = await start(make_config(tmp_path, simulator.url, **sections))
        started.append(running)
        return running

    yield make
    for running in started:
        await running.stop()


@pytest.fixture
async def sim_cluster() -> AsyncIterator[Callable[..., Awaitable[SimCluster]]]:
    """Start simulator replicas, n at a time, with fast timings (keywords are SimSettings);
    all closed after the test."""
    clusters: list[SimCluster] = []

    async def make(n: int, **kw: Any) -> SimCluster:
        kw.setdefault("ttft_ms", 2)
        kw.setdefault("tpot_ms", 1)
        kw.setdefault("reply_tokens", 8)
        cluster = await start_replicas([SimSettings(**kw) for _ in range(n)])
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        await cluster.close()


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Start the real app over `models` (a models: list) with some sections changed; all
    stopped after the test."""
    started: list[Running] = []

    async def make(models: list[dict[str, Any]], **sections: Any) -> Running:
        url = models[0]["replicas"][0]["url"]  # llm.base_url is unused beside a models: list
        running = await start(make_config(tmp_path, url, models=models, **sections))
        started.append(running)
        return running

    yield make
    for running in started:
        await running.stop()
