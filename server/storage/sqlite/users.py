"""SQL for users."""

from __future__ import annotations

import sqlite3
from typing import cast

from ..errors import Conflict
from ..rows import UserRow, now_iso
from .db import Database


class SqliteUsers:
    """Accounts in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, username: str, password_hash: str) -> UserRow:
        """Insert a user; Conflict when the name (case-insensitive) is taken."""
        created = now_iso()

        def op(conn: sqlite3.Connection) -> UserRow:
            try:
                cur = conn.execute(
                    "INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)",
                    (username, password_hash, created),
                )
            except sqlite3.IntegrityError as err:
                raise Conflict("username is taken") from err
            return {"id": cast(int, cur.lastrowid), "username": username, "created_at": created}

        return await self._db.write(op)

    async def credentials(self, username: str) -> tuple[UserRow, str] | None:
        """The user and password hash for a login, or None."""

        def op(conn: sqlite3.Connection) -> tuple[UserRow, str] | None:
            row = conn.execute(
                "SELECT id, username, created_at, password_hash FROM users WHERE username = ?",
                (username,),
            ).fetchone()
            if row is None:
                return None
            return {"id": row[0], "username": row[1], "created_at": row[2]}, row[3]

        return await self._db.read(op)

    async def principal(self, user_id: int, jti: str) -> UserRow | None:
        """The token's user if it still exists and the token is not revoked, in one query."""

        def op(conn: sqlite3.Connection) -> UserRow | None:
            row = conn.execute(
                "SELECT id, username, created_at FROM users WHERE id = ? "
                "AND NOT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = ?)",
                (user_id, jti),
            ).fetchone()
            return None if row is None else {"id": row[0], "username": row[1],
                                             "created_at": row[2]}

        return await self._db.read(op)

    async def delete(self, user_id: int) -> bool:
        """Delete a user and, by cascade, everything they own."""

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount > 0

        return await self._db.write(op)
