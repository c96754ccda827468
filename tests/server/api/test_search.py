"""Tests for /api/search: ranking, snippets and highlights, isolation, hostile input, triggers."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from server.config import Config
from server.runner import Running
from server.services.memory import MemoryManager
from server.storage.textsearch import CANDIDATES, rank
from tests.support.app import User, error_of, storage_of
from tests.support.storage import execute

HIT_KEYS = {"conversation_id", "message_id", "title", "snippet", "highlights", "created_at"}


async def new_conversation(http: aiohttp.ClientSession, user: User, title: str) -> int:
    async with http.post("/api/conversations", json={"title": title}, headers=user.headers) as r:
        assert r.status == 201, await r.text()
        return int((await r.json())["id"])


async def search(http: aiohttp.ClientSession, user: User, q: str | None,
                 **params: Any) -> list[dict[str, Any]]:
    query = dict(params)
    if q is not None:
        query["q"] = q
    async with http.get("/api/search", params=query, headers=user.headers) as resp:
        assert resp.status == 200, (q, await resp.text())
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert set(body) == {"results"} and isinstance(body["results"], list)
    for hit in body["results"]:
        assert set(hit) == HIT_KEYS
    return body["results"]


def mem(server: Running, config: Config) -> MemoryManager:
    return MemoryManager(storage_of(server).messages, config.memory)


async def test_finds_own_messages_best_match_first_with_highlights(
        http: aiohttp.ClientSession, register: Any, server: Running, config: Config) -> None:
    user = await register()
    conv = await new_conversation(http, user, "Animals")
    m = mem(server, config)
    weak = await m.append(conv, "user", "yesterday at the zoo, among many other animals and "
                                        "birds and reptiles, we also saw one quokka")
    strong = await m.append(conv, "assistant", "Quokka! The quokka is a quokka, quokka.")
    await m.append(conv, "user", "nothing relevant here at all")
    hits = await search(http, user, "quokka")
    assert [h["message_id"] for h in hits] == [strong["id"], weak["id"]]
    for hit in hits:
        assert hit["conversation_id"] == conv and hit["title"] == "Animals"
        assert hit["highlights"], hit
        assert "\x02" not in hit["snippet"] and "\x03" not in hit["snippet"]
        for start, end in hit["highlights"]:
            assert 0 <= start < end <= len(hit["snippet"])
            assert hit["snippet"][start:end].lower() == "quokka", hit
    assert len(hits[0]["highlights"]) == 4
    assert len(hits[1]["highlights"]) == 1
    assert "quokka" in hits[1]["snippet"]


async def test_highlights_of_several_words_and_unicode(
        http: aiohttp.ClientSession, register: Any, server: Running, config: Config) -> None:
    user = await register()
    conv = await new_conversation(http, user, "Café")
    await mem(server, config).append(conv, "user", "Über das Café: ein großer Kaffee mit Milch")
    hits = await search(http, user, "café milch")
    assert len(hits) == 1
    snippet = hits[0]["snippet"]
    marked = sorted(snippet[s:e] for s, e in hits[0]["highlights"])
    assert marked == ["Café", "Milch"], (snippet, hits[0]["highlights"])
    # remove_diacritics: "cafe" also finds "Café".
    assert len(await search(http, user, "cafe")) == 1


async def test_other_users_messages_are_never_returned(
        http: aiohttp.ClientSession, register: Any, server: Running, config: Config) -> None:
    alice, bob = await register(), await register()
    m = mem(server, config)
    a_conv = await new_conversation(http, alice, "alice's")
    b_conv = await new_conversation(http, bob, "bob's")
    await m.append(a_conv, "user", "platypus facts from alice")
    await m.append(b_conv, "user", "platypus facts from bob")
    await m.append(b_conv, "user", "bob alone knows the wombat")
    a_hits = await search(http, alice, "platypus")
    assert {h["conversation_id"] for h in a_hits} == {a_conv}
    assert all("bob" not in h["snippet"] for h in a_hits)
    assert await search(http, alice, "wombat") == []
    assert {h["conversation_id"] for h in await search(http, bob, "platypus")} == {b_conv}
    # A broad query cannot widen the scope either.
    for q in ("facts", "f", "bob", "platypus OR wombat", '" OR 1=1 --'):
        assert all(h["conversation_id"] == a_conv for h in await search(http, alice, q)), q


HOSTILE = [
    '"', '""', "*", "-", "NEAR(a b)", "a OR", "AND", "OR", "NOT", "a AND", "(", ")", "((a)",
    "'; DROP TABLE messages; --", "content:foo", "^foo", "foo*bar", "{content}: x", "a + b",
    "🦘🦘", "日本語のテキスト", "naïve café", "\u202e\u200b", "a\x00b", "%", "_", "\\",
    "x" * 10_000, "word " * 2_000, "   ", "\t\n", "",
]


@pytest.mark.parametrize("q", HOSTILE, ids=lambda q: repr(q[:20]) + f"/{len(q)}")
async def test_hostile_queries_give_200_with_results_list(
        http: aiohttp.ClientSession, register: Any, server: Running, config: Config,
        q: str) -> None:
    user = await register()
    conv = await new_conversation(http, user, "t")
    await mem(server, config).append(conv, "user", "foo bar content word a b 🦘 日本語")
    await search(http, user, q)
    # The table is still there and search still works afterwards.
    assert len(await search(http, user, "foo")) == 1


async def test_missing_q_gives_empty_results(http: aiohttp.ClientSession, register: Any) -> None:
    user = await register()
    assert await search(http, user, None) == []


async def test_prefix_search(http: aiohttp.ClientSession, register: Any, server: Running,
                             config: Config) -> None:
    user = await register()
    conv = await new_conversation(http, user, "p")
    m = await mem(server, config).append(conv, "user", "a quokka smiles")
    for q in ("quok", "quokk", "quokka", "QUOK", "smiles quok"):
        hits = await search(http, user, q)
        assert [h["message_id"] for h in hits] == [m["id"]], q
    assert await search(http, user, "quokkas") == []
    assert await search(http, user, "uokka") == []


async def test_changed_message_is_reindexed(http: aiohttp.ClientSession, register: Any,
                                            server: Running, config: Config) -> None:
    user = await register()
    conv = await new_conversation(http, user, "edit")
    m = await mem(server, config).append(conv, "assistant", "the answer is aardvark")
    assert len(await search(http, user, "aardvark")) == 1
    await execute(server, "UPDATE messages SET content = ? WHERE id = ?",
                  "the answer is axolotl", m["id"])
    assert await search(http, user, "aardvark") == []
    hits = await search(http, user, "axolotl")
    assert [h["message_id"] for h in hits] == [m["id"]]
    assert "axolotl" in hits[0]["snippet"]
    # Words that did not change are still found, once.
    assert [h["message_id"] for h in await search(http, user, "answer")] == [m["id"]]


async def test_deleted_message_is_gone_from_search(http: aiohttp.ClientSession, register: Any,
                                                   server: Running, config: Config) -> None:
    user = await register()
    conv = await new_conversation(http, user, "del")
    manager = mem(server, config)
    gone = await manager.append(conv, "user", "ephemeral narwhal")
    kept = await manager.append(conv, "user", "permanent narwhal")
    assert len(await search(http, user, "narwhal")) == 2
    await execute(server, "DELETE FROM messages WHERE id = ?", gone["id"])
    assert [h["message_id"] for h in await search(http, user, "narwhal")] == [kept["id"]]
    assert await search(http, user, "ephemeral") == []
    # The trigger also kept the counter right.
    async with http.get(f"/api/conversations/{conv}", headers=user.headers) as resp:
        body = await resp.json()
    assert body["message_count"] == 1
    assert [msg["id"] for msg in body["messages"]] == [kept["id"]]


async def test_message_inserted_by_plain_sql_is_indexed(http: aiohttp.ClientSession,
                                                        register: Any, server: Running) -> None:
    user = await register()
    conv = await new_conversation(http, user, "raw")
    await execute(server, "INSERT INTO messages (conversation_id, role, content, created_at) "
                  "VALUES (?, 'user', 'inserted by hand: capybara', '2024-01-01T00:00:00.000Z')",
                  conv)
    hits = await search(http, user, "capybara")
    assert [h["conversation_id"] for h in hits] == [conv]


async def test_limit(http: aiohttp.ClientSession, register: Any, server: Running,
                     config: Config) -> None:
    user = await register()
    conv = await new_conversation(http, user, "many")
    manager = mem(server, config)
    for i in range(5):
        await manager.append(conv, "user", f"llama number {i}")
    assert len(await search(http, user, "llama")) == 5
    assert len(await search(http, user, "llama", limit=2)) == 2
    assert len(await search(http, user, "llama", limit=1)) == 1
    assert len(await search(http, user, "llama", limit=100)) == 5
    for bad in ("0", "101", "-5", "ten", "2.5"):
        async with http.get("/api/search", params={"q": "llama", "limit": bad},
                            headers=user.headers) as resp:
            err = await error_of(resp, 400, "invalid_request")
        assert err["field"] == "limit", bad


async def test_a_search_ranks_the_newest_matches_only(
        http: aiohttp.ClientSession, register: Any, server: Running, config: Config) -> None:
    """Cost follows the results shown: among more than CANDIDATES matches, the best of the
    newest ones win, not an older one, however good (docs/api.md says so)."""
    user = await register()
    conv = await new_conversation(http, user, "Many")
    uid, now = user.id, "2026-01-01T00:00:00.000Z"

    add = ("INSERT INTO messages (conversation_id, role, content, created_at, owner) "
           "VALUES (?, 'user', ?, ?, ?)")
    texts = ["wombat wombat wombat wombat",
             *(f"a wombat and {n} more words of filler text here" for n in range(CANDIDATES + 20)),
             "wombat wombat, the newest"]
    for text in texts:  # oldest first
        await execute(server, add, conv, text, now, uid)
    hits = await search(http, user, "wombat", limit=5)
    contents = [h["snippet"] for h in hits]
    assert contents[0] == "wombat wombat, the newest"  # the best of the newest
    assert "wombat wombat wombat wombat" not in contents  # the oldest is past the candidates


def test_ranking_counts_words_folds_case_and_accents_and_prefers_the_newest_on_ties() -> None:
    rows = [(1, "Café au lait"), (2, "cafe cafe CAFÉ"), (3, "café crème"), (4, "café noir")]
    assert [r[0] for r in rank(rows, "CAFE")] == [2, 4, 3, 1]
    prefixed = [(1, "caffeine"), (2, "cafeteria cafeteria")]
    assert [r[0] for r in rank(prefixed, "caf")] == [2, 1]  # the last word is a prefix
