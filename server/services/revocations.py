"""Revocations from other processes and nodes: each process reads the auth events the database
wrote (a revoked token, a deleted key, a changed or deleted user) and drops what they name
from its caches of verified credentials, so they are refused here within one poll."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from ..logthrottle import Throttle
from ..storage import AuthEventStore, StorageError

log = logging.getLogger(__name__)

# `forget(user_id, jti, key_id)`: TokenService.forget.
Forget = Callable[[int, str | None, int | None], None]

_BATCH = 500  # events read at once (a burst takes several reads in one poll)
_LOOKBACK_S = 2.0  # re-read this much: a backend whose ids may commit out of order loses none
_PRUNE_EVERY_S = 60.0


class RevocationPoller:
    """Polls the auth events every `interval_s` (one indexed read) and prunes old ones."""

    def __init__(self, events: AuthEventStore, forget: Forget, interval_s: float,
                 keep_s: float) -> None:
        self._events = events
        self._forget = forget
        self._interval = interval_s
        self._keep = keep_s
        self._cursor = 0
        # (when, cursor before that poll): polls re-read from the oldest within the lookback,
        # so an event that commits after a newer id was seen (PostgreSQL) is still read.
        self._marks: deque[tuple[float, int]] = deque()
        self._failed = Throttle(60.0)
        self.polls = 0
        self.seen = 0

    async def start(self) -> None:
        """Begin after the newest event: this process's caches start empty."""
        self._cursor = await self._events.latest()

    async def poll(self) -> int:
        """Read the events since the last polls and forget what they name; how many new."""
        now = time.monotonic()
        self._marks.append((now, self._cursor))
        while len(self._marks) > 1 and self._marks[1][0] < now - _LOOKBACK_S:
            self._marks.popleft()
        after, fresh = self._marks[0][1], 0
        while True:
            events = await self._events.since(after, _BATCH)
            for event in events:  # forgetting twice only costs a database read: no bookkeeping
                self._forget(event.user_id, event.jti, event.key_id)
                fresh += event.id > self._cursor
            if events:
                after = events[-1].id
                self._cursor = max(self._cursor, after)
            if len(events) < _BATCH:
                break
        self.polls += 1
        self.seen += fresh
        return fresh

    async def prune(self) -> None:
        """Delete events older than any cache entry they could concern."""
        await self._events.prune(int(time.time() - self._keep))

    async def run(self) -> None:
        """Poll until cancelled; a failed read is logged (once a minute) and retried."""
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + _PRUNE_EVERY_S
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.poll()
                if loop.time() >= next_prune:
                    next_prune = loop.time() + _PRUNE_EVERY_S
                    await self.prune()
            except Exception as err:  # noqa: BLE001 - the poller must outlive any failure
                held = self._failed.allow()
                if held is not None:
                    log.warning("reading revocations failed (%s); retrying every %gs, cached "
                                "credentials stay valid up to auth.cache_ttl_s meanwhile%s",
                                err if isinstance(err, StorageError) else repr(err),
                                self._interval,
                                f" ({held} more failures not logged)" if held else "")
