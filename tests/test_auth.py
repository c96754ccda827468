"""Tests for registration, login, tokens, the verify cache, sessions and CSRF, over real HTTP."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from server import keys
from server.config import Config
from server.runner import Running, start
from server.middleware.sessions import COOKIE_NAME

from conftest import db_of, error_of, make_config

PASSWORD = "correct horse"


# --- helpers ---------------------------------------------------------------------------------


def cookie_session(server: Running) -> aiohttp.ClientSession:
    """A client session that keeps cookies for the server's IP address."""
    return aiohttp.ClientSession(server.url, cookie_jar=aiohttp.CookieJar(unsafe=True))


def bare_session(server: Running) -> aiohttp.ClientSession:
    """A client session that never stores or sends cookies by itself."""
    return aiohttp.ClientSession(server.url, cookie_jar=aiohttp.DummyCookieJar())


def set_cookies(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The response's Set-Cookie headers, parsed, by cookie name."""
    found: dict[str, Any] = {}
    for header in resp.headers.getall("Set-Cookie", []):
        parsed = SimpleCookie()
        parsed.load(header)
        for name, morsel in parsed.items():
            found[name] = (morsel, header)
    return found


def jar_cookie(session: aiohttp.ClientSession) -> str | None:
    """The session cookie's value in a client's jar, if any."""
    for cookie in session.cookie_jar:
        if cookie.key == COOKIE_NAME:
            return cookie.value
    return None


def secret_of(tmp_path: Path) -> str:
    """The generated signing secret beside the test database."""
    return (tmp_path / "chatgate.secret").read_text(encoding="ascii").strip()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def post_json(s: aiohttp.ClientSession, path: str, body: Any,
                    **kw: Any) -> tuple[aiohttp.ClientResponse, Any, str]:
    async with s.post(path, json=body, **kw) as resp:
        text = await resp.text()
        data = json.loads(text) if text else None
        return resp, data, text


def assert_token_body(body: dict[str, Any], username: str, config: Config) -> None:
    assert set(body) == {"user", "access_token", "token_type", "expires_in"}
    assert set(body["user"]) == {"id", "username", "created_at"}
    assert isinstance(body["user"]["id"], int) and body["user"]["id"] > 0
    assert body["user"]["username"] == username
    assert isinstance(body["user"]["created_at"], str) and body["user"]["created_at"]
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == config.auth.token_ttl_s
    assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2


def assert_no_password(text: str, password: str = PASSWORD) -> None:
    assert password not in text
    assert "argon2" not in text and "password_hash" not in text


async def verify_status(server: Running, headers: dict[str, str]) -> int:
    async with bare_session(server) as s:
        async with s.get("/api/auth/verify", headers=headers) as resp:
            return resp.status


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


@pytest.mark.parametrize("password", ["", "short", "1234567", "x" * 257])
async def test_register_rejects_bad_passwords(http: aiohttp.ClientSession, password: str) -> None:
    async with http.post("/api/auth/register",
                         json={"username": "bob", "password": password}) as resp:
        err = await error_of(resp, 400, "invalid_request")
        text = json.dumps(err)
    assert err["field"] == "password"
    if password:
        assert password not in text


@pytest.mark.parametrize("password", ["x" * 8, "y" * 256])
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


async def test_register_duplicate_username_is_409_in_any_case(http: aiohttp.ClientSession,
                                                              register: Any) -> None:
    await register("Dupe")
    for name in ("Dupe", "dupe", "DUPE"):
        async with http.post("/api/auth/register",
                             json={"username": name, "password": "another password"}) as resp:
            await error_of(resp, 409, "conflict")
    # The original account still logs in with its own password.
    async with http.post("/api/auth/login",
                         json={"username": "Dupe", "password": PASSWORD}) as resp:
        assert resp.status == 200


async def test_register_closed_by_config_is_403(tmp_path: Path, simulator: Any) -> None:
    cfg = make_config(tmp_path, simulator.url, auth={"register_open": False})
    running = await start(cfg)
    try:
        async with bare_session(running) as s:
            async with s.post("/api/auth/register",
                              json={"username": "closed", "password": PASSWORD}) as resp:
                await error_of(resp, 403, "registration_closed")
            # Nobody was created: logging in as that name fails.
            async with s.post("/api/auth/login",
                              json={"username": "closed", "password": PASSWORD}) as resp:
                await error_of(resp, 401)
    finally:
        await running.stop()


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


async def test_wrong_password_and_unknown_user_give_identical_401(server: Running,
                                                                  register: Any) -> None:
    await register("known")
    async with bare_session(server) as s:
        async with s.post("/api/auth/login",
                          json={"username": "known", "password": "wrong password"}) as r1:
            err1 = await error_of(r1, 401, "unauthorized")
            body1 = await r1.read()
            assert r1.headers.get("WWW-Authenticate", "").startswith("Bearer")
            assert COOKIE_NAME not in set_cookies(r1)
        async with s.post("/api/auth/login",
                          json={"username": "unknown", "password": "wrong password"}) as r2:
            await error_of(r2, 401, "unauthorized")
            body2 = await r2.read()
            assert COOKIE_NAME not in set_cookies(r2)
    assert body1 == body2
    assert "wrong password" not in json.dumps(err1)


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


async def test_login_rate_limit_per_ip(tmp_path: Path, simulator: Any) -> None:
    cfg = make_config(tmp_path, simulator.url, limits={"login_per_ip_per_minute": 3})
    running = await start(cfg)
    try:
        async with bare_session(running) as s:
            async with s.post("/api/auth/register",
                              json={"username": "limited", "password": PASSWORD}) as resp:
                assert resp.status == 201  # signing up is an attempt too
            statuses = []
            for _ in range(2):
                async with s.post("/api/auth/login",
                                  json={"username": "limited", "password": "bad password"}) as r:
                    statuses.append(r.status)
            assert statuses == [401, 401]
            # The fourth attempt is refused even with the right password.
            async with s.post("/api/auth/login",
                              json={"username": "limited", "password": PASSWORD}) as resp:
                await error_of(resp, 429, "rate_limited")
                retry = resp.headers.get("Retry-After")
                assert retry is not None and retry.isdigit() and int(retry) >= 1
                assert COOKIE_NAME not in set_cookies(resp)
    finally:
        await running.stop()


# --- verify and its cache --------------------------------------------------------------------


async def test_verify_returns_user_and_expiry(server: Running, register: Any) -> None:
    user = await register("verif")
    async with bare_session(server) as s:
        async with s.get("/api/auth/verify", headers=user.headers) as resp:
            assert resp.status == 200
            text = await resp.text()
    body = json.loads(text)
    assert set(body) == {"user", "expires_at"}
    assert body["user"] == {"id": user.id, "username": "verif",
                            "created_at": body["user"]["created_at"]}
    claims = jwt.decode(user.token, options={"verify_signature": False})
    assert body["expires_at"] == claims["exp"]
    assert body["expires_at"] > time.time()
    assert_no_password(text)


async def test_verify_cache_hit_does_not_read_the_database(server: Running, register: Any) -> None:
    user = await register("cached")
    tokens = server.app[keys.TOKENS]
    db = db_of(server)
    async with bare_session(server) as s:
        async with s.get("/api/auth/verify", headers=user.headers) as resp:
            assert resp.status == 200
        reads, hits = db.stats.reads, tokens.stats.hits
        for _ in range(10):
            async with s.get("/api/auth/verify", headers=user.headers) as resp:
                assert resp.status == 200
    assert db.stats.reads == reads
    assert tokens.stats.hits >= hits + 10


async def test_verify_cache_miss_reads_the_database(tmp_path: Path, server: Running,
                                                    register: Any) -> None:
    """A valid token the cache has never seen is checked against the database once."""
    user = await register("uncached")
    now = int(time.time())
    token = jwt.encode({"sub": str(user.id), "iat": now, "exp": now + 600, "jti": "f" * 32},
                       secret_of(tmp_path), algorithm="HS256")
    tokens = server.app[keys.TOKENS]
    db = db_of(server)
    reads, misses = db.stats.reads, tokens.stats.misses
    assert await verify_status(server, {"Authorization": f"Bearer {token}"}) == 200
    assert db.stats.reads == reads + 1
    assert tokens.stats.misses == misses + 1
    assert await verify_status(server, {"Authorization": f"Bearer {token}"}) == 200
    assert db.stats.reads == reads + 1


# --- logout ----------------------------------------------------------------------------------


async def test_logout_revokes_a_cached_token_at_once(server: Running, register: Any) -> None:
    user = await register("leaver")
    async with bare_session(server) as s:
        _, other, _ = await post_json(s, "/api/auth/login",
                                      {"username": "leaver", "password": PASSWORD})
    other_headers = {"Authorization": f"Bearer {other['access_token']}"}
    for _ in range(2):  # certainly cached now
        assert await verify_status(server, user.headers) == 200
    async with bare_session(server) as s:
        async with s.post("/api/auth/logout", headers=user.headers) as resp:
            assert resp.status == 204
            assert await resp.read() == b""
        async with s.get("/api/auth/verify", headers=user.headers) as resp:
            await error_of(resp, 401, "unauthorized")
            assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
        async with s.get("/api/conversations", headers=user.headers) as resp:
            await error_of(resp, 401)
        async with s.post("/api/auth/logout", headers=user.headers) as resp:
            await error_of(resp, 401)
    # Only that token: the user's other session still works.
    assert await verify_status(server, other_headers) == 200


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


async def test_logout_is_revoked_in_the_database_across_restarts(config: Config) -> None:
    first = await start(config)
    try:
        async with bare_session(first) as s:
            _, body, _ = await post_json(s, "/api/auth/register",
                                         {"username": "persist", "password": PASSWORD})
            headers = {"Authorization": f"Bearer {body['access_token']}"}
            async with s.post("/api/auth/logout", headers=headers) as resp:
                assert resp.status == 204
    finally:
        await first.stop()
    second = await start(config)
    try:
        assert await verify_status(second, headers) == 401
    finally:
        await second.stop()


# --- bad tokens ------------------------------------------------------------------------------


def _forge_tokens(secret: str, user_id: int, other_id: int, good: str) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": str(user_id), "iat": now, "exp": now + 600, "jti": "a" * 32}
    header, payload, signature = good.split(".")
    tampered = json.loads(unb64url(payload))
    tampered["sub"] = str(other_id)
    forged: dict[str, str] = {
        "alg_none": jwt.encode(claims, None, algorithm="none"),
        "alg_none_unsigned_header": b64url(b'{"alg":"none","typ":"JWT"}') + "." + payload + ".",
        "wrong_key": jwt.encode(claims, "k" * 48, algorithm="HS256"),
        "hs512_right_key": jwt.encode(claims, secret, algorithm="HS512"),
        "tampered_sub": ".".join([header, b64url(json.dumps(tampered).encode()), signature]),
        "truncated_signature": good[:-3],
        "expired": jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, secret,
                              algorithm="HS256"),
        "non_numeric_sub": jwt.encode({**claims, "sub": "admin"}, secret, algorithm="HS256"),
        "user_does_not_exist": jwt.encode({**claims, "sub": "987654"}, secret, algorithm="HS256"),
        "garbage": "not-a-token",
        "three_dots_garbage": "a.b.c",
        "empty_segments": "..",
    }
    for missing in ("sub", "iat", "exp", "jti"):
        partial = {k: v for k, v in claims.items() if k != missing}
        forged[f"missing_{missing}"] = jwt.encode(partial, secret, algorithm="HS256")
    return forged


async def test_bad_tokens_are_401_json_with_challenge(tmp_path: Path, server: Running,
                                                      register: Any) -> None:
    user = await register("victim")
    other = await register("target")
    secret = secret_of(tmp_path)
    now = int(time.time())
    # Control: a token made the same way with the real secret and all claims is accepted,
    # so each rejection below is down to the one thing that is wrong with it.
    control = jwt.encode({"sub": str(user.id), "iat": now, "exp": now + 600, "jti": "c" * 32},
                         secret, algorithm="HS256")
    assert await verify_status(server, {"Authorization": f"Bearer {control}"}) == 200

    headers: dict[str, dict[str, str]] = {
        name: {"Authorization": f"Bearer {token}"}
        for name, token in _forge_tokens(secret, user.id, other.id, user.token).items()
    }
    headers["wrong_scheme_basic"] = {"Authorization": "Basic x"}
    headers["wrong_scheme_token"] = {"Authorization": f"Token {user.token}"}
    headers["bearer_empty"] = {"Authorization": "Bearer "}
    headers["bearer_only"] = {"Authorization": "Bearer"}
    headers["no_header"] = {}
    async with bare_session(server) as s:
        for name, h in headers.items():
            async with s.get("/api/auth/verify", headers=h) as resp:
                assert resp.status == 401, (name, await resp.text())
                await error_of(resp, 401, "unauthorized")
                assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer"), name
            async with s.get("/api/conversations", headers=h) as resp:
                assert resp.status == 401, (name, await resp.text())
    # The real token still works (nothing above poisoned the cache).
    assert await verify_status(server, user.headers) == 200


async def test_bearer_scheme_is_case_insensitive(server: Running, register: Any) -> None:
    user = await register("casey")
    assert await verify_status(server, {"Authorization": f"bearer {user.token}"}) == 200
    assert await verify_status(server, {"Authorization": f"BEARER {user.token}"}) == 200


# --- the signing secret ----------------------------------------------------------------------


async def test_token_survives_restart_and_secret_file_is_0600(tmp_path: Path,
                                                              config: Config) -> None:
    secret_path = tmp_path / "chatgate.secret"
    assert not secret_path.exists()
    first = await start(config)
    try:
        async with bare_session(first) as s:
            resp, body, text = await post_json(s, "/api/auth/register",
                                               {"username": "survivor", "password": PASSWORD})
            assert resp.status == 201, text
    finally:
        await first.stop()
    assert secret_path.exists()
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600
    secret = secret_path.read_text(encoding="ascii").strip()
    assert len(secret) >= 32
    claims = jwt.decode(body["access_token"], secret, algorithms=["HS256"])
    assert claims["sub"] == str(body["user"]["id"])

    second = await start(config)
    try:
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        async with bare_session(second) as s:
            async with s.get("/api/auth/verify", headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["user"]["id"] == body["user"]["id"]
    finally:
        await second.stop()
    # The same secret was reused, not regenerated.
    assert secret_path.read_text(encoding="ascii").strip() == secret


async def test_configured_secret_creates_no_secret_file(tmp_path: Path, simulator: Any) -> None:
    secret = "s" * 40
    cfg = make_config(tmp_path, simulator.url, auth={"secret": secret})
    running = await start(cfg)
    try:
        async with bare_session(running) as s:
            _, body, text = await post_json(s, "/api/auth/register",
                                            {"username": "configured", "password": PASSWORD})
        assert body is not None and "access_token" in body, text
        assert jwt.decode(body["access_token"], secret, algorithms=["HS256"])["sub"] == \
            str(body["user"]["id"])
    finally:
        await running.stop()
    assert not (tmp_path / "chatgate.secret").exists()


# --- CSRF on cookie-authenticated writes -----------------------------------------------------


async def test_cookie_post_requires_own_origin(server: Running, register: Any) -> None:
    user = await register("csrf")
    async with cookie_session(server) as s:
        await post_json(s, "/api/auth/login", {"username": "csrf", "password": PASSWORD})
        assert jar_cookie(s)
        async with s.post("/api/conversations") as resp:
            await error_of(resp, 403, "csrf_rejected")
        for origin in ("http://evil.example", "null", server.url + ".evil.example",
                       server.url.replace("http://", "https://")):
            async with s.post("/api/conversations", headers={"Origin": origin}) as resp:
                assert resp.status == 403, (origin, await resp.text())
                await error_of(resp, 403, "csrf_rejected")
        async with s.post("/api/conversations",
                          headers={"Referer": "http://evil.example/page"}) as resp:
            await error_of(resp, 403, "csrf_rejected")
        async with s.post("/api/conversations", headers={"Origin": server.url}) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
        async with s.post("/api/conversations",
                          headers={"Referer": server.url + "/app"}) as resp:
            assert resp.status == 201, await resp.text()
        # Safe methods need no Origin.
        async with s.get("/api/conversations") as resp:
            assert resp.status == 200
            listed = (await resp.json())["conversations"]
    # Only the two accepted requests created anything.
    assert len(listed) == 2 and created["id"] in {c["id"] for c in listed}
    async with bare_session(server) as s:
        async with s.get("/api/conversations", headers=user.headers) as resp:
            assert len((await resp.json())["conversations"]) == 2


async def test_bearer_post_needs_no_origin(server: Running, register: Any) -> None:
    user = await register("bearerpost")
    async with bare_session(server) as s:
        async with s.post("/api/conversations", headers=user.headers) as resp:
            assert resp.status == 201, await resp.text()
        # A foreign Origin does not matter for a bearer token (it is not ambient authority).
        async with s.post("/api/conversations",
                          headers={**user.headers, "Origin": "http://evil.example"}) as resp:
            assert resp.status == 201, await resp.text()


async def test_cors_origin_listed_in_config_is_accepted_for_cookie_writes(
        tmp_path: Path, simulator: Any) -> None:
    cfg = make_config(tmp_path, simulator.url,
                      server={"cors_origins": ["https://app.example"]})
    running = await start(cfg)
    try:
        async with cookie_session(running) as s:
            await post_json(s, "/api/auth/register", {"username": "corsy", "password": PASSWORD})
            assert jar_cookie(s)
            async with s.post("/api/conversations",
                              headers={"Origin": "https://app.example"}) as resp:
                assert resp.status == 201, await resp.text()
            async with s.post("/api/conversations",
                              headers={"Origin": "https://other.example"}) as resp:
                await error_of(resp, 403, "csrf_rejected")
    finally:
        await running.stop()


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
