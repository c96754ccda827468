"""Direct SQL checks on whichever backend a test runs on (SQLite or PostgreSQL).

Statements are written once with SQLite's `?` / `?N` placeholders; on PostgreSQL they become
`$N`. Reads go through the app's own Database (counted in its stats like any read); writes
through its batching writer.
"""

from __future__ import annotations

import re
from typing import Any

from server import keys
from server.runner import Running
from server.storage import Storage

_PLACEHOLDER = re.compile(r"\?(\d*)")


def storage(target: Running | Storage) -> Any:
    """The Storage of a running app (or the Storage itself)."""
    return target.app[keys.STORAGE] if isinstance(target, Running) else target


def on_postgres(target: Running | Storage) -> bool:
    """Whether the target stores in PostgreSQL."""
    return type(storage(target)).__name__ == "PostgresStorage"


def _pg(sql: str) -> str:
    counter = iter(range(1, 1000))
    return _PLACEHOLDER.sub(lambda m: f"${m.group(1) or next(counter)}", sql)


async def rows(target: Running | Storage, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Every row of a query, as tuples."""
    db = storage(target).db
    if on_postgres(target):
        async def pg_op(conn: Any) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in await conn.fetch(_pg(sql), *args)]

        return await db.read(pg_op)  # type: ignore[no-any-return]
    return await db.read(  # type: ignore[no-any-return]
        lambda c: [tuple(r) for r in c.execute(sql, args).fetchall()])


async def value(target: Running | Storage, sql: str, *args: Any) -> Any:
    """The first column of the first row (None: no row)."""
    found = await rows(target, sql, *args)
    return found[0][0] if found else None


async def execute(target: Running | Storage, sql: str, *args: Any) -> None:
    """Run one write statement through the app's writer."""
    db = storage(target).db
    if on_postgres(target):
        async def pg_op(conn: Any) -> None:
            await conn.execute(_pg(sql), *args)

        await db.write(pg_op)
        return
    await db.write(lambda c: c.execute(sql, args))
