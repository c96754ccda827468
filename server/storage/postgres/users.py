"""SQL for users: accounts, their role and status, and what an administrator lists."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from ..errors import Conflict, InvalidCursor, NotFound
from ..rows import USER_COLUMNS, AdminUserRow, UserRow, now_iso, user_row
from .db import Database

_COLUMNS = ", ".join(USER_COLUMNS)
_U_COLUMNS = ", ".join(f"u.{c}" for c in USER_COLUMNS)
# A user's last activity: their latest message, API key use or day with usage.
_LAST_ACTIVE = (
    "(SELECT max(t) FROM (SELECT max(updated_at) AS t FROM conversations WHERE user_id = u.id "
    "UNION ALL SELECT max(last_used_at) FROM api_keys WHERE user_id = u.id "
    "UNION ALL SELECT max(day) FROM usage_daily WHERE user_id = u.id) AS activity)")
# Held while the first account is created, so two nodes cannot both make a first admin.
_FIRST_LOCK = 0x66697273  # "firs"


class PostgresUsers:
    """Accounts in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, username: str, password_hash: str, *, role: str = "user",
                     status: str = "active", must_change_password: bool = False,
                     first_is_admin: bool = False) -> UserRow:
        """Insert a user; Conflict when the name (case-insensitive) is taken. With
        `first_is_admin`, the first account of an empty database is an active admin."""
        created = now_iso()

        async def op(conn: Any) -> UserRow:
            first = False
            if first_is_admin:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _FIRST_LOCK)
                first = await conn.fetchval("SELECT 1 FROM users LIMIT 1") is None
            try:
                row = await conn.fetchrow(
                    "INSERT INTO users (username, password_hash, created_at, role, status, "
                    f"must_change_password) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
                    username, password_hash, created, "admin" if first else role,
                    "active" if first else status, must_change_password)
            except asyncpg.UniqueViolationError as err:
                raise Conflict("username is taken") from err
            return user_row(row)

        return await self._db.write(op)

    async def credentials(self, username: str) -> tuple[UserRow, str, int] | None:
        """The user, password hash and token epoch for a login, or None."""

        async def op(conn: Any) -> Any:
            return await conn.fetchrow(f"SELECT {_COLUMNS}, password_hash, token_epoch FROM users "
                                       "WHERE lower(username) = lower($1)", username)

        row = await self._db.read(op)
        n = len(USER_COLUMNS)
        return None if row is None else (user_row(row), row[n], int(row[n + 1]))

    async def principal(self, user_id: int, jti: str, epoch: int = 0) -> UserRow | None:
        """The token's user if it still exists, the token is not revoked and was issued in the
        user's current token epoch, in one query."""

        async def op(conn: Any) -> Any:
            return await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM users WHERE id = $1 AND token_epoch = $2 "
                "AND NOT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $3)",
                user_id, epoch, jti)

        row = await self._db.read(op)
        return None if row is None else user_row(row)

    async def get(self, user_id: int) -> UserRow | None:
        """One user, or None."""

        async def op(conn: Any) -> Any:
            return await conn.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)

        row = await self._db.read(op)
        return None if row is None else user_row(row)

    async def update(self, user_id: int, *, status: str | None = None,
                     must_change_password: bool | None = None,
                     limits: dict[str, int] | None = None, password_hash: str | None = None,
                     new_epoch: bool = False) -> UserRow:
        """Change what is given (a new epoch kills every token of the user); NotFound."""
        sets: list[str] = []
        args: list[Any] = []
        for column, value in (("status", status), ("password_hash", password_hash),
                              ("must_change_password", must_change_password),
                              ("limits", None if limits is None
                               else orjson.dumps(limits).decode())):
            if value is not None:
                args.append(value)
                sets.append(f"{column} = ${len(args)}")
        if new_epoch:
            sets.append("token_epoch = token_epoch + 1")
        args.append(user_id)
        where = f"WHERE id = ${len(args)}"

        async def op(conn: Any) -> Any:
            if sets:
                return await conn.fetchrow(
                    f"UPDATE users SET {', '.join(sets)} {where} RETURNING {_COLUMNS}", *args)
            return await conn.fetchrow(f"SELECT {_COLUMNS} FROM users {where}", *args)

        row = await self._db.write(op)
        if row is None:
            raise NotFound("user not found")
        return user_row(row)

    async def page(self, limit: int, cursor: str | None,
                   month_start: str) -> tuple[list[AdminUserRow], str | None]:
        """Users by id, with usage since `month_start` and last activity, and the next cursor."""
        after = _after(cursor)

        async def op(conn: Any) -> list[Any]:
            return list(await conn.fetch(
                f"SELECT {_U_COLUMNS}, "
                "(SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage_daily "
                " WHERE user_id = u.id AND day >= $1), "
                "(SELECT coalesce(sum(requests), 0) FROM usage_daily "
                " WHERE user_id = u.id AND day >= $1), "
                f"{_LAST_ACTIVE} FROM users u WHERE u.id > $2 ORDER BY u.id LIMIT $3",
                month_start, after, limit + 1))

        rows: list[AdminUserRow] = []
        for r in await self._db.read(op):
            n = len(USER_COLUMNS)
            rows.append({**user_row(r), "month_tokens": int(r[n]),
                         "month_requests": int(r[n + 1]), "last_active_at": r[n + 2]})
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, str(rows[-1]["id"])

    async def promote(self, usernames: list[str]) -> list[str]:
        """Make these accounts active admins; the names that changed."""

        async def op(conn: Any) -> list[str]:
            changed: list[str] = []
            for name in usernames:
                row = await conn.fetchrow(
                    "UPDATE users SET role = 'admin', status = 'active' "
                    "WHERE lower(username) = lower($1) "
                    "AND (role != 'admin' OR status != 'active') RETURNING username", name)
                if row is not None:
                    changed.append(row[0])
            return changed

        return await self._db.write(op)

    async def delete(self, user_id: int, keep_last_admin: bool = False) -> bool:
        """Delete a user and, by cascade, everything they own; with `keep_last_admin`,
        Conflict when they are the last active admin (nobody could administer then)."""

        async def op(conn: Any) -> bool:
            if keep_last_admin:
                # Every active admin's row locked: two admins deleting themselves on two
                # nodes at once cannot both pass the check.
                admins = [r[0] for r in await conn.fetch(
                    "SELECT id FROM users WHERE role = 'admin' AND status = 'active' "
                    "ORDER BY id FOR UPDATE")]
                if admins == [user_id]:
                    raise Conflict("the last administrator cannot delete their account: "
                                   "make another account admin first")
            status = await conn.execute("DELETE FROM users WHERE id = $1", user_id)
            return bool(status != "DELETE 0")

        return await self._db.write(op)


def _after(cursor: str | None) -> int:
    """A users page's cursor: the last id shown, as text."""
    if not cursor:
        return 0
    if not cursor.isdigit() or len(cursor) > 18:
        raise InvalidCursor("invalid cursor")
    return int(cursor)
