"""SQL for prompt previews: what the next turn of a conversation would carry, read only."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import NotFound
from ..rows import ConversationUse, HistoryRows
from .branches import path_rows
from .db import Database


class PostgresPrompts:
    """Reads the history a new turn would get, as add_user_message does, without writing."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def next_turn(self, user_id: int, conversation_id: int,
                        history: int) -> tuple[HistoryRows, ConversationUse]:
        """Up to `history` messages on the path to the active leaf (where the next user
        message goes), newest first, and the conversation's model and settings."""

        async def op(conn: Any) -> tuple[Any, HistoryRows]:
            found = await conn.fetchrow("SELECT model, settings, leaf_id FROM conversations "
                                        "WHERE id = $1 AND user_id = $2",
                                        conversation_id, user_id)
            if found is None:
                return None, []
            return found, await path_rows(conn, found[2], history)

        found, rows = await self._db.read(op)
        if found is None:
            raise NotFound("conversation not found")
        return rows, ConversationUse(found[0], orjson.loads(found[1]) if found[1] else {})
