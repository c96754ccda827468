"""Hostile input and secrets: forged tokens, bad bodies, CORS, CSRF, headers and logs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server import keys
from server.runner import Running, start
from server.secret import SECRET_FILE
from tests.support.app import error_of, make_config
from tests.support.auth import PASSWORD, bare_session, cookie_session, jar_cookie, post_json


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _hmac_token(claims: dict[str, object], key: bytes) -> str:
    """A token HMAC-signed with arbitrary bytes (pyjwt refuses to do this with a PEM key)."""
    signing = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    mac = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def _secret(server) -> str:  # type: ignore[no-untyped-def]
    path = Path(server.app[keys.CONFIG].database.path).parent / SECRET_FILE
    return path.read_text().strip()


async def test_forged_tokens_are_401(http, server, register) -> None:
    user = await register()
    now = int(time.time())
    claims = {"sub": str(user.id), "iat": now, "exp": now + 600, "jti": "x" * 32}
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "RS256 signed by another key": jwt.encode(claims, private, algorithm="RS256"),
        # HS/RS confusion: an HMAC over the "public key" as if it were the secret.
        "HS256 keyed with a public key": _hmac_token(claims, public_pem),
        "HS512 with the real secret": jwt.encode(claims, _secret(server), algorithm="HS512"),
        "wrong key": jwt.encode(claims, "another-secret-of-enough-length-0123456789",
                                algorithm="HS256"),
        "expired": jwt.encode({**claims, "exp": now - 5}, _secret(server), algorithm="HS256"),
        "no jti": jwt.encode({k: v for k, v in claims.items() if k != "jti"}, _secret(server),
                             algorithm="HS256"),
        "sub not a number": jwt.encode({**claims, "sub": "admin"}, _secret(server),
                                       algorithm="HS256"),
    }
    header, payload, signature = user.token.split(".")
    forged["tampered sub"] = f"{header}.{_b64({**claims, 'sub': str(user.id + 1)})}.{signature}"
    for name, token in forged.items():
        async with http.get("/api/auth/verify",
                            headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 401, name
            await error_of(resp, 401, "unauthorized")


async def test_deleted_users_token_is_401_even_when_cached(http, server, register) -> None:
    await register()  # the first account is the admin (the last admin cannot leave)
    user = await register()
    async with http.get("/api/auth/verify", headers=user.headers) as resp:
        assert resp.status == 200  # now cached
    async with http.delete("/api/auth/account", json={"password": "wrong"},
                           headers=user.headers) as resp:
        await error_of(resp, 403, "wrong_password")
    other = await register()
    async with http.post("/api/chat", json={"message": "mine"}, headers=other.headers) as resp:
        assert resp.status == 200
    async with http.delete("/api/auth/account", json={"password": user.password},
                           headers=user.headers) as resp:
        assert resp.status == 204
    async with http.get("/api/conversations", headers=user.headers) as resp:
        await error_of(resp, 401)
    async with http.get("/api/conversations", headers=other.headers) as resp:
        assert len((await resp.json())["conversations"]) == 1  # nobody else's data went


async def test_deleted_users_token_is_401_after_a_restart(tmp_path: Path, simulator) -> None:
    config = make_config(tmp_path, simulator.url)
    running = await start(config)
    async with aiohttp.ClientSession(running.url) as s:
        async with s.post("/api/auth/register",
                          json={"username": "ghost", "password": "quiet-lantern-42"}) as resp:
            body = await resp.json()
    await running.app[keys.STORAGE].users.delete(body["user"]["id"])  # e.g. by an operator
    await running.stop()
    running = await start(config)
    try:
        async with aiohttp.ClientSession(running.url) as s:
            async with s.get("/api/auth/verify",
                             headers={"Authorization": f"Bearer {body['access_token']}"}) as r:
                await error_of(r, 401)
    finally:
        await running.stop()


@pytest.mark.parametrize("body", [
    b"\xff\xfe\xfa not utf-8",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"title": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
    b'{"title": "a\\u0000b"}',
    b'{"title": 12}',
    b'{"title": null}',
    b'{"title": ["x"]}',
    b'{"title": "ok", "admin": true}',
    b"null",
    b'"just a string"',
    b"",
])
async def test_hostile_bodies_get_400(http, register, body: bytes) -> None:
    user = await register()
    async with http.post("/api/conversations", headers=user.headers) as resp:
        conv = (await resp.json())["id"]
    async with http.patch(f"/api/conversations/{conv}", data=body,
                          headers={**user.headers, "Content-Type": "application/json"}) as resp:
        await error_of(resp, 400, "invalid_request")
    async with http.get("/health") as resp:
        assert resp.status == 200


async def test_huge_bodies_get_413_and_the_server_stays_up(http, register) -> None:
    user = await register()
    for size in (1_048_577, 10 * 1024 * 1024):
        async with http.post("/api/chat", data=b"x" * size,
                             headers={**user.headers, "Content-Type": "application/json"}) as r:
            await error_of(r, 413, "payload_too_large")
    async with http.post("/api/chat", json={"message": "y" * 100_001}, headers=user.headers) as r:
        await error_of(r, 400, "invalid_request")
    async with http.get("/health") as resp:
        assert resp.status == 200


async def test_security_headers_everywhere(http, register) -> None:
    user = await register()
    for method, path, headers in [("GET", "/", {}), ("GET", "/health", {}),
                                  ("GET", "/api/auth/verify", user.headers),
                                  ("GET", "/api/nope", user.headers),
                                  ("GET", "/api/conversations", {})]:
        async with http.request(method, path, headers=headers) as resp:
            assert resp.headers["X-Content-Type-Options"] == "nosniff", path
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"], path
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"], path
            if path.startswith("/api/"):
                assert resp.headers["Cache-Control"] == "no-store", path
            assert "Access-Control-Allow-Origin" not in resp.headers, path


async def test_cors_is_off_by_default(http, register) -> None:
    user = await register()
    async with http.options("/api/chat", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.get("/api/auth/verify",
                        headers={**user.headers, "Origin": "https://evil.example"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_allows_only_listed_origins(tmp_path: Path, simulator) -> None:
    running = await start(make_config(tmp_path, simulator.url,
                                      server={"cors_origins": ["https://app.example"]}))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            async with s.options("/api/chat", headers={
                    "Origin": "https://app.example",
                    "Access-Control-Request-Method": "POST"}) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
                assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
            async with s.options("/api/chat", headers={
                    "Origin": "https://other.example",
                    "Access-Control-Request-Method": "POST"}) as resp:
                assert "Access-Control-Allow-Origin" not in resp.headers
    finally:
        await running.stop()


async def test_secrets_never_in_responses_or_logs(http, server, register, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    password = "Sup3r-secret-passw0rd"
    user = await register(password=password)
    async with http.post("/api/auth/login",
                         json={"username": user.name, "password": password}) as resp:
        text = await resp.text()
    async with http.post("/api/auth/login",
                         json={"username": user.name, "password": password + "x"}) as resp:
        text += await resp.text()
    secret = _secret(server)
    assert password not in text and secret not in text and "argon2" not in text
    assert password not in caplog.text and secret not in caplog.text


async def test_json_bodies_need_json_content_type(http) -> None:
    """A cross-site HTML form (text/plain) cannot log a browser into someone's account."""
    for path in ("/api/auth/register", "/api/auth/login"):
        async with http.post(path, data=b'{"username": "csrfuser", "password": "quiet-lantern-42"}',
                             headers={"Content-Type": "text/plain"}) as resp:
            await error_of(resp, 415, "unsupported_media_type")
            assert "Set-Cookie" not in resp.headers


async def test_cors_headers_on_errors_too(tmp_path: Path, simulator) -> None:
    running = await start(make_config(tmp_path, simulator.url,
                                      server={"cors_origins": ["https://app.example"]}))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            async with s.get("/api/conversations", headers={"Origin": "https://app.example"}) as r:
                await error_of(r, 401)
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    finally:
        await running.stop()


@pytest.mark.parametrize(("trust", "secure"), [(True, True), (False, False)])
async def test_cookie_is_secure_behind_a_trusted_https_proxy(tmp_path: Path, simulator,
                                                             trust: bool, secure: bool) -> None:
    running = await start(make_config(tmp_path, simulator.url,
                                      server={"trust_forwarded": trust}))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            async with s.post("/api/auth/register",
                              json={"username": "proxied", "password": "quiet-lantern-42"},
                              headers={"X-Forwarded-Proto": "https"}) as resp:
                cookie = resp.headers["Set-Cookie"]
        assert ("; Secure" in cookie) is secure and "HttpOnly" in cookie
    finally:
        await running.stop()


async def test_plain_http_on_a_network_address_warns_once(tmp_path: Path, simulator,
                                                          caplog) -> None:
    from server.runner import _warn_plain_http

    caplog.set_level(logging.WARNING)
    _warn_plain_http(make_config(tmp_path, simulator.url, server={"host": "0.0.0.0"}))
    _warn_plain_http(make_config(tmp_path, simulator.url, server={"host": "127.0.0.1"}))
    warnings = [r for r in caplog.records if "plain HTTP" in r.getMessage()]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0].getMessage()


async def test_cookie_only_sign_in_hands_no_token_to_scripts(http) -> None:
    body = {"username": "browser", "password": "quiet-lantern-42", "cookie_only": True}
    async with http.post("/api/auth/register", json=body) as resp:
        assert resp.status == 201
        answer = await resp.json()
    assert "access_token" not in answer and answer["user"]["username"] == "browser"
    async with http.post("/api/auth/login", json=body) as resp:
        answer = await resp.json()
        assert resp.status == 200 and "access_token" not in answer
    async with http.get("/api/auth/verify") as resp:  # the cookie alone authenticates
        assert resp.status == 200


async def test_sign_ups_and_account_deletion_are_throttled(tmp_path: Path, simulator) -> None:
    running = await start(make_config(tmp_path, simulator.url, server={"trust_forwarded": True},
                                      limits={"login_per_ip_per_minute": 3}))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            statuses = []
            for i in range(4):
                # A spoofed first hop changes nothing: the proxy's own (last) hop is the client.
                async with s.post("/api/auth/register",
                                  json={"username": f"flood{i}", "password": "quiet-lantern-42"},
                                  headers={"X-Forwarded-For": f"10.0.0.{i}, 192.0.2.7"}) as r:
                    statuses.append(r.status)
                    body = await r.json() if r.status == 201 else None
                    if body:
                        token = body["access_token"]
            assert statuses == [201, 201, 201, 429]
            async with s.post("/api/auth/register",
                              json={"username": "other", "password": "quiet-lantern-42"},
                              headers={"X-Forwarded-For": "192.0.2.8"}) as r:
                assert r.status == 201  # another client is not affected
            headers = {"Authorization": f"Bearer {token}"}
            for expected in (403, 403, 403, 429):
                async with s.delete("/api/auth/account", json={"password": "wrong-guess"},
                                    headers=headers) as r:
                    assert r.status == expected
    finally:
        await running.stop()


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
