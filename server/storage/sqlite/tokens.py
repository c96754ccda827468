"""SQL for revoked tokens."""

from __future__ import annotations

import sqlite3
import time

from .db import Database


class SqliteTokens:
    """Revoked token ids in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def revoke(self, jti: str, expires_at: int, user_id: int) -> None:
        """Record a token id of the user as revoked until it would have expired anyway (a
        trigger tells the other processes); drop stale ones."""
        now = int(time.time())

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR IGNORE INTO revoked_tokens (jti, expires_at, user_id) "
                         "VALUES (?, ?, ?)", (jti, expires_at, user_id))
            conn.execute("DELETE FROM revoked_tokens WHERE expires_at < ?", (now,))

        await self._db.write(op)
