"""server/storage/postgres/messages.py on a real PostgreSQL server: a reply never outlives the
question it answers when another node deletes that branch at the same moment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from server.storage import NotFound
from server.storage.postgres import PostgresStorage, open_postgres
from server.storage.postgres.branches import SUBTREE

ORPHANS = ("SELECT count(*) FROM messages m WHERE m.parent_id IS NOT NULL AND NOT EXISTS "
           "(SELECT 1 FROM messages p WHERE p.id = m.parent_id)")


@pytest.fixture
async def nodes(on_postgres: str) -> AsyncIterator[tuple[PostgresStorage, PostgresStorage]]:
    """Two nodes' storages (each its own batching writer) on the test's database."""
    opened = [await open_postgres(on_postgres, pool_size=2, busy_timeout_ms=30000,
                                  connect_timeout_s=5, max_batch=64) for _ in range(2)]
    yield opened[0], opened[1]
    for storage in opened:
        await storage.close()


async def _waiting(watch: Any) -> None:
    """Poll until a chatgate connection waits for a row lock (a generous deadline)."""
    deadline = asyncio.get_running_loop().time() + 20
    while not await watch.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'chatgate' AND wait_event_type = 'Lock'"):
        assert asyncio.get_running_loop().time() < deadline, "the reply never waited"
        await asyncio.sleep(0.001)


async def test_a_reply_racing_another_nodes_branch_delete_never_loses_its_question(
        nodes: tuple[PostgresStorage, PostgresStorage], on_postgres: str) -> None:
    """A third node's delete has removed the question but not committed when the reply is
    stored; it commits while the reply waits. Under READ COMMITTED the reply's check saw the
    question (the delete was not committed yet), so without a lock on it the reply would be
    stored under a message that no longer exists. The reply is stored by a node that did not
    write the question (as when a live node ends a dead node's turn): its writer does not know
    the conversation's owner, so it does not take the owner's counters first, which would
    have made it wait for the delete before its statement began."""
    asker, replier = nodes
    user = (await asker.users.create("racer", "hash"))["id"]
    other = await asyncpg.connect(on_postgres, server_settings={"application_name": "other"})
    watch = await asyncpg.connect(on_postgres, server_settings={"application_name": "watch"})
    try:
        for round_ in range(3):  # each round's reply lands in the delete's open transaction
            conv, question, _, _ = await asker.messages.add_user_message(
                user, None, f"question {round_}", "t")
            xact = other.transaction()
            await xact.start()
            # What PostgresBranches.delete does through its writer, before the commit: the
            # user's counters, the conversation, the subtree.
            await other.execute("SELECT 1 FROM user_storage WHERE user_id = $1 FOR UPDATE", user)
            await other.fetchrow("SELECT leaf_id FROM conversations WHERE id = $1 FOR UPDATE",
                                 conv)
            await other.execute(SUBTREE + "DELETE FROM messages WHERE id IN "
                                "(SELECT id FROM sub)", question["id"], conv)
            reply = asyncio.create_task(replier.messages.add(
                conv, "assistant", "the answer", model="m", parent_id=question["id"]))
            await _waiting(watch)
            await xact.commit()
            outcome = (await asyncio.gather(reply, return_exceptions=True))[0]
            assert await watch.fetchval(ORPHANS) == 0, f"round {round_}: an orphaned reply"
            assert isinstance(outcome, NotFound), outcome  # the client is told it went
    finally:
        await other.close()
        await watch.close()
