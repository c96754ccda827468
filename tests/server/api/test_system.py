"""Tests for the service endpoints, JSON errors for routing failures, and security headers."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from server.runner import Running
from tests.support.app import error_of


def assert_security_headers(resp: aiohttp.ClientResponse) -> None:
    assert resp.headers.get("X-Content-Type-Options") == "nosniff", resp.url
    csp = resp.headers.get("Content-Security-Policy", "")
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, resp.url


async def test_health(http: aiohttp.ClientSession) -> None:
    async with http.get("/health") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {"status": "ok"}


async def test_openapi_is_json(http: aiohttp.ClientSession) -> None:
    async with http.get("/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert isinstance(body, dict)


async def test_every_integer_path_id_is_bounded_like_the_server(http: aiohttp.ClientSession
                                                                ) -> None:
    """The server takes ids of at most 18 digits; the document must not promise more."""
    async with http.get("/openapi.json") as resp:
        body = await resp.json()
    unbounded = []
    for path, item in body["paths"].items():
        params = list(item.get("parameters", []))
        for op in item.values():
            if isinstance(op, dict):
                params += op.get("parameters", [])
        for param in params:
            schema = param.get("schema", {})
            if param.get("in") == "path" and schema.get("type") == "integer" \
                    and not (schema.get("minimum") == 1
                             and schema.get("maximum") == 10**18 - 1):
                unbounded.append(f"{path} {param['name']}")
    assert unbounded == []


@pytest.mark.parametrize("path", ["/nope", "/api/nope", "/api/conversations/x/y", "/health/",
                                  "/api", "/api/auth"])
async def test_unknown_route_is_404_json(http: aiohttp.ClientSession, path: str) -> None:
    async with http.get(path) as resp:
        await error_of(resp, 404, "not_found")
        assert_security_headers(resp)


@pytest.mark.parametrize("method,path,allowed", [
    ("POST", "/health", "GET"),
    ("DELETE", "/openapi.json", "GET"),
    ("GET", "/api/auth/login", "POST"),
    ("PUT", "/api/conversations", "GET"),
    ("POST", "/api/conversations/1", "GET"),
    ("PUT", "/api/search", "GET"),
])
async def test_wrong_method_is_405_json(http: aiohttp.ClientSession, method: str, path: str,
                                        allowed: str) -> None:
    async with http.request(method, path) as resp:
        await error_of(resp, 405, "method_not_allowed")
        assert allowed in resp.headers.get("Allow", "")
        assert_security_headers(resp)


async def test_every_response_has_security_headers(server: Running, http: aiohttp.ClientSession,
                                                   register: Any) -> None:
    user = await register()
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/health", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/nope", {}),
        ("POST", "/health", {}),
        ("GET", "/api/auth/verify", {}),                                   # 401
        ("GET", "/api/auth/verify", {"headers": user.headers}),            # 200
        ("POST", "/api/conversations", {"headers": user.headers}),         # 201
        ("GET", "/api/conversations/999999", {"headers": user.headers}),   # 404
        ("PATCH", "/api/conversations/1", {"headers": user.headers, "data": b"{"}),  # 400/404
        ("POST", "/api/auth/login", {"json": {"username": "x", "password": "y"}}),  # 400
    ]
    for method, path, kw in requests:
        async with http.request(method, path, **kw) as resp:
            assert_security_headers(resp)


async def test_api_responses_are_not_cached(http: aiohttp.ClientSession, register: Any) -> None:
    user = await register()
    for method, path, kw in [
        ("GET", "/api/auth/verify", {"headers": user.headers}),
        ("GET", "/api/auth/verify", {}),
        ("GET", "/api/conversations", {"headers": user.headers}),
        ("POST", "/api/conversations", {"headers": user.headers}),
        ("GET", "/api/search?q=x", {"headers": user.headers}),
        ("GET", "/api/nope", {}),
        ("POST", "/api/auth/login", {"json": {}}),
    ]:
        async with http.request(method, path, **kw) as resp:
            assert resp.headers.get("Cache-Control") == "no-store", (method, path)
    # The register response (which carries a token) too.
    async with http.post("/api/auth/register",
                         json={"username": "nocache", "password": "correct horse"}) as resp:
        assert resp.status == 201
        assert resp.headers.get("Cache-Control") == "no-store"

