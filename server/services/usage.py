"""Token usage: counted in memory per user, key and day, written in one batch a second."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from ..storage import StorageError, UsageStore
from ..storage.rows import UsageRow

log = logging.getLogger(__name__)


class QuotaExceeded(Exception):
    """The user has used this month's token budget."""


def today() -> str:
    """The UTC day, YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d", time.gmtime())


class UsageMeter:
    """Counts tokens off the hot path: `record` only adds in memory; `run` writes the sums
    every `flush_s` seconds in one transaction (a crash loses at most that much counting)."""

    def __init__(self, store: UsageStore, flush_s: float,
                 on_flush: Callable[[], Awaitable[None]] | None = None) -> None:
        self._store = store
        self._flush_s = flush_s
        self._on_flush = on_flush
        self._pending: defaultdict[tuple[int, str, int], list[int]] = defaultdict(
            lambda: [0, 0, 0])
        self._months: dict[int, tuple[str, int]] = {}  # user -> (YYYY-MM, tokens used)
        # Told of each reply's tokens (user, tokens): the shared monthly budgets count them.
        self.counted: list[Callable[[int, int], None]] = []

    def record(self, user_id: int, key_id: int | None, usage: dict[str, Any]) -> None:
        """Count one reply's tokens (from the model server's `usage`)."""
        prompt = _int(usage.get("prompt_tokens"))
        completion = _int(usage.get("completion_tokens"))
        day = today()
        counts = self._pending[(user_id, day, key_id or 0)]
        counts[0] += 1
        counts[1] += prompt
        counts[2] += completion
        month = self._months.get(user_id)
        if month is not None and month[0] == day[:7]:
            self._months[user_id] = (month[0], month[1] + prompt + completion)
        for counted in self.counted:
            counted(user_id, prompt + completion)

    async def month_used(self, user_id: int) -> int:
        """Tokens the user has used this calendar month (UTC), read once then kept counted."""
        month = today()[:7]
        known = self._months.get(user_id)
        if known is None or known[0] != month:
            used = await self._store.tokens_since(user_id, f"{month}-01")
            used += sum(c[1] + c[2] for (u, day, _), c in self._pending.items()
                        if u == user_id and day.startswith(month))
            known = self._months[user_id] = (month, used)
        return known[1]

    async def month_read(self, user_id: int) -> int:
        """`month_used` read anew from the database (and what is not yet written)."""
        self._months.pop(user_id, None)
        return await self.month_used(user_id)

    async def days(self, user_id: int, first: str, last: str) -> list[UsageRow]:
        """The user's counters between two days, the last second's counting included."""
        await self.flush()
        return await self._store.days(user_id, first, last)

    async def flush(self) -> None:
        """Write what was counted since the last flush, in one transaction."""
        pending, self._pending = self._pending, defaultdict(lambda: [0, 0, 0])
        if pending:
            deltas = [(u, day, key, *counts) for (u, day, key), counts in pending.items()]
            try:
                await self._store.add(deltas)  # type: ignore[arg-type]
            except StorageError as err:  # keep the counts for the next try
                log.warning("could not write usage (%s); will retry", err)
                for where, counts in pending.items():
                    mine = self._pending[where]
                    for i, value in enumerate(counts):
                        mine[i] += value
        if self._on_flush is not None:
            await self._on_flush()

    async def run(self) -> None:
        """Flush every `flush_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except Exception:  # a bad flush must not end the loop; logged
                log.exception("usage flush failed")

    def forget_user(self, user_id: int) -> None:
        """Drop the cached month of a deleted user."""
        self._months.pop(user_id, None)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
