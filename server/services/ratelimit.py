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
        wait = self.wait(key)
        if wait is None:
            self.charge(key)
        return wait

    def wait(self, key: Hashable, cost: int = 1) -> float | None:
        """Whether `cost` events would pass now (nothing recorded): None, or seconds until
        they would. More than the whole burst passes only when the key is idle."""
        now = self._clock()
        tat = max(self._tat.get(key, now), now)
        over = tat - now + min(cost * self._interval, self._burst) - self._burst
        return over if over > 0 else None

    def charge(self, key: Hashable, cost: int = 1) -> None:
        """Record `cost` events (after `wait` said they pass)."""
        now = self._clock()
        if key not in self._tat and len(self._tat) >= self._max_keys:
            self._prune(now)
        self._tat[key] = max(self._tat.get(key, now), now) + cost * self._interval

    def give_back(self, key: Hashable, amount: int) -> None:
        """Return `amount` charged but not used (negative: used more than charged); the
        key's allowance never exceeds its burst."""
        now = self._clock()
        tat = max(self._tat.get(key, now), now) - amount * self._interval
        if tat > now:
            self._tat[key] = tat
        else:
            self._tat.pop(key, None)

    def _prune(self, now: float) -> None:
        """Forget keys whose budget has refilled; if that is not enough (a flood of distinct
        keys), forget the oldest tenth, so memory stays bounded whatever the traffic."""
        for key in [k for k, t in self._tat.items() if t <= now]:
            del self._tat[key]
        if len(self._tat) >= self._max_keys:
            for key in list(self._tat)[: max(1, self._max_keys // 10)]:
                del self._tat[key]


class FailureBackoff:
    """Failed password checks per account: after `free` of them, each further try must wait
    2^k seconds (capped at `max_delay_s`, so the real user is never locked out for longer).

    A try is charged when it starts (so a burst of parallel guesses gains nothing) and the
    count is cleared by a success or after `window_s` without a try. At most `max_keys`
    accounts are tracked: when full, idle entries go first, then those still within their
    free tries, then the oldest; memory stays bounded whatever names an attacker sends.
    """

    def __init__(self, free: int, max_delay_s: float, window_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._free = free
        self._max_delay = max_delay_s
        self._window = max(window_s, max_delay_s)
        self._clock = clock
        self._max_keys = max_keys
        self._seen: dict[Hashable, tuple[int, float]] = {}  # key -> (tries, last try), oldest first

    def delay(self, tries: int) -> float:
        """Seconds a key must wait after `tries` charged tries (0 while within the free ones)."""
        if tries < self._free:
            return 0.0
        return float(min(self._max_delay, 2.0 ** min(tries - self._free, 62)))

    def attempt(self, key: Hashable) -> float | None:
        """Charge one try; None if it may go ahead, else seconds until one may (not charged)."""
        wait = self.wait(key)
        if wait is None:
            self.charge(key)
        return wait

    def wait(self, key: Hashable) -> float | None:
        """None if a try may go ahead now (nothing charged), else seconds until one may."""
        now = self._clock()
        tries, last = self._tries(key, now)
        wait = last + self.delay(tries) - now
        return wait if wait > 0 else None

    def charge(self, key: Hashable) -> None:
        """Charge one try (after `wait` said it may go ahead)."""
        now = self._clock()
        tries, _ = self._tries(key, now)
        self._seen.pop(key, None)  # re-inserted last: dict order is least recently tried first
        if len(self._seen) >= self._max_keys:
            self._prune(now)
        self._seen[key] = (tries + 1, now)

    def _tries(self, key: Hashable, now: float) -> tuple[int, float]:
        tries, last = self._seen.get(key, (0, now))
        return (0 if now - last >= self._window else tries), last

    def succeeded(self, key: Hashable) -> None:
        """The password was right: forget the failures."""
        self._seen.pop(key, None)

    def __len__(self) -> int:
        return len(self._seen)

    def _prune(self, now: float) -> None:
        """Drop idle keys, then keys still within their free tries, then the oldest, until a
        tenth of the room is free (so pruning is rare: amortised O(1) per try)."""
        target = self._max_keys - max(1, self._max_keys // 10)
        for key in [k for k, (_, t) in self._seen.items() if now - t >= self._window]:
            del self._seen[key]
        if len(self._seen) > target:
            for key in [k for k, (n, _) in self._seen.items() if n < self._free]:
                del self._seen[key]
        if len(self._seen) > target:
            for key in list(self._seen)[: len(self._seen) - target]:
                del self._seen[key]
