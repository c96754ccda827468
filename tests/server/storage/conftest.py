"""Fixtures for the storage tests: Databases on real SQLite files in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.storage.sqlite import Database, migrate
from tests.support.sqlite import MakeDb


@pytest.fixture
async def make_db(tmp_path: Path) -> AsyncIterator[MakeDb]:
    """Open Databases on files in tmp_path; close them all afterwards."""
    opened: list[Database] = []

    async def make(name: str = "test.db", **kw: object) -> Database:
        db = Database(str(tmp_path / name), **kw)  # type: ignore[arg-type]
        await db.open(migrate)
        opened.append(db)
        return db

    yield make
    for db in opened:
        await db.close()
