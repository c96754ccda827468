"""/api/memories: a user's long-term memories, kept per account, sent with every turn within
a budget, newest first; proposals wait for the user."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from server import keys
from server.runner import Running
from server.services.memory import approx_tokens
from server.services.profile import MEMORY_HEADING
from tests.support.admin import call_ok
from tests.support.app import User, db_of, error_of, register_over_http
from tests.support.storage import value
from vllm_sim import SimServer


async def add(http: aiohttp.ClientSession, user: User, content: str) -> dict[str, Any]:
    async with http.post("/api/memories", json={"content": content},
                         headers=user.headers) as resp:
        assert resp.status == 201, await resp.text()
        row: dict[str, Any] = await resp.json()
        return row


async def listed(http: aiohttp.ClientSession, user: User) -> list[dict[str, Any]]:
    async with http.get("/api/memories", headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert set(body) == {"memories"}
        rows: list[dict[str, Any]] = body["memories"]
        return rows


async def patch(http: aiohttp.ClientSession, user: User, memory_id: int,
                body: dict[str, Any]) -> dict[str, Any]:
    async with http.patch(f"/api/memories/{memory_id}", json=body,
                          headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        row: dict[str, Any] = await resp.json()
        return row


async def system_sent(http: aiohttp.ClientSession, user: User, simulator: SimServer,
                      conv: int | None = None) -> str:
    """Run a turn; the system message the model was sent ("" if none)."""
    body: dict[str, Any] = {"message": "hi"}
    if conv is not None:
        body["conversation_id"] = conv
    async with http.post("/api/chat", json=body, headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{simulator.root_url}/sim/requests") as resp:
            first = (await resp.json())[-1]["messages"][0]
    return str(first["content"]) if first["role"] == "system" else ""


async def test_create_list_edit_switch_off_and_delete(http: aiohttp.ClientSession,
                                                      register: Any) -> None:
    user = await register()
    assert await listed(http, user) == []
    first = await add(http, user, "  I write Python 3.12  ")
    assert set(first) == {"id", "content", "enabled", "state", "created_at", "updated_at"}
    assert first["content"] == "I write Python 3.12"  # kept without the spaces around it
    assert first["enabled"] is True and first["state"] == "active"
    second = await add(http, user, "Answer in Spanish")
    assert [m["id"] for m in await listed(http, user)] == [second["id"], first["id"]]
    edited = await patch(http, user, first["id"], {"content": "I write Python 3.13"})
    assert edited["content"] == "I write Python 3.13" and edited["enabled"] is True
    assert edited["updated_at"] >= first["updated_at"]
    off = await patch(http, user, first["id"], {"enabled": False})
    assert off["enabled"] is False and off["content"] == "I write Python 3.13"
    both = await patch(http, user, first["id"], {"enabled": True, "content": "Py"})
    assert both["enabled"] is True and both["content"] == "Py"
    async with http.delete(f"/api/memories/{first['id']}", headers=user.headers) as resp:
        assert resp.status == 204
    assert [m["id"] for m in await listed(http, user)] == [second["id"]]
    async with http.delete(f"/api/memories/{first['id']}", headers=user.headers) as resp:
        await error_of(resp, 404, "memory_not_found")


@pytest.mark.parametrize("body", [
    {}, {"content": ""}, {"content": "   \n\t "}, {"content": "\u200b\u202e"},
    {"content": "x" * 501}, {"content": 5}, {"content": None}, {"content": "ok", "x": 1},
])
async def test_create_refuses_a_bad_body(http: aiohttp.ClientSession, register: Any,
                                         body: dict[str, Any]) -> None:
    user = await register()
    async with http.post("/api/memories", json=body, headers=user.headers) as resp:
        await error_of(resp, 400, "invalid_request")
    assert await listed(http, user) == []


async def test_content_is_one_line_of_at_most_500_characters(http: aiohttp.ClientSession,
                                                             register: Any) -> None:
    user = await register()
    row = await add(http, user, " " + "y" * 500 + " ")
    assert row["content"] == "y" * 500
    row = await add(http, user, "two\nlines   and\tspaces")
    assert row["content"] == "two lines and spaces"  # one line in the prompt


@pytest.mark.parametrize("body", [
    {}, {"content": ""}, {"content": "x" * 501}, {"enabled": "yes"}, {"enabled": None},
    {"content": None}, {"state": "active"},
])
async def test_patch_refuses_a_bad_body(http: aiohttp.ClientSession, register: Any,
                                        body: dict[str, Any]) -> None:
    user = await register()
    row = await add(http, user, "kept")
    async with http.patch(f"/api/memories/{row['id']}", json=body,
                          headers=user.headers) as resp:
        await error_of(resp, 400, "invalid_request")
    assert await listed(http, user) == [row]


async def test_another_users_memory_is_not_found(http: aiohttp.ClientSession,
                                                 register: Any) -> None:
    owner, other = await register(), await register()
    row = await add(http, owner, "mine")
    assert await listed(http, other) == []
    for method, path, body in [("PATCH", "", {"content": "theirs"}), ("DELETE", "", None),
                               ("POST", "/accept", None)]:
        async with http.request(method, f"/api/memories/{row['id']}{path}", json=body,
                                headers=other.headers) as resp:
            await error_of(resp, 404, "memory_not_found")
    assert await listed(http, owner) == [row]


async def test_at_most_max_per_user(custom: Any, register: Any) -> None:
    server = await custom(memories={"max_per_user": 2})
    async with aiohttp.ClientSession(server.url) as http:
        async with http.post("/api/auth/register",
                             json={"username": "capped", "password": "quiet-lantern-42"}) as r:
            user = User(await r.json(), "quiet-lantern-42")
        await add(http, user, "one")
        await add(http, user, "two")
        async with http.post("/api/memories", json={"content": "three"},
                             headers=user.headers) as resp:
            err = await error_of(resp, 429, "too_many_memories")
            assert err["limit"] == "memories.max_per_user" and "2" in err["message"]
        # Proposals count too, and stop at the cap without an error.
        assert await server.app[keys.MEMORIES].propose(user.id, ["four"]) == []
        assert len(await listed(http, user)) == 2


async def test_memories_count_towards_the_stored_text_cap(http: aiohttp.ClientSession,
                                                          register: Any,
                                                          server: Running) -> None:
    user = await register()
    quotas = server.app[keys.STORAGE].quotas
    row = await add(http, user, "z" * 300)
    assert await quotas.stored(user.id) == (0, 300)
    await patch(http, user, row["id"], {"content": "z" * 100})
    assert await quotas.stored(user.id) == (0, 100)
    async with http.delete(f"/api/memories/{row['id']}", headers=user.headers) as resp:
        assert resp.status == 204
    assert await quotas.stored(user.id) == (0, 0)


async def test_over_the_stored_text_cap_nothing_is_added(custom: Any) -> None:
    server = await custom(limits={"max_stored_chars_per_user": 50})
    async with aiohttp.ClientSession(server.url) as http:
        async with http.post("/api/auth/register",
                             json={"username": "tight", "password": "quiet-lantern-42"}) as r:
            user = User(await r.json(), "quiet-lantern-42")
        await add(http, user, "a" * 40)
        async with http.post("/api/memories", json={"content": "b" * 20},
                             headers=user.headers) as resp:
            await error_of(resp, 413, "storage_quota_exceeded")
        assert len(await listed(http, user)) == 1


async def test_proposals_wait_for_the_user(http: aiohttp.ClientSession, register: Any,
                                           server: Running, simulator: SimServer) -> None:
    user = await register()
    kept = await add(http, user, "I use vim")
    memories = server.app[keys.MEMORIES]
    proposed = await memories.propose(user.id, ["I live in Lyon", "  i USE   vim ", "",
                                                "I live in lyon", "x" * 501])
    # Deduplicated (against what is kept and each other, case and spacing aside); the
    # unusable ones dropped.
    assert [(p["content"], p["state"]) for p in proposed] == [("I live in Lyon", "proposed")]
    rows = await listed(http, user)
    assert [(m["content"], m["state"]) for m in rows] == [("I live in Lyon", "proposed"),
                                                         ("I use vim", "active")]
    assert "Lyon" not in await system_sent(http, user, simulator)  # never sent unaccepted
    async with http.post(f"/api/memories/{proposed[0]['id']}/accept",
                         headers=user.headers) as resp:
        assert resp.status == 200
        accepted = await resp.json()
    assert accepted["state"] == "active" and accepted["id"] == proposed[0]["id"]
    system = await system_sent(http, user, simulator)
    assert "- I live in Lyon" in system and "- I use vim" in system
    # Accepting an active memory leaves it active; rejecting a proposal is deleting it.
    async with http.post(f"/api/memories/{kept['id']}/accept", headers=user.headers) as resp:
        assert resp.status == 200 and (await resp.json())["state"] == "active"
    assert await memories.propose(user.id, ["Lyon is home"]) != []
    row = next(m for m in await listed(http, user) if m["content"] == "Lyon is home")
    async with http.delete(f"/api/memories/{row['id']}", headers=user.headers) as resp:
        assert resp.status == 204


async def test_every_turn_carries_the_enabled_memories(http: aiohttp.ClientSession,
                                                       register: Any,
                                                       simulator: SimServer) -> None:
    user = await register()
    assert await system_sent(http, user, simulator) == "You are a helpful assistant."
    old = await add(http, user, "I write Python 3.12")
    await add(http, user, "Answer in Spanish")
    system = await system_sent(http, user, simulator)
    assert system == ("You are a helpful assistant.\n\n" + MEMORY_HEADING +
                      "\n- Answer in Spanish\n- I write Python 3.12")
    await patch(http, user, old["id"], {"enabled": False})
    assert "Python" not in await system_sent(http, user, simulator)
    other = await register()  # someone else's memories never go in
    assert await system_sent(http, other, simulator) == "You are a helpful assistant."


async def test_over_the_configured_budget_the_oldest_are_left_out(
        custom: Any, simulator: SimServer) -> None:
    each = approx_tokens("fact number 1 " + "x" * 40)
    running = await custom(memories={"max_tokens": 2 * each})  # room for two of them
    user = await register_over_http(running.url, "remembers")
    async with aiohttp.ClientSession(running.url) as http:
        for n in (1, 2, 3):
            await add(http, user, f"fact number {n} " + "x" * 40)
        system = await system_sent(http, user, simulator)
        preview = await call_ok(running, user, "GET", "/api/prompt")
    assert "- fact number 3" in system and "- fact number 2" in system
    assert "fact number 1" not in system
    assert system.index("fact number 3") < system.index("fact number 2")  # newest first
    assert preview["messages"][0]["content"] == system  # the preview shows the same


async def test_an_edit_is_seen_by_the_next_turn_and_steady_turns_read_nothing_more(
        http: aiohttp.ClientSession, register: Any, server: Running,
        simulator: SimServer) -> None:
    user = await register()
    row = await add(http, user, "I like tea")
    async with http.post("/api/chat", json={"message": "hi"}, headers=user.headers) as resp:
        conv = (await resp.json())["conversation_id"]
    profiles = server.app[keys.PROFILES]
    await system_sent(http, user, simulator, conv)
    misses, reads = profiles.misses, db_of(server).stats.reads
    assert "- I like tea" in await system_sent(http, user, simulator, conv)
    assert "- I like tea" in await system_sent(http, user, simulator, conv)
    # Two turns: no profile loaded again and nothing read at all (a turn's own history
    # comes back from its write).
    assert profiles.misses == misses and db_of(server).stats.reads == reads
    await patch(http, user, row["id"], {"content": "I like coffee"})
    system = await system_sent(http, user, simulator, conv)
    assert "- I like coffee" in system and "tea" not in system
    async with http.delete(f"/api/memories/{row['id']}", headers=user.headers) as resp:
        assert resp.status == 204
    assert "coffee" not in await system_sent(http, user, simulator, conv)


async def test_deleting_the_account_deletes_its_memories(http: aiohttp.ClientSession,
                                                         register: Any,
                                                         server: Running) -> None:
    await register()  # the first account administers: it may not delete itself
    user = await register()
    await add(http, user, "gone soon")
    await server.app[keys.MEMORIES].propose(user.id, ["also gone"])
    await server.app[keys.PROFILES].get(user.id)  # cached
    count = "SELECT count(*) FROM memories WHERE user_id = ?"
    assert await value(server, count, user.id) == 2
    async with http.delete("/api/auth/account", json={"password": user.password},
                           headers=user.headers) as resp:
        assert resp.status == 204
    assert await value(server, count, user.id) == 0
    misses = server.app[keys.PROFILES].misses
    await server.app[keys.PROFILES].get(user.id)
    assert server.app[keys.PROFILES].misses == misses + 1  # forgotten with the account
