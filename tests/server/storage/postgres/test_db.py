"""Tests for server/storage/postgres/db.py on a real PostgreSQL server: batching, isolation of
one op's failure, locks held by another node, an unreachable server and its return."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from server.storage import Conflict, DatabaseBusy, DatabaseUnavailable, StorageError
from server.storage.postgres import Database, PostgresStorage, migrate
from tests.support import postgres
from tests.support.engines import require
from tests.support.postgres import PgCluster
from tests.support.procs import free_port


@pytest.fixture
async def make_db(on_postgres: str) -> AsyncIterator[Any]:
    """Open Databases on the test's (emptied) PostgreSQL database; close them all after."""
    opened: list[Database] = []

    async def make(**kw: Any) -> PostgresStorage:
        db = Database(on_postgres, **kw)
        await db.open(migrate)
        opened.append(db)
        return PostgresStorage(db)

    yield make
    for db in opened:
        await db.close()


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[PgCluster]:
    """A cluster of this module's own, to stop and start (the session's one is shared)."""
    require("PostgreSQL", str(postgres.PG_BIN / "postgres"))
    cluster = postgres.start_cluster()
    yield cluster
    cluster.destroy()


# --- the batching writer ---------------------------------------------------------------------


async def test_failing_write_does_not_spoil_its_batch(make_db: Any) -> None:
    store = await make_db()
    await store.users.create("bob", "hash")
    batches = store.stats.batches
    dup, good, also_good = await asyncio.gather(
        store.users.create("BOB", "hash"), store.users.create("carol", "hash"),
        store.audit.add(None, "x", "after.failure", None, None, {}), return_exceptions=True)
    assert store.stats.batches == batches + 1, "the three writes were not batched together"
    assert isinstance(dup, Conflict)
    assert not isinstance(good, BaseException) and good["username"] == "carol"
    assert not isinstance(also_good, BaseException)
    names = await store.db.read(lambda c: c.fetch("SELECT username FROM users ORDER BY id"))
    assert [r[0] for r in names] == ["bob", "carol"]
    assert (await store.audit.page(5, None))[0][0]["action"] == "after.failure"


async def test_op_raising_a_python_error_is_isolated(make_db: Any) -> None:
    store = await make_db()

    async def bad(conn: Any) -> None:
        await conn.execute("INSERT INTO users (username, password_hash, created_at) "
                           "VALUES ('half', 'h', 'now')")
        raise ValueError("op failed after writing")

    results = await asyncio.gather(store.db.write(bad), store.users.create("whole", "h"),
                                   return_exceptions=True)
    assert isinstance(results[0], ValueError)
    assert not isinstance(results[1], BaseException)
    names = await store.db.read(lambda c: c.fetch("SELECT username FROM users"))
    assert [r[0] for r in names] == ["whole"]  # the failed op's own insert was rolled back


async def test_an_op_alone_in_its_batch_that_fails_leaves_nothing(make_db: Any) -> None:
    store = await make_db()

    async def bad(conn: Any) -> None:
        await conn.execute("INSERT INTO users (username, password_hash, created_at) "
                           "VALUES ('alone', 'h', 'now')")
        raise ValueError("op failed after writing")

    batches = store.stats.batches
    with pytest.raises(ValueError, match="after writing"):
        await store.db.write(bad)
    assert store.stats.batches == batches + 1
    assert await store.users.credentials("alone") is None
    assert (await store.users.create("next", "h"))["username"] == "next"  # writer still fine


async def test_many_concurrent_writes_share_commits(make_db: Any) -> None:
    store = await make_db()
    writes, batches = store.stats.writes, store.stats.batches
    rows = await asyncio.gather(*(store.audit.add(None, "a", f"n{i}", None, None, {})
                                  for i in range(100)))
    assert store.stats.writes - writes == 100
    assert store.stats.batches - batches < 100
    assert len({r["id"] for r in rows}) == 100


async def test_max_batch_caps_a_transaction(make_db: Any) -> None:
    store = await make_db(max_batch=4)
    batches = store.stats.batches
    await asyncio.gather(*(store.audit.add(None, "a", "x", None, None, {}) for _ in range(20)))
    assert store.stats.batches - batches >= 5


async def test_a_batch_without_failures_runs_without_savepoints(make_db: Any) -> None:
    """One round trip an op: a batch whose ops all succeed is never replayed."""
    store = await make_db()
    await asyncio.gather(*(store.users.create(f"u{i}", "hash") for i in range(20)))
    assert store.stats.replays == 0
    dup = await asyncio.gather(store.users.create("u1", "hash"),
                               store.users.create("fresh", "hash"), return_exceptions=True)
    assert isinstance(dup[0], Conflict) and not isinstance(dup[1], BaseException)
    assert store.stats.replays == 1  # the batch with a failing op ran again op by op


async def test_an_op_that_loses_a_deadlock_to_another_node_runs_again(make_db: Any) -> None:
    """Two nodes' batches lock two users' rows in opposite orders: PostgreSQL kills one op
    (deadlock), which runs again in its node's next batch instead of failing its caller."""
    a, b = await make_db(), await make_db()
    one = (await a.users.create("one", "hash"))["id"]
    two = (await a.users.create("two", "hash"))["id"]
    locked = {"a": asyncio.Event(), "b": asyncio.Event()}

    def lock(first: int, then: int, me: str, other: str) -> Any:
        async def op(conn: Any) -> str:
            await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", first)
            locked[me].set()
            await asyncio.wait_for(locked[other].wait(), 10)
            await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", then)
            return me
        return op

    async def noop(conn: Any) -> None:  # company, so each op runs in its own savepoint
        await conn.execute("SELECT 1")

    results = await asyncio.gather(
        a.db.write(lock(one, two, "a", "b")), a.db.write(noop),
        b.db.write(lock(two, one, "b", "a")), b.db.write(noop))
    assert results[0] == "a" and results[2] == "b"
    # The loser ran again: its batch op by op (a batch first runs without savepoints), or
    # the op alone in the next batch (if it lost while running op by op).
    assert a.stats.replays + b.stats.replays + a.stats.retries + b.stats.retries >= 1


async def test_ops_ordered_by_user_never_deadlock_between_nodes(make_db: Any) -> None:
    """Two nodes queue writes to the same users' rows in opposite orders. Given their (user,
    conversation) order, each batch runs them in that order: one node waits for the other's
    commit, neither loses a deadlock. Without it (the control) they do lose."""
    a, b = await make_db(), await make_db()
    users = [(await a.users.create(f"u{i}", "hash"))["id"] for i in range(6)]

    def touch(user: int) -> Any:
        async def op(conn: Any) -> None:  # holds the row while the batch goes on
            await conn.execute("UPDATE users SET token_epoch = token_epoch + 1 WHERE id = $1",
                               user)
            await conn.execute("SELECT pg_sleep(0.02)")
        return op

    async def both(ordered: bool) -> int:
        before = sum(s.stats.retries + s.stats.replays for s in (a, b))
        await asyncio.gather(
            *(a.db.write(touch(u), (u, 0) if ordered else None) for u in users),
            *(b.db.write(touch(u), (u, 0) if ordered else None) for u in reversed(users)))
        return sum(s.stats.retries + s.stats.replays for s in (a, b)) - before

    assert await both(ordered=True) == 0
    assert await both(ordered=False) >= 1  # the same writes do collide without it


async def test_close_finishes_queued_writes(on_postgres: str) -> None:
    db = Database(on_postgres)
    await db.open(migrate)
    store = PostgresStorage(db)
    pending = [asyncio.ensure_future(store.users.create(f"u{i}", "h")) for i in range(10)]
    await asyncio.sleep(0)
    await db.close()
    await asyncio.gather(*pending)
    conn = await asyncpg.connect(on_postgres)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users") == 10
    finally:
        await conn.close()


# --- locks held by another node --------------------------------------------------------------


async def test_lock_held_past_busy_timeout_raises_database_busy(make_db: Any,
                                                                on_postgres: str) -> None:
    store = await make_db(busy_timeout_ms=200)
    user = await store.users.create("locked", "h")
    other = await asyncpg.connect(on_postgres)
    try:
        xact = other.transaction()
        await xact.start()
        await other.execute("SELECT 1 FROM user_storage WHERE user_id = $1 FOR UPDATE",
                            user["id"])
        with pytest.raises(DatabaseBusy):  # the memories cap takes the same per-user lock
            await asyncio.wait_for(store.memories.add(user["id"], "m", 10), timeout=10)
        # Reads are not blocked by another session's row lock.
        assert await store.memories.all(user["id"]) == []
        await xact.rollback()
    finally:
        await other.close()
    assert (await store.memories.add(user["id"], "m", 10))["content"] == "m"


# --- an unreachable server -------------------------------------------------------------------


async def test_unreachable_at_open_is_one_clear_error_without_the_password(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://chat:s3cret-word@127.0.0.1:{free_port()}/chatgate"
    db = Database(url, connect_timeout_s=2)
    with pytest.raises(DatabaseUnavailable) as info:
        await db.open(migrate)
    message = str(info.value)
    assert "127.0.0.1" in message and "/chatgate" in message
    assert "s3cret" not in message and "s3cret" not in caplog.text
    assert info.value.__cause__ is None and info.value.__context__ is not None  # suppressed


async def test_no_connection_left_on_the_server_is_unavailable_not_a_crash(
        on_postgres: str) -> None:
    # A role allowed one connection (superusers would not be held to it): the writer holds
    # it, so a read finds no connection left.
    role = f"one_conn_{free_port()}"
    admin = await asyncpg.connect(on_postgres)
    try:
        await admin.execute(
            f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1; "
            f"GRANT ALL ON SCHEMA public TO {role}; "
            f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}; "
            f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    finally:
        await admin.close()
    db = Database(on_postgres.replace("postgres@", f"{role}@"), pool_size=2)
    await db.open(migrate)
    try:
        with pytest.raises(DatabaseUnavailable):
            await PostgresStorage(db).users.get(1)
        assert (await PostgresStorage(db).users.create("writer", "h"))["username"] == "writer"
    finally:
        await db.close()


async def test_a_restarted_server_fails_requests_then_serves_again(
        own_cluster: PgCluster) -> None:
    name = await own_cluster.create_database()
    db = Database(own_cluster.url(name), connect_timeout_s=2)
    await db.open(migrate)
    store = PostgresStorage(db)
    try:
        user = await store.users.create("before", "h")
        await asyncio.to_thread(own_cluster.stop)
        with pytest.raises(DatabaseUnavailable):
            await store.users.get(user["id"])
        with pytest.raises(DatabaseUnavailable):
            await store.users.create("during", "h")
        own_cluster.start()  # from the main thread: the server dies with it (see start)
        # The same Database, no reopening: pooled and writer connections are replaced.
        assert (await store.users.get(user["id"])) == user
        assert (await store.users.create("after", "h"))["username"] == "after"
        assert await store.users.credentials("during") is None
    finally:
        await db.close()


async def test_a_closing_database_refuses_new_writes(on_postgres: str) -> None:
    db = Database(on_postgres)
    await db.open(migrate)
    await db.close()
    with pytest.raises(StorageError):
        await PostgresStorage(db).users.create("late", "h")
