"""What each request costs in Redis: the round trips (pipelines) its node's batcher made, those
the request waited on (its path) and those after its answer (releases, tokens given back),
and which scripts Redis ran (MONITOR); and the upstream rate shared by both nodes."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from server import keys
from server.coordination import scripts
from server.runner import Running
from tests.support.app import User
from tests.support.pair import Pair, user_on
from tests.support.redis import RedisServer
from tests.support.replicas import metrics_text
from vllm_sim.settings import DEFAULT_MODEL

# Each node PINGs Redis every health interval: that is no request's cost.
BACKGROUND = {"PING"}
# Leases renewed once a minute (not every 3 s), heartbeats too: no renewal or heartbeat
# falls within a counted request.
QUIET = {"lease_renew_s": 60, "lease_ttl_s": 180, "heartbeat_s": 60, "node_ttl_s": 180}
# A script's SHA1 (what EVALSHA names) -> its name in server/coordination/scripts.py.
SCRIPTS = {hashlib.sha1(source.encode()).hexdigest(): name
           for name, source in vars(scripts).items() if name.isupper()}


class Monitor:
    """Redis's MONITOR: every command a client sent (a script's own commands left out), an
    EVALSHA by its script's name."""

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
                        words = str(entry["command"]).split()
                        name = words[0].upper()
                        if name == "EVALSHA":
                            name = SCRIPTS.get(words[1], "EVALSHA ?")
                        self.sent.append(name)

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
        """The scripts requests ran through the node's batcher: the limits', the leases' and
        a turn's registration (the background's left out; a turn's text and end go in its
        node's batches, server/coordination/turns.py, counted by `Trips.batches`)."""
        return dict(Counter(name for name in self.sent
                            if name not in BACKGROUND and name in SCRIPTS.values()))


class Trips:
    """A node's round trips to Redis over a stretch: every pipeline its one batcher sent
    (`total`), those that carried a call a request waited on (`path`), the EVALSHAs."""

    def __init__(self, node: Running) -> None:
        self._stats = node.app[keys.SHARED_LIMITS].batcher.stats
        self._before = Counter(self._stats)

    def spent(self) -> dict[str, int]:
        """Round trips waited on (`path`), all but the turns' batches (`total`), EVALSHAs
        (`calls`) and the batches of turns' text and ends (`batches`, shared by the node's
        turns of one tick)."""
        now = self._stats
        batches = now["turn_batches"] - self._before["turn_batches"]
        return {"path": now["waited"] - self._before["waited"],
                "total": now["round_trips"] - self._before["round_trips"] - batches,
                "calls": now["calls"] - self._before["calls"], "batches": batches}


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
    # Usage reaches Redis once a minute here, so only the turns' own calls are counted; the
    # user's waiting jobs are counted across nodes (queue.max_per_user, 32 by default).
    a, _ = await pair(limits={"monthly_tokens_per_user": 1_000_000},
                      usage={"flush_interval_s": 60}, coordination=QUIET)
    user = await user_on(a)
    conversation = await turn(a, user)  # scripts loaded, this month's use counted in Redis
    for conversation_id in (None, conversation):  # a new conversation, then an existing one
        async with Monitor(redis_server) as monitor:
            trips = Trips(a)
            await turn(a, user, conversation_id)
            await asyncio.sleep(0.2)  # the release goes after the reply; nothing more comes
        spent, sent = trips.spent(), monitor.cost()
        print(f"chat turn ({'new' if conversation_id is None else 'existing'} "
              f"conversation): {spent}, {sent}")
        # Scripts run: the limits (chat rate, new conversation, budget) and the user's waiting
        # job counted; the lease, which takes the upstream rate's slot too, and the turn's
        # registration (followed and stopped through any node); the lease's release.
        assert sent == {"LIMITS": 1, "ADMIT": 1, "ACQUIRE": 1, "REGISTER": 1,
                        "RELEASE": 1}, sent
        # Round trips waited on: the limits with the admission (one pipeline), the lease
        # with the registration (one). After the answer: the release, and the turn's text
        # and end in its node's batches (one or two ticks).
        batches = spent.pop("batches")
        assert spent == {"path": 2, "total": 3, "calls": 5}, spent
        assert 1 <= batches <= 2, batches
    # The same counts in /metrics (a scrape between two reads of them).
    stats = a.app[keys.SHARED_LIMITS].batcher.stats
    low = Counter(stats)
    metrics = await metrics_text(a)
    for kind, stat in (("all", "round_trips"), ("waited", "waited")):
        line = next(line for line in metrics.splitlines()
                    if line.startswith(f'chatgate_redis_round_trips_total{{kind="{kind}"}}'))
        assert low[stat] <= float(line.split()[-1]) <= stats[stat], (line, stats)


async def test_a_v1_request_costs_two_round_trips_and_one_more_for_tokens_given_back(
        pair: Pair, redis_server: RedisServer) -> None:
    a, _ = await pair(usage={"flush_interval_s": 60}, coordination=QUIET)
    user = await user_on(a)

    async def request(key: str) -> None:
        async with aiohttp.ClientSession(a.url) as s:
            async with s.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": DEFAULT_MODEL, "max_tokens": 50,
                                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200, await r.text()

    # The reply is 8 tokens of the 50 reserved: a key with a tpm gets the rest back, in a
    # LIMITS call of its own after the answer (or in the release's pipeline, if it is in time).
    for fields, given_back in (({"rpm": 100}, 0), ({"rpm": 100, "tpm": 100_000}, 1)):
        async with aiohttp.ClientSession(a.url) as s:
            async with s.post("/api/keys", json={"name": "k", **fields},
                              headers=user.headers) as resp:
                key = (await resp.json())["key"]
        await request(key)  # scripts loaded
        await asyncio.sleep(0.2)  # the warm-up's tokens given back are sent
        async with Monitor(redis_server) as monitor:
            trips = Trips(a)
            await request(key)
            await asyncio.sleep(0.3)  # tokens given back go at once; nothing more comes
        spent, sent = trips.spent(), monitor.cost()
        print(f"/v1 request with a key limited by {sorted(fields)}: {spent}, {sent}")
        # The key's limits and the budget with the user's waiting job counted (one round
        # trip), the lease with its upstream slot (one): waited on. Then the release, and for
        # a tpm the tokens given back.
        assert sent == {"LIMITS": 1 + given_back, "ADMIT": 1, "ACQUIRE": 1, "RELEASE": 1}, sent
        assert spent["path"] == 2 and spent["calls"] == 4 + given_back, spent
        assert 3 <= spent["total"] <= 3 + given_back, spent


async def test_concurrent_turns_share_round_trips(pair: Pair, redis_server: RedisServer) -> None:
    # N turns at once on one node (N/4 users, 4 turns each, whole replies), then N /v1
    # requests (a key with an rpm each user): the node's round trips (pipelines) per request,
    # those its requests waited on and all of them (releases included), and EVALSHAs per
    # request. Calls made while a pipeline is in flight go in the next, so under load a
    # request's share of a round trip falls; alone it is the 2 + 1 counted above.
    a, _ = await pair(usage={"flush_interval_s": 60}, coordination=QUIET,
                      queue={"workers": 16, "max_size": 1024})
    people = [await user_on(a) for _ in range(64)]
    v1_keys = []
    for user in people:
        async with aiohttp.ClientSession(a.url) as s:
            async with s.post("/api/keys", json={"name": "k", "rpm": 1000},
                              headers=user.headers) as resp:
                v1_keys.append((await resp.json())["key"])

    async def v1(key: str) -> None:
        async with aiohttp.ClientSession(a.url) as s:
            async with s.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": DEFAULT_MODEL, "max_tokens": 20,
                                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200, await r.text()

    await turn(a, people[0])  # scripts loaded
    await v1(v1_keys[0])
    for n in (1, 8, 64, 256):
        for what, one in (("chat", lambda i: turn(a, people[i % 64])),
                          ("v1", lambda i: v1(v1_keys[i % 64]))):
            await asyncio.sleep(0.3)  # the last round's releases are sent
            trips = Trips(a)
            await asyncio.gather(*(one(i) for i in range(n)))
            await asyncio.sleep(0.3)  # this round's releases are sent
            spent = trips.spent()
            print(f"{what} x{n:>3}: per request {spent['path'] / n:.2f} round trips waited on, "
                  f"{spent['total'] / n:.2f} in all, {spent['calls'] / n:.2f} calls, "
                  f"{spent['batches'] / n:.2f} turn batches ({spent})")
            assert spent["path"] <= 2 * n and spent["total"] <= 3 * n, spent
            # releases sent meanwhile go in one call
            assert spent["calls"] <= (5 if what == "chat" else 4) * n, spent


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
