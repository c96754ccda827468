"""SQL for token usage: per user, key and UTC day, added to in batches."""

from __future__ import annotations

from typing import Any

from ..base import UsageDelta
from ..rows import UsageRow
from .db import Database


class PostgresUsage:
    """Usage counters in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, deltas: list[UsageDelta]) -> None:
        """Add many counters at once, in one transaction; rows of deleted users are skipped."""

        async def op(conn: Any) -> None:
            await conn.executemany(
                "INSERT INTO usage_daily AS u (user_id, day, key_id, requests, prompt_tokens, "
                "completion_tokens) SELECT $1::bigint, $2::text, $3::bigint, $4::bigint, "
                "$5::bigint, $6::bigint WHERE EXISTS (SELECT 1 FROM users WHERE id = $1) "
                "ON CONFLICT (user_id, day, key_id) DO UPDATE SET "
                "requests = u.requests + excluded.requests, "
                "prompt_tokens = u.prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = u.completion_tokens + excluded.completion_tokens",
                sorted(deltas, key=lambda d: (d[0], d[1], d[2])))  # every node's lock order

        await self._db.write(op)

    async def days(self, user_id: int, first: str, last: str) -> list[UsageRow]:
        """The user's counters from day `first` to `last` (inclusive), oldest first."""

        async def op(conn: Any) -> list[Any]:
            return list(await conn.fetch(
                "SELECT day, key_id, requests, prompt_tokens, completion_tokens FROM usage_daily "
                "WHERE user_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day, key_id",
                user_id, first, last))

        return [{"day": r[0], "key_id": r[1], "requests": r[2], "prompt_tokens": r[3],
                 "completion_tokens": r[4]} for r in await self._db.read(op)]

    async def tokens_since(self, user_id: int, first: str) -> int:
        """Prompt and completion tokens the user has used from day `first` on."""

        async def op(conn: Any) -> Any:
            return await conn.fetchval(
                "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage_daily "
                "WHERE user_id = $1 AND day >= $2", user_id, first)

        return int(await self._db.read(op))
