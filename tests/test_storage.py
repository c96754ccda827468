"""Tests for server/storage/db.py and migrations.py on real SQLite files."""

from __future__ import annotations

import asyncio
from contextlib import closing
import sqlite3
import sys
import threading
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest

from server.storage import Conflict, DatabaseBusy, NotFound
from server.storage.sqlite import LATEST, Database, migrate
from server.storage.sqlite.conversations import SqliteConversations
from server.storage.sqlite.messages import SqliteMessages
from server.storage.sqlite.search import SqliteSearch
from server.storage.sqlite.users import SqliteUsers

MakeDb = Callable[..., Awaitable[Database]]


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


def plain(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A plain sqlite3 connection in autocommit mode (explicit BEGIN/COMMIT)."""
    return sqlite3.connect(str(path), isolation_level=None, timeout=timeout)


# --- migrations ------------------------------------------------------------------------------


async def test_migrations_from_an_empty_file_reach_latest(tmp_path: Path,
                                                          make_db: MakeDb) -> None:
    db = await make_db("fresh.db", readers=1)
    version = await db.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
    assert version == LATEST
    names = await db.read(lambda c: {r[0] for r in c.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")})
    assert {"users", "conversations", "messages", "revoked_tokens", "messages_fts",
            "messages_ai", "messages_ad", "messages_au"} <= names
    with plain(tmp_path / "fresh.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST


async def test_migrate_is_idempotent(tmp_path: Path) -> None:
    conn = plain(tmp_path / "twice.db")
    try:
        assert migrate(conn) == LATEST
        assert migrate(conn) == LATEST
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    finally:
        conn.close()


async def test_version_1_database_is_upgraded_in_place(tmp_path: Path, make_db: MakeDb) -> None:
    path = tmp_path / "old.db"
    conn = plain(path)
    try:
        assert migrate(conn, target=1) == 1
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'messages_fts'"
                            ).fetchone()[0] == 0
        conn.execute("INSERT INTO users (id, username, password_hash, created_at) "
                     "VALUES (1, 'olduser', 'hash', '2023-01-01T00:00:00.000Z')")
        conn.execute("INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
                     "VALUES (10, 1, 'old chat', '2023-01-01T00:00:00.000Z', "
                     "'2023-01-01T00:00:00.000Z')")
        conn.execute("INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
                     "VALUES (11, 1, 'empty chat', '2023-01-02T00:00:00.000Z', "
                     "'2023-01-02T00:00:00.000Z')")
        for i, (role, text) in enumerate([("user", "tell me about the ancient pangolin"),
                                          ("assistant", "the pangolin has scales"),
                                          ("user", "and the echidna?")]):
            conn.execute("INSERT INTO messages (conversation_id, role, content, created_at) "
                         "VALUES (10, ?, ?, ?)", (role, text, f"2023-01-01T00:00:0{i}.000Z"))
    finally:
        conn.close()

    db = await make_db("old.db")
    assert await db.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == LATEST
    found = await SqliteUsers(db).credentials("olduser")
    assert found is not None and found[0]["id"] == 1 and found[1] == "hash"
    rows, cursor = await SqliteConversations(db).page(1, 10, None)
    assert cursor is None
    assert {r["id"]: r["message_count"] for r in rows} == {10: 3, 11: 0}
    conv, msgs = await SqliteConversations(db).get(1, 10)
    assert conv["title"] == "old chat" and conv["message_count"] == 3
    assert [m["content"] for m in msgs][0] == "tell me about the ancient pangolin"
    hits = await SqliteSearch(db).search(1, "pangolin", 10)
    assert len(hits) == 2 and {h["conversation_id"] for h in hits} == {10}
    assert len(await SqliteSearch(db).search(1, "echidna", 10)) == 1
    # The triggers are live on the upgraded file too.
    await SqliteMessages(db).add(10, "assistant", "echidnas lay eggs")
    assert len(await SqliteSearch(db).search(1, "echidna", 10)) == 2
    assert (await SqliteConversations(db).get(1, 10))[0]["message_count"] == 4


async def test_database_newer_than_program_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = plain(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    db = Database(str(path), readers=1)
    with pytest.raises(Exception) as info:
        await db.open(migrate)
    message = str(info.value)
    assert "newer" in message and str(LATEST + 1) in message and str(LATEST) in message
    await db.close()  # whatever open() left behind
    with plain(path) as check:  # and it did not touch the file
        assert check.execute("PRAGMA user_version").fetchone()[0] == LATEST + 1
        assert check.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


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


async def test_run_py_with_a_newer_database_exits_with_one_line(tmp_path: Path) -> None:
    db_path = tmp_path / "future3.db"
    with plain(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"server:\n  port: 0\ndatabase:\n  path: {db_path}\n"
                   "llm:\n  base_url: http://127.0.0.1:9/v1\n  retries: 0\n"
                   "  connect_timeout_s: 0.5\n", encoding="utf-8")
    repo = Path(__file__).resolve().parent.parent
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "--config", str(cfg), cwd=str(repo),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.wait_for(proc.wait(), timeout=10)  # stderr is small: the pipe holds it
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        assert proc.stderr is not None
        err = await proc.stderr.read()
        pytest.fail("run.py did not exit after refusing the database; stderr ends: "
                    + err.decode()[-200:])
    assert proc.stderr is not None
    text = (await proc.stderr.read()).decode()
    assert proc.returncode not in (0, None)
    assert "Traceback" not in text, text
    assert "newer" in text


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
    assert (await SqliteConversations(db).get(1, also_good["id"]))[0]["title"] == "after the failure"


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


async def test_v2_database_gains_owner_scoped_search(tmp_path: Path) -> None:
    """A database from before the owner column is upgraded in place and searchable at once."""
    path = tmp_path / "v2.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        migrate(conn, target=2)
        for name in ("ann", "bob"):
            conn.execute("INSERT INTO users (username, password_hash, created_at) "
                         "VALUES (?, 'h', 't')", (name,))
        for user in (1, 2):
            conn.execute("INSERT INTO conversations (user_id, title, created_at, updated_at) "
                         "VALUES (?, 'old', 't', 't')", (user,))
            conn.execute("INSERT INTO messages (conversation_id, role, content, created_at) "
                         "VALUES (?, 'user', 'the okapi of user ' || ?, 't')", (user, user))
    db = Database(str(path))
    await db.open(migrate)
    try:
        for user in (1, 2):
            hits = await SqliteSearch(db).search(user, "okapi", 10)
            assert [h["snippet"] for h in hits] == [f"the okapi of user {user}"]
        owners = await db.read(lambda c: c.execute(
            "SELECT conversation_id, owner FROM messages ORDER BY id").fetchall())
        assert [tuple(r) for r in owners] == [(1, 1), (2, 2)]
    finally:
        await db.close()


async def test_search_index_stays_consistent_through_every_write_path(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "fts.db"))
    await db.open(migrate)
    try:
        user = await SqliteUsers(db).create("fts-user", "h")
        conv = (await SqliteConversations(db).create(user["id"], "c"))["id"]
        await SqliteMessages(db).add_user_message(user["id"], conv, "alpha beta", "t")
        await SqliteMessages(db).add(conv, "assistant", "gamma delta")
        await db.write(lambda c: c.execute(  # plain SQL, owner left out
            "INSERT INTO messages (conversation_id, role, content, created_at) "
            "VALUES (?, 'user', 'epsilon', 't')", (conv,)))
        await SqliteMessages(db).rewind(user["id"], conv, None)
        await db.write(lambda c: c.execute("UPDATE messages SET content = 'zeta' "
                                           "WHERE content = 'alpha beta'"))
        assert [h["snippet"] for h in await SqliteSearch(db).search(user["id"], "epsilon", 5)] == \
            ["epsilon"]
        assert await SqliteSearch(db).search(user["id"], "alpha", 5) == []
        await SqliteConversations(db).delete(user["id"], conv)  # cascade
        await db.write(lambda c: c.execute(
            "INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')"))
        assert await SqliteSearch(db).search(user["id"], "zeta", 5) == []
    finally:
        await db.close()
