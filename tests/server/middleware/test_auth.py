"""Authentication alone (errors outside, sessions before it): a real TokenService on SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from server import keys
from server.config import DatabaseConfig
from server.middleware.auth import principal_of, public, setup_auth
from server.middleware.errors import setup_errors
from server.middleware.sessions import setup_sessions, start_session
from server.services.tokens import TokenService
from server.storage import Storage, open_storage
from server.storage.rows import UserRow

Client = TestClient[web.Request, web.Application]
SECRET = "auth-test-secret-that-is-32-bytes-or-more"
MALFORMED = "Authorization header must be 'Bearer <token>'"


@dataclass
class World:
    """The real storage, token service and one user."""

    storage: Storage
    tokens: TokenService
    user: UserRow


def token_service(storage: Storage, secret: str = SECRET, ttl_s: int = 3600) -> TokenService:
    return TokenService(storage.users, storage.tokens, secret, ttl_s, 300, 100)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    storage = await open_storage(DatabaseConfig(path=str(tmp_path / "t.db")))
    try:
        user = await storage.users.create("alice", "not-a-real-hash")
        yield World(storage, token_service(storage), user)
    finally:
        await storage.close()


@public
async def open_door(request: web.Request) -> web.Response:
    return web.json_response({"open": True, "principal": keys.PRINCIPAL in request,
                              "via_cookie": request.get(keys.VIA_COOKIE, False)})


@public
async def session_login(request: web.Request) -> web.Response:
    """Public: put the posted token in the session cookie (as the real login does)."""
    await start_session(request, (await request.json())["token"])
    return web.json_response({"ok": True})


async def me(request: web.Request) -> web.Response:
    principal = principal_of(request)
    return web.json_response({"id": principal.user["id"], "name": principal.user["username"],
                              "token": principal.token,
                              "via_cookie": request.get(keys.VIA_COOKIE, False)})


async def page(request: web.Request) -> web.Response:
    return web.Response(text="page", headers={"X-Principal": str(keys.PRINCIPAL in request)})


def make_app(tokens: TokenService) -> web.Application:
    app = web.Application()
    setup_errors(app)
    setup_sessions(app, SECRET, 3600, False)
    setup_auth(app)
    app[keys.TOKENS] = tokens
    app.router.add_get("/api/open", open_door)
    app.router.add_post("/api/session", session_login)
    app.router.add_get("/api/me", me)
    app.router.add_post("/api/me", me)
    app.router.add_get("/page", page)
    app.router.add_get("/api", page)
    return app


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, world: World) -> Client:
    return await aiohttp_client(make_app(world.tokens))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def assert_401(resp: ClientResponse, message: str) -> None:
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert await resp.json() == {"error": {"code": "unauthorized", "message": message}}


async def test_public_route_needs_no_token(client: Client) -> None:
    resp = await client.get("/api/open")
    assert resp.status == 200
    assert await resp.json() == {"open": True, "principal": False, "via_cookie": False}


async def test_public_route_ignores_a_bad_token(client: Client) -> None:
    resp = await client.get("/api/open", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert resp.status == 200


async def test_protected_route_without_token_is_401(client: Client) -> None:
    await assert_401(await client.get("/api/me"), "authentication required")
    await assert_401(await client.post("/api/me"), "authentication required")


@pytest.mark.parametrize("header", [
    "Basic Zm9vOmJhcg==", "Bearer", "Bearer ", "Bearer    ", "Token abc", "abc",
])
async def test_malformed_authorization_is_401(client: Client, header: str) -> None:
    await assert_401(await client.get("/api/me", headers={"Authorization": header}), MALFORMED)


@pytest.mark.parametrize("token", ["nonsense", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
async def test_invalid_token_is_401(client: Client, token: str) -> None:
    await assert_401(await client.get("/api/me", headers=bearer(token)),
                     "invalid or expired token")


async def test_valid_bearer_sets_the_principal(client: Client, world: World) -> None:
    token = world.tokens.issue(world.user)
    resp = await client.get("/api/me", headers=bearer(token))
    assert resp.status == 200
    assert await resp.json() == {"id": world.user["id"], "name": "alice", "token": token,
                                 "via_cookie": False}


@pytest.mark.parametrize("template", ["bearer {}", "BEARER {}", "Bearer   {}  "])
async def test_scheme_is_case_insensitive_and_token_trimmed(client: Client, world: World,
                                                             template: str) -> None:
    token = world.tokens.issue(world.user)
    resp = await client.get("/api/me", headers={"Authorization": template.format(token)})
    assert resp.status == 200
    assert (await resp.json())["token"] == token


async def test_uncached_token_is_verified_against_the_database(
        aiohttp_client: AiohttpClient, world: World) -> None:
    """A token another service issued is read from SQLite once, then cached."""
    token = world.tokens.issue(world.user)
    fresh = token_service(world.storage)
    client = await aiohttp_client(make_app(fresh))
    for _ in range(2):
        resp = await client.get("/api/me", headers=bearer(token))
        assert resp.status == 200
        assert (await resp.json())["name"] == "alice"
    assert (fresh.stats.misses, fresh.stats.hits) == (1, 1)


async def test_valid_cookie_marks_the_request(client: Client, world: World) -> None:
    token = world.tokens.issue(world.user)
    resp = await client.post("/api/session", json={"token": token})
    assert resp.status == 200
    resp = await client.get("/api/me")
    assert resp.status == 200
    assert await resp.json() == {"id": world.user["id"], "name": "alice", "token": token,
                                 "via_cookie": True}


async def test_public_route_with_cookie_is_not_marked(client: Client, world: World) -> None:
    await client.post("/api/session", json={"token": world.tokens.issue(world.user)})
    resp = await client.get("/api/open")
    assert await resp.json() == {"open": True, "principal": False, "via_cookie": False}


async def test_bearer_wins_over_cookie(client: Client, world: World) -> None:
    cookie_token = world.tokens.issue(world.user)
    await client.post("/api/session", json={"token": cookie_token})
    bearer_token = world.tokens.issue(world.user)
    resp = await client.get("/api/me", headers=bearer(bearer_token))
    assert await resp.json() == {"id": world.user["id"], "name": "alice",
                                 "token": bearer_token, "via_cookie": False}
    # A malformed header is refused even though the cookie alone would have passed.
    resp = await client.get("/api/me", headers={"Authorization": "Basic x"})
    await assert_401(resp, MALFORMED)


async def test_cookie_with_a_bad_token_is_401(client: Client) -> None:
    await client.post("/api/session", json={"token": "nonsense"})
    await assert_401(await client.get("/api/me"), "invalid or expired token")


async def test_revoked_token_is_401(client: Client, world: World) -> None:
    token = world.tokens.issue(world.user)
    assert (await client.get("/api/me", headers=bearer(token))).status == 200
    await world.tokens.revoke(await world.tokens.verify(token))
    await assert_401(await client.get("/api/me", headers=bearer(token)),
                     "token has been revoked")


async def test_token_revoked_elsewhere_is_401(aiohttp_client: AiohttpClient,
                                             world: World) -> None:
    """Revoked through another service on the same database (another process, a restart)."""
    token = world.tokens.issue(world.user)
    await world.tokens.revoke(await world.tokens.verify(token))
    client = await aiohttp_client(make_app(token_service(world.storage)))
    await assert_401(await client.get("/api/me", headers=bearer(token)),
                     "token has been revoked or its user no longer exists")
    other = world.tokens.issue(world.user)  # the user's other tokens still work
    assert (await client.get("/api/me", headers=bearer(other))).status == 200


async def test_expired_token_is_401(client: Client, world: World) -> None:
    expired = token_service(world.storage, ttl_s=-10).issue(world.user)
    await assert_401(await client.get("/api/me", headers=bearer(expired)),
                     "invalid or expired token")


async def test_token_signed_with_another_secret_is_401(client: Client, world: World) -> None:
    other = token_service(world.storage, secret="someone-elses-secret-also-32-bytes-long")
    forged = other.issue(world.user)
    await assert_401(await client.get("/api/me", headers=bearer(forged)),
                     "invalid or expired token")


async def test_deleted_user_is_401(aiohttp_client: AiohttpClient, world: World) -> None:
    token = world.tokens.issue(world.user)
    assert await world.storage.users.delete(world.user["id"])
    client = await aiohttp_client(make_app(token_service(world.storage)))
    await assert_401(await client.get("/api/me", headers=bearer(token)),
                     "token has been revoked or its user no longer exists")


async def test_forgotten_user_is_401_at_once(client: Client, world: World) -> None:
    """The service that cached the token drops it when told the user is gone."""
    token = world.tokens.issue(world.user)
    assert (await client.get("/api/me", headers=bearer(token))).status == 200
    assert await world.storage.users.delete(world.user["id"])
    world.tokens.forget_user(world.user["id"])
    await assert_401(await client.get("/api/me", headers=bearer(token)),
                     "token has been revoked")


@pytest.mark.parametrize("path", ["/page", "/api"])
async def test_paths_outside_api_are_untouched(client: Client, path: str) -> None:
    resp = await client.get(path, headers={"Authorization": "Basic broken"})
    assert resp.status == 200
    assert await resp.text() == "page"
    assert resp.headers["X-Principal"] == "False"


async def test_unmatched_api_route_is_404_not_401(client: Client) -> None:
    resp = await client.get("/api/nowhere")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    assert "WWW-Authenticate" not in resp.headers


async def test_wrong_method_on_api_route_is_405_not_401(client: Client) -> None:
    resp = await client.delete("/api/me")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
