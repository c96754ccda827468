"""Sessions alone: an encrypted HttpOnly SameSite=Lax cookie carrying the access token."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import time
from http.cookies import Morsel, SimpleCookie
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from cryptography.fernet import Fernet
from pytest_aiohttp import AiohttpClient, AiohttpServer

from server.middleware.sessions import (
    COOKIE_NAME,
    end_session,
    session_token,
    setup_sessions,
    start_session,
)

Client = TestClient[Any, Any]  # over an app or over a TLS TestServer
SECRET = "s3cret-for-tests"
TOKEN = "header.payload.signature"
MAX_AGE = 3600


async def login(request: web.Request) -> web.Response:
    await start_session(request, request.query.get("token", TOKEN))
    return web.json_response({"ok": True})


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"token": await session_token(request)})


async def logout(request: web.Request) -> web.Response:
    await end_session(request)
    return web.json_response({"ok": True})


def make_app(trust_forwarded: bool = False, secret: str = SECRET) -> web.Application:
    app = web.Application()
    setup_sessions(app, secret, MAX_AGE, trust_forwarded)
    app.router.add_post("/login", login)
    app.router.add_get("/whoami", whoami)
    app.router.add_post("/logout", logout)
    return app


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_app())


def session_cookie(resp: ClientResponse) -> Morsel[str]:
    """The one Set-Cookie for the session that this response carries."""
    found = [SimpleCookie(h)[COOKIE_NAME] for h in resp.headers.getall("Set-Cookie", [])
             if h.startswith(COOKIE_NAME + "=")]
    assert len(found) == 1, resp.headers.getall("Set-Cookie", [])
    return found[0]


async def token_of(client: Client, cookie: str | None = None, *, verify: bool = True) -> object:
    """What session_token sees, with the jar's cookie or an explicit Cookie header."""
    headers = {"Cookie": f"{COOKIE_NAME}={cookie}"} if cookie is not None else {}
    if cookie is not None:
        client.session.cookie_jar.clear()
    resp = await client.get("/whoami", headers=headers, ssl=verify)
    assert resp.status == 200
    return (await resp.json())["token"]


async def test_start_session_sets_a_locked_down_cookie(client: Client) -> None:
    resp = await client.post("/login")
    assert resp.status == 200
    morsel = session_cookie(resp)
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"
    assert morsel["max-age"] == str(MAX_AGE)
    assert morsel["expires"]
    assert not morsel["secure"]  # plain HTTP
    assert not morsel["domain"]


async def test_cookie_is_encrypted(client: Client) -> None:
    morsel = session_cookie(await client.post("/login"))
    assert TOKEN not in morsel.value
    assert "payload" not in base64.urlsafe_b64decode(morsel.value + "==").decode("latin-1")


async def test_token_round_trips(client: Client) -> None:
    assert await token_of(client) is None
    await client.post("/login", params={"token": "tok-1"})
    assert await token_of(client) == "tok-1"
    assert await token_of(client) == "tok-1"


async def test_new_session_replaces_the_old_token(client: Client) -> None:
    first = session_cookie(await client.post("/login", params={"token": "tok-1"})).value
    second = session_cookie(await client.post("/login", params={"token": "tok-2"})).value
    assert first != second
    assert await token_of(client) == "tok-2"


async def test_reading_the_session_sets_no_cookie(client: Client) -> None:
    await client.post("/login")
    resp = await client.get("/whoami")
    assert resp.headers.getall("Set-Cookie", []) == []


async def test_end_session_clears_the_cookie(client: Client) -> None:
    await client.post("/login")
    resp = await client.post("/logout")
    assert resp.status == 200
    morsel = session_cookie(resp)
    assert morsel.value == ""
    assert morsel["max-age"] == "0"
    assert morsel["path"] == "/"
    assert await token_of(client) is None


async def test_end_session_without_a_cookie_sets_none(client: Client) -> None:
    resp = await client.post("/logout")
    assert resp.status == 200
    assert resp.headers.getall("Set-Cookie", []) == []


async def test_tampered_cookie_gives_no_token(client: Client) -> None:
    value = session_cookie(await client.post("/login")).value
    flipped = value[:-5] + ("A" if value[-5] != "A" else "B") + value[-4:]
    assert await token_of(client, flipped) is None
    assert await token_of(client, "garbage") is None
    assert await token_of(client, "") is None
    assert await token_of(client, value) == TOKEN  # the untouched one still works


async def test_cookie_from_another_secret_gives_no_token(aiohttp_client: AiohttpClient) -> None:
    other = await aiohttp_client(make_app(secret="another-secret"))
    value = session_cookie(await other.post("/login")).value
    ours = await aiohttp_client(make_app())
    assert await token_of(ours, value) is None


async def test_non_string_token_is_ignored(client: Client) -> None:
    """A validly encrypted session whose token is not a string yields None."""
    key = hashlib.sha256(b"chatgate-session:" + SECRET.encode()).digest()
    data = json.dumps({"created": int(time.time()), "session": {"t": 12345}})
    forged = Fernet(base64.urlsafe_b64encode(key)).encrypt(data.encode()).decode()
    assert await token_of(client, forged) is None
    data = json.dumps({"created": int(time.time()), "session": {"t": "tok-x"}})
    genuine = Fernet(base64.urlsafe_b64encode(key)).encrypt(data.encode()).decode()
    assert await token_of(client, genuine) == "tok-x"


@pytest.mark.parametrize(("trust", "proto", "secure"), [
    (False, None, False),
    (False, "https", False),  # anyone can send the header
    (True, None, False),
    (True, "http", False),
    (True, "https", True),
    (True, "HTTPS", True),
])
async def test_secure_flag_follows_the_trusted_scheme(aiohttp_client: AiohttpClient, trust: bool,
                                                      proto: str | None, secure: bool) -> None:
    client = await aiohttp_client(make_app(trust_forwarded=trust))
    headers = {"X-Forwarded-Proto": proto} if proto else {}
    morsel = session_cookie(await client.post("/login", headers=headers))
    assert bool(morsel["secure"]) is secure
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"


async def test_secure_flag_does_not_stick_between_requests(aiohttp_client: AiohttpClient) -> None:
    """The per-request Secure choice is reset: an HTTPS login does not mark the next one."""
    client = await aiohttp_client(make_app(trust_forwarded=True))
    https = {"X-Forwarded-Proto": "https"}
    assert session_cookie(await client.post("/login", headers=https))["secure"]
    assert not session_cookie(await client.post("/login"))["secure"]
    assert session_cookie(await client.post("/login", headers=https))["secure"]


async def test_secure_flag_over_direct_https(aiohttp_server: AiohttpServer,
                                             aiohttp_client: AiohttpClient,
                                             tls: ssl.SSLContext) -> None:
    server = await aiohttp_server(make_app(trust_forwarded=False), ssl=tls)
    client: Client = await aiohttp_client(server)
    assert client.make_url("/").scheme == "https"
    morsel = session_cookie(await client.post("/login", ssl=False))
    assert morsel["secure"] is True
    assert morsel["httponly"] is True
    value = morsel.value
    assert await token_of(client, value, verify=False) == TOKEN
