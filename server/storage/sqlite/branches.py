"""SQL for a conversation's tree of messages: the path to a message, switching and deleting
branches.

Each message names its parent (`parent_id`, NULL for a first message) and the conversation its
active leaf (`leaf_id`). A child is always written after its parent, so the newest message of
a subtree (its largest id) is a leaf of it: "the newest leaf under m" needs no tree walk order.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..errors import NotFound
from ..rows import SUMMARY, HistoryRows
from .db import Database

# Every message of the subtree under ? (itself included) in conversation ?, via the
# (conversation_id, parent_id) index.
SUBTREE = (
    "WITH RECURSIVE sub(id) AS (SELECT ? UNION ALL SELECT m.id FROM messages m "
    "JOIN sub ON m.conversation_id = ? AND m.parent_id = sub.id) "
)


def path_rows(conn: sqlite3.Connection, start: int | None, limit: int) -> HistoryRows:
    """Up to `limit` messages with text on the path from the root to `start` (included),
    as (id, role, content), newest first. The walk stops at a message with a summary of
    the path up to it: that message is given as (id, "summary", the summary's text)."""
    if limit <= 0 or start is None:
        return []
    # `kept`: how many messages with text lie below a node on the path; the walk stops at the
    # limit-th, so empty ones (failed replies) do not use up the count.
    rows = conn.execute(
        "WITH RECURSIVE path(id, kept) AS (SELECT ?, 0 UNION ALL "
        "SELECT m.parent_id, path.kept + (m.content != '') FROM messages m "
        "JOIN path ON m.id = path.id "
        "WHERE m.parent_id IS NOT NULL AND path.kept + (m.content != '') < ? "
        "AND NOT EXISTS (SELECT 1 FROM summaries s WHERE s.message_id = m.id)) "
        "SELECT m.id, m.role, m.content, s.content FROM path JOIN messages m ON m.id = path.id "
        "LEFT JOIN summaries s ON s.message_id = m.id "
        "WHERE m.content != '' OR s.content IS NOT NULL ORDER BY path.kept, m.id DESC",
        (start, limit)).fetchall()
    out: HistoryRows = []
    for ident, role, content, summary in rows:
        if summary is not None:
            out.append((ident, SUMMARY, summary))
            break
        out.append((ident, role, content))
    return out


def newest_under(conn: sqlite3.Connection, conversation_id: int,
                 message_id: int | None) -> int | None:
    """The newest leaf of the subtree under `message_id` (the whole conversation if None)."""
    if message_id is None:
        row = conn.execute("SELECT max(id) FROM messages WHERE conversation_id = ?",
                           (conversation_id,)).fetchone()
    else:
        row = conn.execute(SUBTREE + "SELECT max(id) FROM sub",
                           (message_id, conversation_id)).fetchone()
    return None if row is None else row[0]


def owned_message(conn: sqlite3.Connection, user_id: int, conversation_id: int,
                  message_id: int) -> Any:
    """(id, role, parent_id) of a message in the user's conversation; NotFound otherwise."""
    row = conn.execute(
        "SELECT m.id, m.role, m.parent_id FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id AND c.user_id = ? "
        "WHERE m.id = ? AND m.conversation_id = ?",
        (user_id, message_id, conversation_id)).fetchone()
    if row is None:
        raise NotFound("message not found in this conversation")
    return row


class SqliteBranches:
    """Switching and deleting branches in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def switch(self, user_id: int, conversation_id: int, message_id: int) -> None:
        """Show the branch through `message_id`: its newest leaf becomes the active one."""

        def op(conn: sqlite3.Connection) -> None:
            owned_message(conn, user_id, conversation_id, message_id)
            conn.execute("UPDATE conversations SET leaf_id = ? WHERE id = ?",
                         (newest_under(conn, conversation_id, message_id), conversation_id))

        await self._db.write(op)

    async def delete(self, user_id: int, conversation_id: int, message_id: int) -> int:
        """Delete a message and every message under it; return how many went. If the active
        leaf was among them, the newest leaf left under its parent (else anywhere) is next."""

        def op(conn: sqlite3.Connection) -> int:
            _, _, parent = owned_message(conn, user_id, conversation_id, message_id)
            gone = conn.execute(
                "DELETE FROM messages WHERE id IN (" + SUBTREE + "SELECT id FROM sub)",
                (message_id, conversation_id)).rowcount
            leaf = conn.execute("SELECT leaf_id FROM conversations WHERE id = ?",
                                (conversation_id,)).fetchone()[0]
            exists = leaf is not None and conn.execute(
                "SELECT 1 FROM messages WHERE id = ?", (leaf,)).fetchone() is not None
            if not exists:
                # Under the parent the parent itself is the newest leaf if nothing else is left.
                new_leaf = newest_under(conn, conversation_id, parent) if parent is not None \
                    else newest_under(conn, conversation_id, None)
                conn.execute("UPDATE conversations SET leaf_id = ? WHERE id = ?",
                             (new_leaf, conversation_id))
            return int(gone)

        return await self._db.write(op)
