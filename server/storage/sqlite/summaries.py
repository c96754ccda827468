"""SQL for summaries of a conversation's older turns, each kept on the last message it covers."""

from __future__ import annotations

import sqlite3

from ..rows import HistoryRows, now_iso
from .branches import path_rows
from .db import Database


class SqliteSummaries:
    """Summaries in SQLite: one per message at most (the path up to it, summarised)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def since_last(self, user_id: int, conversation_id: int, message_id: int,
                         limit: int) -> HistoryRows:
        """Up to `limit` messages on the path to `message_id` (in the user's conversation),
        newest first, back to the latest summary on it (given last, role "summary")."""

        def op(conn: sqlite3.Connection) -> HistoryRows:
            owned = conn.execute(
                "SELECT 1 FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE m.id = ? AND c.id = ? AND c.user_id = ?",
                (message_id, conversation_id, user_id)).fetchone()
            return path_rows(conn, message_id, limit) if owned else []

        return await self._db.read(op)

    async def save(self, message_id: int, content: str, model: str | None) -> bool:
        """Keep the summary of the path up to the message (replacing one it had); False if the
        message was deleted meanwhile."""
        now = now_iso()

        def op(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(
                "INSERT OR REPLACE INTO summaries (message_id, content, model, created_at) "
                "SELECT id, ?, ?, ? FROM messages WHERE id = ?",
                (content, model, now, message_id)).rowcount)

        return await self._db.write(op)
