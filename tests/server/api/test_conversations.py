"""Tests for /api/conversations: create, list with cursors, get, rename, delete, ownership."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.config import Config
from server.runner import Running, start
from server.services.memory import MemoryManager
from tests.support.app import User, error_of, make_config, storage_of
from tests.support.storage import value

CONV_KEYS = {"id", "title", "created_at", "updated_at", "message_count", "model",
             "running_turn_id", "settings", "leaf_id"}
MSG_KEYS = {"id", "role", "content", "status", "created_at", "parent_id"}


async def create(http: aiohttp.ClientSession, user: User,
                 title: str | None = None) -> dict[str, Any]:
    body = {"title": title} if title is not None else None
    async with http.post("/api/conversations", json=body, headers=user.headers) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def list_page(http: aiohttp.ClientSession, user: User, **params: Any) -> dict[str, Any]:
    async with http.get("/api/conversations", params=params, headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def get_conv(http: aiohttp.ClientSession, user: User, conv_id: int) -> dict[str, Any]:
    async with http.get(f"/api/conversations/{conv_id}", headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def all_pages(http: aiohttp.ClientSession, user: User, limit: int) -> list[list[int]]:
    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        body = await list_page(http, user, **params)
        pages.append([c["id"] for c in body["conversations"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not terminate"


async def search_ids(http: aiohttp.ClientSession, user: User, q: str) -> set[int]:
    async with http.get("/api/search", params={"q": q}, headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        return {hit["conversation_id"] for hit in (await resp.json())["results"]}


def memory(server: Running, config: Config) -> MemoryManager:
    return MemoryManager(storage_of(server).messages, config.memory)


# --- create ----------------------------------------------------------------------------------


async def test_create_with_title(http: aiohttp.ClientSession, register: Any) -> None:
    user = await register()
    conv = await create(http, user, "Trip planning")
    assert set(conv) == CONV_KEYS
    assert isinstance(conv["id"], int) and conv["id"] > 0
    assert conv["title"] == "Trip planning"
    assert conv["message_count"] == 0
    assert conv["created_at"] == conv["updated_at"]
    assert (await get_conv(http, user, conv["id"]))["title"] == "Trip planning"


async def test_create_without_title_and_with_empty_body(http: aiohttp.ClientSession,
                                                        register: Any) -> None:
    user = await register()
    async with http.post("/api/conversations", headers=user.headers) as resp:  # no body at all
        assert resp.status == 201, await resp.text()
        no_body = await resp.json()
    async with http.post("/api/conversations", json={}, headers=user.headers) as resp:
        assert resp.status == 201, await resp.text()
        empty_object = await resp.json()
    for conv in (no_body, empty_object):
        assert set(conv) == CONV_KEYS
        assert conv["title"] == "New chat"
        assert conv["message_count"] == 0
    assert no_body["id"] != empty_object["id"]


@pytest.mark.parametrize("body,field", [
    ({"title": ""}, "title"), ({"title": "x" * 201}, "title"), ({"title": 7}, "title"),
    ({"title": "ok", "extra": 1}, "extra"), ([], None), ("title", None),
])
async def test_create_rejects_bad_bodies(http: aiohttp.ClientSession, register: Any, body: Any,
                                         field: str | None) -> None:
    user = await register()
    async with http.post("/api/conversations", json=body, headers=user.headers) as resp:
        err = await error_of(resp, 400, "invalid_request")
    if field:
        assert err["field"] == field
    assert (await list_page(http, user))["conversations"] == []


# --- list ------------------------------------------------------------------------------------


async def test_list_is_newest_activity_first_with_message_count(
        http: aiohttp.ClientSession, register: Any, server: Running, config: Config) -> None:
    user = await register()
    mem = memory(server, config)
    a = await create(http, user, "a")
    await asyncio.sleep(0.01)  # distinct millisecond timestamps
    b = await create(http, user, "b")
    await asyncio.sleep(0.01)
    c = await create(http, user, "c")
    body = await list_page(http, user)
    assert set(body) == {"conversations", "next_cursor"}
    assert [x["id"] for x in body["conversations"]] == [c["id"], b["id"], a["id"]]
    assert body["next_cursor"] is None
    for x in body["conversations"]:
        assert set(x) == CONV_KEYS

    await asyncio.sleep(0.01)
    await mem.append(a["id"], "user", "hello")
    await mem.append(a["id"], "assistant", "hi there")
    body = await list_page(http, user)
    listed = body["conversations"]
    assert [x["id"] for x in listed] == [a["id"], c["id"], b["id"]]
    assert [x["message_count"] for x in listed] == [2, 0, 0]
    assert listed[0]["updated_at"] > a["updated_at"]


async def test_list_is_empty_for_a_new_user(http: aiohttp.ClientSession, register: Any) -> None:
    user = await register()
    assert await list_page(http, user) == {"conversations": [], "next_cursor": None}


async def test_cursor_pagination_25_by_10(http: aiohttp.ClientSession, register: Any) -> None:
    user = await register()
    created = [(await create(http, user, f"c{i}"))["id"] for i in range(25)]
    pages = await all_pages(http, user, 10)
    assert [len(p) for p in pages] == [10, 10, 5]
    flat = [i for p in pages for i in p]
    assert len(flat) == len(set(flat)) == 25
    assert set(flat) == set(created)
    assert flat == sorted(created, reverse=True)  # newest first (ids tie-break equal times)


async def test_cursor_pagination_exact_multiple(http: aiohttp.ClientSession, register: Any) -> None:
    user = await register()
    await asyncio.gather(*(create(http, user) for _ in range(20)))
    pages = await all_pages(http, user, 10)
    assert [len(p) for p in pages] == [10, 10]
    assert len({i for p in pages for i in p}) == 20


async def test_concurrently_created_conversations_page_without_gaps(
        http: aiohttp.ClientSession, register: Any) -> None:
    """Many rows share one timestamp: the (updated_at, id) cursor still splits them cleanly."""
    user = await register()
    created = await asyncio.gather(*(create(http, user) for _ in range(30)))
    pages = await all_pages(http, user, 7)
    flat = [i for p in pages for i in p]
    assert len(flat) == len(set(flat)) == 30
    assert set(flat) == {c["id"] for c in created}


async def test_new_conversations_between_pages_do_not_corrupt_later_pages(
        http: aiohttp.ClientSession, register: Any) -> None:
    user = await register()
    originals = [(await create(http, user, f"o{i}"))["id"] for i in range(25)]
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        body = await list_page(http, user, **params)
        seen.extend(c["id"] for c in body["conversations"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        for _ in range(3):  # activity between page fetches
            await create(http, user, "newcomer")
    assert pages == 3
    assert len(seen) == len(set(seen)), "duplicates across pages"
    assert set(originals) <= set(seen), f"missing: {set(originals) - set(seen)}"
    assert seen == originals[::-1]


async def test_other_users_conversations_are_not_listed(http: aiohttp.ClientSession,
                                                        register: Any) -> None:
    alice, bob = await register(), await register()
    mine = await create(http, alice, "mine")
    await create(http, bob, "theirs")
    listed = (await list_page(http, alice))["conversations"]
    assert [c["id"] for c in listed] == [mine["id"]]


@pytest.mark.parametrize("cursor", [
    "!!!", "zzzz", "not a cursor", base64.urlsafe_b64encode(b"hello").decode(),
    base64.urlsafe_b64encode(b"2024-01-01T00:00:00.000Z|abc").decode(),
    base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
    base64.urlsafe_b64encode(b"2024-01-01T00:00:00.000Z|99999999999999999999999").decode(),
])
async def test_bad_cursor_is_400(http: aiohttp.ClientSession, register: Any, cursor: str) -> None:
    user = await register()
    await create(http, user)
    async with http.get("/api/conversations", params={"cursor": cursor},
                        headers=user.headers) as resp:
        err = await error_of(resp, 400, "invalid_request")
    assert err["field"] == "cursor"


def _schema_cursor_pattern() -> re.Pattern[str]:
    doc = json.loads((Path(__file__).parents[3] / "server" / "openapi.json").read_text())
    params = doc["paths"]["/api/conversations"]["get"]["parameters"]
    return re.compile(next(p for p in params if p["name"] == "cursor")["schema"]["pattern"])


@pytest.mark.parametrize("cursor", [
    "0_1", "9999-99-99T99:99:99.999Z_999999999999999999", "2026-11-25T03:35:00.583Z_42",
    "1-:.TZ_7",
])
async def test_every_cursor_the_schema_allows_is_accepted(http: aiohttp.ClientSession,
                                                          register: Any, cursor: str) -> None:
    """The OpenAPI pattern is the cursor's whole format: a value matching it is a place to
    start from, never a 400 (schemathesis checks the same with random ones)."""
    assert _schema_cursor_pattern().fullmatch(cursor)
    user = await register()
    await create(http, user)
    page = await list_page(http, user, cursor=cursor)
    assert set(page) == {"conversations", "next_cursor"}


async def test_next_cursor_matches_the_schema(http: aiohttp.ClientSession,
                                              register: Any) -> None:
    user = await register()
    await asyncio.gather(*(create(http, user) for _ in range(2)))
    cursor = (await list_page(http, user, limit=1))["next_cursor"]
    assert _schema_cursor_pattern().fullmatch(cursor)
    assert len((await list_page(http, user, limit=1, cursor=cursor))["conversations"]) == 1


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", "99999999999999999999"])
async def test_limit_out_of_range_is_400(http: aiohttp.ClientSession, register: Any,
                                         limit: str) -> None:
    user = await register()
    async with http.get("/api/conversations", params={"limit": limit},
                        headers=user.headers) as resp:
        err = await error_of(resp, 400, "invalid_request")
    assert err["field"] == "limit"


async def test_limit_bounds_are_accepted(http: aiohttp.ClientSession, register: Any) -> None:
    user = await register()
    await asyncio.gather(*(create(http, user) for _ in range(3)))
    one = await list_page(http, user, limit=1)
    assert len(one["conversations"]) == 1 and one["next_cursor"]
    hundred = await list_page(http, user, limit=100)
    assert len(hundred["conversations"]) == 3 and hundred["next_cursor"] is None


# --- get, rename, delete ---------------------------------------------------------------------


async def test_get_returns_messages_oldest_first(http: aiohttp.ClientSession, register: Any,
                                                 server: Running, config: Config) -> None:
    user = await register()
    conv = await create(http, user, "chat")
    mem = memory(server, config)
    contents = [("user", "first question"), ("assistant", "first answer"),
                ("user", "second question"), ("assistant", "second answer")]
    stored: list[Any] = []
    for role, text in contents:
        stored.append(await mem.append(conv["id"], role, text,
                                       parent_id=stored[-1]["id"] if stored else None))
    body = await get_conv(http, user, conv["id"])
    assert set(body) == CONV_KEYS | {"messages"}
    assert body["id"] == conv["id"] and body["title"] == "chat"
    assert body["message_count"] == 4
    assert [(m["role"], m["content"]) for m in body["messages"]] == contents
    assert [m["id"] for m in body["messages"]] == [m["id"] for m in stored]
    for m in body["messages"]:
        assert set(m) == MSG_KEYS and m["status"] == "complete"


async def test_rename(http: aiohttp.ClientSession, register: Any) -> None:
    user = await register()
    conv = await create(http, user, "old")
    async with http.patch(f"/api/conversations/{conv['id']}", json={"title": "new ✓"},
                          headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        renamed = await resp.json()
    assert set(renamed) == CONV_KEYS
    assert renamed["id"] == conv["id"] and renamed["title"] == "new ✓"
    assert (await get_conv(http, user, conv["id"]))["title"] == "new ✓"
    assert (await list_page(http, user))["conversations"][0]["title"] == "new ✓"


async def test_delete_then_404_and_search_forgets(http: aiohttp.ClientSession, register: Any,
                                                  server: Running, config: Config) -> None:
    user = await register()
    conv = await create(http, user, "doomed")
    keep = await create(http, user, "kept")
    mem = memory(server, config)
    await mem.append(conv["id"], "user", "the zeppelin flies tonight")
    await mem.append(keep["id"], "user", "another zeppelin story")
    assert await search_ids(http, user, "zeppelin") == {conv["id"], keep["id"]}

    async with http.delete(f"/api/conversations/{conv['id']}", headers=user.headers) as resp:
        assert resp.status == 204
        assert await resp.read() == b""
    async with http.get(f"/api/conversations/{conv['id']}", headers=user.headers) as resp:
        await error_of(resp, 404, "not_found")
    async with http.delete(f"/api/conversations/{conv['id']}", headers=user.headers) as resp:
        await error_of(resp, 404, "not_found")
    async with http.patch(f"/api/conversations/{conv['id']}", json={"title": "x"},
                          headers=user.headers) as resp:
        await error_of(resp, 404, "not_found")
    assert await search_ids(http, user, "zeppelin") == {keep["id"]}
    assert await search_ids(http, user, "tonight") == set()
    assert [c["id"] for c in (await list_page(http, user))["conversations"]] == [keep["id"]]
    # Its messages are gone from the database too (cascade).
    left = await value(server, "SELECT count(*) FROM messages WHERE conversation_id = ?",
                       conv["id"])
    assert left == 0


# --- ownership -------------------------------------------------------------------------------


async def test_other_user_cannot_touch_a_conversation(http: aiohttp.ClientSession, register: Any,
                                                      server: Running, config: Config) -> None:
    owner, intruder = await register(), await register()
    conv = await create(http, owner, "private")
    await memory(server, config).append(conv["id"], "user", "secret plans")
    path = f"/api/conversations/{conv['id']}"
    async with http.get(path, headers=intruder.headers) as resp:
        await error_of(resp, 404, "not_found")
        assert "secret" not in await resp.text()
    async with http.patch(path, json={"title": "pwned"}, headers=intruder.headers) as resp:
        await error_of(resp, 404, "not_found")
    async with http.delete(path, headers=intruder.headers) as resp:
        await error_of(resp, 404, "not_found")
    body = await get_conv(http, owner, conv["id"])
    assert body["title"] == "private"
    assert [m["content"] for m in body["messages"]] == ["secret plans"]
    assert [c["id"] for c in (await list_page(http, owner))["conversations"]] == [conv["id"]]
    assert (await list_page(http, intruder))["conversations"] == []


@pytest.mark.parametrize("path", ["/api/conversations/abc", "/api/conversations/-1",
                                  "/api/conversations/1.5", "/api/conversations/1a",
                                  "/api/conversations/%20"])
async def test_non_numeric_id_is_404(http: aiohttp.ClientSession, register: Any,
                                     path: str) -> None:
    user = await register()
    for method in ("GET", "PATCH", "DELETE"):
        async with http.request(method, path, json={"title": "x"}, headers=user.headers) as resp:
            await error_of(resp, 404)


async def test_ids_never_probe(http: aiohttp.ClientSession, register: Any) -> None:
    owner, other = await register(), await register()
    conv = await create(http, owner, "exists")
    unknown = conv["id"] + 100_000
    for method, body in (("GET", None), ("PATCH", {"title": "t"}), ("DELETE", None)):
        answers = []
        for conv_id in (conv["id"], unknown):
            async with http.request(method, f"/api/conversations/{conv_id}", json=body,
                                    headers=other.headers) as resp:
                answers.append((resp.status, await resp.read()))
        assert answers[0] == answers[1], method
        assert answers[0][0] == 404


# --- request validation ----------------------------------------------------------------------


@pytest.mark.parametrize("body,field", [
    ({}, "title"),
    ({"title": None}, "title"),
    ({"title": ""}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"title": 42}, "title"),
    ({"title": ["a"]}, "title"),
    ({"title": {"a": 1}}, "title"),
    ({"title": True}, "title"),
    ({"title": "nul\x00byte"}, "title"),
    ({"title": "ok", "pinned": True}, "pinned"),
    ({"settings": []}, "settings"),
    ({"settings": {"colour": "red"}}, "settings"),
    ({"settings": {"temperature": 3}}, "temperature"),
    ({"settings": {"max_tokens": 0}}, "max_tokens"),
    ({"settings": {"max_tokens": 1.5}}, "max_tokens"),
    ({"settings": {"system_prompt": "x" * 8001}}, "system_prompt"),
    ({"title": "ok", "settings": {"temperature": "hot"}}, "temperature"),
])
async def test_patch_rejects_bad_fields(http: aiohttp.ClientSession, register: Any, body: Any,
                                        field: str) -> None:
    user = await register()
    conv = await create(http, user, "unchanged")
    async with http.patch(f"/api/conversations/{conv['id']}", json=body,
                          headers=user.headers) as resp:
        err = await error_of(resp, 400, "invalid_request")
    assert err["field"] == field
    assert (await get_conv(http, user, conv["id"]))["title"] == "unchanged"


@pytest.mark.parametrize("raw", [
    b"[1, 2]", b'"title"', b"42", b"null", b"true",          # JSON but not an object
    b"{", b"{title: 1}", b"{'title': 'x'}", b"not json",      # not JSON
    b'{"title": "\xff\xfe"}', b"\xff\xfe\xfd",                # not UTF-8
    b"",                                                      # nothing
])
async def test_patch_rejects_bad_json(http: aiohttp.ClientSession, register: Any,
                                      raw: bytes) -> None:
    user = await register()
    conv = await create(http, user, "unchanged")
    async with http.patch(f"/api/conversations/{conv['id']}", data=raw,
                          headers={**user.headers, "Content-Type": "application/json"}) as resp:
        await error_of(resp, 400, "invalid_request")
    assert (await get_conv(http, user, conv["id"]))["title"] == "unchanged"


async def test_title_bounds_are_accepted(http: aiohttp.ClientSession, register: Any) -> None:
    user = await register()
    conv = await create(http, user, "x")
    for title in ("y", "z" * 200):
        async with http.patch(f"/api/conversations/{conv['id']}", json={"title": title},
                              headers=user.headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["title"] == title


async def test_body_over_max_body_bytes_is_413(tmp_path: Path, simulator: Any) -> None:
    cfg = make_config(tmp_path, simulator.url, server={"max_body_bytes": 1024})
    running = await start(cfg)
    try:
        async with aiohttp.ClientSession(running.url) as s:
            async with s.post("/api/auth/register",
                              json={"username": "big", "password": "correct horse"}) as resp:
                assert resp.status == 201
                headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
            async with s.post("/api/conversations", json={"title": "small"},
                              headers=headers) as resp:
                assert resp.status == 201
                conv = await resp.json()
            big = json.dumps({"title": "t" * 2000}).encode()
            async with s.patch(f"/api/conversations/{conv['id']}", data=big,
                               headers={**headers, "Content-Type": "application/json"}) as resp:
                await error_of(resp, 413, "payload_too_large")
            async with s.post("/api/conversations", data=big,
                              headers={**headers, "Content-Type": "application/json"}) as resp:
                await error_of(resp, 413, "payload_too_large")
            async with s.get(f"/api/conversations/{conv['id']}", headers=headers) as resp:
                assert (await resp.json())["title"] == "small"
            async with s.get("/api/conversations", headers=headers) as resp:
                assert len((await resp.json())["conversations"]) == 1
    finally:
        await running.stop()


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/conversations"), ("POST", "/api/conversations"),
    ("GET", "/api/conversations/1"), ("PATCH", "/api/conversations/1"),
    ("DELETE", "/api/conversations/1"), ("GET", "/api/search?q=x"),
])
async def test_missing_auth_is_401(http: aiohttp.ClientSession, method: str, path: str) -> None:
    async with http.request(method, path, json={"title": "x"}) as resp:
        await error_of(resp, 401, "unauthorized")
        assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
