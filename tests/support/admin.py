"""Helpers for the admin tests: a server per config, admin calls, direct row counts."""

from __future__ import annotations

from typing import Any

import aiohttp

from server.runner import Running
from tests.support.app import User


async def call(server: Running, user: User | dict[str, str], method: str, path: str,
               body: Any = None) -> tuple[int, Any]:
    """One request as `user` (or with these headers); the status and parsed JSON body."""
    headers = user.headers if isinstance(user, User) else user
    async with aiohttp.ClientSession(server.url) as s:
        async with s.request(method, path, json=body, headers=headers) as resp:
            text = await resp.text()
            return resp.status, (await resp.json() if text else None)


async def call_ok(server: Running, user: User, method: str, path: str,
                  body: Any = None) -> Any:
    """One request as `user` that must answer 200; its parsed JSON body."""
    status, answer = await call(server, user, method, path, body)
    assert status == 200, answer
    return answer


async def sign_in(server: Running, name: str, password: str) -> tuple[int, Any]:
    """POST /api/auth/login; the status and body."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/auth/login",
                          json={"username": name, "password": password}) as resp:
            return resp.status, await resp.json()


async def sign_up(server: Running, name: str, password: str = "correct horse") -> tuple[int, Any]:
    """POST /api/auth/register; the status and body."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/auth/register",
                          json={"username": name, "password": password}) as resp:
            return resp.status, await resp.json()


def bearer(token: str) -> dict[str, str]:
    """Headers for a bearer token or API key."""
    return {"Authorization": f"Bearer {token}"}


def code(body: Any) -> str:
    """The error code of an error body."""
    return str(body["error"]["code"])
