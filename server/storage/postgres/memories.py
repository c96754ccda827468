"""SQL for long-term memories and account settings; every statement is scoped to the user."""

from __future__ import annotations

from typing import Any

import orjson

from ..base import NO_QUOTA, Quota
from ..errors import MemoryNotFound, NotFound, OverQuota
from ..refusals import too_many_memories
from ..rows import MEMORY_COLUMNS, MemoryRow, memory_row, merge_settings, now_iso, same_memory
from .db import Database
from .quotas import check, lock_user


class PostgresMemories:
    """Long-term memories in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self, user_id: int) -> list[MemoryRow]:
        """The user's memories, newest first."""

        async def op(conn: Any) -> list[Any]:
            return list(await conn.fetch(f"SELECT {MEMORY_COLUMNS} FROM memories "
                                         "WHERE user_id = $1 ORDER BY id DESC", user_id))

        return [memory_row(r) for r in await self._db.read(op)]

    async def add(self, user_id: int, content: str, max_count: int,
                  quota: Quota = NO_QUOTA) -> MemoryRow:
        """Store an active memory, within the user's count and stored-text caps."""
        now = now_iso()

        async def op(conn: Any) -> MemoryRow:
            # Counted under the user's lock: parallel adds on any node cannot pass the cap.
            await lock_user(conn, user_id)
            have = int(await conn.fetchval("SELECT count(*) FROM memories WHERE user_id = $1",
                                           user_id))
            if have >= max_count:
                raise too_many_memories(have, max_count)
            await check(conn, user_id, quota, chars=len(content))
            return memory_row(await conn.fetchrow(
                "INSERT INTO memories (user_id, content, created_at, updated_at) "
                f"VALUES ($1, $2, $3, $3) RETURNING {MEMORY_COLUMNS}", user_id, content, now))

        return await self._db.write(op)

    async def update(self, user_id: int, memory_id: int, *, content: str | None = None,
                     enabled: bool | None = None, accept: bool = False,
                     quota: Quota = NO_QUOTA) -> MemoryRow:
        """Change what is given; `accept` makes a proposed memory active."""
        args: list[Any] = [memory_id, user_id, now_iso()]
        sets: list[str] = ["updated_at = $3"]
        for column, value in (("content", content), ("enabled", enabled)):
            if value is not None:
                args.append(value)
                sets.append(f"{column} = ${len(args)}")
        if accept:
            sets.append("state = 'active'")

        async def op(conn: Any) -> Any:
            if content is not None and quota.chars:
                old = await conn.fetchval("SELECT length(content) FROM memories "
                                          "WHERE id = $1 AND user_id = $2", memory_id, user_id)
                if old is not None:
                    await check(conn, user_id, quota, chars=len(content) - int(old))
            return await conn.fetchrow(
                f"UPDATE memories SET {', '.join(sets)} WHERE id = $1 AND user_id = $2 "
                f"RETURNING {MEMORY_COLUMNS}", *args)

        row = await self._db.write(op)
        if row is None:
            raise MemoryNotFound("memory not found")
        return memory_row(row)

    async def delete(self, user_id: int, memory_id: int) -> None:
        """Delete one of the user's memories."""

        async def op(conn: Any) -> Any:
            return await conn.fetchval("DELETE FROM memories WHERE id = $1 AND user_id = $2 "
                                       "RETURNING id", memory_id, user_id)

        if await self._db.write(op) is None:
            raise MemoryNotFound("memory not found")

    async def propose(self, user_id: int, contents: list[str], max_count: int,
                      quota: Quota = NO_QUOTA) -> list[MemoryRow]:
        """Store new proposals (not ones the user keeps already), as many as the caps allow."""
        now = now_iso()

        async def op(conn: Any) -> list[MemoryRow]:
            await lock_user(conn, user_id)
            kept = {same_memory(r[0]) for r in await conn.fetch(
                "SELECT content FROM memories WHERE user_id = $1", user_id)}
            have = int(await conn.fetchval(
                "SELECT count(*) FROM memories WHERE user_id = $1", user_id))
            added: list[MemoryRow] = []
            for content in contents:
                if have >= max_count:
                    break
                if same_memory(content) in kept:
                    continue
                try:
                    await check(conn, user_id, quota, chars=len(content))
                except OverQuota:
                    break  # a suggestion is never worth an error: the rest wait
                added.append(memory_row(await conn.fetchrow(
                    "INSERT INTO memories (user_id, content, state, created_at, updated_at) "
                    f"VALUES ($1, $2, 'proposed', $3, $3) RETURNING {MEMORY_COLUMNS}",
                    user_id, content, now)))
                kept.add(same_memory(content))
                have += 1
            return added

        return await self._db.write(op)

    async def profile(self, user_id: int) -> tuple[dict[str, Any], list[str]]:
        """The account settings and the enabled, active memories (newest first), one read."""

        async def op(conn: Any) -> list[Any]:
            # One statement: the settings row first, then the memories (a single snapshot).
            return list(await conn.fetch(
                "(SELECT 0 AS k, 0::bigint AS id, settings AS t FROM users WHERE id = $1) "
                "UNION ALL (SELECT 1, id, content FROM memories WHERE user_id = $1 "
                "AND enabled AND state = 'active') ORDER BY k, id DESC", user_id))

        rows = await self._db.read(op)
        text = rows[0][2] if rows and rows[0][0] == 0 else ""
        return (orjson.loads(text) if text else {}), [r[2] for r in rows if r[0] == 1]


class PostgresAccountSettings:
    """Account settings in PostgreSQL: `users.settings`, a JSON object ('' = none)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def configure(self, user_id: int, changes: dict[str, Any],
                        quota: Quota = NO_QUOTA) -> dict[str, Any]:
        """Merge the changes (None removes a setting) in one transaction; the text counts
        towards the user's stored characters."""

        async def op(conn: Any) -> dict[str, Any] | None:
            # The row locked: a merge on another node waits instead of losing this one.
            old = await conn.fetchval("SELECT settings FROM users WHERE id = $1 "
                                      "FOR NO KEY UPDATE", user_id)
            if old is None:
                return None
            kept, text = merge_settings(old, changes)
            if text != old:
                if quota.chars:
                    await check(conn, user_id, quota, chars=len(text) - len(old))
                await conn.execute("UPDATE users SET settings = $1 WHERE id = $2",
                                   text, user_id)
            return kept

        kept = await self._db.write(op)
        if kept is None:
            raise NotFound("user not found")
        return kept
