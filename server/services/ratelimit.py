"""Per-key rate limits (GCRA): O(1) per check, memory bounded by pruning idle keys."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class RateLimited(Exception):
    """Too many events for one key; try again after `retry_after` seconds."""

    def __init__(self, retry_after: float, message: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KeyedRateLimiter:
    """Allow `per_minute` events per key, with a burst of the same size."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self._interval = 60.0 / per_minute
        self._burst = per_minute * self._interval  # how far ahead a key may borrow
        self._tat: dict[Hashable, float] = {}  # theoretical arrival time per key
        self._clock = clock
        self._max_keys = max_keys

    def hit(self, key: Hashable) -> float | None:
        """Record one event; None if allowed, else seconds until one would be."""
        now = self._clock()
        tat = max(self._tat.get(key, now), now)
        if tat - now + self._interval > self._burst:
            return tat - now + self._interval - self._burst
        if len(self._tat) >= self._max_keys:
            self._prune(now)
        self._tat[key] = tat + self._interval
        return None

    def _prune(self, now: float) -> None:
        """Forget keys whose budget has refilled; if that is not enough (a flood of distinct
        keys), forget the oldest tenth, so memory stays bounded whatever the traffic."""
        for key in [k for k, t in self._tat.items() if t <= now]:
            del self._tat[key]
        if len(self._tat) >= self._max_keys:
            for key in list(self._tat)[: max(1, self._max_keys // 10)]:
                del self._tat[key]
