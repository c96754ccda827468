"""An account disabled or deleted elsewhere has its jobs stopped here (server/services/
account_jobs.py): on a real SQLite file; on PostgreSQL while a read is refused; and across two
app nodes on one real PostgreSQL database with no Redis, where the database poll alone carries
the change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from server.runner import Running, start
from server.services.account_jobs import AccountJobs
from server.storage.postgres import open_postgres
from server.storage.sqlite import open_sqlite
from tests.support.admin import call
from tests.support.app import make_config
from tests.support.pair import (
    blocked,
    ending,
    reply_stored,
    slow_replies,
    streaming,
    until,
    user_on,
)
from vllm_sim import SimServer
from workers.errors import WorkerError

POLL_S = 0.25  # auth.revocation_poll_s of the nodes below


async def test_the_account_as_stored_decides_not_the_order_changes_are_heard_in(
        tmp_path: Path) -> None:
    storage = await open_sqlite(str(tmp_path / "jobs.db"), readers=1, busy_timeout_ms=5000,
                                synchronous="NORMAL", max_batch=64)
    stops: list[tuple[int, str, bool]] = []
    unblocks: list[int] = []

    def stop(user_id: int, error: WorkerError, block: bool) -> int:
        stops.append((user_id, str(error), block))
        return 1

    jobs = AccountJobs(storage.users, stop, unblocks.append)
    try:
        ann = (await storage.users.create("ann", "hash"))["id"]
        bob = (await storage.users.create("bob", "hash"))["id"]
        await storage.users.update(ann, status="disabled")
        jobs.changed(ann)
        jobs.changed(ann, key_id=7)  # a deleted key stops nothing
        await until(lambda: stops)
        assert stops == [(ann, "the account was disabled by an administrator", True)]

        await storage.users.update(ann, status="active")
        jobs.changed(ann)
        await until(lambda: unblocks)
        assert unblocks == [ann]
        jobs.changed(ann)  # the disable heard again (the poll re-reads recent events)
        await until(lambda: len(unblocks) == 2)
        assert len(stops) == 1  # the account is active: nothing stops

        await storage.users.delete(bob)
        jobs.changed(bob)
        await until(lambda: len(stops) == 2)
        assert stops[1] == (bob, "the account was deleted", True)
    finally:
        await jobs.close()
        await storage.close()


async def test_a_read_the_database_refuses_is_tried_again_until_it_answers(
        on_postgres: str) -> None:
    storage = await open_postgres(on_postgres, pool_size=2, busy_timeout_ms=100,
                                  connect_timeout_s=5, max_batch=64)
    stops: list[int] = []

    def stop(user_id: int, error: WorkerError, block: bool) -> int:
        stops.append(user_id)
        return 1

    jobs = AccountJobs(storage.users, stop, lambda user_id: None, retry_s=0.05,
                       max_retry_s=0.2)
    other = await asyncpg.connect(on_postgres)
    try:
        ann = (await storage.users.create("ann", "hash"))["id"]
        await storage.users.update(ann, status="disabled")
        xact = other.transaction()
        await xact.start()
        await other.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")  # reads wait, fail
        jobs.changed(ann)
        await until(lambda: jobs.reads >= 3)
        assert stops == []
        await xact.commit()
        await until(lambda: stops == [ann])
    finally:
        await other.close()
        await jobs.close()
        await storage.close()


@pytest.fixture
async def nodes(tmp_path: Path, simulator: SimServer,
                on_postgres: str) -> AsyncIterator[tuple[Running, Running]]:
    """Two app nodes on one PostgreSQL database and no Redis: each polls the auth events."""
    config = make_config(tmp_path, simulator.url, auth={"revocation_poll_s": POLL_S})
    a = await start(config)
    b = await start(config)
    yield a, b
    await b.stop()
    await a.stop()


async def test_without_redis_a_user_disabled_on_a_has_their_reply_on_b_stopped_within_a_poll(
        nodes: tuple[Running, Running], simulator: SimServer) -> None:
    a, b = nodes
    admin, user = await user_on(a), await user_on(a)  # the first account is the admin
    await slow_replies(simulator, True)
    async with aiohttp.ClientSession(b.url) as s:
        resp, conversation = await streaming(s, user)
        since = time.monotonic()
        assert (await call(a, admin, "POST", f"/api/admin/users/{user.id}/disable"))[0] == 200
        name, data = await asyncio.wait_for(ending(resp), 10.0)
        took = time.monotonic() - since
        resp.close()
    print(f"disabled on a, no Redis: the reply on b stopped after {took * 1000:.1f} ms "
          f"(poll every {POLL_S * 1000:.0f} ms)")
    assert (name, data["error"]["code"]) == ("error", "cancelled"), (name, data)
    assert took < POLL_S + 1.0  # a poll, then one read of the account
    assert await reply_stored(b, conversation) == "incomplete"
    assert blocked(b, user.id)

    await slow_replies(simulator, False)
    assert (await call(a, admin, "POST", f"/api/admin/users/{user.id}/enable"))[0] == 200
    await until(lambda: not blocked(b, user.id))
