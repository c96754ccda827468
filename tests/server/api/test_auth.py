"""/api/auth over real HTTP: registration, login, the session cookie, verify and logout."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import jwt
import pytest

from server.config import Config
from server.middleware.sessions import COOKIE_NAME
from server.runner import Running
from tests.support.app import error_of
from tests.support.auth import (
    PASSWORD,
    bare_session,
    cookie_session,
    jar_cookie,
    post_json,
    set_cookies,
    verify_status,
)

# --- helpers ---------------------------------------------------------------------------------


def assert_token_body(body: dict[str, Any], username: str, config: Config) -> None:
    assert set(body) == {"user", "access_token", "token_type", "expires_in"}
    assert set(body["user"]) == {"id", "username", "created_at", "role", "status",
                                 "must_change_password", "limits"}
    assert isinstance(body["user"]["id"], int) and body["user"]["id"] > 0
    assert body["user"]["username"] == username
    assert isinstance(body["user"]["created_at"], str) and body["user"]["created_at"]
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == config.auth.token_ttl_s
    assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2


def assert_no_password(text: str, password: str = PASSWORD) -> None:
    assert password not in text
    assert "argon2" not in text and "password_hash" not in text


# --- registration ----------------------------------------------------------------------------


async def test_register_returns_201_with_user_and_token(http: aiohttp.ClientSession,
                                                        config: Config) -> None:
    resp, body, text = await post_json(http, "/api/auth/register",
                                       {"username": "alice", "password": PASSWORD})
    assert resp.status == 201, text
    assert_token_body(body, "alice", config)
    assert_no_password(text)
    # The token it hands out works.
    async with http.get("/api/auth/verify",
                        headers={"Authorization": f"Bearer {body['access_token']}"}) as r:
        assert r.status == 200
        assert (await r.json())["user"] == body["user"]


@pytest.mark.parametrize("username", [
    "ab", "a" * 65, "has space", "slash/name", "semi;colon", "émile", "tab\tname", "", "nul\x00x",
    "<script>",
])
async def test_register_rejects_bad_usernames(http: aiohttp.ClientSession, username: str) -> None:
    async with http.post("/api/auth/register",
                         json={"username": username, "password": PASSWORD}) as resp:
        err = await error_of(resp, 400, "invalid_request")
    assert err["field"] == "username"


@pytest.mark.parametrize("username", ["abc", "a" * 64, "Under_score.dot-dash", "123"])
async def test_register_accepts_good_usernames(http: aiohttp.ClientSession, username: str) -> None:
    async with http.post("/api/auth/register",
                         json={"username": username, "password": PASSWORD}) as resp:
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["user"]["username"] == username


@pytest.mark.parametrize("password", ["", "short", "1234567", "x" * 1025])
async def test_register_rejects_bad_passwords(http: aiohttp.ClientSession, password: str) -> None:
    async with http.post("/api/auth/register",
                         json={"username": "bob", "password": password}) as resp:
        err = await error_of(resp, 400, "invalid_request")
        text = json.dumps(err)
    assert err["field"] == "password"
    if password:
        assert password not in text


@pytest.mark.parametrize("password", ["xyz.2468", "wxyz" * 256])
async def test_register_accepts_password_bounds(http: aiohttp.ClientSession, password: str) -> None:
    async with http.post("/api/auth/register",
                         json={"username": f"pw{len(password):03d}", "password": password}) as resp:
        assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("body,field", [
    ({"password": PASSWORD}, "username"),
    ({"username": "carol"}, "password"),
    ({"username": 5, "password": PASSWORD}, "username"),
    ({"username": "carol", "password": ["x"] * 9}, "password"),
    ({"username": "carol", "password": PASSWORD, "admin": True}, "admin"),
])
async def test_register_rejects_malformed_fields(http: aiohttp.ClientSession, body: Any,
                                                 field: str) -> None:
    async with http.post("/api/auth/register", json=body) as resp:
        err = await error_of(resp, 400)
    assert err["field"] == field


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b'"alice"', b"{"])
async def test_register_rejects_non_object_bodies(http: aiohttp.ClientSession, data: bytes) -> None:
    async with http.post("/api/auth/register", data=data,
                         headers={"Content-Type": "application/json"}) as resp:
        await error_of(resp, 400)


# --- login -----------------------------------------------------------------------------------


async def test_login_returns_200_with_same_shape(server: Running, register: Any,
                                                 config: Config) -> None:
    user = await register("lotte")
    async with bare_session(server) as s:
        resp, body, text = await post_json(s, "/api/auth/login",
                                           {"username": "lotte", "password": PASSWORD})
    assert resp.status == 200, text
    assert_token_body(body, "lotte", config)
    assert body["user"]["id"] == user.id
    assert body["access_token"] != user.token
    assert_no_password(text)
    assert await verify_status(server, {"Authorization": f"Bearer {body['access_token']}"}) == 200


async def test_login_sets_httponly_samesite_lax_session_cookie(server: Running,
                                                               register: Any) -> None:
    await register("cookie1")
    async with bare_session(server) as s:
        async with s.post("/api/auth/login",
                          json={"username": "cookie1", "password": PASSWORD}) as resp:
            assert resp.status == 200
            cookies = set_cookies(resp)
            token = (await resp.json())["access_token"]
    assert COOKIE_NAME in cookies
    morsel, header = cookies[COOKIE_NAME]
    assert morsel.value
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "lax"
    assert morsel["path"] == "/"
    assert "httponly" in header.lower() and "samesite=lax" in header.lower()
    # Plain HTTP to loopback: not marked Secure (the browser would drop it otherwise).
    assert not morsel["secure"]
    # The cookie does not carry the token in clear text.
    assert token not in morsel.value and token.split(".")[1] not in morsel.value


async def test_cookie_alone_authenticates_verify(server: Running, register: Any) -> None:
    user = await register("cookie2")
    async with cookie_session(server) as s:
        async with s.get("/api/auth/verify") as resp:
            await error_of(resp, 401)  # nothing yet
        async with s.post("/api/auth/login",
                          json={"username": "cookie2", "password": PASSWORD}) as resp:
            assert resp.status == 200
        assert jar_cookie(s)
        async with s.get("/api/auth/verify") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["user"]["id"] == user.id
    # The cookie value sent by hand (no jar) works as well; a mangled one does not.
    async with cookie_session(server) as s:
        await post_json(s, "/api/auth/login", {"username": "cookie2", "password": PASSWORD})
        value = jar_cookie(s)
    assert value
    assert await verify_status(server, {"Cookie": f"{COOKIE_NAME}={value}"}) == 200
    assert await verify_status(server, {"Cookie": f"{COOKIE_NAME}={value[:-4]}AAAA"}) == 401
    assert await verify_status(server, {"Cookie": f"{COOKIE_NAME}=garbage"}) == 401


# --- verify ----------------------------------------------------------------------------------


async def test_verify_returns_user_and_expiry(server: Running, register: Any) -> None:
    user = await register("verif")
    async with bare_session(server) as s:
        async with s.get("/api/auth/verify", headers=user.headers) as resp:
            assert resp.status == 200
            text = await resp.text()
    body = json.loads(text)
    assert set(body) == {"user", "expires_at"}
    assert body["user"] == {"id": user.id, "username": "verif",
                            "created_at": body["user"]["created_at"], "role": "admin",
                            "status": "active", "must_change_password": False, "limits": {}}
    claims = jwt.decode(user.token, options={"verify_signature": False})
    assert body["expires_at"] == claims["exp"]
    assert body["expires_at"] > time.time()
    assert_no_password(text)


# --- logout ----------------------------------------------------------------------------------


async def test_logout_via_cookie_clears_the_cookie(server: Running, register: Any) -> None:
    await register("cookieout")
    async with cookie_session(server) as s:
        await post_json(s, "/api/auth/login", {"username": "cookieout", "password": PASSWORD})
        value = jar_cookie(s)
        assert value
        async with s.post("/api/auth/logout", headers={"Origin": server.url}) as resp:
            assert resp.status == 204, await resp.text()
            cookies = set_cookies(resp)
        assert COOKIE_NAME in cookies
        morsel, _ = cookies[COOKIE_NAME]
        assert morsel.value == ""
        assert morsel["max-age"] in ("0", 0) or "1970" in morsel["expires"]
        assert jar_cookie(s) is None
        async with s.get("/api/auth/verify") as resp:
            await error_of(resp, 401)
    # The old cookie, replayed by hand, no longer authenticates.
    assert await verify_status(server, {"Cookie": f"{COOKIE_NAME}={value}"}) == 401


# --- no password ever leaves the server ------------------------------------------------------


async def test_password_never_in_any_response(server: Running) -> None:
    secret_password = "Sup3r-Secret-Pa55"
    texts: list[str] = []
    async with cookie_session(server) as s:
        for path, body in [
            ("/api/auth/register", {"username": "quiet", "password": secret_password}),
            ("/api/auth/register", {"username": "quiet", "password": secret_password}),  # 409
            ("/api/auth/login", {"username": "quiet", "password": secret_password}),
            ("/api/auth/login", {"username": "quiet", "password": secret_password + "x"}),
            ("/api/auth/login", {"username": "q", "password": secret_password}),  # 400
        ]:
            async with s.post(path, json=body) as resp:
                texts.append(await resp.text())
                texts.extend(resp.headers.getall("Set-Cookie", []))
        async with s.get("/api/auth/verify") as resp:
            assert resp.status == 200
            texts.append(await resp.text())
    for text in texts:
        assert secret_password not in text
        assert "argon2" not in text and "password_hash" not in text


# --- changing the password -------------------------------------------------------------------


async def test_password_change_ends_every_other_session_and_token(server: Running,
                                                                  register: Any) -> None:
    user = await register("changer")
    key_status, key = await _api_key(server, user.headers)
    assert key_status == 201, key
    old_bearer = user.headers
    async with cookie_session(server) as browser, cookie_session(server) as other:
        for s in (browser, other):
            await post_json(s, "/api/auth/login", {"username": "changer", "password": PASSWORD})
            async with s.get("/api/auth/verify") as resp:
                assert resp.status == 200  # cached as valid before the change
        old_cookie = jar_cookie(browser)
        resp, body, text = await post_json(
            browser, "/api/auth/password",
            {"current_password": PASSWORD, "new_password": "a fresh lantern"},
            headers={"Origin": server.url})
        assert resp.status == 200, text
        # A browser gets a new cookie and no token in the body; it stays signed in.
        assert set(body) == {"user", "token_type", "expires_in"}
        assert body["user"]["username"] == "changer"
        assert jar_cookie(browser) not in (None, old_cookie)
        async with browser.get("/api/auth/verify") as resp:
            assert resp.status == 200
        # Every other session, the old cookie replayed and the old bearer token are refused.
        async with other.get("/api/auth/verify") as resp:
            assert resp.status == 401
    assert await verify_status(server, {"Cookie": f"{COOKIE_NAME}={old_cookie}"}) == 401
    assert await verify_status(server, old_bearer) == 401
    # API keys are not sign-in tokens: they stay until revoked.
    assert await verify_status(server, {"Authorization": f"Bearer {key['key']}"}) == 200
    # Only the new password signs in.
    async with bare_session(server) as s:
        resp, _, _ = await post_json(s, "/api/auth/login",
                                     {"username": "changer", "password": PASSWORD})
        assert resp.status == 401
        resp, fresh, _ = await post_json(s, "/api/auth/login",
                                         {"username": "changer", "password": "a fresh lantern"})
        assert resp.status == 200


async def test_password_change_with_a_bearer_token_answers_a_new_token(server: Running,
                                                                       register: Any) -> None:
    user = await register("bearer-changer")
    async with bare_session(server) as s:
        resp, body, text = await post_json(
            s, "/api/auth/password",
            {"current_password": PASSWORD, "new_password": "quiet orchard 7"},
            headers=user.headers)
    assert resp.status == 200, text
    assert body["access_token"] != user.token
    assert await verify_status(server, user.headers) == 401
    assert await verify_status(server, {"Authorization": f"Bearer {body['access_token']}"}) == 200


async def _api_key(server: Running, headers: dict[str, str]) -> tuple[int, Any]:
    async with bare_session(server) as s:
        resp, body, _ = await post_json(s, "/api/keys", {"name": "script"}, headers=headers)
        return resp.status, body
