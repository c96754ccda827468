"""HTTP helpers for the sign-in, session and token tests: sessions with and without cookies."""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp

from server.middleware.sessions import COOKIE_NAME
from server.runner import Running

PASSWORD = "correct horse"


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


async def post_json(s: aiohttp.ClientSession, path: str, body: Any,
                    **kw: Any) -> tuple[aiohttp.ClientResponse, Any, str]:
    """POST a JSON body; the response, its parsed JSON (None when empty) and its text."""
    async with s.post(path, json=body, **kw) as resp:
        text = await resp.text()
        data = json.loads(text) if text else None
        return resp, data, text


async def verify_status(server: Running, headers: dict[str, str]) -> int:
    """The status of GET /api/auth/verify with these headers (and no cookie jar)."""
    async with bare_session(server) as s:
        async with s.get("/api/auth/verify", headers=headers) as resp:
            return resp.status
