"""Upstream caps held across nodes: two app instances sharing one Redis and one SQLite file,
pointed at simulators that count the requests they carry at once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiolimiter import AsyncLimiter

from server import keys
from server.config import CoordinationConfig
from server.coordination import RedisLink, scripts
from server.coordination.leases import RedisLeases
from server.coordination.limits import RedisPace
from server.runner import Running, start
from tests.support.app import User, make_config, register_over_http
from tests.support.procs import start_server_process
from tests.support.redis import RedisServer
from tests.support.replicas import chat, metrics_text, until
from vllm_sim import SimServer, SimSettings, start_replicas
from workers.leases import Ticket

Nodes = Callable[..., Awaitable[tuple[Running, Running]]]


def replicas(sims: list[SimServer], cap: int) -> list[dict[str, Any]]:
    """One model served by these simulators, each replica capped at `cap`."""
    return [{"name": "m", "served_name": sims[0].settings.model,
             "replicas": [{"url": s.url, "max_concurrency": cap} for s in sims]}]


@pytest.fixture
async def nodes(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Nodes]:
    """Start two app instances on one database and one Redis (keywords: config sections)."""
    started: list[Running] = []

    async def make(sims: list[SimServer], cap: int, **sections: Any) -> tuple[Running, Running]:
        sections.setdefault("queue", {}).setdefault("workers", 4)
        config = make_config(
            tmp_path, sims[0].url, models=replicas(sims, cap),
            coordination={"redis_url": redis_server.url, "lease_ttl_s": 2,
                          "lease_renew_s": 0.5, "health_interval_s": 0.1,
                          "timeout_s": 2.0},  # a busy machine's slow answer is no outage
            **sections)
        for _ in range(2):  # one after the other: the first writes the secret file
            started.append(await start(config))
        return started[0], started[1]

    yield make
    for running in started:
        await running.stop()


async def held(redis_server: RedisServer) -> dict[str, int]:
    """Every lease set in Redis that still holds something, and how many."""
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        found = {}
        async for key in r.scan_iter(match="chatgate:{leases}:*", _type="zset"):
            if await r.zcard(key):
                found[key.decode()] = await r.zcard(key)
        return found
    finally:
        await r.aclose()


async def none_held(redis_server: RedisServer) -> None:
    """Every lease given back (releases are sent after the replies: poll)."""
    async def empty() -> bool:
        return not await held(redis_server)
    await until(empty, what="every lease given back")


async def load(pairs: list[tuple[Running, User]], per_pair: int) -> list[int]:
    """Chats through both nodes at once; every status."""
    results = await asyncio.gather(*(chat(node, user, f"hello {i}")
                                     for node, user in pairs for i in range(per_pair)))
    return [status for status, _ in results]


async def users(node: Running, n: int, prefix: str) -> list[User]:
    """Register n users (through one node: the database is shared)."""
    return [await register_over_http(node.url, f"{prefix}{i}") for i in range(n)]


async def test_a_replica_never_carries_more_than_its_cap_across_nodes(
        nodes: Nodes, make_sim: Callable[..., Awaitable[SimServer]],
        redis_server: RedisServer) -> None:
    sim = await make_sim(ttft_ms=30, tpot_ms=5, reply_tokens=6)
    a, b = await nodes([sim], cap=3)
    people = await users(a, 8, "cap")
    statuses = await load([(node, u) for u in people for node in (a, b)], per_pair=2)
    assert statuses == [200] * len(statuses)
    # Each node alone would allow 3 (6 together); the deployment's cap is 3.
    assert sim.stats.max_in_flight == 3
    await none_held(redis_server)


async def test_workers_hold_across_nodes_over_two_replicas(
        nodes: Nodes, tmp_path: Path) -> None:
    fast = SimSettings(ttft_ms=30, tpot_ms=5, reply_tokens=6)
    async with await start_replicas([fast, fast]) as cluster:
        a, b = await nodes(list(cluster), cap=3)
        people = await users(a, 8, "wk")
        statuses = await load([(node, u) for u in people for node in (a, b)], per_pair=2)
        assert statuses == [200] * len(statuses)
        assert cluster.total.max_in_flight == 4  # queue.workers: 4 in all, not 4 a node
        assert all(sim.stats.max_in_flight <= 3 for sim in cluster)


async def test_a_users_running_cap_holds_across_nodes(
        nodes: Nodes, make_sim: Callable[..., Awaitable[SimServer]],
        redis_server: RedisServer) -> None:
    sim = await make_sim(ttft_ms=30, tpot_ms=5, reply_tokens=6)
    a, b = await nodes([sim], cap=0, queue={"max_running_per_user": 1})
    user = (await users(a, 1, "run"))[0]
    statuses = await load([(a, user), (b, user)], per_pair=3)
    assert statuses == [200] * 6
    assert sim.stats.max_in_flight == 1  # one at a time for this user, whichever node
    await none_held(redis_server)


async def test_a_users_waiting_cap_holds_across_nodes(
        nodes: Nodes, make_sim: Callable[..., Awaitable[SimServer]],
        redis_server: RedisServer) -> None:
    sim = await make_sim(ttft_ms=1, tpot_ms=100, reply_tokens=20)  # 2 s a reply
    a, b = await nodes([sim], cap=0, queue={"max_running_per_user": 1, "max_per_user": 1})
    user = (await users(a, 1, "wait"))[0]
    first = asyncio.create_task(chat(a, user, "runs"))
    await until(lambda: sim.stats.in_flight == 1, what="the first chat runs")
    second = asyncio.create_task(chat(b, user, "waits on node b"))
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        await until(lambda: r.zcard(f"chatgate:{{leases}}:queued:{user.id}"),
                    what="the second chat counted as waiting")
    finally:
        await r.aclose()
    status, body = await chat(a, user, "one too many")  # node a has nothing waiting itself
    assert status == 429 and body["error"]["code"] == "too_many_queued", body
    assert [s for s, _ in await asyncio.gather(first, second)] == [200, 200]
    await none_held(redis_server)


async def test_the_limits_refuse_before_a_full_waiting_cap_and_give_the_count_back(
        nodes: Nodes, make_sim: Callable[..., Awaitable[SimServer]],
        redis_server: RedisServer) -> None:
    # The limits and the waiting count are asked at once (one round trip); what is refused
    # and what is kept is as if the limits were asked first.
    sim = await make_sim(ttft_ms=1, tpot_ms=100, reply_tokens=20)  # 2 s a reply
    a, b = await nodes([sim], cap=0, limits={"chat_per_user_per_minute": 2},
                       queue={"max_running_per_user": 1, "max_per_user": 1})
    waiting = "chatgate:{leases}:queued:"
    first, second = await users(a, 2, "order")
    runs = asyncio.create_task(chat(a, first, "runs"))
    await until(lambda: sim.stats.in_flight == 1, what="the first chat runs")
    waits = asyncio.create_task(chat(b, first, "waits on node b"))
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        await until(lambda: r.zcard(f"{waiting}{first.id}"), what="the second chat waits")
    finally:
        await r.aclose()
    # Over the chat rate and at the waiting cap: the rate's refusal, as before.
    status, body = await chat(a, first, "refused twice over")
    assert status == 429 and body["error"]["code"] == "rate_limited", body
    assert (await held(redis_server))[f"{waiting}{first.id}"] == 1  # the waiting one only
    # Over the chat rate only: the count the admission took meanwhile goes back.
    for _ in range(2):
        assert (await chat(b, second, "counted"))[0] == 200
    status, body = await chat(b, second, "over the rate")
    assert status == 429 and body["error"]["code"] == "rate_limited", body
    assert [s for s, _ in await asyncio.gather(runs, waits)] == [200, 200]
    await none_held(redis_server)


async def test_a_killed_nodes_leases_come_back_after_their_expiry(
        tmp_path: Path, redis_server: RedisServer,
        make_sim: Callable[..., Awaitable[SimServer]]) -> None:
    sim = await make_sim(ttft_ms=1, tpot_ms=1000, reply_tokens=100)  # 100 s a reply
    models = replicas([sim], cap=2)
    env = {"coordination__redis_url": redis_server.url, "coordination__lease_ttl_s": 2,
           "coordination__lease_renew_s": 0.5, "queue__workers": 4,
           "models": json.dumps(models)}
    config = make_config(tmp_path, sim.url, models=models, coordination={
        "redis_url": redis_server.url, "lease_ttl_s": 2, "lease_renew_s": 0.5})
    b = await start(config)  # first: it writes the secret file the other node reads
    proc = await start_server_process(Path(config.database.path), sim.url, **env)
    try:
        people = await users(b, 2, "kill")
        holding = [asyncio.create_task(_chat_url(proc.url, u, "held")) for u in people]
        await until(lambda: sim.stats.in_flight == 2, what="the doomed node holds both places")
        sim.settings.tpot_ms = 1  # later requests are quick
        late = asyncio.create_task(chat(b, people[0], "after the crash"))
        leases = b.app[keys.LEASES]
        assert leases is not None
        await until(lambda: len(leases.line) == 1, what="node b waits for a lease")
        assert "chatgate_lease_waiting 1.0" in await metrics_text(b)
        await proc.signal(signal.SIGKILL)  # nothing is given back
        status, body = await asyncio.wait_for(late, 30)  # the leases expire: b's turn runs
        assert status == 200 and body["message"]["status"] == "complete", body
        assert sim.stats.max_in_flight == 2
        for task in holding:
            task.cancel()
        await asyncio.gather(*holding, return_exceptions=True)
    finally:
        await proc.stop()
        await b.stop()


async def _chat_url(url: str, user: User, message: str) -> int:
    """POST /api/chat to a node by URL (a process of its own); the status."""
    async with aiohttp.ClientSession(url) as s, s.post(
            "/api/chat", json={"message": message}, headers=user.headers) as resp:
        await resp.read()
        return resp.status


async def test_redis_killed_mid_load_costs_no_request_and_caps_return(
        nodes: Nodes, make_sim: Callable[..., Awaitable[SimServer]],
        redis_server: RedisServer) -> None:
    sim = await make_sim(ttft_ms=20, tpot_ms=5, reply_tokens=10)
    a, b = await nodes([sim], cap=3)
    people = await users(a, 8, "down")
    pairs = [(node, u) for u in people for node in (a, b)]
    running = asyncio.create_task(load(pairs, per_pair=4))
    await until(lambda: sim.stats.completed >= 8, what="the load under way")
    await redis_server.stop()
    assert await running == [200] * 64  # nothing refused or failed for Redis being down
    assert all(n.app[keys.COORDINATION].up is False for n in (a, b))  # type: ignore[union-attr]
    await redis_server.start()
    await until(lambda: all(n.app[keys.COORDINATION].up for n in (a, b)),  # type: ignore[union-attr]
                what="both nodes see Redis back")
    await until(lambda: sim.stats.in_flight == 0, what="the load drained")
    sim.stats.reset()
    assert await load(pairs, per_pair=2) == [200] * 32
    assert sim.stats.max_in_flight == 3  # shared again
    await none_held(redis_server)


_REGISTER = hashlib.sha1(scripts.REGISTER.encode()).hexdigest()


async def _commands(redis_server: RedisServer, during: Awaitable[Any]) -> list[str]:
    """The commands clients sent Redis while `during` ran (MONITOR; a script's own commands
    and the nodes' health PINGs left out)."""
    client = aioredis.Redis(port=redis_server.port)
    sent: list[str] = []
    ready = asyncio.Event()

    async def watch() -> None:
        async with client.monitor() as monitor:
            ready.set()
            async for entry in monitor.listen():
                words = str(entry["command"]).split()
                # The limits' and leases' scripts only: a resumable turn's channel (turns.py)
                # sends its registration (counted in test_round_trips.py) and its batches.
                if entry.get("client_type") != "lua" and words[0].upper() == "EVALSHA" \
                        and words[1] != _REGISTER:
                    sent.append("EVALSHA")

    task = asyncio.create_task(watch())
    await ready.wait()
    await asyncio.sleep(0.05)
    try:
        await during
        await asyncio.sleep(0.3)  # the release goes after the reply
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
    return sent


@pytest.mark.parametrize(("max_per_user", "calls"), [(32, 4), (0, 3)])
async def test_what_a_chat_turn_costs_in_lease_calls(
        tmp_path: Path, redis_server: RedisServer, simulator: SimServer,
        max_per_user: int, calls: int) -> None:
    # EVALSHAs (MONITOR): the limits; the user's waiting jobs counted (not when max_per_user
    # is 0); the lease, with the upstream rate's slot (no pace call of its own); the release.
    # Round trips (the node's batcher): the waiting count goes with the limits, so two are
    # waited on (limits, lease) either way; the release is a third, after the reply.
    config = make_config(tmp_path, simulator.url, queue={"max_per_user": max_per_user},
                         coordination={"redis_url": redis_server.url, "lease_renew_s": 60,
                                       "lease_ttl_s": 180, "health_interval_s": 60})
    node = await start(config)
    try:
        user = (await users(node, 1, "cost"))[0]
        assert (await chat(node, user, "warm up"))[0] == 200  # scripts loaded
        await asyncio.sleep(0.3)
        stats = node.app[keys.SHARED_LIMITS].batcher.stats
        before = dict(stats)
        sent = await _commands(redis_server, chat(node, user, "counted"))
        assert sent == ["EVALSHA"] * calls, sent
        assert stats["waited"] - before["waited"] == 2, (before, stats)
        batches = stats["turn_batches"] - before["turn_batches"]  # the turn's text and end
        assert stats["round_trips"] - before["round_trips"] - batches == 3, (before, stats)
        assert stats["calls"] - before["calls"] == calls + 1, (before, stats)  # + REGISTER
    finally:
        await node.stop()


async def test_a_turn_stopped_while_it_waits_for_a_place_gives_its_count_back(
        nodes: Nodes, make_sim: Callable[..., Awaitable[SimServer]],
        redis_server: RedisServer) -> None:
    sim = await make_sim(ttft_ms=1, tpot_ms=100, reply_tokens=30)  # 3 s a reply
    a, b = await nodes([sim], cap=0, queue={"max_running_per_user": 1})
    user = (await users(a, 1, "stop"))[0]
    first = asyncio.create_task(chat(a, user, "runs"))
    await until(lambda: sim.stats.in_flight == 1, what="the first chat runs")
    leaving = asyncio.create_task(chat(b, user, "waits, then its client leaves"))
    leases = b.app[keys.LEASES]
    assert leases is not None
    await until(lambda: len(leases.line) == 1, what="node b's turn waits for a place")
    leaving.cancel()  # the client leaves: the turn is stopped after chat.detached_grace_s
    await asyncio.gather(leaving, return_exceptions=True)
    await until(lambda: not len(leases.line), what="the stopped turn left the line")
    assert not first.done() and sim.stats.requests_total == 1  # it never reached the model
    waiting = f"chatgate:{{leases}}:queued:{user.id}"

    async def given_back() -> bool:
        return waiting not in await held(redis_server)
    await until(given_back, what="its count among the user's waiting jobs given back")
    assert not first.done()  # ...while the first still runs
    assert (await first)[0] == 200
    await none_held(redis_server)


async def test_a_lease_takes_its_upstream_slot_in_the_same_call(
        redis_server: RedisServer) -> None:
    # upstream_rps 2: a burst of one (a second's worth less the slot itself), then one slot
    # every 0.5 s. The wait comes back with the grant (Ticket.paced); RedisPace counts on the
    # same rate; while Redis is down the grant carries no slot (the pool's own pace decides).
    link = RedisLink(CoordinationConfig(redis_url=redis_server.url, timeout_s=0.3))
    await link.start()
    leases = RedisLeases(link, workers=0, background_cap=1, upstream_rps=2)
    local = AsyncLimiter(100, 1.0)
    pace = RedisPace(link, 2, local.acquire, leases.batcher)
    try:
        tickets = [Ticket(f"u{i}") for i in range(3)]
        began = time.monotonic()
        for ticket in tickets:
            before = Counter(leases.batcher.stats)  # after the first: its script loaded
            assert await leases.start(ticket, [("r", 0)]) == 0
        after = leases.batcher.stats
        assert after["round_trips"] - before["round_trips"] == 1  # the lease and its slot
        assert after["calls"] - before["calls"] == 1  # one EVALSHA: no PACE call of its own
        waits = [t.paced for t in tickets]
        assert waits[0] == 0 and waits[1] == 0, waits  # the burst
        assert waits[2] is not None and 0 < waits[2] <= 0.5, waits
        await pace.acquire()  # the next slot of the same rate: 1 s after the first's
        assert time.monotonic() - began >= 0.9
        assert pace.fallbacks == 0
        await redis_server.stop()
        late = Ticket("u9")
        assert await leases.start(late, [("r", 0)]) == 0  # this process's share decides
        assert late.paced is None and leases.stats["local"] == 1
    finally:
        await leases.close()
        await link.close()
