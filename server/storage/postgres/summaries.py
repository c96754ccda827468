"""SQL for summaries of a conversation's older turns, each kept on the last message it covers."""

from __future__ import annotations

from typing import Any

import asyncpg

from ..rows import HistoryRows, now_iso
from .branches import path_rows
from .db import Database


class PostgresSummaries:
    """Summaries in PostgreSQL: one per message at most (the path up to it, summarised)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def since_last(self, user_id: int, conversation_id: int, message_id: int,
                         limit: int) -> HistoryRows:
        """Up to `limit` messages on the path to `message_id` (in the user's conversation),
        newest first, back to the latest summary on it (given last, role "summary")."""

        async def op(conn: Any) -> HistoryRows:
            owned = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM messages m JOIN conversations c "
                "ON c.id = m.conversation_id WHERE m.id = $1 AND c.id = $2 AND c.user_id = $3)",
                message_id, conversation_id, user_id)
            return await path_rows(conn, message_id, limit) if owned else []

        return await self._db.read(op)

    async def save(self, message_id: int, content: str, model: str | None) -> bool:
        """Keep the summary of the path up to the message (replacing one it had); False if the
        message was deleted meanwhile."""
        now = now_iso()

        async def op(conn: Any) -> bool:
            try:
                async with conn.transaction():  # a savepoint: the op goes on after a failure
                    stored = await conn.fetchval(
                        "INSERT INTO summaries (message_id, content, model, created_at) "
                        "SELECT id, $2, $3, $4 FROM messages WHERE id = $1 "
                        "ON CONFLICT (message_id) DO UPDATE SET content = EXCLUDED.content, "
                        "model = EXCLUDED.model, created_at = EXCLUDED.created_at RETURNING 1",
                        message_id, content, model, now)
            except asyncpg.ForeignKeyViolationError:  # deleted by another node meanwhile
                return False
            return stored is not None

        return await self._db.write(op)
