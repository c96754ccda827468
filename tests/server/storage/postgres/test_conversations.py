"""Two nodes writing one user's conversation at once on PostgreSQL: each write takes the
conversation's lock before the user's counters, so none deadlocks another."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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
