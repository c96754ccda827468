"""SQL for long-term memories (V11); every statement is scoped to the owning user."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from ..base import NO_QUOTA, Quota
from ..errors import MemoryNotFound, NotFound, OverQuota
from ..refusals import too_many_memories
from ..rows import MEMORY_COLUMNS, MemoryRow, memory_row, merge_settings, now_iso, same_memory
from .db import Database
from .quotas import check


class SqliteMemories:
    """Long-term memories in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self, user_id: int) -> list[MemoryRow]:
        """The user's memories, newest first."""

        def op(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(f"SELECT {MEMORY_COLUMNS} FROM memories WHERE user_id = ? "
                                "ORDER BY id DESC", (user_id,)).fetchall()

        return [memory_row(r) for r in await self._db.read(op)]

    async def add(self, user_id: int, content: str, max_count: int,
                  quota: Quota = NO_QUOTA) -> MemoryRow:
        """Store an active memory, within the user's count and stored-text caps."""
        now = now_iso()

        def op(conn: sqlite3.Connection) -> MemoryRow:
            # Counted inside the write's own transaction: parallel adds cannot pass the cap.
            have = conn.execute("SELECT count(*) FROM memories WHERE user_id = ?",
                                (user_id,)).fetchone()[0]
            if have >= max_count:
                raise too_many_memories(have, max_count)
            check(conn, user_id, quota, chars=len(content))
            row = conn.execute(
                "INSERT INTO memories (user_id, content, created_at, updated_at) "
                f"VALUES (?, ?, ?, ?) RETURNING {MEMORY_COLUMNS}",
                (user_id, content, now, now)).fetchone()
            return memory_row(row)

        return await self._db.write(op)

    async def update(self, user_id: int, memory_id: int, *, content: str | None = None,
                     enabled: bool | None = None, accept: bool = False,
                     quota: Quota = NO_QUOTA) -> MemoryRow:
        """Change what is given; `accept` makes a proposed memory active."""
        now = now_iso()
        sets: list[str] = ["updated_at = ?"]
        args: list[Any] = [now]
        if content is not None:
            sets.append("content = ?")
            args.append(content)
        if enabled is not None:
            sets.append("enabled = ?")
            args.append(int(enabled))
        if accept:
            sets.append("state = 'active'")

        def op(conn: sqlite3.Connection) -> Any:
            if content is not None and quota.chars:
                old = conn.execute("SELECT length(content) FROM memories "
                                   "WHERE id = ? AND user_id = ?",
                                   (memory_id, user_id)).fetchone()
                if old is not None:
                    check(conn, user_id, quota, chars=len(content) - old[0])
            return conn.execute(
                f"UPDATE memories SET {', '.join(sets)} WHERE id = ? AND user_id = ? "
                f"RETURNING {MEMORY_COLUMNS}", (*args, memory_id, user_id)).fetchone()

        row = await self._db.write(op)
        if row is None:
            raise MemoryNotFound("memory not found")
        return memory_row(row)

    async def delete(self, user_id: int, memory_id: int) -> None:
        """Delete one of the user's memories."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM memories WHERE id = ? AND user_id = ?",
                                (memory_id, user_id)).rowcount

        if await self._db.write(op) == 0:
            raise MemoryNotFound("memory not found")

    async def propose(self, user_id: int, contents: list[str], max_count: int,
                      quota: Quota = NO_QUOTA) -> list[MemoryRow]:
        """Store new proposals (not ones the user keeps already), as many as the caps allow."""
        now = now_iso()

        def op(conn: sqlite3.Connection) -> list[MemoryRow]:
            kept = {same_memory(r[0]) for r in conn.execute(
                "SELECT content FROM memories WHERE user_id = ?", (user_id,))}
            have = conn.execute("SELECT count(*) FROM memories WHERE user_id = ?",
                                (user_id,)).fetchone()[0]
            added: list[MemoryRow] = []
            for content in contents:
                if have >= max_count:
                    break
                if same_memory(content) in kept:
                    continue
                try:
                    check(conn, user_id, quota, chars=len(content))
                except OverQuota:
                    break  # a suggestion is never worth an error: the rest wait
                added.append(memory_row(conn.execute(
                    "INSERT INTO memories (user_id, content, state, created_at, updated_at) "
                    f"VALUES (?, ?, 'proposed', ?, ?) RETURNING {MEMORY_COLUMNS}",
                    (user_id, content, now, now)).fetchone()))
                kept.add(same_memory(content))
                have += 1
            return added

        return await self._db.write(op)

    async def profile(self, user_id: int) -> tuple[dict[str, Any], list[str]]:
        """The account settings and the enabled, active memories (newest first), one read."""

        def op(conn: sqlite3.Connection) -> tuple[Any, list[Any]]:
            settings = conn.execute("SELECT settings FROM users WHERE id = ?",
                                    (user_id,)).fetchone()
            memories = conn.execute(
                "SELECT content FROM memories WHERE user_id = ? AND enabled = 1 "
                "AND state = 'active' ORDER BY id DESC", (user_id,)).fetchall()
            return settings, memories

        settings, memories = await self._db.read(op)
        text = settings[0] if settings is not None else ""
        return (orjson.loads(text) if text else {}), [r[0] for r in memories]


class SqliteAccountSettings:
    """Account settings in SQLite: `users.settings`, a JSON object ('' = none)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def configure(self, user_id: int, changes: dict[str, Any],
                        quota: Quota = NO_QUOTA) -> dict[str, Any]:
        """Merge the changes (None removes a setting) in one transaction; the text counts
        towards the user's stored characters."""

        def op(conn: sqlite3.Connection) -> dict[str, Any] | None:
            old = conn.execute("SELECT settings FROM users WHERE id = ?", (user_id,)).fetchone()
            if old is None:
                return None
            kept, text = merge_settings(old[0], changes)
            if text != old[0]:
                if quota.chars:
                    check(conn, user_id, quota, chars=len(text) - len(old[0]))
                conn.execute("UPDATE users SET settings = ? WHERE id = ?", (text, user_id))
            return kept

        kept = await self._db.write(op)
        if kept is None:
            raise NotFound("user not found")
        return kept
