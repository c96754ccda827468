"""SQL for API keys; every call but the lookup by prefix is scoped to the owning user."""

from __future__ import annotations

from typing import Any

from ..errors import NotFound, TooManyKeys
from ..rows import KEY_COLUMNS, USER_COLUMNS, KeyRow, UserRow, key_row, now_iso, user_row
from .db import Database
from .quotas import lock_user

_USER = ", ".join(f"u.{c}" for c in USER_COLUMNS)


class PostgresKeys:
    """API keys in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, user_id: int, name: str, prefix: str, key_hash: str,
                     expires_at: int | None, rpm: int | None, tpm: int | None,
                     max_keys: int = 0) -> KeyRow:
        """Store a new key's hash under its prefix; TooManyKeys past `max_keys` (0 = none)."""
        now = now_iso()

        async def op(conn: Any) -> KeyRow:
            # Counted under the user's lock: parallel creations on any node cannot pass the
            # cap together. Expired keys count until deleted.
            if max_keys:
                await lock_user(conn, user_id)
                have = int(await conn.fetchval(
                    "SELECT count(*) FROM api_keys WHERE user_id = $1", user_id))
                if have >= max_keys:
                    raise TooManyKeys(
                        f"you already have {have:,} API keys, the most one account may have "
                        f"({max_keys:,}); delete one you no longer use to make another")
            new_id = await conn.fetchval(
                "INSERT INTO api_keys (user_id, name, prefix, hash, created_at, expires_at, rpm, "
                "tpm) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                user_id, name, prefix, key_hash, now, expires_at, rpm, tpm)
            return {"id": int(new_id), "name": name, "prefix": prefix, "created_at": now,
                    "expires_at": expires_at, "last_used_at": None, "rpm": rpm, "tpm": tpm}

        return await self._db.write(op)

    async def list(self, user_id: int) -> list[KeyRow]:
        """The user's keys, newest first."""

        async def op(conn: Any) -> list[Any]:
            return list(await conn.fetch(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 "
                                         "ORDER BY id DESC", user_id))

        return [key_row(r) for r in await self._db.read(op)]

    async def delete(self, user_id: int, key_id: int) -> None:
        """Delete one of the user's keys (NotFound for anyone else's)."""

        async def op(conn: Any) -> Any:
            return await conn.fetchval("DELETE FROM api_keys WHERE id = $1 AND user_id = $2 "
                                       "RETURNING id", key_id, user_id)

        if await self._db.write(op) is None:
            raise NotFound("API key not found")

    async def by_prefix(self, prefix: str) -> tuple[KeyRow, str, UserRow] | None:
        """A key, its hash and its user, found by the key's prefix, in one query."""

        async def op(conn: Any) -> Any:
            return await conn.fetchrow(
                "SELECT k.id, k.name, k.prefix, k.created_at, k.expires_at, k.last_used_at, "
                f"k.rpm, k.tpm, k.hash, {_USER} FROM api_keys k "
                "JOIN users u ON u.id = k.user_id WHERE k.prefix = $1", prefix)

        row = await self._db.read(op)
        if row is None:
            return None
        return key_row(row), row[8], user_row(row, 9)

    async def delete_all(self, user_id: int) -> tuple[int, ...]:
        """Delete every key of the user; the ids deleted."""

        async def op(conn: Any) -> list[Any]:
            return list(await conn.fetch("DELETE FROM api_keys WHERE user_id = $1 RETURNING id",
                                         user_id))

        return tuple(sorted(int(r[0]) for r in await self._db.write(op)))

    async def touch(self, used: dict[int, str]) -> None:
        """Record when each key was last used (one write for many keys)."""

        async def op(conn: Any) -> None:
            await conn.executemany("UPDATE api_keys SET last_used_at = $1 WHERE id = $2",
                                   [(when, key_id) for key_id, when in used.items()])

        await self._db.write(op)
