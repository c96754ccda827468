"""The token service over real HTTP: the verify cache, revocation, bad tokens, the secret."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import jwt

from server import keys
from server.config import Config
from server.runner import Running, start
from tests.support.app import db_of, error_of, make_config
from tests.support.auth import PASSWORD, bare_session, post_json, secret_of, verify_status

# --- helpers ---------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- verify and its cache --------------------------------------------------------------------


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


# --- revocation on logout --------------------------------------------------------------------


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


# --- one token, one spelling -----------------------------------------------------------------


def _variants(token: str) -> list[str]:
    """Other spellings a lenient base64url decoder reads as the same signed token."""
    head, _, signature = token.rpartition(".")
    raw = unb64url(signature)
    padded = base64.urlsafe_b64encode(raw).decode()
    last = signature[-1]
    spare = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 32 bytes leave 2 spare bits in the last letter: 3 other letters decode to the same bytes.
    others = [c for c in spare if c != last and unb64url(signature[:-1] + c) == raw]
    return [f"{token}=", f"{head}.{padded}", f"{token}==",
            *(f"{head}.{signature[:-1]}{c}" for c in others)]


async def test_non_canonical_spellings_are_refused_and_never_cached(server: Running,
                                                                  register: Any) -> None:
    user = await register("speller")
    tokens = server.app[keys.TOKENS]
    assert await verify_status(server, user.headers) == 200
    cached = len(tokens._cache)  # the cache is what this is about
    for variant in _variants(user.token):
        assert await verify_status(server, {"Authorization": f"Bearer {variant}"}) == 401
    assert len(tokens._cache) == cached  # no second entry, same token
    async with bare_session(server) as s:
        async with s.post("/api/auth/logout", headers=user.headers) as resp:
            assert resp.status == 204
    for variant in [user.token, *_variants(user.token)]:
        assert await verify_status(server, {"Authorization": f"Bearer {variant}"}) == 401


# --- forget: what another process or node changed ---------------------------------------------


async def test_forget_drops_what_another_process_revoked(server: Running, register: Any) -> None:
    """Another process writes to the database only: the cache answers from memory until
    `forget` (the poller's call) drops the entry; then the database's truth holds."""
    tokens, db = server.app[keys.TOKENS], db_of(server)
    signed_out, changed = await register("signed-out"), await register("changed")
    for user in (signed_out, changed):
        assert await verify_status(server, user.headers) == 200  # cached
    jti = jwt.decode(signed_out.token, options={"verify_signature": False})["jti"]
    await db.write(lambda c: c.execute(
        "INSERT INTO revoked_tokens (jti, expires_at, user_id) VALUES (?, ?, ?)",
        (jti, int(time.time()) + 600, signed_out.id)))
    await db.write(lambda c: c.execute(
        "UPDATE users SET token_epoch = token_epoch + 1 WHERE id = ?", (changed.id,)))
    assert await verify_status(server, signed_out.headers) == 200  # from the cache
    assert await verify_status(server, changed.headers) == 200
    tokens.forget(signed_out.id, jti=jti)
    tokens.forget(changed.id)
    assert await verify_status(server, signed_out.headers) == 401
    assert await verify_status(server, changed.headers) == 401


async def test_forget_reaches_the_api_key_cache(server: Running, register: Any) -> None:
    user = await register("scripted")
    async with bare_session(server) as s:
        resp, created, _ = await post_json(s, "/api/keys", {"name": "k"}, headers=user.headers)
        assert resp.status == 201
        by_key = {"Authorization": f"Bearer {created['key']}"}

        async def models() -> int:
            async with s.get("/v1/models", headers=by_key) as resp:
                return resp.status

        assert await models() == 200  # cached
        await db_of(server).write(lambda c: c.execute("DELETE FROM api_keys WHERE id = ?",
                                                      (created["id"],)))
        assert await models() == 200  # another process deleted it: this cache still holds it
        server.app[keys.TOKENS].forget(user.id, key_id=created["id"])
        assert await models() == 401
