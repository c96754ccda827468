"""CORS alone (with the error middleware inside it): only listed origins, with credentials."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from server.middleware.cors import setup_cors
from server.middleware.errors import ApiError, setup_errors

Client = TestClient[web.Request, web.Application]
LISTED = "https://app.example"
OTHER_LISTED = "http://localhost:5173"
FOREIGN = "https://evil.example"
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Credentials",
                "Access-Control-Allow-Methods", "Access-Control-Allow-Headers",
                "Access-Control-Max-Age")


async def thing(request: web.Request) -> web.Response:
    return web.json_response({"method": request.method})


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Vary": "Accept-Encoding"})
    await response.prepare(request)
    await response.write(b"data: one\n\n")
    await response.write_eof()
    return response


async def conflict(request: web.Request) -> web.Response:
    raise ApiError(409, "conflict", "taken")


def make_app(origins: tuple[str, ...]) -> web.Application:
    """CORS outermost, then errors, as the real app installs them."""
    app = web.Application()
    setup_cors(app, origins)
    setup_errors(app)
    app.router.add_get("/api/thing", thing)
    app.router.add_post("/api/thing", thing)
    app.router.add_get("/api/conflict", conflict)
    app.router.add_get("/api/stream", stream)
    return app


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_app((LISTED, OTHER_LISTED)))


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type"}


def assert_no_cors(headers: Mapping[str, str]) -> None:
    for name in CORS_HEADERS:
        assert name not in headers


@pytest.mark.parametrize("origin", [LISTED, OTHER_LISTED])
async def test_preflight_from_listed_origin_is_answered(client: Client, origin: str) -> None:
    resp = await client.options("/api/thing", headers=preflight(origin))
    assert resp.status == 204
    assert await resp.read() == b""
    assert resp.headers["Access-Control-Allow-Origin"] == origin
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert resp.headers["Access-Control-Allow-Methods"] == "GET, POST, PUT, PATCH, DELETE, OPTIONS"
    assert resp.headers["Access-Control-Allow-Headers"] == \
        "Authorization, Content-Type, X-Session-Id"
    assert resp.headers["Access-Control-Max-Age"] == "600"
    assert resp.headers["Vary"] == "Origin"


async def test_preflight_is_answered_even_where_no_route_takes_the_method(client: Client) -> None:
    """The handler is never reached for a preflight, so a GET-only path still gets 204."""
    resp = await client.options("/api/conflict", headers=preflight(LISTED, "GET"))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == LISTED


@pytest.mark.parametrize("origin", [FOREIGN, "https://app.example.evil.example",
                                    "https://APP.example", "https://app.example/",
                                    "http://app.example", "null"])
async def test_preflight_from_other_origin_is_not_answered(client: Client, origin: str) -> None:
    """Matching is exact: the request goes to the router, which has no OPTIONS route."""
    resp = await client.options("/api/thing", headers=preflight(origin))
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    assert_no_cors(resp.headers)
    assert resp.headers["Vary"] == "Origin"  # a cache must not give this answer to a listed one


async def test_options_without_request_method_is_not_a_preflight(client: Client) -> None:
    resp = await client.options("/api/thing", headers={"Origin": LISTED})
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    assert resp.headers["Access-Control-Allow-Origin"] == LISTED
    assert "Access-Control-Allow-Methods" not in resp.headers


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_actual_request_from_listed_origin_is_tagged(client: Client, method: str) -> None:
    resp = await client.request(method, "/api/thing", headers={"Origin": LISTED})
    assert resp.status == 200
    assert await resp.json() == {"method": method}
    assert resp.headers["Access-Control-Allow-Origin"] == LISTED
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert resp.headers["Vary"] == "Origin"
    for name in ("Access-Control-Allow-Methods", "Access-Control-Allow-Headers",
                 "Access-Control-Max-Age"):
        assert name not in resp.headers


async def test_actual_request_from_foreign_origin_is_served_untagged(client: Client) -> None:
    """The server answers; the browser withholds the body because nothing allows it."""
    resp = await client.get("/api/thing", headers={"Origin": FOREIGN})
    assert resp.status == 200
    assert_no_cors(resp.headers)
    assert resp.headers["Vary"] == "Origin"


async def test_request_without_origin_is_untagged(client: Client) -> None:
    resp = await client.get("/api/thing")
    assert resp.status == 200
    assert_no_cors(resp.headers)
    assert resp.headers["Vary"] == "Origin"


async def test_streamed_response_carries_cors_headers(client: Client) -> None:
    """A stream's headers leave at prepare(), before the handler returns: tagged anyway."""
    resp = await client.get("/api/stream", headers={"Origin": LISTED})
    assert resp.status == 200
    assert await resp.text() == "data: one\n\n"
    assert resp.headers["Access-Control-Allow-Origin"] == LISTED
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert resp.headers["Vary"] == "Accept-Encoding, Origin"


async def test_listed_origin_may_read_request_id_and_retry_after(client: Client) -> None:
    resp = await client.get("/api/thing", headers={"Origin": LISTED})
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"X-Request-Id", "Retry-After"} <= exposed


async def test_api_error_responses_carry_cors_headers(client: Client) -> None:
    resp = await client.get("/api/conflict", headers={"Origin": LISTED})
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "conflict"
    assert resp.headers["Access-Control-Allow-Origin"] == LISTED
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"


async def test_router_errors_carry_cors_headers(client: Client) -> None:
    """An unmatched route's 404 is readable by the listed origin too."""
    resp = await client.get("/api/missing", headers={"Origin": LISTED})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    assert resp.headers["Access-Control-Allow-Origin"] == LISTED


async def test_no_origins_configured_adds_nothing(aiohttp_client: AiohttpClient) -> None:
    app = make_app(())
    assert len(app.middlewares) == 1  # only the error middleware
    client = await aiohttp_client(app)
    resp = await client.options("/api/thing", headers=preflight(LISTED))
    assert resp.status == 405
    assert_no_cors(resp.headers)
    resp = await client.get("/api/thing", headers={"Origin": LISTED})
    assert resp.status == 200
    assert_no_cors(resp.headers)
    assert "Vary" not in resp.headers
