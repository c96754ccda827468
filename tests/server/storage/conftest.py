"""Fixtures for the storage tests: Databases on real SQLite files in tmp_path, and whole
Storages on either backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.config import DatabaseConfig
from server.storage import Storage, open_storage
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


@pytest.fixture(params=("sqlite", "postgres"))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """A whole Storage on each backend (ids `[sqlite]` / `[postgres]`), for tests of the
    stores' contract: a SQLite file in tmp_path, or the session's PostgreSQL database emptied."""
    url = ""
    if request.param == "postgres":
        url = request.getfixturevalue("on_postgres")
    storage = await open_storage(DatabaseConfig(path=str(tmp_path / "store.db"), url=url,
                                                pool_size=2))
    yield storage
    await storage.close()
