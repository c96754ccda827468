"""Tests for server/services/memory.py: storing messages and the history budget of each prompt."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from server.config import MemoryConfig
from server.runner import Running
from server.services.memory import MemoryManager, approx_tokens
from server.storage import NotFound
from server.storage.rows import MessageRow
from server.storage.sqlite.branches import path_rows
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


async def chain(m: MemoryManager, conv: int, *turns: tuple[str, str],
                status: str = "complete") -> list[MessageRow]:
    """Messages appended one under the other, as turns leave them."""
    rows: list[MessageRow] = []
    for role, text in turns:
        rows.append(await m.append(conv, role, text, status=status,
                                   parent_id=rows[-1]["id"] if rows else None))
    return rows


async def up_to(server: Running, m: MemoryManager, message_id: int) -> list[dict[str, str]]:
    """The budgeted history on the path up to a message (included), as a turn reads it."""
    rows = await db_of(server).read(
        lambda c: path_rows(c, message_id, m._config.max_history_messages))
    return m.within_budget(rows)


async def test_append_and_history_oldest_first(server: Running, http: aiohttp.ClientSession,
                                               register: Any) -> None:
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server)
    turns = [("user", "hi"), ("assistant", "hello!"), ("user", "how are you?"),
             ("assistant", "fine, thanks")]
    stored = await chain(m, conv, *turns)
    assert [s["role"] for s in stored] == [r for r, _ in turns]
    assert stored == sorted(stored, key=lambda s: s["id"])
    assert all(s["status"] == "complete" and s["created_at"] for s in stored)
    assert await up_to(server, m, stored[-1]["id"]) == \
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
    await chain(m, conv, *[("user" if i % 2 == 0 else "assistant", f"message {i}")
                           for i in range(7)])
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
    rows = await chain(m, conv, *[("user", f"{i}" + text[1:]) for i in range(5)])
    history = await up_to(server, m, rows[-1]["id"])
    assert [h["content"][0] for h in history] == ["3", "4"]
    exact = manager(server, max_history_tokens=cost * 3, max_history_messages=20)
    assert [h["content"][0] for h in await next_turn(exact, user.id, conv)] == ["2", "3", "4"]


async def test_token_budget_stops_at_the_first_message_that_does_not_fit(
        server: Running, http: aiohttp.ClientSession, register: Any) -> None:
    """A big old message ends the history: nothing older than it slips in after it."""
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server, max_history_tokens=100)
    await chain(m, conv, ("user", "tiny old"), ("assistant", "y" * 1000), ("user", "tiny new"))
    assert await next_turn(m, user.id, conv) == [{"role": "user", "content": "tiny new"}]


async def test_regenerate_reads_the_history_before_the_question(
        server: Running, http: aiohttp.ClientSession, register: Any) -> None:
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server, max_history_messages=2)
    rows = await chain(m, conv, *[("user", f"m{i}") for i in range(4)])
    # A regenerate re-asks the last user message: its history is what came before it.
    stored, history, _ = await m.regenerate(user.id, conv, None)
    assert stored["id"] == rows[-1]["id"]
    assert [h["content"] for h in history] == ["m1", "m2"]  # still two, newest left out
    first, history, _ = await m.regenerate(user.id, conv, rows[0]["id"])
    assert first["id"] == rows[0]["id"] and history == []


async def test_history_follows_the_branch_not_the_newest_messages(
        server: Running, http: aiohttp.ClientSession, register: Any) -> None:
    """The history is the path to the message: newer messages on other branches (an edit
    made later, say) neither enter it nor shrink it."""
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server, max_history_messages=2)
    rows = await chain(m, conv, *[("user", f"m{i}") for i in range(4)])
    await m.edit(user.id, conv, rows[2]["id"], "m2 edited")  # a sibling of m2, newer than m3
    assert [h["content"] for h in await up_to(server, m, rows[2]["id"])] == ["m1", "m2"]
    assert [h["content"] for h in await up_to(server, m, rows[1]["id"])] == ["m0", "m1"]
    assert [h["content"] for h in await next_turn(m, user.id, conv)] == ["m1", "m2 edited"]


async def test_empty_content_messages_are_skipped(server: Running, http: aiohttp.ClientSession,
                                                  register: Any) -> None:
    user = await register()
    conv = await new_conversation(http, user)
    m = manager(server, max_history_messages=2)
    rows = await chain(m, conv, ("user", "question one"), ("assistant", "answer one"),
                       ("user", "question two"))
    failed = await m.append(conv, "assistant", "", "error", parent_id=rows[-1]["id"])
    await m.append(conv, "assistant", "", "incomplete", parent_id=failed["id"])
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
        await m.regenerate(other.id, conv, None)
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
    rows = await chain(m, conv, ("user", "earlier"), ("assistant", "reply"))
    prompt = m.prompt(await up_to(server, m, rows[-1]["id"]), "now")
    assert prompt[0] == {"role": "system", "content": MemoryConfig().system_prompt}
    assert [p["content"] for p in prompt[1:]] == ["earlier", "reply", "now"]
