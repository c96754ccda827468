"""SQL for storage caps: each user's counters, read and checked inside the write they guard."""

from __future__ import annotations

from typing import Any

from ..base import Quota
from ..refusals import counted, refuse_past
from .db import Database


async def lock_user(conn: Any, user_id: int) -> tuple[int, int]:
    """Lock the user's storage row until the transaction ends and return its (conversations,
    chars): the per-user lock under which caps are checked, so writes from other nodes for
    the same user wait instead of passing a cap together."""
    row = await conn.fetchrow("SELECT conversations, chars FROM user_storage WHERE user_id = $1 "
                              "FOR UPDATE", user_id)
    return (int(row[0]), int(row[1])) if row is not None else (0, 0)


async def check(conn: Any, user_id: int, quota: Quota, *, conversations: int = 0,
                chars: int = 0) -> None:
    """Refuse a write adding `conversations` and `chars` that would pass the user's caps.

    Run inside the write's own transaction, holding the user's lock until it commits.
    """
    if not counted(quota, conversations, chars):
        return
    have_conv, have_chars = await lock_user(conn, user_id)
    refuse_past(quota, have_conv, have_chars, conversations=conversations, chars=chars)

class PostgresQuotas:
    """Per-user storage counters in PostgreSQL (kept by triggers, see migration V1)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def stored(self, user_id: int) -> tuple[int, int]:
        """The user's (conversations, characters) stored now."""

        async def op(conn: Any) -> Any:
            return await conn.fetchrow(
                "SELECT conversations, chars FROM user_storage WHERE user_id = $1", user_id)

        row = await self._db.read(op)
        return (int(row[0]), int(row[1])) if row is not None else (0, 0)
