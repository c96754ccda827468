"""SQL for API keys; every call but the lookup by prefix is scoped to the owning user."""

from __future__ import annotations

import sqlite3
from typing import Any, cast

from ..errors import NotFound, TooManyKeys
from ..rows import KEY_COLUMNS, USER_COLUMNS, KeyRow, UserRow, key_row, now_iso, user_row
from .db import Database

_USER = ", ".join(f"u.{c}" for c in USER_COLUMNS)


class SqliteKeys:
    """API keys in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, user_id: int, name: str, prefix: str, key_hash: str,
                     expires_at: int | None, rpm: int | None, tpm: int | None,
                     max_keys: int = 0) -> KeyRow:
        """Store a new key's hash under its prefix; TooManyKeys past `max_keys` (0 = none)."""
        now = now_iso()

        def op(conn: sqlite3.Connection) -> KeyRow:
            # Counted inside the write's own transaction: writes are serialised, so a burst
            # of parallel creations cannot pass the cap together. Expired keys count until
            # deleted (else short-lived keys would pile up rows without bound).
            if max_keys:
                have = conn.execute("SELECT count(*) FROM api_keys WHERE user_id = ?",
                                    (user_id,)).fetchone()[0]
                if have >= max_keys:
                    raise TooManyKeys(
                        f"you already have {have:,} API keys, the most one account may have "
                        f"({max_keys:,}); delete one you no longer use to make another")
            cur = conn.execute(
                "INSERT INTO api_keys (user_id, name, prefix, hash, created_at, expires_at, rpm, "
                "tpm) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (user_id, name, prefix, key_hash, now, expires_at, rpm, tpm))
            return {"id": cast(int, cur.lastrowid), "name": name, "prefix": prefix,
                    "created_at": now, "expires_at": expires_at, "last_used_at": None,
                    "rpm": rpm, "tpm": tpm}

        return await self._db.write(op)

    async def list(self, user_id: int) -> list[KeyRow]:
        """The user's keys, newest first."""

        def op(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = ? "
                                "ORDER BY id DESC", (user_id,)).fetchall()

        return [key_row(r) for r in await self._db.read(op)]

    async def delete(self, user_id: int, key_id: int) -> None:
        """Delete one of the user's keys (NotFound for anyone else's)."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM api_keys WHERE id = ? AND user_id = ?",
                                (key_id, user_id)).rowcount

        if await self._db.write(op) == 0:
            raise NotFound("API key not found")

    async def by_prefix(self, prefix: str) -> tuple[KeyRow, str, UserRow] | None:
        """A key, its hash and its user, found by the key's prefix, in one query."""

        def op(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                "SELECT k.id, k.name, k.prefix, k.created_at, k.expires_at, k.last_used_at, "
                f"k.rpm, k.tpm, k.hash, {_USER} FROM api_keys k "
                "JOIN users u ON u.id = k.user_id WHERE k.prefix = ?", (prefix,)).fetchone()

        row = await self._db.read(op)
        if row is None:
            return None
        return key_row(row), row[8], user_row(row, 9)

    async def delete_all(self, user_id: int) -> tuple[int, ...]:
        """Delete every key of the user; the ids deleted."""

        def op(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute("DELETE FROM api_keys WHERE user_id = ? RETURNING id",
                                (user_id,)).fetchall()

        return tuple(r[0] for r in await self._db.write(op))

    async def touch(self, used: dict[int, str]) -> None:
        """Record when each key was last used (one write for many keys)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE api_keys SET last_used_at = ? WHERE id = ?",
                             [(when, key_id) for key_id, when in used.items()])

        await self._db.write(op)
