"""Security and caching headers alone: on every response, streams and errors included."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from server.middleware.errors import ApiError, setup_errors
from server.middleware.headers import CSP, setup_headers

Client = TestClient[web.Request, web.Application]
SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


async def data(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def page(request: web.Request) -> web.Response:
    return web.Response(text="<!doctype html><title>hi</title>", content_type="text/html")


async def cached(request: web.Request) -> web.Response:
    return web.json_response({}, headers={"Cache-Control": "private, max-age=5",
                                          "X-Frame-Options": "SAMEORIGIN"})


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: one\n\n")
    await response.write(b"data: two\n\n")
    await response.write_eof()
    return response


async def api_error(request: web.Request) -> web.Response:
    raise ApiError(409, "conflict", "taken")


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


def make_app(static_dir: Path, with_errors: bool) -> web.Application:
    app = web.Application()
    if with_errors:
        setup_errors(app)
    setup_headers(app)
    app.router.add_get("/api/data", data)
    app.router.add_get("/api/cached", cached)
    app.router.add_get("/api/stream", stream)
    app.router.add_get("/api/conflict", api_error)
    app.router.add_get("/api/crash", crash)
    app.router.add_get("/", page)
    app.router.add_get("/apiary", page)
    app.router.add_static("/static/", static_dir)
    return app


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.css").write_text("body { margin: 0 }\n")
    return tmp_path


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, static_dir: Path) -> Client:
    """Only the headers hook: errors are aiohttp's own plain-text ones."""
    return await aiohttp_client(make_app(static_dir, with_errors=False))


def assert_security(headers: Mapping[str, str]) -> None:
    for name, value in SECURITY.items():
        assert headers.get(name) == value, name


def test_csp_locks_down_scripts_and_framing() -> None:
    """The policy string itself: no inline script, no framing, no plugins."""
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP


@pytest.mark.parametrize(("path", "cache_control"), [
    ("/api/data", "no-store"),
    ("/static/app.css", "no-cache"),
    ("/", None),
    ("/apiary", None),
])
async def test_headers_and_cache_control_per_path(client: Client, path: str,
                                                  cache_control: str | None) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert_security(resp.headers)
    assert resp.headers.get("Cache-Control") == cache_control


async def test_static_files_keep_their_validators(client: Client) -> None:
    """no-cache means revalidate: the ETag lets the browser get a 304, which is headed too."""
    resp = await client.get("/static/app.css")
    assert await resp.text() == "body { margin: 0 }\n"
    etag = resp.headers["ETag"]
    again = await client.get("/static/app.css", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["Cache-Control"] == "no-cache"
    assert_security(again.headers)


async def test_streamed_response_is_headed(client: Client) -> None:
    resp = await client.get("/api/stream")
    assert resp.status == 200
    assert await resp.text() == "data: one\n\ndata: two\n\n"
    assert_security(resp.headers)
    assert resp.headers["Cache-Control"] == "no-store"


async def test_handler_headers_are_not_overridden(client: Client) -> None:
    resp = await client.get("/api/cached")
    assert resp.headers["Cache-Control"] == "private, max-age=5"
    assert resp.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert resp.headers["Content-Security-Policy"] == CSP


@pytest.mark.parametrize(("method", "path", "status", "cache_control"), [
    ("GET", "/api/missing", 404, "no-store"),
    ("GET", "/static/missing.css", 404, "no-cache"),
    ("GET", "/nowhere", 404, None),
    ("POST", "/api/data", 405, "no-store"),
    ("GET", "/api/crash", 500, "no-store"),
])
async def test_aiohttp_error_responses_are_headed(client: Client, method: str, path: str,
                                                  status: int,
                                                  cache_control: str | None) -> None:
    """Even without the error middleware, aiohttp's own error pages get the headers."""
    resp = await client.request(method, path)
    assert resp.status == status
    assert_security(resp.headers)
    assert resp.headers.get("Cache-Control") == cache_control


@pytest.mark.parametrize(("path", "status"), [
    ("/api/conflict", 409), ("/api/missing", 404), ("/api/crash", 500),
])
async def test_json_error_responses_are_headed(aiohttp_client: AiohttpClient, static_dir: Path,
                                               path: str, status: int) -> None:
    client = await aiohttp_client(make_app(static_dir, with_errors=True))
    resp = await client.get(path)
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert_security(resp.headers)
    assert resp.headers["Cache-Control"] == "no-store"


async def test_head_requests_are_headed(client: Client) -> None:
    resp = await client.head("/api/data")
    assert resp.status == 200
    assert_security(resp.headers)
    assert resp.headers["Cache-Control"] == "no-store"
