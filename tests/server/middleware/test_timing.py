"""server/middleware/timing.py alone: each request's status and time, told to every listener."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.middleware.timing import listen

Seen = list[tuple[str, int]]


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response(text="late")


async def fine(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def broken(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


async def served(seen: Seen) -> TestServer:
    app = web.Application(handler_args={"handler_cancellation": True})
    listen(app, lambda request, route, status, spent: seen.append((route, status)))
    app.router.add_get("/slow", slow)
    app.router.add_get("/fine", fine)
    app.router.add_get("/broken", broken)
    server = TestServer(app, handler_cancellation=True)
    await server.start_server()
    return server


async def wait_for(seen: Seen, count: int) -> None:
    for _ in range(500):  # a safety net, not a timing assertion
        if len(seen) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {seen}")


async def test_a_client_that_leaves_is_499_not_500() -> None:
    seen: Seen = []
    server = await served(seen)
    try:
        async with aiohttp.ClientSession() as s:
            with contextlib.suppress(TimeoutError):
                async with s.get(server.make_url("/slow"),
                                 timeout=aiohttp.ClientTimeout(total=0.3)):
                    pass
        await wait_for(seen, 1)
        assert seen == [("/slow", 499)]
    finally:
        await server.close()


async def test_answers_and_failures_keep_their_status() -> None:
    seen: Seen = []
    server = await served(seen)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(server.make_url("/fine")) as resp:
                assert resp.status == 200
            async with s.get(server.make_url("/broken")) as resp:
                assert resp.status == 500
            async with s.get(server.make_url("/nowhere")) as resp:
                assert resp.status == 404
        await wait_for(seen, 3)
        assert seen == [("/fine", 200), ("/broken", 500), ("unmatched", 404)]
    finally:
        await server.close()
