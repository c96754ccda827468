"""Tests for server/storage/postgres/migrations.py on a real PostgreSQL server: versions, a
database too new, nodes migrating at once, and the auth events its triggers write."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from server.storage import SchemaTooNew, Storage
from server.storage.postgres import LATEST, Database, migrate
from tests.support.postgres import PgCluster


@pytest.fixture
async def empty_url(pg_cluster: PgCluster) -> AsyncIterator[str]:
    """A database with no schema at all."""
    name = await pg_cluster.create_database(migrated=False)
    yield pg_cluster.url(name)
    await pg_cluster.drop_database(name)


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await conn.close()


async def test_an_empty_database_reaches_latest_once(empty_url: str) -> None:
    conn = await asyncpg.connect(empty_url)
    try:
        assert await migrate(conn) == LATEST
        assert await migrate(conn) == LATEST  # idempotent: nothing applied twice
        assert await conn.fetchval("SELECT count(*) FROM schema_version") == LATEST
    finally:
        await conn.close()
    assert {"users", "conversations", "messages", "summaries", "revoked_tokens", "api_keys",
            "usage_daily", "user_storage", "audit_log", "memories", "auth_events",
            "schema_version"} <= await _tables(empty_url)


async def test_nodes_starting_together_migrate_once(empty_url: str) -> None:
    conns = [await asyncpg.connect(empty_url) for _ in range(3)]
    try:
        versions = await asyncio.gather(*(migrate(c) for c in conns))
        assert versions == [LATEST] * 3
        assert await conns[0].fetchval("SELECT count(*) FROM schema_version") == LATEST
    finally:
        for conn in conns:
            await conn.close()


async def test_a_database_newer_than_the_program_refuses_to_open(empty_url: str) -> None:
    conn = await asyncpg.connect(empty_url)
    try:
        await migrate(conn)
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", LATEST + 1)
    finally:
        await conn.close()
    db = Database(empty_url)
    with pytest.raises(SchemaTooNew) as info:
        await db.open(migrate)
    assert "newer" in str(info.value) and str(LATEST + 1) in str(info.value)
    await db.close()


# --- auth events -----------------------------------------------------------------------------


@pytest.fixture
async def pg_store(on_postgres: str) -> AsyncIterator[Storage]:
    from server.storage.postgres import open_postgres

    store = await open_postgres(on_postgres, pool_size=2, busy_timeout_ms=5000,
                                connect_timeout_s=5, max_batch=64)
    yield store
    await store.close()


async def test_auth_changes_write_events_in_their_own_transaction(pg_store: Any) -> None:
    events = pg_store.auth_events
    user = (await pg_store.users.create("ev", "h"))["id"]
    other = (await pg_store.users.create("quiet", "h"))["id"]
    key = (await pg_store.keys.create(user, "k", "pfx1", "hash", None, None, None))["id"]
    assert await events.latest() == 0  # creating accounts and keys revokes nothing
    await pg_store.tokens.revoke("jti-1", int(time.time()) + 60, user)
    await pg_store.users.update(user, status="disabled")
    await pg_store.users.update(user, new_epoch=True)
    await pg_store.users.update(user, status="disabled")  # no change: no event
    await pg_store.account_settings.configure(other, {"theme": "dark"})  # not an auth change
    await pg_store.users.promote(["ev"])  # role and status change
    await pg_store.keys.delete(user, key)
    await pg_store.users.delete(other)
    got = [(e.user_id, e.jti, e.key_id) for e in await events.since(0, 100)]
    assert got == [(user, "jti-1", None), (user, None, None), (user, None, None),
                   (user, None, None), (user, None, key), (other, None, None)]
    all_events = await events.since(0, 100)
    assert [e.id for e in all_events] == sorted(e.id for e in all_events)
    assert await events.latest() == all_events[-1].id
    assert [e.id for e in await events.since(all_events[1].id, 2)] == \
        [e.id for e in all_events[2:4]]
    assert all(abs(e.at - time.time()) < 3600 for e in all_events)
    await pg_store.auth_events.prune(all_events[0].at)  # nothing older
    assert len(await events.since(0, 100)) == len(all_events)
    await pg_store.auth_events.prune(int(time.time()) + 10)
    assert await events.since(0, 100) == []
    await pg_store.users.update(user, new_epoch=True)
    assert (await events.since(0, 100))[0].id > all_events[-1].id  # ids never reused
