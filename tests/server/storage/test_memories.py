"""Tests for the memories stores (server/storage/sqlite/memories.py, postgres/memories.py) on
both backends (`store`), and SQLite's migration V11 on a real file."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.storage import NO_QUOTA, MemoryNotFound, Quota, Storage, StorageQuotaExceeded
from server.storage.sqlite import migrate
from server.storage.sqlite.memories import SqliteAccountSettings, SqliteMemories
from server.storage.sqlite.quotas import SqliteQuotas
from tests.support.sqlite import MakeDb, plain
from tests.support.storage import rows


async def test_a_v9_file_gains_memories_and_settings_keeping_its_counts(
        tmp_path: Path, make_db: MakeDb) -> None:
    conn = plain(tmp_path / "v9.db")
    try:
        assert migrate(conn, target=9) == 9
        conn.execute("INSERT INTO users (id, username, password_hash, created_at) "
                     "VALUES (1, 'old', 'hash', '2026-01-01T00:00:00.000Z')")
        conn.execute("INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
                     "VALUES (5, 1, 'chat', '2026-01-01T00:00:00.000Z', "
                     "'2026-01-01T00:00:00.000Z')")
    finally:
        conn.close()
    db = await make_db("v9.db")
    quotas, memories = SqliteQuotas(db), SqliteMemories(db)
    assert await quotas.stored(1) == (1, len("chat"))
    assert await memories.profile(1) == ({}, [])  # settings '' and no memories yet
    await memories.add(1, "I am old", 10)
    await SqliteAccountSettings(db).configure(1, {"theme": "dark"})
    settings_chars = len('{"theme":"dark"}')
    assert await quotas.stored(1) == (1, len("chat") + len("I am old") + settings_chars)
    assert await memories.profile(1) == ({"theme": "dark"}, ["I am old"])


async def test_deleting_a_user_deletes_their_memories(store: Storage) -> None:
    users, memories = store.users, store.memories
    gone = (await users.create("gone", "hash"))["id"]
    kept = (await users.create("kept", "hash"))["id"]
    await memories.add(gone, "a", 10)
    await memories.propose(gone, ["b"], 10)
    await memories.add(kept, "c", 10)
    assert await users.delete(gone)
    count = "SELECT user_id, count(*) FROM memories GROUP BY user_id"
    assert await rows(store, count) == [(kept, 1)]


async def test_rows_are_scoped_to_their_owner(store: Storage) -> None:
    users, memories = store.users, store.memories
    owner = (await users.create("owner", "hash"))["id"]
    other = (await users.create("other", "hash"))["id"]
    row = await memories.add(owner, "mine", 10)
    with pytest.raises(MemoryNotFound):
        await memories.update(other, row["id"], content="theirs")
    with pytest.raises(MemoryNotFound):
        await memories.update(other, row["id"], accept=True)
    with pytest.raises(MemoryNotFound):
        await memories.delete(other, row["id"])
    assert await memories.all(other) == []
    assert await memories.all(owner) == [row]


async def test_only_enabled_active_memories_reach_the_profile(store: Storage) -> None:
    user = (await store.users.create("u", "hash"))["id"]
    memories = store.memories
    one = await memories.add(user, "one", 10)
    await memories.add(user, "two", 10)
    await memories.propose(user, ["three"], 10)
    await memories.update(user, one["id"], enabled=False)
    assert (await memories.profile(user))[1] == ["two"]
    await memories.update(user, one["id"], enabled=True)
    assert (await memories.profile(user))[1] == ["two", "one"]  # newest first


async def test_caps_are_checked_inside_the_write(store: Storage) -> None:
    user = (await store.users.create("u", "hash"))["id"]
    memories = store.memories
    await memories.add(user, "x" * 10, 10, Quota(chars=15))
    with pytest.raises(StorageQuotaExceeded):
        await memories.add(user, "y" * 10, 10, Quota(chars=15))
    proposed = await memories.propose(user, ["abc", "defgh", "z"], 10, Quota(chars=15))
    assert [m["content"] for m in proposed] == ["abc"]  # then the cap: the rest wait
    assert len(await memories.propose(user, [f"p{i}" for i in range(20)], 5, NO_QUOTA)) == 3
