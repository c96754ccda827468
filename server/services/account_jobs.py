"""A disabled or deleted account's jobs stop in every process and on every node, as on the one
where it happened: told that another process or node changed a user (an auth event polled
from the database, or a Redis message), this process reads the account and acts on what it
finds, as the local admin path does: disabled or gone, the user's queued and running jobs
here stop and new ones are refused; active again, they are taken again. A logout or a new
password stops nothing: the account is still active."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from workers.errors import JobCancelled, WorkerError

from ..logthrottle import Throttle
from ..storage import StorageError, UserStore

log = logging.getLogger(__name__)

# WorkerPool.cancel_owner(user, error, block) and WorkerPool.unblock_owner(user).
Stop = Callable[[int, WorkerError, bool], int]
Unblock = Callable[[int], None]


class AccountJobs:
    """Acts on other processes' and nodes' changes of an account (TokenService.also_forget
    calls `changed`).

    The change itself is not trusted, the database is: the account is read after it was
    heard of, so two changes heard out of order (one by pub/sub, one by the poll, which also
    reads some events twice) still end in the account's present state. One read at a time a
    user; a change heard while it is under way reads again, and only the last read acts.
    """

    def __init__(self, users: UserStore, stop: Stop, unblock: Unblock,
                 retry_s: float = 0.5, max_retry_s: float = 30.0) -> None:
        self._users = users
        self._stop = stop
        self._unblock = unblock
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._heard: dict[int, int] = {}  # user -> changes heard while a read is under way
        self._reading: dict[int, asyncio.Task[None]] = {}
        self._failed = Throttle(60.0)
        self._closed = False
        self.reads = 0
        self.stopped = 0  # jobs stopped here for a change made elsewhere

    @property
    def busy(self) -> bool:
        """Whether an account is being read (a change heard and not yet acted on)."""
        return bool(self._reading)

    def changed(self, user_id: int, key_id: int | None = None) -> None:
        """Another process or node changed this user (`key_id`: only deleted one of their
        keys, which stops nothing). Returns at once."""
        if key_id is not None or self._closed:
            return
        self._heard[user_id] = self._heard.get(user_id, 0) + 1
        if user_id not in self._reading:
            self._reading[user_id] = asyncio.create_task(self._settle(user_id),
                                                         name=f"account-jobs-{user_id}")

    async def close(self) -> None:
        """Stop reading (at shutdown, before the pool stops)."""
        self._closed = True
        tasks = list(self._reading.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _settle(self, user_id: int) -> None:
        """Read the account until no change came during the read, then act on it."""
        try:
            wait = self._retry_s
            while True:
                heard = self._heard[user_id]
                try:
                    self.reads += 1
                    user = await self._users.get(user_id)
                except StorageError as err:
                    # The database is down or busy: read again until it answers (the change
                    # is not heard twice once the poll's look-back has passed it).
                    self._log_failure(user_id, err, wait)
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, self._max_retry_s)
                    continue
                if self._heard[user_id] == heard:
                    status = None if user is None else user.get("status", "active")
                    self._act(user_id, status)
                    return
        finally:
            self._reading.pop(user_id, None)
            self._heard.pop(user_id, None)

    def _act(self, user_id: int, status: str | None) -> None:
        """What the local admin path does for this status (None: the account is gone)."""
        if status is None or status == "disabled":
            what = "deleted" if status is None else "disabled by an administrator"
            stopped = self._stop(user_id, JobCancelled(f"the account was {what}"), True)
            self.stopped += stopped
            if stopped:
                log.info("stopped %d job(s) of user %d: the account was %s elsewhere",
                         stopped, user_id, "deleted" if status is None else "disabled")
        else:
            self._unblock(user_id)

    def _log_failure(self, user_id: int, err: StorageError, wait: float) -> None:
        held = self._failed.allow()
        if held is not None:
            log.warning("could not read user %d after a change elsewhere (%s); trying again in "
                        "%g s, their jobs here run on meanwhile%s", user_id, err, wait,
                        f" ({held} more failures not logged)" if held else "")
