"""Tests for server/services/memory.py: storing messages and the history budget of each prompt."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from server.config import MemoryConfig
from server.runner import Running
from server.services.memory import MemoryManager, approx_tokens
from server.storage import NotFound
from server.storage.sqlite.messages import _history
from tests.support.app import User, db_of, storage_of


async def new_conversation(http: aiohttp.ClientSession, user: User) -> int:
    async with http.post("/api/conversations", headers=user.headers) as resp:
        assert resp.status == 201, await resp.text()
        return int((await resp.json())["id"])


def manager(server: Running, **memory: Any) -> MemoryManager:
    return MemoryManager(storage_of(server).messages, MemoryConfig(**memory))


async def next_turn(m: MemoryManager, user_id: int, conv: int) -> list[dict[str, str]]:
    """The history a new turn's prompt gets: what came before its own (stored) message."""
    _, _, history, _ = await m.add_user_message(user_id, conv, "next", "t")
    return history


async def older_than(server: Running, m: MemoryManager, conv: int,
                     before_id: int) -> list[dict[str, str]]:
    """The budgeted history older than one message, as a rewind or a turn reads it."""
    rows = await db_of(server).read(
        lambda c: _history(c, conv, before_id, m._config.max_history_messages))
    return m.within_budget(rows)


async def test_append_and_history_oldest_first(server: Running, http: aiohttp.ClientSession,
                                               register: Any) -> None:
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server)
    turns = [("user", "hi"), ("assistant", "hello!"), ("user", "how are you?"),
             ("assistant", "fine, thanks")]
    stored = [await m.append(conv, role, text) for role, text in turns]
    assert [s["role"] for s in stored] == [r for r, _ in turns]
    assert stored == sorted(stored, key=lambda s: s["id"])
    assert all(s["status"] == "complete" and s["created_at"] for s in stored)
    assert await older_than(server, m, conv, 2**62) == \
        [{"role": r, "content": c} for r, c in turns]
    # What append stored is what the API shows.
    async with http.get(f"/api/conversations/{conv}", headers=user.headers) as resp:
        msgs = (await resp.json())["messages"]
    assert [(x["id"], x["role"], x["content"]) for x in msgs] == \
        [(s["id"], s["role"], s["content"]) for s in stored]


async def test_append_keeps_status(server: Running, http: aiohttp.ClientSession,
                                   register: Any) -> None:
    user = await register()
    conv = await new_conversation(http, user)
    row = await manager(server).append(conv, "assistant", "partial", status="incomplete")
    assert row["status"] == "incomplete"
    async with http.get(f"/api/conversations/{conv}", headers=user.headers) as resp:
        assert (await resp.json())["messages"][0]["status"] == "incomplete"


async def test_max_history_messages_cuts_oldest_first(server: Running, http: aiohttp.ClientSession,
                                                      register: Any) -> None:
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server, max_history_messages=3)
    for i in range(7):
        await m.append(conv, "user" if i % 2 == 0 else "assistant", f"message {i}")
    assert [h["content"] for h in await next_turn(m, user.id, conv)] == \
        ["message 4", "message 5", "message 6"]
    none = manager(server, max_history_messages=0)
    assert await next_turn(none, user.id, conv) == []


async def test_max_history_tokens_cuts_oldest_first(server: Running, http: aiohttp.ClientSession,
                                                    register: Any) -> None:
    user = await register()
    conv = await new_conversation(http, user)
    text = "x" * 40
    cost = approx_tokens(text)
    assert cost == 14
    m = manager(server, max_history_tokens=cost * 2 + cost // 2, max_history_messages=20)
    for i in range(5):
        await m.append(conv, "user", f"{i}" + text[1:])
    history = await older_than(server, m, conv, 2**62)
    assert [h["content"][0] for h in history] == ["3", "4"]
    exact = manager(server, max_history_tokens=cost * 3, max_history_messages=20)
    assert [h["content"][0] for h in await next_turn(exact, user.id, conv)] == ["2", "3", "4"]


async def test_token_budget_stops_at_the_first_message_that_does_not_fit(
        server: Running, http: aiohttp.ClientSession, register: Any) -> None:
    """A big old message ends the history: nothing older than it slips in after it."""
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server, max_history_tokens=100)
    await m.append(conv, "user", "tiny old")
    await m.append(conv, "assistant", "y" * 1000)
    await m.append(conv, "user", "tiny new")
    assert await next_turn(m, user.id, conv) == [{"role": "user", "content": "tiny new"}]


async def test_before_id_excludes_the_newest(server: Running, http: aiohttp.ClientSession,
                                             register: Any) -> None:
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server, max_history_messages=2)
    rows = [await m.append(conv, "user", f"m{i}") for i in range(4)]
    # A regenerate re-asks the last user message: its history is what came before it.
    stored, history, _ = await m.rewind(user.id, conv, None)
    assert stored["id"] == rows[-1]["id"]
    assert [h["content"] for h in history] == ["m1", "m2"]  # still two, newest left out
    assert await older_than(server, m, conv, rows[0]["id"]) == []


async def test_before_id_with_newer_messages_still_fills_the_count(
        server: Running, http: aiohttp.ClientSession, register: Any) -> None:
    """'Older than before_id within the budget': a message that arrived after `before_id`
    (say, a second turn in the same conversation) must not shrink the history."""
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server, max_history_messages=2)
    rows = [await m.append(conv, "user", f"m{i}") for i in range(4)]
    rows_before = await db_of(server).read(lambda c: _history(c, conv, rows[2]["id"], 2))
    history = m.within_budget(rows_before)
    assert [h["content"] for h in history] == ["m0", "m1"]


async def test_empty_content_messages_are_skipped(server: Running, http: aiohttp.ClientSession,
                                                  register: Any) -> None:
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server, max_history_messages=2)
    await m.append(conv, "user", "question one")
    await m.append(conv, "assistant", "answer one")
    await m.append(conv, "user", "question two")
    await m.append(conv, "assistant", "", status="error")
    await m.append(conv, "assistant", "", status="incomplete")
    history = await next_turn(m, user.id, conv)
    assert [h["content"] for h in history] == ["answer one", "question two"]
    assert all(h["content"] for h in history)


async def test_another_users_conversation_gives_no_history(
        server: Running, http: aiohttp.ClientSession, register: Any) -> None:
    owner, other = await register(), await register()
    conv = await new_conversation(http, owner)
    m = manager(server)
    await m.append(conv, "user", "owner's secret")
    with pytest.raises(NotFound):  # nothing is stored, nothing is read
        await next_turn(m, other.id, conv)
    with pytest.raises(NotFound):
        await m.rewind(other.id, conv, None)
    assert await next_turn(m, owner.id, conv) == [{"role": "user", "content": "owner's secret"}]
    with pytest.raises(NotFound):
        await next_turn(m, owner.id, conv + 1000)


def test_prompt_puts_system_first_and_message_last() -> None:
    m = MemoryManager(None, MemoryConfig(system_prompt="Be terse."))  # type: ignore[arg-type]
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert m.prompt(history, "c") == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert m.prompt([], "only") == [{"role": "system", "content": "Be terse."},
                                    {"role": "user", "content": "only"}]
    assert history == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


def test_prompt_without_system_prompt() -> None:
    m = MemoryManager(None, MemoryConfig(system_prompt=""))  # type: ignore[arg-type]
    history = [{"role": "user", "content": "a"}]
    prompt = m.prompt(history, "b")
    assert prompt == [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert all(p["role"] != "system" for p in prompt)


@pytest.mark.parametrize("text,tokens", [("", 4), ("abcd", 5), ("abcde", 6), ("x" * 400, 104)])
def test_approx_tokens(text: str, tokens: int) -> None:
    assert approx_tokens(text) == tokens


async def test_default_prompt_from_history(server: Running, http: aiohttp.ClientSession,
                                           register: Any) -> None:
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server)
    await m.append(conv, "user", "earlier")
    await m.append(conv, "assistant", "reply")
    prompt = m.prompt(await older_than(server, m, conv, 2**62), "now")
    assert prompt[0] == {"role": "system", "content": MemoryConfig().system_prompt}
    assert [p["content"] for p in prompt[1:]] == ["earlier", "reply", "now"]
