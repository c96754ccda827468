"""Turns on any node: two (or three) chatgate nodes sharing one SQLite file and one real
redis-server; a turn started on one is resumed and stopped through another, and a node
killed mid-reply has its turns ended by a live one."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from server import keys
from server.config import Config
from server.runner import Running, start
from tests.support.app import User, make_config, register_over_http
from tests.support.procs import start_server_process
from tests.support.redis import RedisServer
from tests.support.sse import numbered
from vllm_sim import SimServer

WORDS = " ".join(f"w{i}" for i in range(60))  # echoed back word by word
Event = tuple[str, Any, int | None]
# Fast liveness so a dead node is noticed within a test's patience.
FAST = {"heartbeat_s": 0.2, "node_ttl_s": 0.8}


def node_config(tmp_path: Path, sim: SimServer, redis: RedisServer, name: str) -> Config:
    """A node on the shared database file and the shared Redis."""
    return make_config(tmp_path, sim.url, chat={"detached_grace_s": 5},
                       coordination={"redis_url": redis.url, "node_id": name, **FAST})


@pytest.fixture
async def slow_echo(simulator: SimServer) -> SimServer:
    """The simulator echoing the message back slowly (a reply of about two seconds)."""
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{simulator.root_url}/sim/config",
                          json={"echo": True, "tpot_ms": 30, "ttft_ms": 5}) as resp:
            assert resp.status == 200
    return simulator


@pytest.fixture
async def nodes(tmp_path: Path, slow_echo: SimServer,
                redis_server: RedisServer) -> AsyncIterator[list[Running]]:
    """Nodes A and B."""
    a = await start(node_config(tmp_path, slow_echo, redis_server, "a"))
    b = await start(node_config(tmp_path, slow_echo, redis_server, "b"))
    yield [a, b]
    await b.stop()
    await a.stop()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Poll until true (a safety net, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def begin(url: str, user: User, take: int) -> tuple[list[Event], aiohttp.ClientSession,
                                                           AsyncIterator[Event]]:
    """POST /api/chat streamed on a node; its events up to the `take`-th delta, the stream
    left open (an iterator of the rest)."""
    s = aiohttp.ClientSession(url)
    resp = await s.post("/api/chat", json={"message": WORDS, "stream": True},
                        headers=user.headers)
    assert resp.status == 200, await resp.text()
    rest = aiter(numbered(resp))
    got: list[Event] = []
    while sum(1 for name, _, _ in got if name == "message") < take:
        event = await anext(rest)
        if event[0] != "queued":
            got.append(event)
    return got, s, rest


async def resume(url: str, user: User, turn_id: str, last: int | None) -> list[Event]:
    """GET /api/turns/{id}/events on a node, to the end."""
    headers = dict(user.headers)
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    async with aiohttp.ClientSession(url) as s, \
            s.get(f"/api/turns/{turn_id}/events", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return [event async for event in numbered(resp)]


async def messages(url: str, user: User, conversation_id: int) -> list[dict[str, Any]]:
    """The conversation's messages, as a node shows them."""
    async with aiohttp.ClientSession(url) as s, \
            s.get(f"/api/conversations/{conversation_id}", headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        found: list[dict[str, Any]] = body["messages"]
        assert body["message_count"] == len(found)  # no second reply beside the one shown
        return found


async def running_turn_ids(url: str, user: User, conversation_id: int) -> list[str | None]:
    """`running_turn_id` of the conversation as a node shows it: alone, then in the list."""
    async with aiohttp.ClientSession(url, headers=user.headers) as s:
        async with s.get(f"/api/conversations/{conversation_id}") as resp:
            one = (await resp.json())["running_turn_id"]
        async with s.get("/api/conversations") as resp:
            listed = [c["running_turn_id"] for c in (await resp.json())["conversations"]
                      if c["id"] == conversation_id]
    return [one, *listed]


def text(events: list[Event]) -> str:
    return "".join(data["delta"] for name, data, _ in events if name == "message")


def last_id(events: list[Event]) -> int:
    return [ident for _, _, ident in events if ident is not None][-1]


async def test_a_turn_started_on_a_resumes_on_b_with_the_same_events(
        nodes: list[Running]) -> None:
    a, b = nodes
    user = await register_over_http(a.url, "ann")
    head, session, rest = await begin(a.url, user, take=5)
    try:
        turn_id = head[0][1]["turn_id"]
        conv = head[0][1]["conversation_id"]
        assert await running_turn_ids(b.url, user, conv) == [turn_id, turn_id]  # B knows
        seen = last_id(head)
        on_b = await resume(b.url, user, turn_id, seen)  # what A sent after `seen`, via B
        tail = [event async for event in rest]  # A's own stream, to its end
    finally:
        await session.close()
    whole_a = head + tail
    assert await running_turn_ids(b.url, user, conv) == [None, None]
    assert text(whole_a) == WORDS
    assert text(on_b) == text(tail) and text(head) + text(on_b) == WORDS
    assert on_b[-1][0] == tail[-1][0] == "done"
    assert on_b[-1][1] == tail[-1][1] and on_b[-1][2] == tail[-1][2]  # same end, same id
    ids = [ident for _, _, ident in on_b if ident is not None]
    assert ids == sorted(ids) and ids[0] > seen
    # From the start on B, after the end: meta, the whole reply, the same done.
    again = await resume(b.url, user, turn_id, None)
    assert again[0][0] == "meta" and again[0][1] == head[0][1]
    assert text(again) == WORDS and again[-1] == tail[-1]
    # Another user's turn id is as unknown on B as on A.
    other = await register_over_http(a.url, "bob")
    async with aiohttp.ClientSession(b.url) as s, \
            s.get(f"/api/turns/{turn_id}/events", headers=other.headers) as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "turn_not_found"


async def test_a_client_that_moves_to_b_keeps_the_turn_going_on_a(
        tmp_path: Path, slow_echo: SimServer, redis_server: RedisServer) -> None:
    # A short grace: A would stop the turn nobody follows there, but B's follower counts.
    configs = [make_config(tmp_path, slow_echo.url, chat={"detached_grace_s": 0.3},
                           coordination={"redis_url": redis_server.url, **FAST})
               for _ in range(2)]
    a, b = await start(configs[0]), await start(configs[1])
    try:
        user = await register_over_http(a.url, "cid")
        head, session, _ = await begin(a.url, user, take=3)
        await session.close()  # the client drops A ...
        on_b = await resume(b.url, user, head[0][1]["turn_id"], last_id(head))  # ... for B
        assert on_b[-1][0] == "done", on_b[-1]
        assert text(head) + text(on_b) == WORDS
    finally:
        await b.stop()
        await a.stop()


async def test_a_stop_sent_to_b_stops_the_turn_on_a(nodes: list[Running],
                                                    slow_echo: SimServer) -> None:
    a, b = nodes
    user = await register_over_http(a.url, "dee")
    head, session, rest = await begin(a.url, user, take=3)
    try:
        turn_id = head[0][1]["turn_id"]
        async with aiohttp.ClientSession(b.url) as s:
            async with s.post(f"/api/turns/{turn_id}/stop", headers=user.headers) as resp:
                assert resp.status == 202 and await resp.json() == {"stopped": True}
            tail = [event async for event in rest]  # A's stream ends as a stop ends it
            name, data, _ = tail[-1]
            assert name == "error" and data["error"]["code"] == "cancelled"
            assert len(text(head + tail)) < len(WORDS)
            # The end reaches the shared store with A's next batch (one tick), after the
            # reply is stored and A's client told: then every node knows it ended.
            conversation = data["error"]["conversation_id"]

            async def ended_on_b() -> bool:
                return await running_turn_ids(b.url, user, conversation) == [None, None]

            await until(ended_on_b)
            async with s.post(f"/api/turns/{turn_id}/stop", headers=user.headers) as resp:
                assert resp.status == 202 and await resp.json() == {"stopped": False}
    finally:
        await session.close()
    shown = await messages(b.url, user, data["error"]["conversation_id"])
    assert shown[-1]["id"] == data["error"]["partial_message_id"]
    assert shown[-1]["status"] == "incomplete" and shown[-1]["content"] == text(head + tail)
    async with aiohttp.ClientSession() as s, \
            s.get(f"{slow_echo.root_url}/sim/stats") as resp:
        assert (await resp.json())["aborted"] >= 1  # vLLM was told to stop generating


async def test_redis_down_keeps_the_owner_serving_and_b_answers_clearly(
        nodes: list[Running], redis_server: RedisServer) -> None:
    a, b = nodes
    user = await register_over_http(a.url, "eve")
    head, session, rest = await begin(a.url, user, take=3)
    try:
        await redis_server.stop()
        headers = {**user.headers, "Last-Event-ID": str(last_id(head))}
        async with aiohttp.ClientSession(b.url) as s, \
                s.get(f"/api/turns/{head[0][1]['turn_id']}/events", headers=headers) as resp:
            assert resp.status == 503  # told at once, not left hanging
            assert (await resp.json())["error"]["code"] == "turn_unavailable"
        tail = [event async for event in rest]
    finally:
        await session.close()
    assert tail[-1][0] == "done" and text(head + tail) == WORDS  # A served it from memory


async def test_a_node_killed_mid_reply_has_its_turn_ended_by_a_live_node(
        tmp_path: Path, slow_echo: SimServer, redis_server: RedisServer) -> None:
    db = tmp_path / "chatgate.db"
    b = await start(node_config(tmp_path, slow_echo, redis_server, "b"))
    c = await start(node_config(tmp_path, slow_echo, redis_server, "c"))  # B and C both sweep
    env = {f"coordination__{k}": v for k, v in FAST.items()}
    a = await start_server_process(db, slow_echo.url, coordination__redis_url=redis_server.url,
                                   coordination__node_id="a", **env)
    client = aioredis.Redis(port=redis_server.port)
    try:
        user = await register_over_http(a.url, "fay")
        head, session, _ = await begin(a.url, user, take=8)
        turn_id = head[0][1]["turn_id"]
        stream = f"chatgate:turn:{turn_id}:ev"
        await until(lambda: client.exists(stream))  # some of it has reached Redis
        await a.signal(signal.SIGKILL)
        await session.close()
        had = head[:3]  # meta and two deltas: what the client got before A died
        on_b = await resume(b.url, user, turn_id, last_id(had))  # it comes back through B
        name, data, _ = on_b[-1]
        assert name == "error" and data["error"]["code"] == "cancelled", on_b[-1]
        shown = await messages(b.url, user, data["error"]["conversation_id"])
        assert [m["role"] for m in shown] == ["user", "assistant"]  # kept once, by one node
        kept = shown[-1]
        assert kept["id"] == data["error"]["partial_message_id"]
        assert kept["status"] == "incomplete" and kept["content"]
        assert WORDS.startswith(kept["content"])
        assert text(had) + text(on_b) == kept["content"]  # B gave the rest of what was kept
        assert not await client.hgetall("chatgate:turns:running")
    finally:
        await client.aclose()
        await a.stop()
        await c.stop()
        await b.stop()


async def test_a_node_killed_before_its_reply_began_leaves_a_failed_reply_and_a_free_chat(
        tmp_path: Path, simulator: SimServer, redis_server: RedisServer) -> None:
    # The model's first word never comes before A dies: B ends the turn with an empty failed
    # reply (why, and Retry, on a later page), the turn's one outcome; its conversation takes
    # a new turn at once, on any node.
    db = tmp_path / "chatgate.db"
    b = await start(node_config(tmp_path, simulator, redis_server, "b"))
    env = {f"coordination__{k}": v for k, v in FAST.items()}
    a = await start_server_process(db, simulator.url, coordination__redis_url=redis_server.url,
                                   coordination__node_id="a", **env)
    try:
        user = await register_over_http(a.url, "hal")
        async with aiohttp.ClientSession(a.url) as s:
            async with s.post("/api/chat", json={"message": "hello"},
                              headers=user.headers) as resp:  # a first exchange, whole
                assert resp.status == 200
        async with aiohttp.ClientSession() as s, \
                s.post(f"{simulator.root_url}/sim/config", json={"ttft_ms": 60_000}) as resp:
            assert resp.status == 200
        async with aiohttp.ClientSession(b.url) as s, \
                s.get("/api/conversations", headers=user.headers) as resp:
            conversation = (await resp.json())["conversations"][0]["id"]
        session = aiohttp.ClientSession(a.url)
        resp = await session.post("/api/chat", headers=user.headers, json={
            "message": "never answered", "conversation_id": conversation, "stream": True})
        events = aiter(numbered(resp))
        name, meta, _ = await anext(events)
        assert name == "meta"
        await a.signal(signal.SIGKILL)
        await session.close()
        on_b = await resume(b.url, user, meta["turn_id"], 0)
        name, data, _ = on_b[-1]
        assert name == "error" and data["error"]["code"] == "cancelled", on_b[-1]
        shown = await messages(b.url, user, conversation)
        assert [m["role"] for m in shown][-2:] == ["user", "assistant"]
        failed = shown[-1]
        assert failed["status"] == "error" and failed["content"] == ""
        assert failed["error"]["code"] == "cancelled" and "stopped" in failed["error"]["message"]
        async with aiohttp.ClientSession() as s, \
                s.post(f"{simulator.root_url}/sim/config", json={"ttft_ms": 1}) as resp:
            assert resp.status == 200
        async with aiohttp.ClientSession(b.url) as s, \
                s.post("/api/chat", json={"message": "again", "conversation_id": conversation},
                       headers=user.headers) as resp:
            assert resp.status == 200, await resp.text()
    finally:
        await a.stop()
        await b.stop()


async def test_a_node_starting_never_ends_a_live_nodes_turn(
        nodes: list[Running], tmp_path: Path, slow_echo: SimServer,
        redis_server: RedisServer) -> None:
    a, _ = nodes
    user = await register_over_http(a.url, "gil")
    head, session, rest = await begin(a.url, user, take=3)
    c = await start(node_config(tmp_path, slow_echo, redis_server, "c"))
    try:
        sharing = c.app[keys.CHAT].sharing
        assert sharing is not None
        before = sharing.sweeps
        await until(lambda: _true(sharing.sweeps >= before + 2))  # it judged, twice
        tail = [event async for event in rest]
    finally:
        await session.close()
        await c.stop()
    assert tail[-1][0] == "done" and text(head + tail) == WORDS


async def _true(value: bool) -> bool:
    return value
