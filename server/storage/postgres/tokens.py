"""SQL for revoked tokens."""

from __future__ import annotations

import time
from typing import Any

from .db import Database


class PostgresTokens:
    """Revoked token ids in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def revoke(self, jti: str, expires_at: int, user_id: int | None = None) -> None:
        """Record a token id as revoked until it would have expired anyway; drop stale ones.
        `user_id` (whose token) goes into the auth event the insert writes."""
        now = int(time.time())

        async def op(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO revoked_tokens (jti, expires_at, user_id) VALUES ($1, $2, $3) "
                "ON CONFLICT (jti) DO NOTHING", jti, expires_at, user_id)
            await conn.execute("DELETE FROM revoked_tokens WHERE expires_at < $1", now)

        await self._db.write(op)
