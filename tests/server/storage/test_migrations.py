"""Tests for server/storage/sqlite/migrations.py on real SQLite files: upgrades and refusals."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import pytest

from server.storage.sqlite import LATEST, Database, migrate
from server.storage.sqlite.conversations import SqliteConversations
from server.storage.sqlite.messages import SqliteMessages
from server.storage.sqlite.quotas import SqliteQuotas
from server.storage.sqlite.search import SqliteSearch
from server.storage.sqlite.users import SqliteUsers
from tests.support.paths import ROOT
from tests.support.sqlite import MakeDb, plain

# make_db: the storage fixture in conftest.py (Databases in tmp_path, all closed after).


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
        conn.execute("INSERT INTO users (id, username, password_hash, created_at) "
                     "VALUES (2, 'later', 'hash', '2023-02-01T00:00:00.000Z')")
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
    # A file from before roles: its oldest account administers it, once; nobody else.
    assert found[0].get("role") == "admin" and found[0].get("status") == "active"
    later = await SqliteUsers(db).credentials("later")
    assert later is not None and later[0].get("role") == "user"
    rows, cursor = await SqliteConversations(db).page(1, 10, None)
    assert cursor is None
    assert {r["id"]: r["message_count"] for r in rows} == {10: 3, 11: 0}
    conv, msgs = await SqliteConversations(db).get(1, 10)
    assert conv["title"] == "old chat" and conv["message_count"] == 3
    assert [m["content"] for m in msgs][0] == "tell me about the ancient pangolin"
    hits = await SqliteSearch(db).search(1, "pangolin", 10)
    assert len(hits) == 2 and {h["conversation_id"] for h in hits} == {10}
    assert len(await SqliteSearch(db).search(1, "echidna", 10)) == 1
    # Each user's stored counts start from what the old file holds.
    texts = ["old chat", "empty chat", "tell me about the ancient pangolin",
             "the pangolin has scales", "and the echidna?"]
    assert await SqliteQuotas(db).stored(1) == (2, sum(map(len, texts)))
    # The triggers are live on the upgraded file too.
    await SqliteMessages(db).add(10, "assistant", "echidnas lay eggs")
    assert len(await SqliteSearch(db).search(1, "echidna", 10)) == 2
    assert (await SqliteConversations(db).get(1, 10))[0]["message_count"] == 4
    assert await SqliteQuotas(db).stored(1) == (2, sum(map(len, texts)) + 17)
    # V12: existing titles are automatic ones; a generated title may replace one only so.
    conversations = SqliteConversations(db)
    assert await conversations.title_source(1, 10) == "first_line"
    assert await conversations.title_source(2, 10) is None  # another user's: not there
    assert not await conversations.set_generated_title(2, 10, "Theirs")
    assert await conversations.set_generated_title(1, 11, "Empty no more")
    await conversations.rename(1, 10, "Mine")
    assert not await conversations.set_generated_title(1, 10, "Generated")
    assert [(await conversations.get(1, c))[0]["title"] for c in (10, 11)] == \
        ["Mine", "Empty no more"]
    assert await conversations.title_source(1, 11) == "generated"
    with pytest.raises(sqlite3.IntegrityError):
        await db.write(lambda c: c.execute(
            "UPDATE conversations SET title_source = 'guessed' WHERE id = 10"))


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


async def test_run_py_with_a_newer_database_exits_with_one_line(tmp_path: Path) -> None:
    db_path = tmp_path / "future3.db"
    with plain(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"server:\n  port: 0\ndatabase:\n  path: {db_path}\n"
                   "llm:\n  base_url: http://127.0.0.1:9/v1\n  retries: 0\n"
                   "  connect_timeout_s: 0.5\n", encoding="utf-8")
    repo = ROOT
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "--config", str(cfg), cwd=str(repo),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.wait_for(proc.wait(), timeout=10)  # stderr is small: the pipe holds it
    except TimeoutError:
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


# --- upgrades that the search index depends on ----------------------------------------------


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
        await SqliteMessages(db).regenerate(user["id"], conv, None)
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
