"""Export (one conversation as JSON or Markdown, all as JSON Lines) and import (chatgate's
JSON, JSON Lines, ChatGPT's conversations.json) on the real app and a real SQLite file."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from server.runner import Running
from tests.support.app import User, error_of, register_over_http, storage_of
from tests.support.exports import chatgpt_sample
from tests.support.storage import value

Custom = Callable[..., Awaitable[Running]]
Register = Callable[..., Awaitable[User]]


async def chat(http: aiohttp.ClientSession, user: User, message: str,
               conv: int | None = None) -> int:
    """One whole turn through the simulator; the conversation's id."""
    body: dict[str, Any] = {"message": message}
    if conv is not None:
        body["conversation_id"] = conv
    async with http.post("/api/chat", json=body, headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        return int((await resp.json())["conversation_id"])


async def get_conv(http: aiohttp.ClientSession, user: User, conv: int) -> dict[str, Any]:
    async with http.get(f"/api/conversations/{conv}", headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def import_body(http: aiohttp.ClientSession, user: User, body: bytes,
                      content_type: str = "application/json") -> aiohttp.ClientResponse:
    return await http.post("/api/conversations/import", data=body,
                           headers={**user.headers, "Content-Type": content_type})


async def listed(http: aiohttp.ClientSession, user: User) -> list[dict[str, Any]]:
    async with http.get("/api/conversations", params={"limit": 100},
                        headers=user.headers) as resp:
        return list((await resp.json())["conversations"])


def texts(conv: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in conv["messages"]]


# --- export ------------------------------------------------------------------------------------


async def test_export_json_has_the_conversation_and_a_format_marker(
        http: aiohttp.ClientSession, register: Register) -> None:
    user = await register()
    conv = await chat(http, user, "Hello export")
    await chat(http, user, "And again", conv)
    async with http.get(f"/api/conversations/{conv}/export", headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        disposition = resp.headers["Content-Disposition"]
        assert disposition == f'attachment; filename="chatgate-{conv}-hello-export.json"'
        body = json.loads(await resp.read())
    assert body["format"] == "chatgate.conversation" and body["version"] == 1
    assert body["id"] == conv and body["title"] == "Hello export"
    stored = await get_conv(http, user, conv)
    assert body["messages"] == stored["messages"]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 2
    assert all(m["status"] == "complete" and m["created_at"] for m in body["messages"])
    assert body["messages"][1]["model"]


async def test_export_markdown_has_the_title_and_a_heading_per_message(
        http: aiohttp.ClientSession, register: Register) -> None:
    user = await register()
    conv = await chat(http, user, "Plan: a trip/to *Oslo*")
    async with http.get(f"/api/conversations/{conv}/export", params={"format": "md"},
                        headers=user.headers) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/markdown"
        assert resp.headers["Content-Disposition"] == \
            f'attachment; filename="chatgate-{conv}-plan-a-trip-to-oslo.md"'
        text = await resp.text()
    stored = await get_conv(http, user, conv)
    reply = stored["messages"][1]
    assert text.startswith(f"# {stored['title']}\n\n## User\n\nPlan: a trip/to *Oslo*\n\n")
    assert f"## Assistant ({reply['model']})\n\n{reply['content']}\n" in text


async def test_export_of_anothers_conversation_or_a_bad_format_is_refused(
        http: aiohttp.ClientSession, register: Register) -> None:
    alice, bob = await register(), await register()
    conv = await chat(http, alice, "mine")
    for fmt in ("json", "md"):
        async with http.get(f"/api/conversations/{conv}/export", params={"format": fmt},
                            headers=bob.headers) as resp:
            await error_of(resp, 404, "not_found")
    async with http.get(f"/api/conversations/{conv}/export", params={"format": "pdf"},
                        headers=alice.headers) as resp:
        await error_of(resp, 400, "invalid_request")
    async with http.get(f"/api/conversations/{conv}/export") as resp:
        await error_of(resp, 401)


async def test_export_all_streams_every_conversation_as_json_lines(
        server: Running, http: aiohttp.ClientSession, register: Register) -> None:
    user, other = await register(), await register()
    await chat(http, other, "not yours")
    # More than one storage page (20): the stream pages through them.
    made = [(await import_body(http, user, json.dumps({
        "format": "chatgate.conversation", "version": 1, "title": f"chat {i}",
        "messages": [{"role": "user", "content": f"question {i}"},
                     {"role": "assistant", "content": f"answer {i}"}]}).encode())) for i in
        range(45)]
    assert all(r.status == 200 for r in made)
    async with http.get("/api/export", headers=user.headers) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/x-ndjson"
        assert resp.headers["Content-Disposition"] == \
            f'attachment; filename="chatgate-{user.name}.jsonl"'
        lines = (await resp.read()).decode().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["title"] for r in rows] == [f"chat {i}" for i in range(45)]
    assert all(r["format"] == "chatgate.conversation" for r in rows)
    assert rows[7]["messages"][1]["content"] == "answer 7"
    empty = await register("Ann.Lee_x")
    async with http.get("/api/export", headers=empty.headers) as resp:
        assert resp.status == 200 and await resp.read() == b""
        assert resp.headers["Content-Disposition"] == \
            'attachment; filename="chatgate-ann-lee-x.jsonl"'


# --- round trip --------------------------------------------------------------------------------


async def test_export_then_import_gives_the_same_messages(
        http: aiohttp.ClientSession, register: Register) -> None:
    user = await register()
    conv = await chat(http, user, "Round trip one")
    await chat(http, user, "Round trip two", conv)
    async with http.get(f"/api/conversations/{conv}/export", headers=user.headers) as resp:
        exported = await resp.read()
    resp = await import_body(http, user, exported)
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["rejected"] == []
    [new] = result["imported"]
    assert new["title"] == "Round trip one" and new["id"] != conv
    old, copy = await get_conv(http, user, conv), await get_conv(http, user, new["id"])
    # The same tree under new ids: each message hangs from the copy of its parent.
    new_id = {o["id"]: c["id"] for o, c in zip(old["messages"], copy["messages"], strict=True)}
    strip = [{k: new_id.get(v) if k == "parent_id" else v for k, v in m.items()
              if k not in ("id", "usage")} for m in old["messages"]]
    assert [{k: v for k, v in m.items() if k != "id"} for m in copy["messages"]] == strip
    assert copy["created_at"] == old["created_at"]
    assert copy["updated_at"] == old["messages"][-1]["created_at"]
    # The whole account's JSON Lines import too, back into another account.
    async with http.get("/api/export", headers=user.headers) as resp:
        lines = await resp.read()
    other = await register()
    resp = await import_body(http, other, lines, "application/x-ndjson")
    assert resp.status == 200, await resp.text()
    assert [c["title"] for c in (await resp.json())["imported"]] == ["Round trip one"] * 2
    [a, b] = await listed(http, other)
    assert texts(await get_conv(http, other, a["id"])) == texts(old)


# --- ChatGPT's conversations.json ----------------------------------------------------------------


async def test_chatgpt_export_imports_every_branch_showing_the_current_one(
        http: aiohttp.ClientSession, register: Register) -> None:
    user = await register()
    resp = await import_body(http, user, json.dumps(chatgpt_sample()).encode())
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert [c["title"] for c in result["imported"]] == ["Trip planning", "Second"]
    conv = await get_conv(http, user, result["imported"][0]["id"])
    assert texts(conv) == [("user", "Where to in June?"), ("assistant", "Try Lisbon."),
                           ("user", "Somewhere cold"), ("assistant", "Try Tromsø.")]
    assert conv["title"] == "Trip planning"
    assert conv["created_at"] == "2023-11-14T22:13:20.500Z"
    assert conv["messages"][0]["created_at"] == "2023-11-14T22:13:21.000Z"
    assert conv["messages"][3]["model"] == "gpt-4o"
    assert conv["model"] is None  # not a configured model: turns use the default
    # The other branch is there too: the edited question's first version and its reply.
    assert len(conv["messages"][2]["siblings"]) == 2
    async with http.post(f"/api/conversations/{conv['id']}/branch", headers=user.headers,
                         json={"message_id": conv["messages"][2]["siblings"][0]}) as r:
        assert texts(await r.json()) == [("user", "Where to in June?"),
                                         ("assistant", "Try Lisbon."), ("user", "Cheaper please"),
                                         ("assistant", "Porto.")]
    second = await get_conv(http, user, result["imported"][1]["id"])
    assert texts(second) == [("user", "hi"), ("assistant", "hello")]
    # Imported text is searchable like any other.
    async with http.get("/api/search", params={"q": "Tromsø"}, headers=user.headers) as r:
        assert [h["conversation_id"] for h in (await r.json())["results"]] == [conv["id"]]


async def test_each_bad_conversation_is_rejected_on_its_own(
        http: aiohttp.ClientSession, register: Register) -> None:
    user = await register()
    good = {"format": "chatgate.conversation", "version": 1, "title": "ok",
            "messages": [{"role": "user", "content": "fine"}]}
    bad_role = {**good, "title": "bad", "messages": [{"role": "system", "content": "x"}]}
    bad_list = {**good, "title": "\u2066evil\u2069", "messages": "nope"}
    body = b"\n".join(json.dumps(c).encode() for c in (good, bad_role, bad_list)) + b"\n{oops\n"
    resp = await import_body(http, user, body, "application/x-ndjson")
    assert resp.status == 207
    result = await resp.json()
    assert [c["title"] for c in result["imported"]] == ["ok"]
    assert [(r["index"], r["title"], r["error"]["code"]) for r in result["rejected"]] == [
        (1, "bad", "invalid_conversation"), (2, "evil", "invalid_conversation"),
        (3, None, "invalid_conversation")]
    assert "role" in result["rejected"][0]["error"]["message"]
    assert "line 4" in result["rejected"][2]["error"]["message"]
    assert len(await listed(http, user)) == 1


async def test_a_list_or_object_where_an_id_or_role_goes_rejects_that_conversation_only(
        http: aiohttp.ClientSession, register: Register) -> None:
    user = await register()
    good = {"format": "chatgate.conversation", "version": 1, "title": "ok",
            "messages": [{"role": "user", "content": "fine", "id": 1}]}
    odd = [{**good, "messages": [{"role": "user", "content": "x", "parent_id": [1]}]},
           {**good, "messages": [{"role": ["user"], "content": "x"}]},
           {**good, "messages": [{"role": "user", "content": "x", "status": {}}]},
           {**good, "leaf_id": [1]},
           {"title": "gpt", "current_node": "a", "mapping": {
               "a": {"parent": [1], "children": [], "message": {
                   "author": {"role": "user"}, "content": {"parts": ["hi"]}}}}},
           {"title": "gpt", "mapping": {"a": {"parent": None, "children": [], "message": {
               "author": {"role": {"x": 1}}, "content": {"parts": ["hi"]}}}}}]
    resp = await import_body(http, user, json.dumps([good, *odd]).encode())
    assert resp.status in (200, 207), await resp.text()  # never a 500
    result = await resp.json()
    assert [r["index"] for r in result["rejected"]] == [1, 2]
    assert len(result["imported"]) == 5


async def test_hostile_titles_are_cleaned_like_any_title(
        http: aiohttp.ClientSession, register: Register) -> None:
    user = await register()
    body = {"format": "chatgate.conversation", "version": 1,
            "title": "\u202eexe.txt\u200b\x00\n" + "x" * 500,
            "messages": [{"role": "user", "content": "a\x00b"}]}
    resp = await import_body(http, user, json.dumps(body).encode())
    [made] = (await resp.json())["imported"]
    assert made["title"] == ("exe.txt " + "x" * 500)[:200]
    conv = await get_conv(http, user, made["id"])
    assert conv["title"] == made["title"] and texts(conv) == [("user", "ab")]
    async with http.get(f"/api/conversations/{made['id']}/export", params={"format": "md"},
                        headers=user.headers) as resp:
        assert resp.headers["Content-Disposition"] == \
            f'attachment; filename="chatgate-{made["id"]}-exe-txt-{"x" * 32}.md"'
        assert (await resp.text()).startswith(f"# {made['title']}\n\n## User\n\nab\n")
    blank = {**body, "title": "\u202e\u200b"}
    resp = await import_body(http, user, json.dumps(blank).encode())
    assert (await resp.json())["imported"][0]["title"] == "Imported chat"


# --- malformed input and caps ---------------------------------------------------------------------


async def test_a_body_in_no_known_format_is_400(
        http: aiohttp.ClientSession, register: Register) -> None:
    user = await register()
    chatgate = {"format": "chatgate.conversation", "messages": []}
    for body in (b"not json at all", b'{"hello": "world"}', b"[1, 2]", b"[]", b"   ",
                 b'{"title": "x"}\n{"title": "y"}', b'{"mapping": {}}',
                 json.dumps({**chatgate, "messages": "no"}).encode(),
                 json.dumps([chatgate, {"title": "no mapping"}]).encode(),
                 json.dumps([chatgate, {"mapping": []}]).encode()):
        resp = await import_body(http, user, body)
        error = await error_of(resp, 400)
        assert error["code"] in ("unknown_import_format", "invalid_request"), error
    resp = await import_body(http, user, b"[]", "text/html")
    await error_of(resp, 415, "unsupported_media_type")
    assert await listed(http, user) == []


async def test_imports_past_the_size_cap_or_the_user_caps_are_refused(
        custom: Custom) -> None:
    # An import may be larger than other bodies (server.max_body_bytes).
    server = await custom(limits={"max_import_bytes": 4000, "max_conversations_per_user": 3,
                                  "max_stored_chars_per_user": 2000},
                          server={"max_body_bytes": 1024})
    user = await register_over_http(server.url, "capped")

    def conv(title: str, size: int) -> dict[str, Any]:
        return {"format": "chatgate.conversation", "version": 1, "title": title,
                "messages": [{"role": "user", "content": "q" * size},
                             {"role": "assistant", "content": "a" * size}]}

    async with aiohttp.ClientSession(server.url) as http:
        resp = await import_body(http, user, json.dumps(conv("big", 2500)).encode())
        error = await error_of(resp, 413, "payload_too_large")
        assert "4,000" in error["message"]

        async def chunks() -> Any:  # no Content-Length: the cap counts what arrives
            for _ in range(5):
                yield b" " * 1000

        resp = await http.post("/api/conversations/import", data=chunks(),
                               headers={**user.headers, "Content-Type": "application/json"})
        await error_of(resp, 413, "payload_too_large")
        # One too big for the stored-text cap, then more than the conversation cap allows.
        body = [conv("huge", 900), conv("one", 10), conv("two", 10), conv("three", 10),
                conv("four", 10)]
        body[0]["messages"].append({"role": "user", "content": "z" * 300})
        raw = json.dumps(body).encode()
        assert 1024 < len(raw) <= 4000
        resp = await import_body(http, user, raw)
        assert resp.status == 207
        result = await resp.json()
        assert [c["title"] for c in result["imported"]] == ["one", "two", "three"]
        assert [(r["index"], r["error"]["code"]) for r in result["rejected"]] == [
            (0, "storage_quota_exceeded"), (4, "too_many_conversations")]
        # Nothing of a refused conversation was stored: the counters and the rows agree.
        titles = sorted(c["title"] for c in await listed(http, user))
        assert titles == ["one", "three", "two"]
        counted = await storage_of(server).quotas.stored(user.id)
        assert counted == (3, 3 * (3 + 20) + len("three") - 3)
        assert await value(server, "SELECT count(*) FROM messages WHERE owner = ?",
                           user.id) == 6
