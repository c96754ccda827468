"""SQL for auth events: what may invalidate a cached verification, written by triggers."""

from __future__ import annotations

from typing import Any

from ..base import AuthEvent
from .db import Database


class PostgresAuthEvents:
    """The auth_events table in PostgreSQL (rows written by triggers, see migration V1)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def latest(self) -> int:
        """The newest event's id (0: none yet)."""

        async def op(conn: Any) -> Any:
            return await conn.fetchval("SELECT coalesce(max(id), 0) FROM auth_events")

        return int(await self._db.read(op))

    async def since(self, after_id: int, limit: int) -> list[AuthEvent]:
        """Up to `limit` events with id > `after_id`, oldest first."""

        async def op(conn: Any) -> list[Any]:
            return list(await conn.fetch(
                "SELECT id, at, user_id, jti, key_id FROM auth_events WHERE id > $1 "
                "ORDER BY id LIMIT $2", after_id, limit))

        return [AuthEvent(int(r[0]), int(r[1]), int(r[2]), r[3], r[4])
                for r in await self._db.read(op)]

    async def prune(self, before_unix: int) -> None:
        """Delete the events older than `before_unix` (ids are never reused after)."""

        async def op(conn: Any) -> None:
            await conn.execute("DELETE FROM auth_events WHERE at < $1", before_unix)

        await self._db.write(op)
