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


class Allowance:
    """A per-minute allowance (requests or tokens), refilled continuously; what is taken up
    front can be corrected once the real cost is known, so a burst cannot overrun it."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._level = float(per_minute)
        self._clock = clock
        self._at = clock()

    def take(self, amount: int) -> float | None:
        """Take `amount`; None if allowed, else seconds until it would be. A request larger
        than the whole allowance passes only when the allowance is full."""
        self._refill()
        need = min(float(amount), self._capacity)
        if self._level < need:
            return (need - self._level) / self._rate
        self._level -= amount
        return None

    def give_back(self, amount: int) -> None:
        """Return what was taken but not used (negative: used more than was taken)."""
        self._refill()
        self._level = min(self._capacity, self._level + amount)

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self._capacity, self._level + (now - self._at) * self._rate)
        self._at = now
