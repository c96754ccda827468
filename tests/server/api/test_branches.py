"""Branches end to end: edits and regenerations keep what they replace, the prompt is the
path to the message, switching and deleting branches, search, migration and export."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.storage import NotFound
from server.storage.sqlite import migrate
from tests.support.app import User, error_of, storage_of
from vllm_sim import SimServer


async def call(s: aiohttp.ClientSession, user: User, method: str, path: str,
               body: Any = None, status: int = 200) -> Any:
    async with s.request(method, path, json=body, headers=user.headers) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json() if resp.content_type == "application/json" else None


async def say(s: aiohttp.ClientSession, user: User, **body: Any) -> dict[str, Any]:
    return await call(s, user, "POST", "/api/chat", body)  # type: ignore[no-any-return]


async def shown(s: aiohttp.ClientSession, user: User, conv: int) -> dict[str, Any]:
    return await call(s, user, "GET", f"/api/conversations/{conv}")  # type: ignore[no-any-return]


def texts(conversation: dict[str, Any]) -> list[str]:
    return [m["content"] for m in conversation["messages"]]


async def sent_last(simulator: SimServer) -> list[str]:
    """The messages of the last request the simulator got (without the system prompt)."""
    async with aiohttp.ClientSession() as s, s.get(simulator.root_url + "/sim/requests") as r:
        return [m["content"] for m in (await r.json())[-1]["messages"] if m["role"] != "system"]


async def three_turns(s: aiohttp.ClientSession, user: User) -> tuple[int, dict[str, Any]]:
    conv = (await say(s, user, message="q1"))["conversation_id"]
    await say(s, user, message="q2", conversation_id=conv)
    await say(s, user, message="q3", conversation_id=conv)
    return conv, await shown(s, user, conv)


async def test_editing_the_first_question_keeps_the_old_branch(http, register,
                                                                simulator) -> None:
    user = await register()
    conv, before = await three_turns(http, user)
    q1 = before["messages"][0]
    await say(http, user, conversation_id=conv, edit_message_id=q1["id"], message="q1 again")
    after = await shown(http, user, conv)
    assert texts(after)[0] == "q1 again" and len(after["messages"]) == 2
    assert after["messages"][0]["siblings"] == [q1["id"], after["messages"][0]["id"]]
    assert after["messages"][0]["parent_id"] is None
    assert after["leaf_id"] == after["messages"][-1]["id"]
    assert await sent_last(simulator) == ["q1 again"]  # the path only: nothing of the old one
    # Back to the first version: the three turns are all there.
    back = await call(http, user, "POST", f"/api/conversations/{conv}/branch",
                      {"message_id": q1["id"]})
    assert texts(back) == texts(before)
    assert back["messages"][0]["siblings"] == after["messages"][0]["siblings"]
    assert (await shown(http, user, conv))["leaf_id"] == before["leaf_id"]  # it stays shown
    assert after["message_count"] == 8  # every branch's messages are stored


async def test_editing_a_middle_question_sends_the_path_to_it(http, register,
                                                              simulator) -> None:
    user = await register()
    conv, before = await three_turns(http, user)
    q2 = before["messages"][2]
    await say(http, user, conversation_id=conv, edit_message_id=q2["id"], message="q2 b")
    assert await sent_last(simulator) == ["q1", before["messages"][1]["content"], "q2 b"]
    after = await shown(http, user, conv)
    assert texts(after)[:3] == ["q1", texts(before)[1], "q2 b"] and len(after["messages"]) == 4
    # The next message follows the new branch.
    await say(http, user, conversation_id=conv, message="q3 b")
    assert await sent_last(simulator) == texts(after) + ["q3 b"]


async def test_regenerating_any_reply_adds_an_alternative(http, register, simulator) -> None:
    user = await register()
    conv, before = await three_turns(http, user)
    a1 = before["messages"][1]
    new = (await say(http, user, conversation_id=conv, regenerate=True,
                     message_id=a1["id"]))["message"]
    assert await sent_last(simulator) == ["q1"]
    after = await shown(http, user, conv)
    assert [m["id"] for m in after["messages"]] == [before["messages"][0]["id"], new["id"]]
    assert after["messages"][1]["siblings"] == [a1["id"], new["id"]]
    # Naming the question works as well, and the default is the branch's last question.
    await say(http, user, conversation_id=conv, regenerate=True,
              message_id=before["messages"][0]["id"])
    assert len((await shown(http, user, conv))["messages"][1]["siblings"]) == 3
    await say(http, user, conversation_id=conv, regenerate=True)
    assert await sent_last(simulator) == ["q1"]
    assert len((await shown(http, user, conv))["messages"][1]["siblings"]) == 4


async def test_a_failed_empty_reply_is_not_kept_as_an_alternative(http, register,
                                                                  simulator) -> None:
    user = await register()
    conv = (await say(http, user, message="q1"))["conversation_id"]
    async with aiohttp.ClientSession() as s:
        async with s.post(simulator.root_url + "/sim/faults",
                          json={"mode": "500", "count": 10}) as r:
            assert r.status == 200, await r.text()
        async with http.post("/api/chat", json={"conversation_id": conv, "message": "q2"},
                             headers=user.headers) as resp:
            assert resp.status >= 400
        async with s.post(simulator.root_url + "/sim/faults", json={"mode": "none"}) as r:
            assert r.status == 200
    failed = await shown(http, user, conv)
    assert failed["messages"][-1]["status"] == "error" and failed["messages"][-1]["content"] == ""
    await say(http, user, conversation_id=conv, regenerate=True)  # Retry
    after = await shown(http, user, conv)
    assert after["messages"][-1]["status"] == "complete"
    assert "siblings" not in after["messages"][-1]  # the empty failure went
    assert after["message_count"] == 4


async def test_deleting_a_version_shows_the_one_beside_it(http, register, simulator) -> None:
    user = await register()
    conv, before = await three_turns(http, user)
    q2 = before["messages"][2]
    await say(http, user, conversation_id=conv, edit_message_id=q2["id"], message="q2 b")
    edited = await shown(http, user, conv)
    q2b = edited["messages"][2]
    # Deleting the version on show: the view moves to the one left (the old branch, whole).
    left = await call(http, user, "DELETE", f"/api/conversations/{conv}/messages/{q2b['id']}")
    assert texts(left) == texts(before) and "siblings" not in left["messages"][2]
    assert left["message_count"] == 6
    # Deleting a branch that is not on show leaves the view as it is.
    await say(http, user, conversation_id=conv, edit_message_id=q2["id"], message="q2 c")
    q2c = (await shown(http, user, conv))["messages"][2]
    view = await call(http, user, "DELETE", f"/api/conversations/{conv}/messages/{q2['id']}")
    assert [m["id"] for m in view["messages"]][2] == q2c["id"]
    assert view["message_count"] == 4
    # Deleting the first message deletes the conversation's whole tree under it.
    gone = await call(http, user, "DELETE",
                      f"/api/conversations/{conv}/messages/{before['messages'][0]['id']}")
    assert gone["messages"] == [] and gone["leaf_id"] is None and gone["message_count"] == 0
    await say(http, user, conversation_id=conv, message="fresh start")
    assert texts(await shown(http, user, conv))[0] == "fresh start"


async def test_branch_calls_check_ownership_and_input(http, register, simulator) -> None:
    alice, bob = await register(), await register()
    conv, before = await three_turns(http, alice)
    other = (await say(http, alice, message="other"))["conversation_id"]
    mid = before["messages"][0]["id"]
    for method, path, body in (
            ("POST", f"/api/conversations/{conv}/branch", {"message_id": mid}),
            ("DELETE", f"/api/conversations/{conv}/messages/{mid}", None)):
        async with http.request(method, path, json=body, headers=bob.headers) as resp:
            await error_of(resp, 404)
    # A message of another conversation of the same user is not this one's.
    async with http.post(f"/api/conversations/{other}/branch", json={"message_id": mid},
                         headers=alice.headers) as resp:
        await error_of(resp, 404)
    async with http.delete(f"/api/conversations/{other}/messages/{mid}",
                           headers=alice.headers) as resp:
        await error_of(resp, 404)
    for body in ({}, {"message_id": "x"}, {"message_id": 0}, {"message_id": mid, "x": 1}):
        async with http.post(f"/api/conversations/{conv}/branch", json=body,
                             headers=alice.headers) as resp:
            await error_of(resp, 400, "invalid_request")
    async with http.post("/api/chat", json={"conversation_id": conv, "message_id": mid,
                                            "message": "x"}, headers=alice.headers) as resp:
        await error_of(resp, 400, "invalid_request")
    async with http.post("/api/chat", json={"conversation_id": conv, "regenerate": True,
                                            "message_id": 10**9}, headers=alice.headers) as resp:
        await error_of(resp, 404)
    assert texts(await shown(http, alice, conv)) == texts(before)


async def test_a_search_hit_in_a_hidden_branch_opens_it(http, register, simulator) -> None:
    user = await register()
    conv, before = await three_turns(http, user)
    await call(http, user, "POST", "/api/chat", {"conversation_id": conv, "message": "xylophone",
                                                  "edit_message_id": before["messages"][2]["id"]})
    await call(http, user, "POST", f"/api/conversations/{conv}/branch",
               {"message_id": before["messages"][2]["id"]})
    assert "xylophone" not in texts(await shown(http, user, conv))
    hits = (await call(http, user, "GET", "/api/search?q=xylophone"))["results"]
    hit = next(h for h in hits if h["conversation_id"] == conv)
    opened = await call(http, user, "POST", f"/api/conversations/{conv}/branch",
                        {"message_id": hit["message_id"]})
    assert hit["message_id"] in [m["id"] for m in opened["messages"]]


async def test_no_branch_is_deleted_under_a_running_reply(http, register, simulator,
                                                         server) -> None:
    user = await register()
    conv = (await say(http, user, message="q1"))["conversation_id"]
    async with aiohttp.ClientSession() as s, \
            s.post(simulator.root_url + "/sim/config", json={"tpot_ms": 50}) as r:
        assert r.status == 200
    resp = await http.post("/api/chat", json={"conversation_id": conv, "message": "q2",
                                              "stream": True}, headers=user.headers)
    seen = b""
    while b"event: meta" not in seen:  # the user's message is stored
        seen += await resp.content.readline()
    q2 = (await shown(http, user, conv))["messages"][-1]
    assert q2["content"] == "q2"
    async with http.delete(f"/api/conversations/{conv}/messages/{q2['id']}",
                           headers=user.headers) as gone:
        await error_of(gone, 409, "turn_running")
    body = await resp.read()
    resp.close()
    assert b"event: done" in body
    after = await call(http, user, "DELETE", f"/api/conversations/{conv}/messages/{q2['id']}")
    assert texts(after) == texts(await shown(http, user, conv))
    assert after["message_count"] == 2
    # Under the API, a reply whose question went meanwhile is not stored: nothing dangles.
    with pytest.raises(NotFound, match="answers was deleted"):
        await storage_of(server).messages.add(conv, "assistant", "late", parent_id=q2["id"])


@pytest.mark.sqlite_only("SQLite's migration V10 on a file from before branches")
def test_migration_makes_each_conversation_one_branch(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn, 9)
    conn.execute("INSERT INTO users (username, password_hash, created_at) VALUES ('a', 'h', 't')")
    for _ in (1, 2):
        conn.execute("INSERT INTO conversations (user_id, title, created_at, updated_at) "
                     "VALUES (1, 'c', 't', 't')")
    for n, conv in enumerate((1, 2, 1, 1, 2)):
        conn.execute("INSERT INTO messages (conversation_id, role, content, created_at, owner) "
                     "VALUES (?, ?, ?, 't', 1)", (conv, ("user", "assistant")[n % 2], f"m{n}"))
    migrate(conn)
    rows = conn.execute(
        "SELECT id, conversation_id, parent_id FROM messages ORDER BY id").fetchall()
    assert rows == [(1, 1, None), (2, 2, None), (3, 1, 1), (4, 1, 3), (5, 2, 2)]
    assert conn.execute("SELECT id, leaf_id FROM conversations ORDER BY id").fetchall() == \
        [(1, 4), (2, 5)]


async def test_a_turn_while_a_reply_runs_in_the_conversation_is_409(
        http, register, simulator) -> None:
    """A second turn would hang from a question whose answer is not stored yet (that answer
    then showed as a "version" of the new question, and a regenerate's reply was not the one
    shown). Another user's id still answers 404, not whether it is busy."""
    user, other = await register(), await register()
    conv = (await say(http, user, message="q1"))["conversation_id"]
    async with aiohttp.ClientSession() as s, \
            s.post(simulator.root_url + "/sim/config", json={"tpot_ms": 50}) as r:
        assert r.status == 200
    resp = await http.post("/api/chat", json={"conversation_id": conv, "message": "q2",
                                              "stream": True, "max_tokens": 20},
                           headers=user.headers)
    seen = b""
    while b"event: meta" not in seen:  # the turn is under way
        seen += await resp.content.readline()
    for body in ({"message": "q3"}, {"regenerate": True},
                 {"edit_message_id": (await shown(http, user, conv))["messages"][0]["id"],
                  "message": "q1 b"}):
        async with http.post("/api/chat", json={"conversation_id": conv, **body},
                             headers=user.headers) as busy:
            assert (await error_of(busy, 409))["code"] == "turn_running"
    async with http.post("/api/chat", json={"conversation_id": conv, "message": "x"},
                         headers=other.headers) as theirs:
        await error_of(theirs, 404)
    await resp.read()
    resp.close()
    await say(http, user, conversation_id=conv, message="q3")  # once it ended: fine
    after = await shown(http, user, conv)
    assert texts(after)[::2] == ["q1", "q2", "q3"]
    assert all("siblings" not in m for m in after["messages"])
