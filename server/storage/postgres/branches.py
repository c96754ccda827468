"""SQL for a conversation's tree of messages: the path to a message, switching and deleting
branches.

Each message names its parent (`parent_id`, NULL for a first message) and the conversation its
active leaf (`leaf_id`). A child is always written after its parent, so the newest message of
a subtree (its largest id) is a leaf of it: "the newest leaf under m" needs no tree walk order.
"""

from __future__ import annotations

from typing import Any

from ..errors import NotFound
from ..rows import SUMMARY, HistoryRows
from .db import Database

# Every message of the subtree under $1 (itself included) in conversation $2, via the
# (conversation_id, parent_id) index.
SUBTREE = (
    "WITH RECURSIVE sub(id) AS (SELECT $1::bigint UNION ALL SELECT m.id FROM messages m "
    "JOIN sub ON m.conversation_id = $2 AND m.parent_id = sub.id) "
)

# `kept`: how many messages with text lie below a node on the path; the walk stops at the
# limit-th, so empty ones (failed replies) do not use up the count, and at a summary. Each
# step is a primary-key lookup (LATERAL ... LIMIT 1): a join let a plan cached while the table
# was small scan the whole table at every step (65 ms a turn at 10,000 messages, not 1 ms).
_PATH = (
    "WITH RECURSIVE path(id, kept) AS (SELECT $1::bigint, 0 UNION ALL "
    "SELECT m.parent_id, path.kept + (m.content <> '')::int FROM path "
    "CROSS JOIN LATERAL (SELECT id, parent_id, content FROM messages "
    "WHERE messages.id = path.id LIMIT 1) m "
    "WHERE m.parent_id IS NOT NULL AND path.kept + (m.content <> '')::int < $2 "
    "AND NOT EXISTS (SELECT 1 FROM summaries s WHERE s.message_id = m.id)) "
    "SELECT m.id, m.role, m.content, s.content FROM path "
    "CROSS JOIN LATERAL (SELECT id, role, content FROM messages "
    "WHERE messages.id = path.id LIMIT 1) m "
    "LEFT JOIN summaries s ON s.message_id = m.id "
    "WHERE m.content <> '' OR s.content IS NOT NULL ORDER BY path.kept, m.id DESC"
)


async def path_rows(conn: Any, start: int | None, limit: int) -> HistoryRows:
    """Up to `limit` messages with text on the path from the root to `start` (included),
    as (id, role, content), newest first. The walk stops at a message with a summary of
    the path up to it: that message is given as (id, "summary", the summary's text)."""
    if limit <= 0 or start is None:
        return []
    out: HistoryRows = []
    for ident, role, content, summary in await conn.fetch(_PATH, start, limit):
        if summary is not None:
            out.append((ident, SUMMARY, summary))
            break
        out.append((ident, role, content))
    return out


async def newest_under(conn: Any, conversation_id: int, message_id: int | None) -> int | None:
    """The newest leaf of the subtree under `message_id` (the whole conversation if None)."""
    if message_id is None:
        value = await conn.fetchval("SELECT max(id) FROM messages WHERE conversation_id = $1",
                                    conversation_id)
    else:
        value = await conn.fetchval(SUBTREE + "SELECT max(id) FROM sub",
                                    message_id, conversation_id)
    return None if value is None else int(value)


async def owned_message(conn: Any, user_id: int, conversation_id: int,
                        message_id: int) -> Any:
    """(id, role, parent_id) of a message in the user's conversation; NotFound otherwise."""
    row = await conn.fetchrow(
        "SELECT m.id, m.role, m.parent_id FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id AND c.user_id = $1 "
        "WHERE m.id = $2 AND m.conversation_id = $3",
        user_id, message_id, conversation_id)
    if row is None:
        raise NotFound("message not found in this conversation")
    return row


async def lock_conversation(conn: Any, user_id: int, conversation_id: int) -> Any:
    """The user's conversation's (model, settings, leaf_id, running_turn, running_since),
    its row locked until the transaction ends: writes to one conversation from several nodes
    take turns, as SQLite's single writer makes them; None if the user has no such
    conversation."""
    return await conn.fetchrow("SELECT model, settings, leaf_id, running_turn, running_since "
                               "FROM conversations WHERE id = $1 AND user_id = $2 FOR UPDATE",
                               conversation_id, user_id)


class PostgresBranches:
    """Switching and deleting branches in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def switch(self, user_id: int, conversation_id: int, message_id: int) -> None:
        """Show the branch through `message_id`: its newest leaf becomes the active one."""

        async def op(conn: Any) -> None:
            await lock_conversation(conn, user_id, conversation_id)
            await owned_message(conn, user_id, conversation_id, message_id)
            await conn.execute("UPDATE conversations SET leaf_id = $1 WHERE id = $2",
                               await newest_under(conn, conversation_id, message_id),
                               conversation_id)

        await self._db.write(op, (user_id, conversation_id))

    async def delete(self, user_id: int, conversation_id: int, message_id: int) -> int:
        """Delete a message and every message under it; return how many went. If the active
        leaf was among them, the newest leaf left under its parent (else anywhere) is next."""

        async def op(conn: Any) -> int:
            await lock_conversation(conn, user_id, conversation_id)
            _, _, parent = await owned_message(conn, user_id, conversation_id, message_id)
            gone = await conn.fetchval(
                SUBTREE + ", gone AS (DELETE FROM messages WHERE id IN (SELECT id FROM sub) "
                "RETURNING 1) SELECT count(*) FROM gone", message_id, conversation_id)
            exists = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM messages m JOIN conversations c "
                "ON c.leaf_id = m.id WHERE c.id = $1)", conversation_id)
            if not exists:
                # Under the parent the parent itself is the newest leaf if nothing else is left.
                new_leaf = await newest_under(conn, conversation_id, parent)
                await conn.execute("UPDATE conversations SET leaf_id = $1 WHERE id = $2",
                                   new_leaf, conversation_id)
            return int(gone)

        return await self._db.write(op, (user_id, conversation_id))
