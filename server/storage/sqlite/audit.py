"""SQL for the audit log of admin actions (append-only)."""

from __future__ import annotations

import sqlite3
from typing import Any, cast

import orjson

from ..errors import InvalidCursor
from ..rows import AUDIT_COLUMNS, AuditRow, audit_row, now_iso
from .db import Database


class SqliteAudit:
    """The audit log in SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, actor_id: int | None, actor: str, action: str, target_id: int | None,
                  target: str | None, detail: dict[str, Any]) -> AuditRow:
        """Append one row."""
        at = now_iso()
        encoded = orjson.dumps(detail).decode()

        def op(conn: sqlite3.Connection) -> AuditRow:
            cur = conn.execute(
                "INSERT INTO audit_log (at, actor_id, actor, action, target_id, target, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (at, actor_id, actor, action, target_id, target, encoded))
            return {"id": cast(int, cur.lastrowid), "at": at, "actor_id": actor_id,
                    "actor": actor, "action": action, "target_id": target_id, "target": target,
                    "detail": detail}

        return await self._db.write(op)

    async def page(self, limit: int, cursor: str | None) -> tuple[list[AuditRow], str | None]:
        """Newest first, and the cursor of the next page (the last id shown)."""
        if cursor and (not cursor.isdigit() or len(cursor) > 18):
            raise InvalidCursor("invalid cursor")
        before = int(cursor) if cursor else None

        def op(conn: sqlite3.Connection) -> list[Any]:
            if before is None:
                return conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY id DESC "
                                    "LIMIT ?", (limit + 1,)).fetchall()
            return conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id < ? "
                                "ORDER BY id DESC LIMIT ?", (before, limit + 1)).fetchall()

        rows = [audit_row(r) for r in await self._db.read(op)]
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, str(rows[-1]["id"])
