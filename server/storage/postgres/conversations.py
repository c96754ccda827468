"""SQL for conversations; every statement is scoped to the owning user."""

from __future__ import annotations

from typing import Any

from ..base import NO_QUOTA, Quota
from ..errors import NotFound
from ..listing import COLUMNS, conversation_row, decode_cursor, encode_cursor
from ..rows import ConversationRow, MessageRow, merge_settings, now_iso, shown_message_row
from .db import Database
from .quotas import check


def _count(status: str) -> int:
    """The row count of a command's status ("DELETE 3", "UPDATE 1", "INSERT 0 1")."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresConversations:
    """Conversations in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, user_id: int, title: str,
                     quota: Quota = NO_QUOTA, titled: bool = False) -> ConversationRow:
        """Create an empty conversation, within the user's caps (`titled`: the user gave
        the title, never replaced by a generated one)."""
        now = now_iso()

        async def op(conn: Any) -> ConversationRow:
            await check(conn, user_id, quota, conversations=1, chars=len(title))
            ident = await conn.fetchval(
                "INSERT INTO conversations (user_id, title, created_at, updated_at, "
                "title_source) VALUES ($1, $2, $3, $3, $4) RETURNING id",
                user_id, title, now, "user" if titled else "first_line")
            return {"id": int(ident), "title": title, "created_at": now, "updated_at": now,
                    "message_count": 0, "model": None, "settings": {}, "leaf_id": None}

        return await self._db.write(op, (user_id, 0))

    async def page(self, user_id: int, limit: int,
                   cursor: str | None) -> tuple[list[ConversationRow], str | None]:
        """A page of conversations, newest activity first, and the cursor for the next one."""
        after = decode_cursor(cursor) if cursor else None

        async def op(conn: Any) -> list[Any]:
            if after is None:
                return list(await conn.fetch(
                    f"SELECT {COLUMNS} FROM conversations WHERE user_id = $1 "
                    "ORDER BY updated_at DESC, id DESC LIMIT $2", user_id, limit + 1))
            return list(await conn.fetch(
                f"SELECT {COLUMNS} FROM conversations WHERE user_id = $1 "
                "AND (updated_at < $2 OR (updated_at = $2 AND id < $3)) "
                "ORDER BY updated_at DESC, id DESC LIMIT $4",
                user_id, after[0], after[1], limit + 1))

        rows = [conversation_row(r) for r in await self._db.read(op)]
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1]["updated_at"], rows[-1]["id"])

    async def get(self, user_id: int,
                  conversation_id: int) -> tuple[ConversationRow, list[MessageRow]]:
        """A conversation and all its messages (every branch) oldest first, in one read."""

        async def op(conn: Any) -> tuple[Any, list[Any]]:
            conv = await conn.fetchrow(f"SELECT {COLUMNS} FROM conversations "
                                       "WHERE id = $1 AND user_id = $2",
                                       conversation_id, user_id)
            if conv is None:
                return None, []
            msgs = await conn.fetch(
                "SELECT m.id, m.role, m.content, m.status, m.created_at, m.usage, m.model, "
                "m.error, m.parent_id, s.content, s.created_at FROM messages m "
                "LEFT JOIN summaries s ON s.message_id = m.id "
                "WHERE m.conversation_id = $1 ORDER BY m.id", conversation_id)
            return conv, list(msgs)

        conv, msgs = await self._db.read(op)
        if conv is None:
            raise NotFound("conversation not found")
        return conversation_row(conv), [shown_message_row(m) for m in msgs]

    async def rename(self, user_id: int, conversation_id: int, title: str,
                     quota: Quota = NO_QUOTA) -> ConversationRow:
        """Change a conversation's title (a longer one within the user's caps)."""

        async def op(conn: Any) -> Any:
            if quota.chars:  # the conversation locked before the user's counters
                old = await conn.fetchval("SELECT length(title) FROM conversations "
                                          "WHERE id = $1 AND user_id = $2 FOR UPDATE",
                                          conversation_id, user_id)
                if old is not None:
                    await check(conn, user_id, quota, chars=len(title) - int(old))
            return await conn.fetchrow(
                "UPDATE conversations SET title = $1, title_source = 'user' "
                f"WHERE id = $2 AND user_id = $3 RETURNING {COLUMNS}",
                title, conversation_id, user_id)

        row = await self._db.write(op, (user_id, conversation_id))
        if row is None:
            raise NotFound("conversation not found")
        return conversation_row(row)

    async def title_source(self, user_id: int, conversation_id: int) -> str | None:
        """Where the title came from ('first_line', 'generated', 'user'); None if no such
        conversation of this user."""

        async def op(conn: Any) -> Any:
            return await conn.fetchval("SELECT title_source FROM conversations "
                                       "WHERE id = $1 AND user_id = $2",
                                       conversation_id, user_id)

        found = await self._db.read(op)
        return None if found is None else str(found)

    async def set_generated_title(self, user_id: int, conversation_id: int,
                                  title: str) -> bool:
        """Replace the title with a generated one only while it is still the automatic
        first-line one (a rename meanwhile wins); True if it was replaced."""

        async def op(conn: Any) -> int:
            return _count(await conn.execute(
                "UPDATE conversations SET title = $1, title_source = 'generated' "
                "WHERE id = $2 AND user_id = $3 AND title_source = 'first_line'",
                title, conversation_id, user_id))

        return await self._db.write(op, (user_id, conversation_id)) > 0

    async def configure(self, user_id: int, conversation_id: int, changes: dict[str, Any],
                        quota: Quota = NO_QUOTA) -> ConversationRow:
        """Change some of a conversation's settings (None removes one), in one transaction;
        their text counts towards the user's caps."""

        async def op(conn: Any) -> Any:
            old = await conn.fetchval("SELECT settings FROM conversations "
                                      "WHERE id = $1 AND user_id = $2 FOR UPDATE",
                                      conversation_id, user_id)
            if old is None:
                return None
            _, text = merge_settings(old, changes)
            if quota.chars:
                await check(conn, user_id, quota, chars=len(text) - len(old))
            return await conn.fetchrow(
                "UPDATE conversations SET settings = $1 WHERE id = $2 AND user_id = $3 "
                f"RETURNING {COLUMNS}", text, conversation_id, user_id)

        row = await self._db.write(op, (user_id, conversation_id))
        if row is None:
            raise NotFound("conversation not found")
        return conversation_row(row)

    async def delete(self, user_id: int, conversation_id: int) -> None:
        """Delete a conversation; its messages (and their search entries) go with it."""

        async def op(conn: Any) -> int:
            return _count(await conn.execute(
                "DELETE FROM conversations WHERE id = $1 AND user_id = $2",
                conversation_id, user_id))

        if await self._db.write(op, (user_id, conversation_id)) == 0:
            raise NotFound("conversation not found")
