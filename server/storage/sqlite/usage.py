"""SQL for token usage: per user, key and UTC day, added to in batches."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..base import UsageDelta
from ..rows import UsageRow
from .db import Database


class SqliteUsage:
    """Usage counters in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, deltas: list[UsageDelta]) -> None:
        """Add many counters at once, in one transaction; rows of deleted users are skipped."""

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO usage_daily (user_id, day, key_id, requests, prompt_tokens, "
                "completion_tokens) SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS "
                "(SELECT 1 FROM users WHERE id = ?1) "
                "ON CONFLICT (user_id, day, key_id) DO UPDATE SET "
                "requests = requests + excluded.requests, "
                "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens",
                deltas)

        await self._db.write(op)

    async def days(self, user_id: int, first: str, last: str) -> list[UsageRow]:
        """The user's counters from day `first` to `last` (inclusive), oldest first."""

        def op(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT day, key_id, requests, prompt_tokens, completion_tokens FROM usage_daily "
                "WHERE user_id = ? AND day BETWEEN ? AND ? ORDER BY day, key_id",
                (user_id, first, last)).fetchall()

        return [{"day": r[0], "key_id": r[1], "requests": r[2], "prompt_tokens": r[3],
                 "completion_tokens": r[4]} for r in await self._db.read(op)]

    async def tokens_since(self, user_id: int, first: str) -> int:
        """Prompt and completion tokens the user has used from day `first` on."""

        def op(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage_daily "
                "WHERE user_id = ? AND day >= ?", (user_id, first)).fetchone()

        return int((await self._db.read(op))[0])
