"""SQL for conversations; every statement is scoped to the owning user."""

from __future__ import annotations

import sqlite3
from typing import Any, cast

from ..base import NO_QUOTA, Quota
from ..errors import NotFound
from ..listing import COLUMNS, conversation_row
from ..listing import decode_cursor as _decode
from ..listing import encode_cursor as _encode
from ..rows import ConversationRow, MessageRow, merge_settings, now_iso, shown_message_row
from .db import Database
from .quotas import check

__all__ = ["COLUMNS", "SqliteConversations", "conversation_row"]


class SqliteConversations:
    """Conversations in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, user_id: int, title: str,
                     quota: Quota = NO_QUOTA, titled: bool = False) -> ConversationRow:
        """Create an empty conversation, within the user's caps (`titled`: the user gave
        the title, never replaced by a generated one)."""
        now = now_iso()

        def op(conn: sqlite3.Connection) -> ConversationRow:
            check(conn, user_id, quota, conversations=1, chars=len(title))
            cur = conn.execute(
                "INSERT INTO conversations (user_id, title, created_at, updated_at, "
                "title_source) VALUES (?, ?, ?, ?, ?)",
                (user_id, title, now, now, "user" if titled else "first_line"),
            )
            return {"id": cast(int, cur.lastrowid), "title": title, "created_at": now,
                    "updated_at": now, "message_count": 0, "model": None, "settings": {},
                    "leaf_id": None}

        return await self._db.write(op)


    async def page(self, user_id: int, limit: int,
                   cursor: str | None) -> tuple[list[ConversationRow], str | None]:
        """A page of conversations, newest activity first, and the cursor for the next one."""
        after = _decode(cursor) if cursor else None

        def op(conn: sqlite3.Connection) -> list[Any]:
            if after is None:
                return conn.execute(
                    f"SELECT {COLUMNS} FROM conversations WHERE user_id = ? "
                    "ORDER BY updated_at DESC, id DESC LIMIT ?", (user_id, limit + 1)).fetchall()
            return conn.execute(
                f"SELECT {COLUMNS} FROM conversations WHERE user_id = ? "
                "AND (updated_at < ? OR (updated_at = ? AND id < ?)) "
                "ORDER BY updated_at DESC, id DESC LIMIT ?",
                (user_id, after[0], after[0], after[1], limit + 1)).fetchall()

        rows = [conversation_row(r) for r in await self._db.read(op)]
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, _encode(rows[-1]["updated_at"], rows[-1]["id"])


    async def get(self, user_id: int,
                  conversation_id: int) -> tuple[ConversationRow, list[MessageRow]]:
        """A conversation and all its messages (every branch) oldest first, in one read."""

        def op(conn: sqlite3.Connection) -> tuple[Any, list[Any]]:
            conv = conn.execute(f"SELECT {COLUMNS} FROM conversations "
                                "WHERE id = ? AND user_id = ?",
                                (conversation_id, user_id)).fetchone()
            if conv is None:
                return None, []
            msgs = conn.execute(
                "SELECT m.id, m.role, m.content, m.status, m.created_at, m.usage, m.model, "
                "m.error, m.parent_id, s.content, s.created_at FROM messages m "
                "LEFT JOIN summaries s ON s.message_id = m.id "
                "WHERE m.conversation_id = ? ORDER BY m.id", (conversation_id,)).fetchall()
            return conv, msgs

        conv, msgs = await self._db.read(op)
        if conv is None:
            raise NotFound("conversation not found")
        return conversation_row(conv), [shown_message_row(m) for m in msgs]


    async def rename(self, user_id: int, conversation_id: int, title: str,
                     quota: Quota = NO_QUOTA) -> ConversationRow:
        """Change a conversation's title (a longer one within the user's caps)."""

        def op(conn: sqlite3.Connection) -> Any:
            if quota.chars:
                old = conn.execute("SELECT length(title) FROM conversations "
                                   "WHERE id = ? AND user_id = ?",
                                   (conversation_id, user_id)).fetchone()
                if old is not None:
                    check(conn, user_id, quota, chars=len(title) - old[0])
            return conn.execute(
                "UPDATE conversations SET title = ?, title_source = 'user' "
                f"WHERE id = ? AND user_id = ? RETURNING {COLUMNS}",
                (title, conversation_id, user_id)).fetchone()

        row = await self._db.write(op)
        if row is None:
            raise NotFound("conversation not found")
        return conversation_row(row)


    async def title_source(self, user_id: int, conversation_id: int) -> str | None:
        """Where the title came from ('first_line', 'generated', 'user'); None if no such
        conversation of this user."""

        def op(conn: sqlite3.Connection) -> Any:
            return conn.execute("SELECT title_source FROM conversations "
                                "WHERE id = ? AND user_id = ?",
                                (conversation_id, user_id)).fetchone()

        row = await self._db.read(op)
        return None if row is None else str(row[0])

    async def set_generated_title(self, user_id: int, conversation_id: int,
                                  title: str) -> bool:
        """Replace the title with a generated one only while it is still the automatic
        first-line one (a rename meanwhile wins); True if it was replaced."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE conversations SET title = ?, title_source = 'generated' "
                "WHERE id = ? AND user_id = ? AND title_source = 'first_line'",
                (title, conversation_id, user_id)).rowcount

        return await self._db.write(op) > 0

    async def configure(self, user_id: int, conversation_id: int, changes: dict[str, Any],
                        quota: Quota = NO_QUOTA) -> ConversationRow:
        """Change some of a conversation's settings (None removes one), in one transaction;
        their text counts towards the user's caps."""

        def op(conn: sqlite3.Connection) -> Any:
            old = conn.execute("SELECT settings FROM conversations WHERE id = ? AND user_id = ?",
                               (conversation_id, user_id)).fetchone()
            if old is None:
                return None
            _, text = merge_settings(old[0], changes)
            if quota.chars:
                check(conn, user_id, quota, chars=len(text) - len(old[0]))
            return conn.execute(
                "UPDATE conversations SET settings = ? WHERE id = ? AND user_id = ? "
                f"RETURNING {COLUMNS}",
                (text, conversation_id, user_id)).fetchone()

        row = await self._db.write(op)
        if row is None:
            raise NotFound("conversation not found")
        return conversation_row(row)

    async def delete(self, user_id: int, conversation_id: int) -> None:
        """Delete a conversation; its messages (and their search entries) go with it."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM conversations WHERE id = ? AND user_id = ?",
                                (conversation_id, user_id)).rowcount

        if await self._db.write(op) == 0:
            raise NotFound("conversation not found")
