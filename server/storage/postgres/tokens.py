"""SQL for revoked tokens."""

from __future__ import annotations

import time
from typing import Any

from .db import Database


class PostgresTokens:
    """Revoked token ids in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def revoke(self, jti: str, expires_at: int, user_id: int = 0) -> None:
        """Record a token id of the user as revoked until it would have expired anyway (a
        trigger writes the auth event naming both); drop stale ones."""
        now = int(time.time())

        async def op(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO revoked_tokens (jti, expires_at, user_id) VALUES ($1, $2, $3) "
                "ON CONFLICT (jti) DO NOTHING", jti, expires_at, user_id)
            await conn.execute("DELETE FROM revoked_tokens WHERE expires_at < $1", now)

        await self._db.write(op)
