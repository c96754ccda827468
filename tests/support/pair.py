"""Helpers for tests with two app instances (two nodes) on one database and one Redis."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp

from server import keys
from server.runner import Running
from tests.support.app import User, register_over_http
from tests.support.sse import events
from tests.support.storage import value
from vllm_sim import SimServer
from workers.errors import OwnerBlocked

Pair = Callable[..., Awaitable[tuple[Running, Running]]]  # the `pair` fixture: (a, b)
names = itertools.count(1)


async def chat(server: Running, user: User, message: str = "hello") -> int:
    """One whole-reply turn in a new conversation; its status."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/chat", json={"message": message},
                          headers=user.headers) as resp:
            await resp.read()
            return resp.status


async def user_on(server: Running) -> User:
    """A new user (the database is shared: they exist on both nodes)."""
    return await register_over_http(server.url, f"shared{next(names)}")


async def alternate(a: Running, b: Running, times: int,
                    call: Callable[[Running], Awaitable[int]]) -> list[int]:
    """`call` on a, b, a, b, ...: the statuses."""
    return [await call(a if i % 2 == 0 else b) for i in range(times)]


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll until `check()` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def slow_replies(simulator: SimServer, slow: bool) -> None:
    """Make the simulator's replies long (about 12 s) or short again."""
    body = {"tpot_ms": 30, "reply_tokens": 400} if slow else {"tpot_ms": 1, "reply_tokens": 8}
    async with aiohttp.ClientSession() as s:
        async with s.post(simulator.root_url + "/sim/config", json=body) as resp:
            assert resp.status == 200


async def streaming(s: aiohttp.ClientSession, user: User) -> tuple[aiohttp.ClientResponse, int]:
    """Start a streamed chat and read until two deltas came (the reply is running); the
    response, to read on, and its conversation's id."""
    resp = await s.post("/api/chat", json={"message": "tell me a long story", "stream": True},
                        headers=user.headers)
    assert resp.status == 200, await resp.text()
    conversation, deltas = 0, 0
    async for name, data in events(resp):
        if name == "meta":
            conversation = data["conversation_id"]
        deltas += name == "message"
        if deltas == 2:
            return resp, conversation
    raise AssertionError("the stream ended before the reply ran")


async def ending(resp: aiohttp.ClientResponse) -> tuple[str, Any]:
    """Read a stream to its end: the last event."""
    last: tuple[str, Any] = ("", None)
    async for name, data in events(resp):
        last = (name, data)
    return last


async def reply_stored(server: Running, conversation: int) -> str:
    """The status of the conversation's reply, once stored (polled, generously)."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while True:
        status = await value(server, "SELECT status FROM messages WHERE conversation_id = ? "
                             "AND role = 'assistant'", conversation)
        if status is not None:
            return cast(str, status)
        assert asyncio.get_running_loop().time() < deadline, "no reply stored"
        await asyncio.sleep(0.02)


def blocked(server: Running, user_id: int) -> bool:
    """Whether the node's pool refuses the user's new jobs (as for a request already past
    authentication when the change came)."""
    try:
        server.app[keys.POOL].reserve(user_id).release()
    except OwnerBlocked:
        return True
    return False
