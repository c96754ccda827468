"""Two nodes writing one user's conversation at once on PostgreSQL: each write takes the
conversation's lock before the user's counters, so none deadlocks another."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from server.config import DatabaseConfig
from server.storage import Quota, Storage, open_storage

QUOTA = Quota(conversations=1000, chars=10**7)


@pytest.fixture
async def nodes(on_postgres: str) -> AsyncIterator[list[Storage]]:
    """Two Storages on one PostgreSQL database, as two nodes have (a short lock timeout)."""
    opened = [await open_storage(DatabaseConfig(url=on_postgres, pool_size=2,
                                                busy_timeout_ms=20000)) for _ in range(2)]
    yield opened
    for storage in opened:
        await storage.close()


async def test_two_nodes_writing_one_conversation_never_deadlock(nodes: list[Storage]) -> None:
    a, b = nodes
    user = (await a.users.create("busy", "h"))["id"]
    conv, first, _, _ = await a.messages.add_user_message(user, None, "q", "t", quota=QUOTA)
    question = first["id"]

    async def turns(node: Storage, n: int) -> None:
        for i in range(n):
            await node.messages.add_user_message(user, conv, f"turn {i}", "t", quota=QUOTA)

    async def edits(node: Storage, n: int) -> None:
        for i in range(n):
            await node.messages.edit(user, conv, question, f"edit {i}", quota=QUOTA)
            await node.conversations.rename(user, conv, f"title {i}", quota=QUOTA)

    # Each node sends many writes at once, so its batches hold several locks together.
    await asyncio.gather(*(turns(a, 15) for _ in range(4)), *(edits(b, 15) for _ in range(4)),
                         *(turns(b, 15) for _ in range(2)), *(edits(a, 15) for _ in range(2)))
    row, messages = await a.conversations.get(user, conv)
    assert row["message_count"] == len(messages) == 1 + 15 * 6 + 15 * 6


async def waiting_for_a_lock(url: str) -> None:
    """Poll until a session of the database waits for a lock (a generous deadline)."""
    watcher = await asyncpg.connect(url)
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"):
            assert asyncio.get_running_loop().time() < deadline, "nobody waits for the lock"
            await asyncio.sleep(0.01)
    finally:
        await watcher.close()


async def test_a_turn_that_waited_for_another_nodes_reply_carries_it(
        nodes: list[Storage], on_postgres: str) -> None:
    """Node B stores a reply while node A's turn waits for the conversation's lock: A's
    message follows that reply and its history holds it, though A's statement began first."""
    a, _ = nodes
    user = (await a.users.create("racer", "h"))["id"]
    conv, question, _, _ = await a.messages.add_user_message(user, None, "first", "t")
    other = await asyncpg.connect(on_postgres)  # node B's writer, mid-transaction
    await other.execute("BEGIN")
    try:
        reply = await other.fetchval(
            "INSERT INTO messages (conversation_id, role, content, created_at, parent_id) "
            "VALUES ($1, 'assistant', 'the reply', 't', $2) RETURNING id", conv, question["id"])
        turn = asyncio.create_task(
            a.messages.add_user_message(user, conv, "second", "t", history=5))
        await waiting_for_a_lock(on_postgres)  # A's statement began and waits for B
        await other.execute("COMMIT")
        _, row, history, _ = await turn
    finally:
        await other.close()
    assert row["parent_id"] == reply
    assert history == [(reply, "assistant", "the reply"), (question["id"], "user", "first")]
