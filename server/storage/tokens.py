"""SQL for revoked tokens."""

from __future__ import annotations

import sqlite3
import time

from .db import Database


async def revoke(db: Database, jti: str, expires_at: int) -> None:
    """Record a token id as revoked until it would have expired anyway; drop stale ones."""
    now = int(time.time())

    def op(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO revoked_tokens (jti, expires_at) VALUES (?, ?)", (jti, expires_at)
        )
        conn.execute("DELETE FROM revoked_tokens WHERE expires_at < ?", (now,))

    await db.write(op)
