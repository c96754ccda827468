"""SQL for auth events: written by triggers (migration V14), read by every process's poller."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..base import AuthEvent
from .db import Database


class SqliteAuthEvents:
    """The auth events table in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def latest(self) -> int:
        """The newest event's id (0 when there is none)."""

        def op(conn: sqlite3.Connection) -> Any:
            return conn.execute("SELECT coalesce(max(id), 0) FROM auth_events").fetchone()[0]

        return int(await self._db.read(op))

    async def since(self, after_id: int, limit: int) -> list[AuthEvent]:
        """Events above `after_id`, oldest first: one range read of the primary key."""

        def op(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute("SELECT id, at, user_id, jti, key_id FROM auth_events "
                                "WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()

        return [AuthEvent(*row) for row in await self._db.read(op)]

    async def prune(self, before_unix: int) -> None:
        """Delete the events older than `before_unix`."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM auth_events WHERE at < ?", (before_unix,))

        await self._db.write(op)
