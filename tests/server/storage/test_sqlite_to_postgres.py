"""The SQLite -> PostgreSQL copy: every table as it is, sequences past every id SQLite gave, and
a verification that sees a row or a count that differs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from server.storage.sqlite import Database, SqliteStorage, migrate
from server.storage.sqlite_to_postgres import copy, open_source, verify


async def test_the_copy_keeps_ids_and_the_check_sees_differences(tmp_path: Path,
                                                                  pg_url: str) -> None:
    path = str(tmp_path / "s.db")
    db = Database(path)
    await db.open(migrate)
    store = SqliteStorage(db)
    user = (await store.users.create("ana", "h", must_change_password=True))["id"]
    conv, *_ = await store.messages.add_user_message(user, None, "hello", "t")
    gone, *_ = await store.messages.add_user_message(user, None, "bye", "t")
    await store.conversations.delete(user, gone)  # its ids are never given again
    await store.memories.add(user, "a memory", 10)
    await db.close()

    source = open_source(path)
    conn = await asyncpg.connect(pg_url)
    try:
        report = await copy(source, conn)
        assert report.ok, report
        counts = {t.name: (t.source, t.target) for t in report.tables}
        assert counts["conversations"] == (1, 1) and counts["messages"] == (1, 1)
        assert await conn.fetchval("SELECT must_change_password FROM users") is True
        # New rows take ids past the deleted conversation's, as SQLite's AUTOINCREMENT does.
        assert await conn.fetchval("SELECT nextval(pg_get_serial_sequence('conversations', "
                                   "'id'))") == gone + 1
        assert await conn.fetchval("SELECT count(*) FROM auth_events") == 0  # no trigger ran
        tables = [(t, [c[1] for c in source.execute(f"PRAGMA table_info({t})")], kinds)
                  for t, kinds in (("messages", None), ("memories", None))]
        await conn.execute("UPDATE messages SET content = 'changed'")
        await conn.execute("DELETE FROM memories")
        kinds = {t: [r[0] for r in await conn.fetch(
            "SELECT data_type FROM information_schema.columns WHERE table_name = $1 "
            "AND is_generated = 'NEVER' ORDER BY ordinal_position", t)] for t, _, _ in tables}
        checked = await verify(source, conn, [(t, c, kinds[t]) for t, c, _ in tables])
        assert not checked.ok
        by_name = {t.name: t for t in checked.tables}
        assert by_name["messages"].differing == [f"id={conv}"]
        assert (by_name["memories"].source, by_name["memories"].target) == (1, 0)
    finally:
        source.close()
        await conn.close()
    assert sqlite3.connect(path).execute("SELECT count(*) FROM messages").fetchone()[0] == 1
