"""Helpers for tests with two app instances (two nodes) on one database and one Redis."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from server.runner import Running
from tests.support.app import User, register_over_http

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
