"""SQL for export and import: whole conversations read by id pages, written one at a time."""

from __future__ import annotations

import sqlite3
from typing import Any, cast

from ..base import NO_QUOTA, NewConversation, Quota
from ..rows import ConversationRow, MessageRow, message_row
from .conversations import COLUMNS, conversation_row
from .db import Database
from .quotas import check


class SqliteTransfer:
    """Export pages and imports in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def export_page(self, user_id: int, after_id: int, limit: int
                          ) -> list[tuple[ConversationRow, list[MessageRow]]]:
        """Up to `limit` conversations after `after_id` (by id), each with its messages."""

        def op(conn: sqlite3.Connection) -> list[tuple[Any, list[Any]]]:
            convs = conn.execute(
                f"SELECT {COLUMNS} FROM conversations WHERE user_id = ? AND id > ? "
                "ORDER BY id LIMIT ?", (user_id, after_id, limit)).fetchall()
            return [(c, conn.execute(
                "SELECT id, role, content, status, created_at, usage, model, error, parent_id "
                "FROM messages WHERE conversation_id = ? ORDER BY id", (c[0],)).fetchall())
                for c in convs]

        return [(conversation_row(c), [message_row(m) for m in msgs])
                for c, msgs in await self._db.read(op)]

    async def import_one(self, user_id: int, conversation: NewConversation,
                         quota: Quota = NO_QUOTA) -> ConversationRow:
        """One conversation and its messages in one write (a savepoint of its own: a failure
        leaves nothing of it), within the user's caps."""
        conv = conversation

        def op(conn: sqlite3.Connection) -> ConversationRow:
            chars = len(conv.title) + sum(len(m.content) for m in conv.messages)
            check(conn, user_id, quota, conversations=1, chars=chars)
            ident = cast(int, conn.execute(
                "INSERT INTO conversations (user_id, title, created_at, updated_at, model, "
                "title_source) VALUES (?, ?, ?, ?, ?, 'user')",
                (user_id, conv.title, conv.created_at, conv.created_at, conv.model)).lastrowid)
            ids: list[int] = []  # each message's new id, by its index
            for m in conv.messages:
                parent = ids[m.parent] if m.parent is not None else None
                ids.append(cast(int, conn.execute(
                    "INSERT INTO messages (conversation_id, role, content, status, created_at, "
                    "model, error, parent_id, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ident, m.role, m.content, m.status, m.created_at, m.model, m.error, parent,
                     user_id)).lastrowid))
            if ids:
                leaf = ids[-1] if conv.leaf is None else ids[conv.leaf]
                conn.execute("UPDATE conversations SET leaf_id = ? WHERE id = ?", (leaf, ident))
            # The insert trigger moved updated_at to each message's time; keep the latest.
            row = conn.execute(f"SELECT {COLUMNS} FROM conversations WHERE id = ?",
                               (ident,)).fetchone()
            return conversation_row(row)

        return await self._db.write(op)
