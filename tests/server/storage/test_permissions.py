"""The database, its WAL and shared-memory files hold password hashes and every chat: owner only."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.runner import Running, start
from tests.support.app import make_config
from tests.support.auth import PASSWORD, bare_session


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual 022 umask, under which files are world-readable unless made otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


async def _use(running: Running) -> None:
    """Writes and reads, so SQLite has made its -wal and -shm files."""
    async with bare_session(running) as s:
        async with s.post("/api/auth/register",
                          json={"username": "private", "password": PASSWORD}) as resp:
            assert resp.status in (201, 409), await resp.text()
        async with s.post("/api/auth/login",
                          json={"username": "private", "password": PASSWORD}) as resp:
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["access_token"]
        async with s.post("/api/conversations", json={"title": "secret plans"},
                          headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 201


async def test_a_new_data_folder_is_0700_and_its_files_0600(tmp_path: Path, simulator: Any,
                                                           open_umask: None) -> None:
    db = tmp_path / "data" / "chatgate.db"
    running = await start(make_config(tmp_path, simulator.url, database={"path": str(db)}))
    try:
        await _use(running)
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), db.parent / "chatgate.secret"]
        assert all(f.exists() for f in files)
        assert mode(db.parent) == 0o700
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        await running.stop()


async def test_existing_world_readable_files_are_made_private_at_open(
        tmp_path: Path, simulator: Any, open_umask: None) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)  # an older install, e.g. made before this fix, left open so
    conn.execute("PRAGMA journal_mode=WAL")  # its -wal and -shm files exist too
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    for f in files:
        os.chmod(f, 0o644)
    conn.close()
    for f in files[1:]:
        f.touch(mode=0o644)  # a crash can leave them behind
        os.chmod(f, 0o644)
    running = await start(make_config(tmp_path, simulator.url, database={"path": str(db)}))
    try:
        await _use(running)
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        await running.stop()
