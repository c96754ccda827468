"""The cluster the deployment runs (deploy/docker-compose.yml), on loopback: PostgreSQL, Redis,
three chatgate nodes as real processes, two simulated model replicas as processes, and HAProxy
from deploy/haproxy.cfg in front. Helpers kill and restart its parts and read the replicas."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.support.app import User, register_over_http
from tests.support.engines import require
from tests.support.haproxy import HAPROXY, NODE_NAMES, HAProxy, start_haproxy
from tests.support.paths import ROOT
from tests.support.postgres import PG_BIN, PgCluster
from tests.support.procs import Proc, free_port, start_simulator_process, wait_up
from tests.support.redis import REDIS_SERVER, RedisServer

MODEL = "chat"
REPLICAS = 2  # simulated replicas of MODEL (deploy/docker-compose.yml: model1, model2)
ADMIN = "root"  # made admin at start-up on every node (auth.admins)
PASSWORD = "quiet-lantern-42"  # register_over_http's


@dataclass
class Shape:
    """What a test module needs of its cluster."""

    replica_cap: int = 4  # each replica's max_concurrency, for the sum of the nodes
    workers: int = 16  # queue.workers (the whole deployment's with Redis leases)
    env: dict[str, str] = field(default_factory=dict)  # more CHATGATE_* for every node
    postgres: bool = True  # False: the nodes share one SQLite file (one machine only; for
    # trying the topology's other parts without the PostgreSQL backend)


@dataclass
class Node:
    """One chatgate node: a `python run.py` on a fixed port (a restart keeps its address)."""

    name: str
    port: int
    workdir: Path
    proc: Proc | None = None

    @property
    def url(self) -> str:
        """Its own address, bypassing the load balancer."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """host:port, as HAProxy's NODEn_ADDR."""
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """Its stderr (logs), kept across restarts."""
        return self.workdir / "node.log"


class Cluster:
    """The running topology; `url` is the load balancer's."""

    def __init__(self, workdir: Path, shape: Shape) -> None:
        self.workdir = workdir
        self.shape = shape
        self.secret = secrets.token_urlsafe(48)  # every node signs and checks with it
        self.pg: PgCluster | None = None  # made (a tmp dir) when started
        self.redis = RedisServer(workdir / "redis")
        self.sims: list[Proc] = []
        self.nodes = [Node(name, free_port(), workdir / name) for name in NODE_NAMES]
        self.lb: HAProxy | None = None
        self.admin: User | None = None

    @property
    def url(self) -> str:
        """Where clients go: HAProxy."""
        assert self.lb is not None
        return self.lb.url

    @property
    def database_url(self) -> str:
        """The nodes' database.url."""
        assert self.pg is not None
        return self.pg.url("chatgate")

    async def start(self) -> None:
        """PostgreSQL, Redis and the replicas together, then the nodes, then HAProxy."""
        require("PostgreSQL", str(PG_BIN / "postgres"))
        require("redis-server", REDIS_SERVER)
        require("HAProxy", HAPROXY)
        await asyncio.gather(self._start_postgres() if self.shape.postgres else asyncio.sleep(0),
                             self.redis.start(), self._start_sims())
        # The first node migrates the schema alone (the others then find it done).
        await self.start_node(self.nodes[0])
        await asyncio.gather(*(self.start_node(n) for n in self.nodes[1:]))
        self.lb = await start_haproxy(self.workdir / "haproxy", [n.address for n in self.nodes])
        await self.lb.wait_states(dict.fromkeys(NODE_NAMES, "UP"))
        self.admin = await self.register(ADMIN)

    async def _start_postgres(self) -> None:
        self.pg = pg = PgCluster()
        await asyncio.to_thread(pg.init)
        await asyncio.to_thread(pg.start)
        conn = await asyncpg.connect(pg.url())
        try:
            await conn.execute("CREATE DATABASE chatgate")
        finally:
            await conn.close()

    async def _start_sims(self) -> None:
        # Fast by default; tests slow them down with set_replicas for a load to build up.
        self.sims = list(await asyncio.gather(*(
            start_simulator_process("--ttft-ms", "10", "--tpot-ms", "10", "--reply-tokens", "8")
            for _ in range(REPLICAS))))

    def node_env(self, node: Node) -> dict[str, str]:
        """The CHATGATE_* environment of a node (the same for all but the port)."""
        replicas = [{"url": f"{sim.url}/v1", "max_concurrency": self.shape.replica_cap}
                    for sim in self.sims]
        env = {
            "SERVER__HOST": "127.0.0.1", "SERVER__PORT": str(node.port),
            "SERVER__TRUST_FORWARDED": "true", "SERVER__SHUTDOWN_GRACE_S": "5",
            "SERVER__DRAIN_S": "1",  # HAProxy's test checks: 2 x 250 ms
            "DATABASE__PATH": str(self.workdir / "shared.db"),  # used without PostgreSQL
            "COORDINATION__REDIS_URL": self.redis.url,
            "AUTH__SECRET": self.secret, "AUTH__ADMINS": ADMIN,
            "MODELS": json.dumps([{"name": MODEL, "served_name": "vllm-simulator",
                                   "replicas": replicas}]),
            "QUEUE__WORKERS": str(self.shape.workers),
            # Each node as a 2-core machine runs it: two processes under a master.
            "SERVER__PROCESSES": "2",
            "LIMITS__LOGIN_PER_IP_PER_MINUTE": "100000",
            "LIMITS__CONVERSATIONS_PER_USER_PER_MINUTE": "100000",
            "LLM__RETRY_BACKOFF_S": "0.01", "LLM__FIRST_TOKEN_TIMEOUT_S": "10",
            "ROUTING__PROBE_INTERVAL_S": "0.5",
            "BACKGROUND__TITLES": "false", "BACKGROUND__SUMMARIES": "false",
            "RENDER__WAIT_S": "60",
        }
        if self.shape.postgres:
            env["DATABASE__URL"] = self.database_url
        env.update(self.shape.env)
        return {f"CHATGATE_{k}": v for k, v in env.items()}

    async def start_node(self, node: Node) -> None:
        """Start (or restart) a node on its port and wait until it answers /health."""
        node.workdir.mkdir(parents=True, exist_ok=True)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
        environ.update(self.node_env(node))
        with open(node.log, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "run.py", cwd=ROOT, env=environ,
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
                start_new_session=True)  # its processes in a group of their own: see kill
        node.proc = Proc(proc, node.url)
        try:
            await wait_up(node.url + "/health", timeout=60)
        except TimeoutError:
            raise TimeoutError(f"{node.name} did not start: {_tail(node.log)}") from None

    async def kill_node(self, node: Node) -> None:
        """SIGKILL to every process of the node at once, as a machine that dies: no drain,
        no flush, its sockets closed by the kernel."""
        assert node.proc is not None
        try:
            os.killpg(node.proc.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await node.proc.signal(signal.SIGKILL)

    async def restart_node(self, node: Node) -> None:
        """Start a killed node again and wait until HAProxy sends it traffic."""
        await self.start_node(node)
        assert self.lb is not None
        await self.lb.wait_states({node.name: "UP"})

    async def stop_postgres(self) -> None:
        """Stop PostgreSQL (fast shutdown: every node's connections are ended)."""
        assert self.pg is not None
        await asyncio.to_thread(self.pg.stop)

    async def start_postgres(self) -> None:
        """Start PostgreSQL again on the same port and data."""
        assert self.pg is not None
        await asyncio.to_thread(self.pg.start)

    async def replica_stats(self) -> list[dict[str, int]]:
        """Each simulator's counters (GET /sim/stats): `in_flight` now, `max_in_flight` since
        the last reset_replicas, `requests_total`, ..."""
        async with aiohttp.ClientSession() as s:
            async def one(sim: Proc) -> dict[str, int]:
                async with s.get(f"{sim.url}/sim/stats") as resp:
                    return dict(await resp.json())
            return list(await asyncio.gather(*(one(sim) for sim in self.sims)))

    async def in_flight(self) -> list[int]:
        """The requests each replica is answering now, queued inside it included."""
        return [stats["in_flight"] for stats in await self.replica_stats()]

    async def reset_replicas(self) -> None:
        """Zero the replicas' counters (max_in_flight starts again from now)."""
        async with aiohttp.ClientSession() as s:
            for sim in self.sims:
                async with s.post(f"{sim.url}/sim/reset") as resp:
                    assert resp.status == 200

    async def set_replicas(self, **knobs: Any) -> None:
        """Change the replicas' runtime knobs (ttft_ms, tpot_ms, reply_tokens, ...)."""
        async with aiohttp.ClientSession() as s:
            for sim in self.sims:
                async with s.post(f"{sim.url}/sim/config", json=knobs) as resp:
                    assert resp.status == 200, await resp.text()

    async def register(self, name: str) -> User:
        """A new user, signed up through the load balancer."""
        return await register_over_http(self.url, name)

    async def close(self) -> None:
        """Stop everything; nothing is left running."""
        if self.lb is not None:
            await self.lb.stop()
        for node in self.nodes:
            if node.proc is not None:
                await node.proc.stop()
        for sim in self.sims:
            await sim.stop()
        await self.redis.stop()
        if self.pg is not None:
            await asyncio.to_thread(self.pg.destroy)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def start_cluster(workdir: Path, shape: Shape | None = None) -> Cluster:
    """The whole topology, up and checked by HAProxy, with an admin signed up."""
    cluster = Cluster(workdir, shape or Shape())
    try:
        await cluster.start()
    except BaseException:
        await cluster.close()
        raise
    return cluster


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 30.0,
                what: str = "") -> Any:
    """Await a check until it returns something true (polled every 20 ms); that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert loop.time() < deadline, f"gave up waiting: {what or check}"
        await asyncio.sleep(0.02)


__all__ = ["ADMIN", "MODEL", "PASSWORD", "REPLICAS", "Cluster", "Node", "Shape", "start_cluster",
           "until"]
