"""`run.py migrate`: a SQLite database made through the real app (users, conversations with
branches and summaries, keys, usage, memories, audit, a revoked token) copied into PostgreSQL
by the real command, then served from PostgreSQL by the real app, which shows everything as
SQLite's did and goes on from there."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server import keys
from server.runner import Running, start
from server.storage.sqlite import migrate
from server.storage.urls import where
from tests.support.admin import bearer, call, call_ok, sign_in
from tests.support.app import User, make_config, register_over_http
from tests.support.paths import ROOT
from vllm_sim import SimServer

MODEL = "vllm-simulator"  # the test config's only model (the simulator)


async def migrate_command(*args: str) -> tuple[int, str]:
    """Run `python run.py migrate ARGS` from the repository; its exit status and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "migrate", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def until(predicate: Any, what: str) -> None:
    """Poll with a generous deadline (a safety net, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + 30
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


async def fill(running: Running) -> tuple[User, User, dict[str, Any]]:
    """Everything the app stores, made through its API: the admin, a user, and what they did."""
    admin = await register_over_http(running.url, "boss")
    user = await register_over_http(running.url, "ana")
    for action in ("disable", "enable"):  # audited (a disabled user's keys and tokens go)
        await call_ok(running, admin, "POST", f"/api/admin/users/{user.id}/{action}")
    status, body = await sign_in(running, "ana", user.password)  # the token the test keeps
    assert status == 200, body
    user = User(body, user.password)
    say = "/api/chat"
    conv = (await call_ok(running, user, "POST", say, {"message": "plan a trip to Lisbon"}))[
        "conversation_id"]
    for text in ("with kids", "in May", "by train"):
        await call_ok(running, user, "POST", say, {"message": text, "conversation_id": conv})
    summaries = running.app[keys.METRICS].background.counts
    await until(lambda: summaries.get(("summary", "done"), 0) >= 1, "no summary was made")
    shown = (await call_ok(running, user, "GET", f"/api/conversations/{conv}"))["messages"]
    await call_ok(running, user, "POST", say, {"conversation_id": conv, "message": "by plane",
                                               "edit_message_id": shown[-2]["id"]})
    await call_ok(running, user, "POST", say, {"conversation_id": conv, "regenerate": True})
    await call_ok(running, admin, "POST", say, {"message": "quarterly numbers"})
    status, key = await call(running, user, "POST", "/api/keys", {"name": "laptop"})
    assert status == 201, key
    async with aiohttp.ClientSession(running.url) as s:
        async with s.post("/v1/chat/completions", headers=bearer(key["key"]), json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200, await r.text()
    status, _ = await call(running, user, "POST", "/api/memories", {"content": "likes trains"})
    assert status == 201
    await call_ok(running, user, "PATCH", "/api/account", {"settings": {"theme": "dark"}})
    status, session = await sign_in(running, "ana", user.password)
    async with aiohttp.ClientSession(running.url) as s:  # a session that logs out
        async with s.post("/api/auth/logout", headers=bearer(session["access_token"])) as r:
            assert r.status in (200, 204), await r.text()
    return admin, user, {"conv": conv, "key": key["key"], "gone": session["access_token"]}


async def everything(running: Running, admin: User, user: User) -> dict[str, Any]:
    """What the API shows of the data (the same calls before and after the copy)."""
    seen: dict[str, Any] = {}
    for who, name in ((admin, "admin"), (user, "user")):
        listed = await call_ok(running, who, "GET", "/api/conversations?limit=100")
        seen[f"{name} list"] = listed
        for conv in listed["conversations"]:
            path = f"/api/conversations/{conv['id']}"
            seen[path] = await call_ok(running, who, "GET", path)
        for path in ("/api/memories", "/api/keys", "/api/usage", "/api/account",
                     "/api/search?q=lisbon"):
            seen[f"{name} {path}"] = await call_ok(running, who, "GET", path)
    for path in ("/api/admin/users", "/api/admin/audit"):
        seen[path] = await call_ok(running, admin, "GET", path)
    return seen


@pytest.mark.timeout(180)
async def test_a_sqlite_database_copied_is_served_from_postgres(
        tmp_path: Path, simulator: SimServer, pg_url: str) -> None:
    sections: dict[str, Any] = {"memory": {"max_history_messages": 4},
                                "background": {"summaries": True}}
    running = await start(make_config(tmp_path, simulator.url, **sections))
    try:
        admin, user, made = await fill(running)
        before = await everything(running, admin, user)
    finally:
        await running.stop()  # the usage meter writes what it counted
    database = str(tmp_path / "chatgate.db")

    status, out = await migrate_command("--from", database, "--to", pg_url)
    assert status == 0, out
    for table in ("users", "conversations", "messages", "summaries", "api_keys", "usage_daily",
                  "revoked_tokens", "audit_log", "memories"):
        line = next((ln for ln in out.splitlines() if ln.split()[:1] == [table]), "")
        assert line.endswith("ok") and "0/" not in line, (table, out)
    assert "copied and verified" in out and where(pg_url) in out
    assert "postgres@" not in out  # the URL's user part (and any password) is never printed

    # Copying again into the same database is refused: it is not empty any more.
    status, again = await migrate_command("--from", database, "--to", pg_url)
    assert status == 1 and "not empty" in again, again

    sections["database"] = {"url": pg_url}
    served = await start(make_config(tmp_path, simulator.url, **sections))
    try:
        after = await everything(served, admin, user)
        assert after.keys() == before.keys()
        for path, shown in before.items():
            assert after[path] == shown, path
        summarised = [m for m in after[f"/api/conversations/{made['conv']}"]["messages"]
                      if "summary" in m]
        assert summarised, "the summary was not copied"
        status, _ = await call(served, bearer(made["gone"]), "GET", "/api/conversations")
        assert status == 401  # the logged-out token stays revoked
        status, _ = await call(served, bearer(made["key"]), "GET", "/v1/models")
        assert status == 200  # the API key still opens /v1 (same secret, same hash)
        # It goes on from there: new rows take ids past every copied one.
        old = max(m["id"] for m in after[f"/api/conversations/{made['conv']}"]["messages"])
        turn = await call_ok(served, user, "POST", "/api/chat",
                             {"message": "and back?", "conversation_id": made["conv"]})
        assert turn["message"]["id"] > old
        shown = await call_ok(served, user, "GET", f"/api/conversations/{made['conv']}")
        assert [m["content"] for m in shown["messages"]][-2] == "and back?"
        newcomer = await register_over_http(served.url, "newcomer")
        assert newcomer.id > max(admin.id, user.id)
    finally:
        await served.stop()


async def test_what_cannot_be_copied_is_said_and_nothing_kept(tmp_path: Path,
                                                              pg_url: str) -> None:
    status, out = await migrate_command("--from", str(tmp_path / "none.db"), "--to", pg_url)
    assert status == 1 and "no SQLite database" in out
    status, out = await migrate_command("--from", str(tmp_path / "none.db"), "--to", "mysql://x")
    assert status == 2 and "postgresql://" in out
    made = sqlite3.connect(tmp_path / "made.db")
    migrate(made)
    made.close()
    status, out = await migrate_command("--from", str(tmp_path / "made.db"),
                                        "--to", "postgresql://u:hunter2@127.0.0.1:1/x")
    assert status == 1 and "cannot reach 127.0.0.1:1/x" in out and "hunter2" not in out
