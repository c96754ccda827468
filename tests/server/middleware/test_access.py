"""server/middleware/access.py alone: request ids and the access log line."""

from __future__ import annotations

import asyncio
import io

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server import keys
from server.middleware.access import request_id_of, setup_access


async def echo_id(request: web.Request) -> web.Response:
    """Answers with the id the middleware gave the request."""
    request[keys.UPSTREAM_S] = 0.25
    return web.Response(text=request_id_of(request))


def make_app(access_log: bool = True, stream: io.StringIO | None = None) -> web.Application:
    app = web.Application()
    setup_access(app, access_log, stream)
    app.router.add_get("/things/{id}", echo_id)
    return app


async def lines_of(stream: io.StringIO, count: int) -> list[str]:
    """The log's lines once `count` have been written (the writer thread batches them)."""
    for _ in range(200):
        lines = stream.getvalue().splitlines()
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.01)
    return stream.getvalue().splitlines()


async def test_a_sane_client_id_is_kept_and_returned(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client: TestClient = await aiohttp_client(make_app())
    resp = await client.get("/things/1", headers={"X-Request-Id": "abc-123.x:y"})
    assert await resp.text() == "abc-123.x:y" and resp.headers["X-Request-Id"] == "abc-123.x:y"


@pytest.mark.parametrize("given", ["", "has space", "x" * 129, "semi;colon", "new\u00e9"])
async def test_an_odd_or_missing_id_is_replaced(aiohttp_client, given: str) -> None:  # type: ignore[no-untyped-def]
    client: TestClient = await aiohttp_client(make_app())
    headers = {"X-Request-Id": given} if given else {}
    resp = await client.get("/things/1", headers=headers)
    made = await resp.text()
    assert made != given and len(made) == 32 and resp.headers["X-Request-Id"] == made


async def test_one_log_line_per_request_with_route_not_path(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    client: TestClient = await aiohttp_client(make_app(stream=stream))
    await client.get("/things/secret-looking-id", headers={"X-Request-Id": "r1"})
    await client.get("/nowhere")
    lines = await lines_of(stream, 2)
    assert len(lines) == 2 and all(" INFO chatgate.access: " in line for line in lines)
    assert "method=GET route=/things/{id} status=200" in lines[0]
    assert "request_id=r1" in lines[0] and "upstream_ms=250.0" in lines[0]
    assert "secret-looking-id" not in lines[0]  # the pattern is logged, never the path
    assert "route=unmatched status=404" in lines[1]


async def test_the_log_can_be_turned_off(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    client: TestClient = await aiohttp_client(make_app(access_log=False, stream=stream))
    resp = await client.get("/things/1")
    assert resp.headers["X-Request-Id"]  # ids still work
    await asyncio.sleep(0.3)  # three of the writer's batches, had there been one
    assert stream.getvalue() == ""


async def test_made_ids_are_all_different(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client: TestClient = await aiohttp_client(make_app(access_log=False))
    made = set()
    for _ in range(50):
        resp = await client.get("/things/1")
        made.add(resp.headers["X-Request-Id"])
    assert len(made) == 50
