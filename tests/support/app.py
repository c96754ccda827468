"""The app under test: configs, registered users, JSON errors and the running app's storage."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from server import keys
from server.config import Config, build_config
from server.runner import Running

# The PostgreSQL database of the running test (None: SQLite files), set by the `backend`
# fixture: every config made during the test, and every server process, uses it.
_database_url: str | None = None


def use_database(url: str | None) -> None:
    """Point the configs made from now on at this PostgreSQL database (None: SQLite)."""
    global _database_url
    _database_url = url


def database_url() -> str | None:
    """The PostgreSQL database the running test uses (None: SQLite)."""
    return _database_url


def make_config(tmp_path: Path, llm_url: str, **sections: Any) -> Config:
    """A config on a temp database and a free port; sections override defaults (a list, such
    as `models`, replaces the section)."""
    database: dict[str, Any] = {"path": str(tmp_path / "chatgate.db")}
    if _database_url is not None:
        database["url"] = _database_url
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5},
        "database": database,
        "llm": {"base_url": llm_url, "retry_backoff_s": 0.01, "first_token_timeout_s": 5,
                "request_timeout_s": 20},
        "limits": {"login_per_ip_per_minute": 1000, "chat_per_user_per_minute": 1000,
                   "conversations_per_user_per_minute": 1000},
        "queue": {"workers": 4, "max_size": 64},
        "routing": {"probe_interval_s": 0.5},  # a replica that comes back is seen sooner
        "chat": {"detached_grace_s": 0.3},  # a turn whose client left stops soon
        # The render process starts on first use: a loaded test machine may take seconds.
        "render": {"wait_s": 60, "max_render_cpu_s": 60},
        # No title or summary jobs unless a test asks for them: the simulator then sees only the
        # requests a test makes (tests read its last request).
        "background": {"titles": False, "summaries": False},
    }
    for name, values in sections.items():
        if isinstance(values, list):
            raw[name] = values
        else:
            raw.setdefault(name, {}).update(values)
    return build_config(raw)


class User:
    """A registered user and the headers that authenticate them."""

    def __init__(self, body: dict[str, Any], password: str) -> None:
        self.id: int = body["user"]["id"]
        self.name: str = body["user"]["username"]
        self.token: str = body["access_token"]
        self.password = password
        self.headers = {"Authorization": f"Bearer {self.token}"}


async def register_over_http(base: str, name: str) -> User:
    """Register a user against a server by URL."""
    async with aiohttp.ClientSession(base) as s:
        async with s.post("/api/auth/register",
                          json={"username": name, "password": "quiet-lantern-42"}) as resp:
            assert resp.status == 201, await resp.text()
            return User(await resp.json(), "quiet-lantern-42")


async def error_of(resp: aiohttp.ClientResponse, status: int,
                   code: str | None = None) -> dict[str, Any]:
    """Assert a JSON error with this status (and code); return its error object."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


async def wait_ready(session: aiohttp.ClientSession, status: int = 200,
                     timeout: float = 15.0) -> None:
    """Poll /ready until it answers `status` (the replica prober runs every few seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with session.get("/ready") as resp:
            if resp.status == status:
                return
        assert asyncio.get_running_loop().time() < deadline, f"/ready never answered {status}"
        await asyncio.sleep(0.05)


def storage_of(running: Running) -> Any:
    """The running app's Storage (one store per concern)."""
    return running.app[keys.STORAGE]


def db_of(running: Running) -> Any:
    """The running app's Database (for counters and direct checks)."""
    return running.app[keys.STORAGE].db  # type: ignore[attr-defined]
