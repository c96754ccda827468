"""Parts of the cluster failing under load, everything through HAProxy: a node SIGKILLed mid-
stream loses no acknowledged message and each of its streams is resumed on another node to an
end; a restarted node rejoins; Redis restarted costs no request; PostgreSQL down is 503s and
its return needs no chatgate restart."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.support.app import User
from tests.support.cluster import Cluster, Shape, start_cluster, until
from tests.support.resume import Streamed, conversation, resume, stream_chat

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(150)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """One topology for the module."""
    # Room for every stream of the kill test at once on the replicas.
    running = await start_cluster(tmp_path_factory.mktemp("cluster"), Shape(replica_cap=16))
    yield running
    await running.close()


def _message(conv: dict[str, Any], message_id: int) -> dict[str, Any]:
    for message in conv["messages"]:
        if message["id"] == message_id:
            return dict(message)
    raise AssertionError(f"message {message_id} is not stored: {conv['messages']}")


async def _check_stored(cluster: Cluster, user: User, turn: Streamed) -> None:
    """The user's message is stored; the reply is stored as the client saw it end: complete
    with `done`, or the partial text as `incomplete` with an `error` naming it. (A node
    killed may have sent its client a little text it had not shared yet: the partial text
    kept is then what the client saw, cut short by that much.)"""
    assert turn.meta is not None
    conv = await conversation(cluster.url, user, turn.meta["conversation_id"])
    asked = _message(conv, turn.meta["user_message_id"])
    assert asked["role"] == "user" and asked["content"] == turn.message
    if turn.end == "done":
        reply = _message(conv, turn.end_data["message_id"])
        assert reply["status"] == "complete" and reply["content"] == turn.text
    else:
        assert turn.end == "error", turn
        error = turn.end_data["error"]
        reply = _message(conv, error["partial_message_id"])
        assert reply["status"] == "incomplete", (reply, error)
        assert turn.text.startswith(reply["content"]), (turn.text, reply)


async def test_a_node_killed_mid_stream_loses_nothing_acknowledged(cluster: Cluster) -> None:
    """15 users stream a slow reply each; once every stream has its first words, node1 gets
    SIGKILL. Each stream it was serving breaks; the client resumes it through the LB from its
    last event id and reads it to an end (the reply, or its partial text stored as
    incomplete and said so); every acknowledged message is stored."""
    await cluster.set_replicas(tpot_ms=60, reply_tokens=40)  # a reply takes ~2.4 s
    users = [await cluster.register(f"killed{i}") for i in range(15)]
    try:
        turns = [Streamed(f"tell me {i}") for i in range(len(users))]
        tasks = asyncio.gather(*(stream_chat(cluster.url, user, turn.message, turn)
                                 for user, turn in zip(users, turns, strict=True)))
        await asyncio.wait_for(asyncio.gather(*(t.first_delta.wait() for t in turns)), 60)
        await cluster.kill_node(cluster.nodes[0])
        await tasks
    finally:
        await cluster.set_replicas(tpot_ms=10, reply_tokens=8)
    try:
        assert all(t.acknowledged for t in turns), [t.end_data for t in turns
                                                    if not t.acknowledged]
        cut = [t for t in turns if t.end is None]
        assert cut, "no stream was on the killed node (leastconn should have spread them)"
        for user, turn in zip(users, turns, strict=True):
            if turn.end is None:
                await resume(cluster.url, user, turn)
            await _check_stored(cluster, user, turn)
    finally:  # the next tests get the whole cluster
        await cluster.restart_node(cluster.nodes[0])


async def test_a_node_drained_by_sigterm_drops_no_stream(cluster: Cluster) -> None:
    """One step of a rolling deploy: node2 gets SIGTERM in the middle of 12 streams while
    12 users keep chatting. Every stream ends with its whole reply (node2's within
    server.shutdown_grace_s), each of the 144 chats sent meanwhile is answered (node2 drains:
    out of HAProxy's rotation before its listener closes), and node2 exits cleanly, then
    rejoins."""
    await cluster.set_replicas(tpot_ms=40, reply_tokens=30)  # ~1.2 s, within the 5 s grace
    users = [await cluster.register(f"drained{i}") for i in range(12)]
    node = cluster.nodes[1]
    assert node.proc is not None
    try:
        turns = [Streamed(f"drain {i}") for i in range(len(users))]
        tasks = asyncio.gather(*(stream_chat(cluster.url, user, turn.message, turn)
                                 for user, turn in zip(users, turns, strict=True)))
        await asyncio.wait_for(asyncio.gather(*(t.first_delta.wait() for t in turns)), 60)
        draining = asyncio.create_task(node.proc.signal(signal.SIGTERM))

        async def keep_chatting(user: User) -> int:  # short replies, many: each must come
            for i in range(12):
                await _chat(cluster.url, user, f"meanwhile {i}", max_tokens=2)
            return 12
        meanwhile = await asyncio.gather(*(keep_chatting(user) for user in users))
        await tasks
        assert await draining == 0
    finally:
        await cluster.set_replicas(tpot_ms=10, reply_tokens=8)
        await cluster.restart_node(node)
    assert sum(meanwhile) == 12 * len(users)
    assert [t.end for t in turns] == ["done"] * len(turns), [t.end_data for t in turns]
    for user, turn in zip(users, turns, strict=True):
        await _check_stored(cluster, user, turn)


async def test_a_restarted_node_rejoins(cluster: Cluster) -> None:
    """node3 killed, then started again on its address: HAProxy's checks put it back, it
    serves requests that come through the LB, and it shares the others' data."""
    user = await cluster.register("rejoin")
    node = cluster.nodes[2]
    assert cluster.lb is not None
    await cluster.kill_node(node)
    await cluster.lb.wait_states({node.name: "DOWN"})
    conv_id = (await _chat(cluster.url, user, "while node3 was away"))["conversation_id"]
    await cluster.restart_node(node)
    before = await cluster.lb.sessions()
    for i in range(9):
        await _chat(cluster.url, user, f"back {i}", conversation_id=conv_id)
    after = await cluster.lb.sessions()
    assert after[node.name] > before[node.name], (before, after)
    conv = await conversation(node.url, user, conv_id)  # what the others stored, from it
    assert len(conv["messages"]) == 20


async def _chat(base: str, user: User, message: str, **fields: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession(base) as s:
        async with s.post("/api/chat", json={"message": message, **fields},
                          headers=user.headers) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())


async def _load(cluster: Cluster, users: list[User], rounds: int) -> list[Streamed]:
    """Each user chats `rounds` times in a row, streaming every other turn; every turn."""
    async def one(user: User) -> list[Streamed]:
        done = []
        for i in range(rounds):
            if i % 2:
                done.append(await stream_chat(cluster.url, user, f"load {i}"))
            else:
                turn = Streamed(f"load {i}")
                try:
                    body = await _chat(cluster.url, user, turn.message)
                    turn.status, turn.end = 200, "done"
                    turn.meta = {"conversation_id": body["conversation_id"]}
                except AssertionError as failed:
                    turn.end_data = {"failed": str(failed)}
                done.append(turn)
        return done
    return [turn for turns in await asyncio.gather(*(one(u) for u in users)) for turn in turns]


async def test_redis_restarted_mid_load_costs_no_request(cluster: Cluster) -> None:
    """Eight users chat through the LB while Redis is killed and started again (empty): every
    request is answered and every stream ends with its reply."""
    await cluster.set_replicas(tpot_ms=20, reply_tokens=8)
    users = [await cluster.register(f"redis{i}") for i in range(8)]
    try:
        load = asyncio.create_task(_load(cluster, users, 8))
        await asyncio.sleep(0.5)  # the load is under way (not a timing assertion)
        await cluster.redis.stop()
        await asyncio.sleep(1.5)  # an outage longer than the nodes' health check of it
        await cluster.redis.start()
        turns = await load
    finally:
        await cluster.set_replicas(tpot_ms=10, reply_tokens=8)
    failed = [(t.status, t.end_data) for t in turns if t.end != "done"]
    assert not failed and len(turns) == 64, failed


async def test_postgres_down_is_503_and_its_return_needs_no_restart(cluster: Cluster) -> None:
    """PostgreSQL stopped: what needs it answers 503 database_unavailable (JSON, from
    chatgate, not the LB's page), never a 500, and /health stays up; PostgreSQL started
    again: the same nodes (same processes) serve again."""
    user = await cluster.register("pgdown")
    pids = [node.proc.proc.pid for node in cluster.nodes if node.proc is not None]
    await cluster.stop_postgres()
    try:
        async def unavailable() -> bool:
            status, body = await _get(cluster.url, "/api/conversations", user)
            assert status in (200, 503), (status, body)
            return status == 503 and body["error"]["code"] == "database_unavailable"
        await until(unavailable, what="503 while PostgreSQL is down")
        async with aiohttp.ClientSession(cluster.url) as s:
            async with s.post("/api/chat", json={"message": "anyone?"},
                              headers=user.headers) as resp:
                assert resp.status == 503, await resp.text()
                assert (await resp.json())["error"]["code"] == "database_unavailable"
        for node in cluster.nodes:
            assert (await _get(node.url, "/health", user))[0] == 200
    finally:
        await cluster.start_postgres()

    async def back() -> bool:
        return (await _get(cluster.url, "/api/conversations", user))[0] == 200
    await until(back, what="200 once PostgreSQL is back")
    await _chat(cluster.url, user, "back again")
    assert [node.proc.proc.pid for node in cluster.nodes if node.proc is not None] == pids


async def _get(base: str, path: str, user: User) -> tuple[int, Any]:
    async with aiohttp.ClientSession(base) as s:
        async with s.get(path, headers=user.headers) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()
