"""The CSRF check alone: a stub marks requests cookie-authenticated, as auth would."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from server import keys
from server.middleware.csrf import setup_csrf
from server.middleware.errors import setup_errors

Client = TestClient[web.Request, web.Application]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LISTED = "https://app.example"
FOREIGN = "https://evil.example"
NO_ORIGIN = "cookie-authenticated requests must carry an Origin"
CROSS_SITE = "cross-site request refused"


@web.middleware
async def mark_cookie(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stand-in for the auth middleware: `X-Test-Cookie: 1` means the cookie authenticated."""
    if request.headers.get("X-Test-Cookie") == "1":
        request[keys.VIA_COOKIE] = True
    return await handler(request)


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"method": request.method})


def make_app(trust_forwarded: bool) -> web.Application:
    app = web.Application()
    setup_errors(app)
    app.middlewares.append(mark_cookie)
    setup_csrf(app, trust_forwarded, (LISTED,))
    app.router.add_route("*", "/api/thing", echo)
    return app


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_app(trust_forwarded=False))


def own(client: Client, scheme: str = "http") -> str:
    """The origin a browser would send for a page served by this test server."""
    return f"{scheme}://{client.server.host}:{client.server.port}"


def cookie(**headers: str) -> dict[str, str]:
    return {"X-Test-Cookie": "1", **headers}


async def assert_refused(resp: ClientResponse, message: str) -> None:
    assert resp.status == 403
    assert await resp.json() == {"error": {"code": "csrf_rejected", "message": message}}


async def test_cookie_post_without_origin_or_referer_is_refused(client: Client) -> None:
    await assert_refused(await client.post("/api/thing", headers=cookie()), NO_ORIGIN)


async def test_cookie_post_from_foreign_origin_is_refused(client: Client) -> None:
    resp = await client.post("/api/thing", headers=cookie(Origin=FOREIGN))
    await assert_refused(resp, CROSS_SITE)


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1",  # no port: another origin
    "http://localhost:{port}",  # same machine, different host name
    "https://127.0.0.1:{port}",  # different scheme
    "https://app.example.evil.example",
    "https://app.example:443",
])
async def test_near_misses_are_refused(client: Client, origin: str) -> None:
    origin = origin.format(port=client.server.port)
    await assert_refused(await client.post("/api/thing", headers=cookie(Origin=origin)),
                         CROSS_SITE)


async def test_own_origin_is_allowed(client: Client) -> None:
    resp = await client.post("/api/thing", headers=cookie(Origin=own(client)))
    assert resp.status == 200
    assert await resp.json() == {"method": "POST"}


async def test_listed_origin_is_allowed(client: Client) -> None:
    resp = await client.post("/api/thing", headers=cookie(Origin=LISTED))
    assert resp.status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_every_unsafe_method_is_checked(client: Client, method: str) -> None:
    resp = await client.request(method, "/api/thing", headers=cookie(Origin=FOREIGN))
    await assert_refused(resp, CROSS_SITE)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
async def test_safe_methods_are_never_checked(client: Client, method: str) -> None:
    resp = await client.request(method, "/api/thing", headers=cookie(Origin=FOREIGN))
    assert resp.status == 200


async def test_requests_not_marked_cookie_authenticated_are_never_checked(client: Client) -> None:
    """Bearer-token requests cannot be forged by another site, so no Origin is needed."""
    resp = await client.post("/api/thing", headers={"Origin": FOREIGN})
    assert resp.status == 200
    resp = await client.post("/api/thing")
    assert resp.status == 200


async def test_own_referer_stands_in_for_a_missing_origin(client: Client) -> None:
    resp = await client.post("/api/thing",
                             headers=cookie(Referer=own(client) + "/chat?id=3#top"))
    assert resp.status == 200


async def test_listed_referer_is_allowed(client: Client) -> None:
    resp = await client.post("/api/thing", headers=cookie(Referer=LISTED + "/page"))
    assert resp.status == 200


async def test_foreign_referer_is_refused(client: Client) -> None:
    resp = await client.post("/api/thing", headers=cookie(Referer=FOREIGN + "/attack"))
    await assert_refused(resp, CROSS_SITE)


@pytest.mark.parametrize("referer", ["not a url", "/relative/path", "//host-only"])
async def test_unparseable_referer_counts_as_no_origin(client: Client, referer: str) -> None:
    await assert_refused(await client.post("/api/thing", headers=cookie(Referer=referer)),
                         NO_ORIGIN)


async def test_null_origin_falls_back_to_referer(client: Client) -> None:
    resp = await client.post("/api/thing",
                             headers=cookie(Origin="null", Referer=own(client) + "/"))
    assert resp.status == 200
    await assert_refused(await client.post("/api/thing", headers=cookie(Origin="null")),
                         NO_ORIGIN)


async def test_foreign_origin_is_not_rescued_by_own_referer(client: Client) -> None:
    resp = await client.post("/api/thing",
                             headers=cookie(Origin=FOREIGN, Referer=own(client) + "/"))
    await assert_refused(resp, CROSS_SITE)


async def test_forwarded_headers_ignored_unless_trusted(client: Client) -> None:
    """Untrusted, the proxy's host and scheme do not define our origin."""
    resp = await client.post("/api/thing", headers=cookie(
        Origin="https://chat.example", **{"X-Forwarded-Host": "chat.example",
                                          "X-Forwarded-Proto": "https"}))
    await assert_refused(resp, CROSS_SITE)


async def test_trusted_proxy_defines_our_origin(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(trust_forwarded=True))
    proxy = {"X-Forwarded-Host": "chat.example", "X-Forwarded-Proto": "https"}
    resp = await client.post("/api/thing", headers=cookie(Origin="https://chat.example", **proxy))
    assert resp.status == 200
    # Behind the proxy, the server's own address is no longer our origin.
    resp = await client.post("/api/thing", headers=cookie(Origin=own(client), **proxy))
    await assert_refused(resp, CROSS_SITE)
    # Without forwarded headers, the direct origin still is.
    resp = await client.post("/api/thing", headers=cookie(Origin=own(client)))
    assert resp.status == 200


async def test_refusal_happens_before_the_handler(aiohttp_client: AiohttpClient) -> None:
    """A refused write never reaches the handler."""
    calls: list[str] = []

    async def write(request: web.Request) -> web.Response:
        calls.append(request.method)
        return web.json_response({})

    app = make_app(trust_forwarded=False)
    app.router.add_post("/api/write", write)
    client = await aiohttp_client(app)
    resp = await client.post("/api/write", headers=cookie(Origin=FOREIGN))
    assert resp.status == 403
    assert calls == []
    resp = await client.post("/api/write", headers=cookie(Origin=own(client)))
    assert resp.status == 200
    assert calls == ["POST"]
