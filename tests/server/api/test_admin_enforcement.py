"""What an admin's action does at once (real app, real SQLite, the simulator over TCP): a
disabled account's every credential dies, its jobs stop; a deleted account leaves nothing;
and an admin reads no one else's conversations."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server import keys
from server.runner import Running, start
from tests.support.admin import bearer, call, code, sign_in
from tests.support.app import User, db_of, make_config
from tests.support.auth import cookie_session
from tests.support.sse import events
from tests.support.storage import execute, rows, value
from vllm_sim import SimServer
from workers.errors import OwnerBlocked


async def sim(simulator: SimServer, path: str, body: dict[str, Any]) -> None:
    """Call the simulator's control API."""
    async with aiohttp.ClientSession() as s:
        async with s.post(simulator.root_url + path, json=body) as resp:
            assert resp.status == 200


async def _sign_up(s: aiohttp.ClientSession, name: str) -> User:
    """A new account, signed up over HTTP."""
    async with s.post("/api/auth/register",
                      json={"username": name, "password": "correct horse"}) as r:
        return User(await r.json(), "correct horse")


async def new_key(server: Running, user: User) -> str:
    """A new API key of the user."""
    status, body = await call(server, user, "POST", "/api/keys", {"name": "prog"})
    assert status == 201, body
    return str(body["key"])


async def test_disable_kills_token_cookie_and_api_key_at_once(server, register) -> None:
    admin, user = await register(), await register()
    key = await new_key(server, user)
    async with cookie_session(server) as browser:
        async with browser.post("/api/auth/login", json={"username": user.name,
                                                         "password": user.password,
                                                         "cookie_only": True}) as resp:
            assert resp.status == 200
        # Each credential is used once, so each sits in its cache when the admin acts.
        async with browser.get("/api/conversations") as resp:
            assert resp.status == 200
        assert (await call(server, user, "GET", "/api/conversations"))[0] == 200
        assert (await call(server, bearer(key), "GET", "/v1/models"))[0] == 200
        hits = server.app[keys.TOKENS].stats.hits
        assert (await call(server, user, "GET", "/api/auth/verify"))[0] == 200
        assert server.app[keys.TOKENS].stats.hits == hits + 1  # it was cached

        status, body = await call(server, admin, "POST", f"/api/admin/users/{user.id}/disable")
        assert status == 200 and body["user"]["status"] == "disabled"

        async with browser.get("/api/conversations") as resp:
            assert resp.status == 401
    assert (await call(server, user, "GET", "/api/conversations"))[0] == 401
    assert (await call(server, bearer(key), "GET", "/v1/models"))[0] == 401
    status, body = await sign_in(server, user.name, user.password)
    assert (status, code(body)) == (403, "account_disabled")

    status, body = await call(server, admin, "POST", f"/api/admin/users/{user.id}/enable")
    assert status == 200 and body["user"]["status"] == "active"
    assert (await call(server, user, "GET", "/api/conversations"))[0] == 401  # stays dead
    assert (await call(server, bearer(key), "GET", "/v1/models"))[0] == 401
    status, body = await sign_in(server, user.name, user.password)
    assert status == 200
    status, body = await call(server, bearer(body["access_token"]), "GET", "/api/keys")
    assert status == 200 and body["keys"] == []


async def test_disable_stops_running_and_queued_jobs(tmp_path: Path,
                                                     simulator: SimServer) -> None:
    await sim(simulator, "/sim/config", {"tpot_ms": 30, "reply_tokens": 400})
    running = await start(make_config(tmp_path, simulator.url, queue={"workers": 1}))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            admin, user = await _sign_up(s, "boss"), await _sign_up(s, "hog")
            first = await s.post("/api/chat", json={"message": "long", "stream": True},
                                 headers=user.headers)
            seen = 0
            async for name, _ in events(first):
                seen += name == "message"
                if seen == 2:
                    break
            second = await s.post("/api/chat", json={"message": "queued", "stream": True},
                                  headers=user.headers)
            pool = running.app[keys.POOL]
            while pool.queue.qsize() < 1:
                await asyncio.sleep(0.01)
            status, body = await call(running, admin, "POST",
                                      f"/api/admin/users/{user.id}/disable")
            assert status == 200
            ends = []
            for resp in (first, second):
                last = None
                async for name, data in events(resp):
                    last = (name, data)
                ends.append(last)
                resp.close()
            assert all(e is not None and e[0] == "error" and
                       e[1]["error"]["code"] == "cancelled" for e in ends), ends
            assert pool.queue.qsize() == 0
            for _ in range(200):
                if pool.stats.running == 0:
                    break
                await asyncio.sleep(0.01)
            assert pool.stats.running == 0
            status, body = await call(running, admin, "GET", "/api/admin/audit")
            assert body["entries"][0]["detail"]["jobs_stopped"] == 2
    finally:
        await running.stop()


async def _rows_of(server: Running, user_id: int) -> dict[str, int]:
    """How many rows of each table belong to the user (read directly from the database)."""
    return {table: int(await value(server, f"SELECT count(*) FROM {table} WHERE {column} = ?",
                                   user_id))
            for table, column in [("users", "id"), ("conversations", "user_id"),
                                  ("messages", "owner"), ("api_keys", "user_id"),
                                  ("usage_daily", "user_id")]}


async def test_delete_removes_the_user_and_all_their_data(server, register) -> None:
    admin, user = await register(), await register()
    key = await new_key(server, user)
    status, body = await call(server, user, "POST", "/api/chat", {"message": "remember me"})
    assert status == 200
    assert (await call(server, bearer(key), "GET", "/v1/models"))[0] == 200
    await server.app[keys.USAGE].flush()
    assert all((await _rows_of(server, user.id)).values())
    status, _ = await call(server, admin, "DELETE", f"/api/admin/users/{user.id}")
    assert status == 204
    assert await _rows_of(server, user.id) == dict.fromkeys(
        ("users", "conversations", "messages", "api_keys", "usage_daily"), 0)
    assert (await call(server, user, "GET", "/api/auth/verify"))[0] == 401
    assert (await call(server, bearer(key), "GET", "/v1/models"))[0] == 401
    assert (await sign_in(server, user.name, user.password))[0] == 401
    status, body = await call(server, admin, "GET", "/api/admin/users")
    assert [u["id"] for u in body["users"]] == [admin.id]


async def test_admin_cannot_read_other_users_conversations(server, register) -> None:
    admin, user = await register("theadmin"), await register("private")
    status, body = await call(server, user, "POST", "/api/chat", {"message": "top secret plan"})
    conv = body["conversation_id"]
    status, body = await call(server, user, "GET", f"/api/conversations/{conv}")
    message_id = body["messages"][0]["id"]
    before = body
    attempts = [("GET", f"/api/conversations/{conv}", None),
                ("GET", f"/api/conversations/{conv}?render=html", None),
                ("PATCH", f"/api/conversations/{conv}", {"title": "mine now"}),
                ("DELETE", f"/api/conversations/{conv}", None),
                ("POST", "/api/chat", {"message": "and?", "conversation_id": conv}),
                ("POST", "/api/chat", {"conversation_id": conv, "regenerate": True}),
                ("POST", "/api/chat", {"message": "edited", "conversation_id": conv,
                                       "edit_message_id": message_id})]
    for method, path, payload in attempts:
        status, body = await call(server, admin, method, path, payload)
        assert (status, code(body)) == (404, "not_found"), (method, path, body)
    status, body = await call(server, admin, "GET", "/api/conversations")
    assert status == 200 and body["conversations"] == []
    status, body = await call(server, admin, "GET", "/api/search?q=secret")
    assert status == 200 and body["results"] == []
    for path in ("/api/admin/users", "/api/admin/audit", "/api/usage"):
        status, body = await call(server, admin, "GET", path)
        assert status == 200 and "secret" not in str(body), path
    status, body = await call(server, user, "GET", f"/api/conversations/{conv}")
    assert body == before  # untouched


async def test_a_verify_in_flight_during_an_admin_change_is_not_cached(server, register) -> None:
    """A token or key read from the database just before an admin's change must not be cached
    with what it read (the old status or limits would hold for auth.cache_ttl_s)."""
    user = await register()
    key = await new_key(server, user)
    tokens, api_keys, db = server.app[keys.TOKENS], server.app[keys.API_KEYS], db_of(server)
    status, body = await sign_in(server, user.name, user.password)
    token = body["access_token"]
    tokens.refresh_user(user.id)  # the login cached it: start from a miss
    for verify, forget in ((tokens.verify, tokens.refresh_user),
                           (api_keys.verify, api_keys.forget_user)):
        credential = token if verify == tokens.verify else key
        reading = asyncio.create_task(verify(credential))
        await asyncio.sleep(0)  # the task now waits for its database read
        forget(user.id)  # what approve, enable or a limits change does meanwhile
        await reading
        reads = db.stats.reads
        await verify(credential)
        assert db.stats.reads == reads + 1, verify  # read anew: the stale read was not cached


async def test_deleting_ones_own_account_stops_its_streams_and_refuses_its_late_jobs(
        tmp_path: Path, simulator: SimServer) -> None:
    await sim(simulator, "/sim/config", {"tpot_ms": 30, "reply_tokens": 400})
    running = await start(make_config(tmp_path, simulator.url, queue={"workers": 2}))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            await _sign_up(s, "boss")
            user = await _sign_up(s, "leaver")
            stream = await s.post("/api/chat", json={"message": "long", "stream": True},
                                  headers=user.headers)
            async for name, _ in events(stream):
                if name == "message":
                    break
            async with s.delete("/api/auth/account", json={"password": "correct horse"},
                                headers=user.headers) as r:
                assert r.status == 204
            last = None
            async for name, data in events(stream):
                last = (name, data)
            stream.close()
            assert last is not None and last[0] == "error", last
            pool = running.app[keys.POOL]
            for _ in range(200):
                if pool.stats.running == 0:
                    break
                await asyncio.sleep(0.01)
            assert pool.stats.running == 0
            with pytest.raises(OwnerBlocked):  # a request already past authentication
                pool.reserve(user.id)
    finally:
        await running.stop()


async def test_the_last_admin_cannot_delete_their_account(server, register) -> None:
    admin = await register()
    async with aiohttp.ClientSession(server.url) as s:
        async with s.delete("/api/auth/account", json={"password": admin.password},
                            headers=admin.headers) as r:
            assert (r.status, code(await r.json())) == (409, "conflict")
    assert (await call(server, admin, "GET", "/api/admin/users"))[0] == 200


async def test_nobody_is_promoted_at_start_up_when_no_admin_is_left(tmp_path: Path,
                                                                    simulator: SimServer) -> None:
    config = make_config(tmp_path, simulator.url)
    running = await start(config)
    async with aiohttp.ClientSession(running.url) as s:
        for name in ("first", "second"):
            async with s.post("/api/auth/register",
                              json={"username": name, "password": "correct horse"}) as r:
                assert r.status == 201
    await execute(running, "UPDATE users SET role = 'user'")  # however the admin went away
    await running.stop()
    running = await start(config)
    try:
        assert await rows(running, "SELECT role, status FROM users ORDER BY id") == \
            [("user", "active"), ("user", "active")]
    finally:
        await running.stop()


async def test_an_api_key_never_administers(server, register) -> None:
    """A script's key is not an admin's session: a leaked key cannot take over accounts."""
    admin = await register()
    key = await new_key(server, admin)
    async with aiohttp.ClientSession(server.url) as s:
        async with s.get("/api/admin/users", headers=bearer(key)) as r:
            assert (r.status, code(await r.json())) == (403, "forbidden")
    assert (await call(server, admin, "GET", "/api/admin/users"))[0] == 200
