"""Tests for server/storage/sqlite/db.py on real SQLite files: connections, batching, locks."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from server.storage import Conflict, DatabaseBusy, NotFound
from server.storage.sqlite import LATEST, Database, migrate
from server.storage.sqlite.conversations import SqliteConversations
from server.storage.sqlite.messages import SqliteMessages
from server.storage.sqlite.users import SqliteUsers
from tests.support.sqlite import MakeDb, plain

# make_db: the storage fixture in conftest.py (Databases in tmp_path, all closed after).


# --- opening ---------------------------------------------------------------------------------


async def test_failed_open_leaves_no_connection_thread_behind(tmp_path: Path) -> None:
    """A refused database must not leave an open aiosqlite thread (it would block exit)."""
    path = tmp_path / "future2.db"
    with plain(path) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    before = set(threading.enumerate())
    db = Database(str(path), readers=1)
    try:
        with pytest.raises(Exception, match="newer"):
            await db.open(migrate)
        await asyncio.sleep(0.05)
        leaked = [t for t in threading.enumerate()  # asyncio_N: the loop's own executor
                  if t not in before and t.is_alive() and not t.daemon
                  and not t.name.startswith("asyncio_")]
        assert leaked == [], f"open() failed but left threads running: {leaked}"
    finally:
        await db.close()  # so this test run itself can exit either way


# --- connection settings ---------------------------------------------------------------------


async def test_wal_mode_and_foreign_keys_are_on(tmp_path: Path, make_db: MakeDb) -> None:
    db = await make_db("pragmas.db", readers=2)
    assert (await db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])).lower() \
        == "wal"
    assert await db.read(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0]) == 1
    assert await db.write(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0]) == 1
    with plain(tmp_path / "pragmas.db") as conn:  # WAL is a property of the file
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    # Foreign keys are enforced on the writer: no message without its conversation...
    with pytest.raises(NotFound):
        await SqliteMessages(db).add(424242, "user", "orphan")
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM messages").fetchone()[0]) == 0
    # ...and deletes cascade.
    user = await SqliteUsers(db).create("fk", "h")
    conv = await SqliteConversations(db).create(user["id"], "t")
    await SqliteMessages(db).add(conv["id"], "user", "hello")
    assert await SqliteUsers(db).delete(user["id"])
    assert await db.read(lambda c: c.execute(
        "SELECT (SELECT count(*) FROM conversations) + (SELECT count(*) FROM messages)"
    ).fetchone()[0]) == 0


async def test_readers_are_read_only(make_db: MakeDb) -> None:
    db = await make_db(readers=1)
    with pytest.raises(sqlite3.Error):
        await db.read(lambda c: c.execute(
            "INSERT INTO users (username, password_hash, created_at) VALUES ('x', 'y', 'z')"))


# --- the batching writer ---------------------------------------------------------------------


async def test_failing_write_does_not_spoil_its_batch(make_db: MakeDb) -> None:
    db = await make_db()
    await SqliteUsers(db).create("bob", "hash")
    batches = db.stats.batches
    dup, good, also_good = await asyncio.gather(
        SqliteUsers(db).create("BOB", "hash"), SqliteUsers(db).create("carol", "hash"),
        SqliteConversations(db).create(1, "after the failure"), return_exceptions=True)
    assert db.stats.batches == batches + 1, "the three writes were not batched together"
    assert isinstance(dup, Conflict)
    assert not isinstance(good, BaseException) and good["username"] == "carol"
    assert not isinstance(also_good, BaseException)
    assert await SqliteUsers(db).credentials("carol") is not None
    names = await db.read(lambda c: [r[0] for r in c.execute(
        "SELECT username FROM users ORDER BY id")])
    assert names == ["bob", "carol"]
    conv, _ = await SqliteConversations(db).get(1, also_good["id"])
    assert conv["title"] == "after the failure"


async def test_op_raising_a_python_error_is_isolated(make_db: MakeDb) -> None:
    db = await make_db()

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO users (username, password_hash, created_at) "
                     "VALUES ('half', 'h', 'now')")
        raise ValueError("op failed after writing")

    results = await asyncio.gather(db.write(bad), SqliteUsers(db).create("whole", "h"),
                                   return_exceptions=True)
    assert isinstance(results[0], ValueError)
    assert not isinstance(results[1], BaseException)
    names = await db.read(lambda c: [r[0] for r in c.execute("SELECT username FROM users")])
    assert names == ["whole"]  # the failed op's own insert was rolled back


async def test_many_concurrent_writes_are_batched(make_db: MakeDb) -> None:
    db = await make_db()
    user = await SqliteUsers(db).create("batcher", "h")
    writes, batches = db.stats.writes, db.stats.batches
    created = await asyncio.gather(*(SqliteConversations(db).create(user["id"], f"c{i}")
                                     for i in range(100)))
    assert db.stats.writes - writes == 100
    assert db.stats.batches - batches < 100
    assert len({c["id"] for c in created}) == 100
    rows, _ = await SqliteConversations(db).page(user["id"], 100, None)
    assert len(rows) == 100


async def test_max_batch_caps_a_transaction(make_db: MakeDb) -> None:
    db = await make_db(max_batch=4)
    user = await SqliteUsers(db).create("capped", "h")
    batches = db.stats.batches
    await asyncio.gather(*(SqliteConversations(db).create(user["id"], "t") for _ in range(20)))
    assert db.stats.batches - batches >= 5


async def test_reads_run_while_a_long_write_holds_the_writer(make_db: MakeDb) -> None:
    db = await make_db(readers=2)
    user = await SqliteUsers(db).create("reader", "h")
    started = threading.Event()
    release = threading.Event()

    def long_write(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO conversations (user_id, title, created_at, updated_at) "
                     "VALUES (?, 'uncommitted', 'x', 'x')", (user["id"],))
        started.set()
        release.wait(10)  # runs on the writer's thread, holding the write transaction
        return 1

    write = asyncio.create_task(db.write(long_write))
    try:
        assert await asyncio.to_thread(started.wait, 10)
        count = await asyncio.wait_for(
            db.read(lambda c: c.execute("SELECT count(*) FROM conversations").fetchone()[0]),
            timeout=5)
        assert not write.done(), "the read waited for the write"
        assert count == 0  # readers see the last committed state, not the open transaction
        assert await SqliteUsers(db).credentials("reader") is not None
    finally:
        release.set()
    assert await write == 1
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM conversations"
                                             ).fetchone()[0]) == 1


async def test_close_finishes_queued_writes(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "close.db"))
    await db.open(migrate)
    pending = [asyncio.ensure_future(SqliteUsers(db).create(f"u{i}", "h")) for i in range(10)]
    await asyncio.sleep(0)
    await db.close()
    await asyncio.gather(*pending)
    with plain(tmp_path / "close.db") as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 10


# --- locks held by someone else --------------------------------------------------------------


async def test_lock_held_past_busy_timeout_raises_database_busy(tmp_path: Path,
                                                                make_db: MakeDb) -> None:
    db = await make_db("busy.db", busy_timeout_ms=200)
    other = plain(tmp_path / "busy.db", timeout=0.1)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(DatabaseBusy):
            await asyncio.wait_for(SqliteUsers(db).create("blocked", "h"), timeout=10)
        # Reads are not blocked by another process's write lock (WAL).
        assert await db.read(lambda c: c.execute("SELECT count(*) FROM users").fetchone()[0]) == 0
    finally:
        other.execute("ROLLBACK")
        other.close()
    # Once the lock is gone the same database works again.
    assert (await SqliteUsers(db).create("unblocked", "h"))["username"] == "unblocked"
    assert await SqliteUsers(db).credentials("blocked") is None


async def test_lock_released_within_busy_timeout_lets_the_write_succeed(
        tmp_path: Path, make_db: MakeDb) -> None:
    db = await make_db("wait.db", busy_timeout_ms=5000)
    other = plain(tmp_path / "wait.db", timeout=0.1)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO users (username, password_hash, created_at) "
                      "VALUES ('first', 'h', 'now')")
        write = asyncio.create_task(SqliteUsers(db).create("second", "h"))
        await asyncio.sleep(0.1)  # let the writer start waiting on the lock
        assert not write.done()
        other.execute("COMMIT")
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    created = await asyncio.wait_for(write, timeout=10)
    assert created["username"] == "second"
    names = await db.read(lambda c: [r[0] for r in c.execute(
        "SELECT username FROM users ORDER BY id")])
    assert names == ["first", "second"]

