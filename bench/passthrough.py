"""The design's ceiling: a bare aiohttp + uvloop pass-through to the model server over one
shared ClientSession (no auth, no queue, no storage). `python bench/passthrough.py PORT URL`."""

from __future__ import annotations

import sys

import aiohttp
import uvloop
from aiohttp import web


async def make_app(upstream: str) -> web.Application:
    app = web.Application()
    session: aiohttp.ClientSession | None = None

    async def forward(request: web.Request) -> web.StreamResponse:
        assert session is not None
        body = await request.read()
        async with session.post(upstream + "/chat/completions", data=body,
                                headers={"Content-Type": "application/json"}) as up:
            if up.content_type != "text/event-stream":
                return web.Response(body=await up.read(), status=up.status,
                                    content_type="application/json")
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def ctx(_: web.Application):  # type: ignore[no-untyped-def]
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        yield
        await session.close()

    app.cleanup_ctx.append(ctx)
    app.router.add_post("/v1/chat/completions", forward)
    return app


if __name__ == "__main__":
    uvloop.install()
    web.run_app(make_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]),
                access_log=None, print=None)
