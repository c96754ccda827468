"""The request counter alone: one count per request under 'METHOD /route/{pattern}'."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from server import keys
from server.middleware.metrics import setup_metrics

Client = TestClient[web.Request, web.Application]


async def item(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info.get("id")})


async def broken(request: web.Request) -> web.Response:
    raise web.HTTPBadRequest()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path) -> Client:
    (tmp_path / "app.css").write_text("")
    app = web.Application()
    setup_metrics(app)
    app.router.add_get(r"/api/items/{id:\d+}", item)
    app.router.add_post("/api/items", item)
    app.router.add_get("/api/broken", broken)
    app.router.add_static("/static/", tmp_path)
    return await aiohttp_client(app)


def counts(client: Client) -> dict[str, int]:
    return dict(client.app[keys.METRICS].requests_seen())


def test_setup_installs_an_empty_counter() -> None:
    app = web.Application()
    setup_metrics(app)
    assert app[keys.METRICS].requests_seen() == Counter()
    assert len(app.middlewares) == 1


async def test_counts_by_route_pattern_not_by_url(client: Client) -> None:
    """The key is the canonical pattern: the variable's name, not its regex."""
    for path in ("/api/items/1", "/api/items/2", "/api/items/300"):
        assert (await client.get(path)).status == 200
    assert (await client.post("/api/items")).status == 200
    assert counts(client) == {"GET /api/items/{id}": 3, "POST /api/items": 1}


async def test_head_is_counted_apart_from_get(client: Client) -> None:
    assert (await client.head("/api/items/1")).status == 200
    assert counts(client) == {"HEAD /api/items/{id}": 1}


async def test_unmatched_requests_are_counted_together(client: Client) -> None:
    assert (await client.get("/nowhere")).status == 404
    assert (await client.get("/api/items/not-a-number")).status == 404
    assert (await client.delete("/elsewhere")).status == 404
    assert counts(client) == {"GET unmatched": 2, "DELETE unmatched": 1}


async def test_wrong_method_counts_as_unmatched(client: Client) -> None:
    assert (await client.delete("/api/items")).status == 405
    assert counts(client) == {"DELETE unmatched": 1}


async def test_failed_requests_are_counted(client: Client) -> None:
    assert (await client.get("/api/broken")).status == 400
    assert counts(client) == {"GET /api/broken": 1}


async def test_static_files_count_under_their_prefix(client: Client) -> None:
    assert (await client.get("/static/app.css")).status == 200
    assert (await client.get("/static/missing.css")).status == 404
    assert counts(client) == {"GET /static": 2}
