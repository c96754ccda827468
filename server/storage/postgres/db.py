"""PostgreSQL connections: one batching writer and a pool of readers, all through asyncpg.

Ops are coroutine functions taking an asyncpg connection (`Any` at this edge: asyncpg is
untyped). `write` queues an op; the writer runs every queued op in one transaction, each in
its own savepoint (when it has company), so concurrent turns share one commit and one failing
op spoils no other.
An unreachable server fails the ops with DatabaseUnavailable; nothing is cached about it, so
the next request reconnects by itself once PostgreSQL is back.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import asyncpg

from ..base import StorageStats
from ..errors import DatabaseBusy, DatabaseUnavailable, StorageError
from ..urls import password_of, where

T = TypeVar("T")
Op = Callable[[Any], Awaitable[T]]  # an asyncpg connection in, a result out
log = logging.getLogger(__name__)

# SQLSTATEs of a busy database: a lock not granted within lock_timeout, a deadlock or a
# serialization conflict with another node's transaction, a statement cancelled on timeout.
_BUSY = frozenset({"55P03", "40P01", "40001", "57014"})
# Classes of a database that cannot serve now: 08 connection, 53 insufficient resources (disk
# full, too many connections), 57P01-57P03 shutdown or start-up, 58 system errors.
_DOWN_CLASSES = ("08", "53", "58")
_DOWN = frozenset({"57P01", "57P02", "57P03"})
# A deadlock or serialization conflict with another node's batch: nothing of the op stayed (its
# savepoint rolled back), so it runs again in the next batch, after this one committed and let
# go of its locks. Several nodes' batches lock different users' rows in different orders, which
# no lock ordering inside one batch can prevent.
# The writer waits at most _STEP_MS for a row lock (lock_timeout), then its op runs again in
# the next batch, up to busy_timeout_ms in all: two writers whose batches lock rows in opposite
# orders would otherwise both wait for PostgreSQL's deadlock check (deadlock_timeout, 1 s by
# default, only a superuser may lower it), and every write of both nodes with them.
_STEP_MS = 100
_CONFLICT = frozenset({"40P01", "40001", "55P03"})
# A batch's users' counters, locked in user order (the lock is taken above the sort), waiting
# up to busy_timeout_ms: a writer that holds nothing yet can be in no deadlock. One round
# trip (three statements: the simple protocol has no parameters, so the ids, ints, are
# written in).
_LOCK_USERS = ("SET LOCAL lock_timeout = {wait}; SELECT 1 FROM user_storage WHERE user_id "
               "= ANY('{{{users}}}'::bigint[]) ORDER BY user_id FOR UPDATE; "
               "SET LOCAL lock_timeout = {step}")


class _Conflicted(Exception):
    """An op that lost a deadlock or serialization conflict (to run again)."""


def translate(err: BaseException) -> BaseException:
    """Map a driver error to DatabaseBusy or DatabaseUnavailable; keep others as they are."""
    if isinstance(err, StorageError):
        return err
    state = getattr(err, "sqlstate", None)
    if isinstance(state, str):
        if state in _BUSY:
            return DatabaseBusy("the database is busy, try again")
        if state in _DOWN or state.startswith(_DOWN_CLASSES):
            return DatabaseUnavailable("the database is unavailable, try again shortly")
    if isinstance(err, (OSError, TimeoutError, asyncpg.InterfaceError,
                        asyncpg.exceptions.ConnectionDoesNotExistError)):
        return DatabaseUnavailable("the database is unavailable, try again shortly")
    return err


def _reason(err: BaseException, url: str) -> str:
    """What went wrong, in the driver's words, with the URL and its password blanked out in
    case they quote it."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    for hidden in (url, password_of(url)):
        if hidden:
            text = text.replace(hidden, "***")
    return text


def lost(err: BaseException) -> bool:
    """Whether the error means the connection itself is gone (the batch cannot go on)."""
    return isinstance(translate(err), DatabaseUnavailable)


class Database:
    """Owns the pool and the writer connection; `write` batches many callers' ops."""

    def __init__(self, url: str, *, pool_size: int = 10, busy_timeout_ms: int = 5000,
                 connect_timeout_s: float = 5.0, max_batch: int = 512) -> None:
        self._url = url  # may carry a password: never logged
        self.stats = StorageStats()
        self._pool_size = pool_size
        self._busy_ms = busy_timeout_ms
        self._connect_s = connect_timeout_s
        self._max_batch = max_batch
        self._pool: Any = None
        self._writer: Any = None
        self._pending: deque[tuple[Op[object], asyncio.Future[object]]] = deque()
        self._order: dict[asyncio.Future[object], tuple[int, int]] = {}  # see write()
        self._tries: dict[asyncio.Future[object], int] = {}  # ops that lost a conflict
        self._retries = max(5, busy_timeout_ms // _STEP_MS)
        self._pause = 0.0  # before the next batch, after an op lost a conflict
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def _settings(self) -> dict[str, str]:
        # A lock held by another node is waited for this long, then DatabaseBusy (503).
        return {"lock_timeout": str(int(self._busy_ms)), "application_name": "chatgate"}

    async def open(self, migrate: Callable[[Any], Awaitable[object]]) -> None:
        """Connect, migrate the schema, open the readers' pool and start the writer task."""
        try:
            self._writer = await self._connect()
            await migrate(self._writer)  # may wait for another node's migration: the full wait
            await self._writer.execute(f"SET lock_timeout = {min(_STEP_MS, self._busy_ms)}")
            self._pool = await asyncpg.create_pool(
                # No floor: asyncpg would retry it in the background while the server is
                # down, logging a traceback each time; connections open on demand instead.
                self._url, min_size=0, max_size=self._pool_size, timeout=self._connect_s,
                server_settings=self._settings())
        except BaseException as err:
            await self._close_connections()
            if isinstance(err, StorageError) or not isinstance(err, Exception):
                raise
            # One line for the operator: where (never the password) and why.
            kind = DatabaseUnavailable if lost(err) else StorageError
            raise kind(f"cannot open the PostgreSQL database {where(self._url)}: "
                       f"{_reason(err, self._url)}") from None
        self._task = asyncio.create_task(self._write_loop(), name="pg-writer")

    async def _connect(self) -> Any:
        return await asyncpg.connect(self._url, timeout=self._connect_s,
                                     server_settings=self._settings())

    async def close(self) -> None:
        """Finish every queued write, then close all connections."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._writer is not None:
            self._writer.terminate()  # no transaction is open between batches
            self._writer = None

    async def read(self, op: Op[T]) -> T:
        """Run a read-only function on a pooled connection."""
        self.stats.reads += 1
        for attempt in (1, 2):
            used = False
            try:
                # Waits for a free connection like SQLite's readers do; opening one is bounded
                # by connect_timeout_s (the pool's connect timeout).
                async with self._pool.acquire() as conn:
                    used = True
                    return await op(conn)
            except Exception as err:
                # A pooled connection the server dropped (a restart) fails once: reads are
                # safe to run again, on a fresh connection. A failed connect is not retried.
                if attempt == 1 and used and lost(err) and self._pool is not None:
                    continue
                mapped = _mapped(err)
                if mapped is err:
                    raise
                raise mapped from err
        raise AssertionError("unreachable")

    async def write(self, op: Op[T], order: tuple[int, int] | None = None) -> T:
        """Queue a write; resolves once the transaction holding it has committed. `order`:
        the (user, conversation) whose rows it locks; a batch runs its ops in that order
        (the others after them, as they came), so every node's writer takes the rows of
        several users in the same order: they may wait on each other, never deadlock."""
        if self._closing:
            raise StorageError("the database is closing")
        self.stats.writes += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if order is not None:
            self._order[fut] = order
        self._pending.append((op, fut))
        self._wake.set()
        return cast(T, await asyncio.shield(fut))

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if self._pause:
                    await asyncio.sleep(self._pause)
                    self._pause = 0.0
                batch = [self._pending.popleft()
                         for _ in range(min(self._max_batch, len(self._pending)))]
                batch.sort(key=self._key)  # stable: one user's ops keep their order
                await self._commit_batch(batch)
            if self._closing and not self._pending:
                return

    def _key(self, item: tuple[Op[object], asyncio.Future[object]]) -> tuple[bool, int, int]:
        order = self._order.get(item[1])
        return (False, *order) if order is not None else (True, 0, 0)

    async def _commit_batch(self, batch: list[tuple[Op[object], asyncio.Future[object]]]
                            ) -> None:
        self.stats.batches += 1
        ops = [op for op, _ in batch]
        users = sorted({order[0] for _, fut in batch if (order := self._order.get(fut))})
        try:
            conn, xact = await self._begin(users)
            if conn is None:  # another node's batch held those users' rows too long
                self._again(batch)
                return
            # Most batches fail nowhere: run them without savepoints (one round trip an op, not
            # three); if one op fails, the whole try is rolled back and the batch runs again
            # with a savepoint per op, so the failure spoils no other op.
            outcomes = await _apply_plain(conn, xact, ops) if len(ops) > 1 else None
            if outcomes is None:
                if len(ops) > 1:
                    self.stats.replays += 1
                    conn, xact = await self._begin(users)
                    if conn is None:
                        self._again(batch)
                        return
                outcomes = await _apply(conn, xact, ops)
        except BaseException as err:  # the commit itself failed: nobody's rows are in
            error = _mapped(err) if isinstance(err, Exception) else err
            if isinstance(error, DatabaseUnavailable) and self._writer is not None:
                self._writer.terminate()  # reconnect for the next batch
                self._writer = None
            for _, fut in batch:
                self._order.pop(fut, None)
                self._tries.pop(fut, None)
                if not fut.done():
                    fut.set_exception(error)
            if not isinstance(err, Exception):
                raise
            log.warning("write batch of %d failed: %s", len(batch), error)
            return
        again: list[tuple[Op[object], asyncio.Future[object]]] = []
        for (op, fut), (ok, value) in zip(batch, outcomes, strict=True):
            tries = self._tries.pop(fut, 0)
            order = self._order.pop(fut, None)
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            elif isinstance(value, _Conflicted) and tries < self._retries:
                self._tries[fut] = tries + 1
                if order is not None:
                    self._order[fut] = order
                again.append((op, fut))
            else:
                error = cast(BaseException, value)
                fut.set_exception(DatabaseBusy("the database is busy, try again")
                                  if isinstance(error, _Conflicted) else error)
        if again:
            self.stats.retries += len(again)
            self._pending.extendleft(reversed(again))  # first in the next batch
            # ...after a random pause: two writers that lost to each other at once would
            # otherwise meet again the same way, batch after batch.
            self._pause = random.uniform(0, _STEP_MS / 1000)

    def _again(self, batch: list[tuple[Op[object], asyncio.Future[object]]]) -> None:
        """The whole batch runs again, first in the next one (each op counted as a try)."""
        again = []
        for op, fut in batch:
            tries = self._tries.pop(fut, 0)
            if fut.done():
                self._order.pop(fut, None)
            elif tries < self._retries:
                self._tries[fut] = tries + 1
                again.append((op, fut))
            else:
                self._order.pop(fut, None)
                fut.set_exception(DatabaseBusy("the database is busy, try again"))
        self.stats.retries += len(again)
        self._pending.extendleft(reversed(again))
        self._pause = random.uniform(0, _STEP_MS / 1000)

    async def _begin(self, users: Sequence[int] = ()) -> tuple[Any, Any]:
        """The writer's connection in a new transaction, with the counters of the batch's
        `users` locked first, in user order (None, None: another writer held them past
        lock_timeout). Every op of a user locks its counters (the message triggers count
        the user's characters): taken first and in one order by every node's writer, they
        make two writers wait for each other, never deadlock. A connection the server
        dropped since the last batch (nothing sent on it yet) is replaced once."""
        conn, xact = await self._transaction()
        if users:
            try:
                await conn.execute(_LOCK_USERS.format(
                    wait=int(self._busy_ms), step=min(_STEP_MS, int(self._busy_ms)),
                    users=",".join(str(int(user)) for user in users)))
            except Exception as err:
                if getattr(err, "sqlstate", None) not in _CONFLICT:
                    await _abandon(conn, xact)
                    raise
                await _abandon(conn, xact)
                return None, None
        return conn, xact

    async def _transaction(self) -> tuple[Any, Any]:
        """The writer's connection in a new transaction (see _begin)."""
        for attempt in (1, 2):
            if self._writer is None or self._writer.is_closed():
                self._writer = None
                self._writer = await self._connect()
                await self._writer.execute(
                    f"SET lock_timeout = {min(_STEP_MS, self._busy_ms)}")
            try:
                xact = self._writer.transaction()
                await xact.start()
                return self._writer, xact
            except Exception as err:
                if attempt == 2 or not lost(err):
                    raise
                self._writer.terminate()
                self._writer = None
        raise AssertionError("unreachable")


async def _apply_plain(conn: Any, xact: Any, ops: list[Op[object]]
                       ) -> list[tuple[bool, object]] | None:
    """The rest of the transaction `_begin` opened, every op without a savepoint, committed;
    None (rolled back, nothing of it kept) if an op failed."""
    values: list[object] = []
    try:
        for op in ops:
            values.append(await op(conn))
    except Exception as err:
        if lost(err):
            raise  # the connection is gone: the whole batch fails
        await xact.rollback()
        return None
    except BaseException:
        await _abandon(conn, xact)
        raise
    await xact.commit()
    return [(True, value) for value in values]


async def _apply(conn: Any, xact: Any, ops: list[Op[object]]) -> list[tuple[bool, object]]:
    """The rest of the transaction `_begin` opened; each op in a savepoint so one failing op
    spoils no other (an op alone needs none: two round trips fewer when the load is light)."""
    outcomes: list[tuple[bool, object]] = []
    alone = len(ops) == 1
    try:
        for op in ops:
            try:
                if alone:
                    value = await op(conn)
                else:
                    async with conn.transaction():  # nested: a savepoint
                        value = await op(conn)
            except Exception as err:
                if lost(err):
                    raise  # the connection is gone: the whole batch fails
                conflict = getattr(err, "sqlstate", None) in _CONFLICT
                outcomes.append((False, _Conflicted() if conflict else translate(err)))
            else:
                outcomes.append((True, value))
        if alone and not outcomes[0][0]:
            await xact.rollback()  # its only op failed: nothing of it may stay
        else:
            await xact.commit()
    except BaseException:
        await _abandon(conn, xact)
        raise
    return outcomes


async def _abandon(conn: Any, xact: Any) -> None:
    """Roll back a transaction that an error cut short (or drop a connection that cannot)."""
    if not conn.is_closed():
        try:
            await xact.rollback()
        except Exception:  # noqa: BLE001 - the connection is replaced for the next batch
            conn.terminate()


def _mapped(err: Exception) -> Exception:
    """The storage error for a driver error, without the driver's text where it may quote the
    connection string."""
    mapped = translate(err)
    return mapped if isinstance(mapped, Exception) else err
