"""The account service over real HTTP: who may sign up, how sign-in fails, and its throttle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from server.middleware.sessions import COOKIE_NAME
from server.runner import Running, start
from tests.support.app import error_of, make_config
from tests.support.auth import PASSWORD, bare_session, set_cookies

# --- registration ----------------------------------------------------------------------------


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
