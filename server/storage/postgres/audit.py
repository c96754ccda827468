"""SQL for the audit log of admin actions (append-only)."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import InvalidCursor
from ..rows import AUDIT_COLUMNS, AuditRow, audit_row, now_iso
from .db import Database


class PostgresAudit:
    """The audit log in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, actor_id: int | None, actor: str, action: str, target_id: int | None,
                  target: str | None, detail: dict[str, Any]) -> AuditRow:
        """Append one row."""
        at = now_iso()
        encoded = orjson.dumps(detail).decode()

        async def op(conn: Any) -> AuditRow:
            new_id = await conn.fetchval(
                "INSERT INTO audit_log (at, actor_id, actor, action, target_id, target, detail) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                at, actor_id, actor, action, target_id, target, encoded)
            return {"id": int(new_id), "at": at, "actor_id": actor_id, "actor": actor,
                    "action": action, "target_id": target_id, "target": target,
                    "detail": detail}

        return await self._db.write(op)

    async def page(self, limit: int, cursor: str | None) -> tuple[list[AuditRow], str | None]:
        """Newest first, and the cursor of the next page (the last id shown)."""
        if cursor and (not cursor.isdigit() or len(cursor) > 18):
            raise InvalidCursor("invalid cursor")
        before = int(cursor) if cursor else None

        async def op(conn: Any) -> list[Any]:
            if before is None:
                return list(await conn.fetch(
                    f"SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY id DESC LIMIT $1", limit + 1))
            return list(await conn.fetch(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
                before, limit + 1))

        rows = [audit_row(r) for r in await self._db.read(op)]
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, str(rows[-1]["id"])
