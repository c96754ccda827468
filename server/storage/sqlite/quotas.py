"""SQL for storage caps: each user's counters, read and checked inside the write they guard."""

from __future__ import annotations

import sqlite3

from ..base import Quota
from ..refusals import counted, refuse_past
from .db import Database


def check(conn: sqlite3.Connection, user_id: int, quota: Quota, *, conversations: int = 0,
          chars: int = 0) -> None:
    """Refuse a write adding `conversations` and `chars` that would pass the user's caps.

    Run inside the write's own transaction: writes are serialised, so concurrent requests
    cannot pass a cap together.
    """
    if not counted(quota, conversations, chars):
        return
    row = conn.execute("SELECT conversations, chars FROM user_storage WHERE user_id = ?",
                       (user_id,)).fetchone()
    have_conv, have_chars = (row[0], row[1]) if row else (0, 0)
    refuse_past(quota, have_conv, have_chars, conversations=conversations, chars=chars)

class SqliteQuotas:
    """Per-user storage counters in SQLite (kept by triggers, see migration V5)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def stored(self, user_id: int) -> tuple[int, int]:
        """The user's (conversations, characters) stored now."""

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute("SELECT conversations, chars FROM user_storage WHERE user_id = ?",
                               (user_id,)).fetchone()
            return (row[0], row[1]) if row else (0, 0)

        return await self._db.read(op)
