"""One turn at a time in a conversation across nodes (the turn's mark in the database): two
nodes on one database, no Redis; a turn streaming on A makes B refuse another turn in that
conversation (a new message, an edit, a regenerate) with nothing stored, and B takes the
next turn as soon as A's reply is stored, or as soon as a turn stopped before its first
word ends. On SQLite (one file) and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server import keys
from server.runner import Running, start
from server.storage import DatabaseUnavailable
from tests.support.app import User, make_config, register_over_http
from tests.support.sse import numbered
from vllm_sim import SimServer

WORDS = " ".join(f"w{i}" for i in range(40))


async def configure(sim: SimServer, **settings: Any) -> None:
    async with aiohttp.ClientSession() as s, \
            s.post(f"{sim.root_url}/sim/config", json=settings) as resp:
        assert resp.status == 200


@pytest.fixture(params=("sqlite", "postgres"))
async def nodes(request: pytest.FixtureRequest, tmp_path: Path,
                simulator: SimServer) -> AsyncIterator[tuple[Running, Running]]:
    """Nodes A and B on one database (a SQLite file, or the session's PostgreSQL)."""
    if request.param == "postgres":
        request.getfixturevalue("on_postgres")
    await configure(simulator, echo=True, tpot_ms=25, ttft_ms=5)
    a = await start(make_config(tmp_path, simulator.url))
    b = await start(make_config(tmp_path, simulator.url))
    yield a, b
    await b.stop()
    await a.stop()


async def post(url: str, user: User, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(url) as s, \
            s.post("/api/chat", json=body, headers=user.headers) as resp:
        return resp.status, await resp.json()


async def conversation(url: str, user: User, conv: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(url) as s, \
            s.get(f"/api/conversations/{conv}", headers=user.headers) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_a_turn_running_on_a_keeps_b_out_of_its_conversation(
        nodes: tuple[Running, Running]) -> None:
    a, b = nodes
    user = await register_over_http(a.url, "marked")
    status, first = await post(b.url, user, {"message": "hello"})
    assert status == 200
    conv = first["conversation_id"]
    question = (await conversation(b.url, user, conv))["messages"][0]["id"]
    before = await conversation(b.url, user, conv)
    async with aiohttp.ClientSession(a.url) as s:
        resp = await s.post("/api/chat", headers=user.headers,
                            json={"message": WORDS, "conversation_id": conv, "stream": True})
        assert resp.status == 200
        events = aiter(numbered(resp))
        while (await anext(events))[0] != "message":
            pass  # A's reply has begun
        for body in ({"message": "and now?", "conversation_id": conv},
                     {"message": "edited", "conversation_id": conv,
                      "edit_message_id": question},
                     {"conversation_id": conv, "regenerate": True}):
            status, refused = await post(b.url, user, body)
            assert status == 409 and refused["error"]["code"] == "turn_running", refused
        async for name, _, _ in events:
            last = name
        assert last == "done"
    # Nothing of B's was stored; A's question and reply were.
    after = await conversation(b.url, user, conv)
    assert after["message_count"] == before["message_count"] + 2
    assert after["messages"][-1]["content"] == WORDS
    # A's reply is stored before its client hears `done`: B takes the next turn at once.
    status, _ = await post(b.url, user, {"message": "next", "conversation_id": conv})
    assert status == 200


async def test_a_turn_stopped_before_its_first_word_frees_the_conversation_everywhere(
        nodes: tuple[Running, Running], simulator: SimServer) -> None:
    a, b = nodes
    user = await register_over_http(a.url, "stopper")
    status, first = await post(a.url, user, {"message": "hello"})
    conv = first["conversation_id"]
    await configure(simulator, ttft_ms=20_000)  # the next reply's first word never comes
    async with aiohttp.ClientSession(a.url) as s:
        resp = await s.post("/api/chat", headers=user.headers,
                            json={"message": "slow", "conversation_id": conv, "stream": True})
        events = aiter(numbered(resp))
        name, meta, _ = await anext(events)
        assert name == "meta"
        status, _ = await post(b.url, user, {"message": "too soon", "conversation_id": conv})
        assert status == 409
        async with s.post(f"/api/turns/{meta['turn_id']}/stop", headers=user.headers) as r:
            assert r.status == 202
        async for name, _, _ in events:
            last = name
        assert last == "error"
    await configure(simulator, ttft_ms=5)
    # Nothing was stored for the stopped turn; its mark went with it.
    status, _ = await post(b.url, user, {"message": "now", "conversation_id": conv})
    assert status == 200


async def newest(server: Running, user: User) -> int:
    """The user's most recently changed conversation."""
    async with aiohttp.ClientSession(server.url) as s, \
            s.get("/api/conversations", headers=user.headers) as resp:
        return int((await resp.json())["conversations"][0]["id"])


async def test_a_start_left_once_its_question_is_written_leaves_no_mark(
        server: Running, register: Any) -> None:
    """The question's write is shielded: a start cancelled meanwhile (the client left; the
    handler is cancelled) or told the commit was lost still has its question, and its mark,
    stored. No turn runs to end that mark: the next turn must not be refused for a minute."""
    user = await register("left")
    status, first = await post(server.url, user, {"message": "hello"})
    assert status == 200
    conv = first["conversation_id"]
    memory = server.app[keys.CHAT]._memory
    real = memory.add_user_message
    for lost in (asyncio.CancelledError(), DatabaseUnavailable("connection lost at commit")):
        async def written_then_lost(*args: Any, lost: BaseException = lost) -> Any:
            await real(*args)  # committed (the writer's future is shielded)...
            raise lost  # ...but the start never hears it

        for into in (conv, None):  # an existing conversation, and a new one
            memory.add_user_message = written_then_lost
            with pytest.raises(type(lost)):
                await server.app[keys.CHAT].start(user.id, "lost", into)
            memory.add_user_message = real
            target = into if into is not None else await newest(server, user)
            for _ in range(40):  # the mark is ended in the background
                status, body = await post(server.url, user, {"message": "next",
                                                             "conversation_id": target})
                if status != 409:
                    break
                await asyncio.sleep(0.05)
            assert status == 200, body
