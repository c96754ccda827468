"""SQLite connections: one batching writer and a small pool of readers, all on aiosqlite threads."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from ..base import StorageStats
from ..errors import DatabaseBusy, StorageError

T = TypeVar("T")
SyncOp = Callable[[sqlite3.Connection], T]
log = logging.getLogger(__name__)
CHECKPOINT_S = 1.0  # how often the WAL is copied back into the database
# Files SQLite keeps beside the database; it creates them with the database file's mode.
_COMPANIONS = ("", "-wal", "-shm", "-journal")


def make_private(path: str) -> None:
    """Owner-only access to what holds password hashes and every chat: a new folder 0700,
    the database 0600 before SQLite first opens it, and existing files chmod 0600."""
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # an existing one is kept
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in _COMPANIONS:
        try:
            os.chmod(path + suffix, 0o600)
        except FileNotFoundError:
            pass
        except OSError as err:  # e.g. owned by another user: say so, start anyway
            log.warning("cannot make %s private (mode 0600): %s", path + suffix, err)


async def _run(conn: aiosqlite.Connection, op: SyncOp[T]) -> T:
    """Run a synchronous function on the connection's own thread.

    aiosqlite implements every method this way; running a whole read or a whole
    batch in one hop instead of one hop per statement is what makes batching pay.
    """
    return cast(T, await conn._execute(op, conn._conn))  # type: ignore[no-untyped-call]  # noqa: SLF001


async def _open(path: str, busy_timeout_ms: int, synchronous: str) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    conn.row_factory = sqlite3.Row
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA foreign_keys=ON")
    await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    await conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


class Database:
    """Owns the connections; `write` batches many callers' ops into one transaction."""

    def __init__(self, path: str, *, readers: int = 3, busy_timeout_ms: int = 5000,
                 synchronous: str = "NORMAL", max_batch: int = 512) -> None:
        self.path = path
        self.stats = StorageStats()
        self._readers_n = readers
        self._busy_ms = busy_timeout_ms
        self._sync = synchronous
        self._max_batch = max_batch
        self._writer: aiosqlite.Connection | None = None
        self._idle: asyncio.LifoQueue[aiosqlite.Connection] = asyncio.LifoQueue()
        self._all_readers: list[aiosqlite.Connection] = []
        self._pending: deque[tuple[SyncOp[object], asyncio.Future[object]]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoints: asyncio.Task[None] | None = None

    async def open(self, migrate: Callable[[sqlite3.Connection], object]) -> None:
        """Open the file, migrate the schema, start the writer task and the readers."""
        if self.path not in (":memory:", ""):
            await asyncio.to_thread(make_private, self.path)
        try:
            self._writer = await _open(self.path, self._busy_ms, self._sync)
            await _run(self._writer, migrate)
            if self.path != ":memory:":
                # Checkpoints move off the writer: a commit never stops to copy the WAL back.
                await self._writer.execute("PRAGMA wal_autocheckpoint=0")
                self._checkpointer = await _open(self.path, self._busy_ms, self._sync)
            for _ in range(self._readers_n):
                conn = await _open(self.path, self._busy_ms, self._sync)
                self._all_readers.append(conn)
                await conn.execute("PRAGMA query_only=ON")
                self._idle.put_nowait(conn)
        except BaseException:
            await self._close_connections()  # no thread may outlive a failed start
            raise
        self._task = asyncio.create_task(self._write_loop(), name="db-writer")
        if self._checkpointer is not None:
            self._checkpoints = asyncio.create_task(self._checkpoint_loop(self._checkpointer),
                                                    name="db-checkpoint")

    async def close(self) -> None:
        """Finish every queued write, then close all connections."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            await asyncio.gather(self._checkpoints, return_exceptions=True)
        await self._close_connections()

    async def _checkpoint_loop(self, conn: aiosqlite.Connection) -> None:
        """Copy the WAL back into the database every second, on a connection of its own;
        PASSIVE never waits for (or blocks) the writer or the readers."""
        while True:
            await asyncio.sleep(CHECKPOINT_S)
            try:
                await _run(conn, lambda c: c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
            except sqlite3.Error as err:  # busy or locked: the next round catches up
                log.debug("checkpoint skipped: %s", err)

    async def _close_connections(self) -> None:
        if self._checkpointer is not None:
            await _run(self._checkpointer,
                       lambda c: c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
            await self._checkpointer.close()
            self._checkpointer = None
        for conn in self._all_readers:
            await conn.close()
        self._all_readers = []
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    async def read(self, op: SyncOp[T]) -> T:
        """Run a read-only function on an idle reader connection."""
        self.stats.reads += 1
        async with self._reader() as conn:
            try:
                return await _run(conn, op)
            except sqlite3.OperationalError as err:
                raise _translate(err) from err

    async def write(self, op: SyncOp[T]) -> T:
        """Queue a write; resolves once the transaction holding it has committed."""
        if self._closing:
            raise StorageError("the database is closing")
        self.stats.writes += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        self._wake.set()
        return cast(T, await asyncio.shield(fut))

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = await self._idle.get()
        try:
            yield conn
        finally:
            self._idle.put_nowait(conn)

    async def _write_loop(self) -> None:
        assert self._writer is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [self._pending.popleft()
                         for _ in range(min(self._max_batch, len(self._pending)))]
                await self._commit_batch(batch)
            if self._closing and not self._pending:
                return

    async def _commit_batch(self,
                            batch: list[tuple[SyncOp[object], asyncio.Future[object]]]) -> None:
        assert self._writer is not None
        self.stats.batches += 1
        ops = [op for op, _ in batch]
        try:
            outcomes = await _run(self._writer, lambda conn: _apply(conn, ops))
        except BaseException as err:  # the commit itself failed: nobody's rows are in
            error = _translate(err) if isinstance(err, sqlite3.Error) else err
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)
            if not isinstance(err, Exception):
                raise
            log.warning("write batch of %d failed: %s", len(batch), err)
            return
        for (_, fut), (ok, value) in zip(batch, outcomes, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)  # type: ignore[arg-type]


def _apply(conn: sqlite3.Connection, ops: list[SyncOp[object]]) -> list[tuple[bool, object]]:
    """One transaction; each op in a savepoint so one failing op spoils no other."""
    outcomes: list[tuple[bool, object]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            conn.execute("SAVEPOINT op")
            try:
                outcomes.append((True, op(conn)))
            except Exception as err:  # noqa: BLE001 - handed to that op's caller
                conn.execute("ROLLBACK TO op")
                outcomes.append((False, _translate(err) if isinstance(err, sqlite3.Error) else err))
            conn.execute("RELEASE op")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _translate(err: BaseException) -> BaseException:
    """Map SQLite's lock errors to DatabaseBusy; keep others as they are."""
    if isinstance(err, sqlite3.OperationalError) and "locked" in str(err).lower():
        return DatabaseBusy("the database is busy, try again")
    return err
