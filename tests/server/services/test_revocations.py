"""The revocation poller on a real SQLite file: what another process wrote reaches `forget`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from server.services.revocations import RevocationPoller
from server.storage.sqlite import open_sqlite

Forgotten = list[tuple[int, str | None, int | None]]


async def test_the_poller_forgets_what_another_connection_revoked(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    here = await open_sqlite(path, readers=1, busy_timeout_ms=5000, synchronous="NORMAL",
                             max_batch=64)
    there = await open_sqlite(path, readers=1, busy_timeout_ms=5000, synchronous="NORMAL",
                              max_batch=64)  # another process's storage on the same file
    forgotten: Forgotten = []
    try:
        ann = await there.users.create("ann", "hash")
        await there.tokens.revoke("before-start", int(time.time()) + 60, ann["id"])
        poller = RevocationPoller(here.auth_events, lambda *e: forgotten.append(e), 0.05, 600)
        await poller.start()  # begins after what is there: its caches hold nothing older
        await there.tokens.revoke("jti-1", int(time.time()) + 60, ann["id"])
        key = await there.keys.create(ann["id"], "k", "c" * 12, "hash", None, None, None)
        await there.keys.delete(ann["id"], key["id"])
        await there.users.update(ann["id"], status="disabled")
        assert await poller.poll() == 3
        assert forgotten == [(ann["id"], "jti-1", None), (ann["id"], None, key["id"]),
                             (ann["id"], None, None)]
        assert await poller.poll() == 0  # re-read within the lookback, nothing new

        running = asyncio.create_task(poller.run())
        try:
            await there.users.update(ann["id"], status="active")
            deadline = time.monotonic() + 5
            while poller.seen < 4:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
        finally:
            running.cancel()
    finally:
        await here.close()
        await there.close()


async def test_a_burst_larger_than_one_read_is_read_whole(tmp_path: Path) -> None:
    storage = await open_sqlite(str(tmp_path / "burst.db"), readers=1, busy_timeout_ms=5000,
                                synchronous="NORMAL", max_batch=2048)
    forgotten: Forgotten = []
    try:
        ann = await storage.users.create("ann", "hash")
        poller = RevocationPoller(storage.auth_events, lambda *e: forgotten.append(e), 1, 600)
        await poller.start()
        expires = int(time.time()) + 60
        await asyncio.gather(*(storage.tokens.revoke(f"j{i}", expires, ann["id"])
                               for i in range(1200)))
        assert await poller.poll() == 1200
        assert {jti for _, jti, _ in forgotten} == {f"j{i}" for i in range(1200)}
    finally:
        await storage.close()


async def test_old_events_are_pruned(tmp_path: Path) -> None:
    storage = await open_sqlite(str(tmp_path / "prune.db"), readers=1, busy_timeout_ms=5000,
                                synchronous="NORMAL", max_batch=64)
    try:
        ann = await storage.users.create("ann", "hash")
        await storage.tokens.revoke("old", int(time.time()) + 60, ann["id"])
        await storage.db.write(lambda c: c.execute("UPDATE auth_events SET at = at - 1000"))
        await storage.tokens.revoke("new", int(time.time()) + 60, ann["id"])
        await RevocationPoller(storage.auth_events, lambda *e: None, 1, 360).prune()
        assert [e.jti for e in await storage.auth_events.since(0, 10)] == ["new"]
    finally:
        await storage.close()
