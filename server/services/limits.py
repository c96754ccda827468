"""Every rate limit behind one interface: checks applied together (all or none), in this
process (`LocalLimits`) or shared by every process and node (the Redis one, in
server/coordination/limits.py, chosen at start-up, falling back to this one)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .ratelimit import FailureBackoff, KeyedRateLimiter, RateLimited
from .usage import QuotaExceeded

MonthUsed = Callable[[int], Awaitable[int]]  # tokens a user used this month (the database's)


class Held(Protocol):
    """What an admission holds until it is used or given back (workers.pool.Place)."""

    def release(self) -> None:
        """Give it back."""


H = TypeVar("H", bound=Held)


@dataclass(frozen=True, slots=True)
class Rate:
    """`per_minute` events (or tokens) per key, refilled continuously, a burst of as many
    (GCRA); this check takes `cost` of them. More than the whole burst passes only when
    the key is idle."""

    scope: str  # "chat", "conversations", "login", "rpm", "tpm": one limit per scope
    key: str | int
    per_minute: int
    message: str
    cost: int = 1
    error: type[RateLimited] = RateLimited


@dataclass(frozen=True, slots=True)
class Backoff:
    """One password try for an account: refused while its failures' backoff lasts."""

    key: str
    message: str


@dataclass(frozen=True, slots=True)
class Budget:
    """The user's monthly token budget: refused once this month's use reaches it."""

    user_id: int
    tokens: int


Check = Rate | Backoff | Budget


def over_budget(budget: Budget) -> QuotaExceeded:
    """What a user over their monthly budget is told."""
    return QuotaExceeded(f"you have used this month's {budget.tokens:,} tokens; ask an "
                         "administrator to raise the budget, or wait for next month")


class Limits(Protocol):
    """What the services ask of the rate limits, wherever they are kept."""

    async def check(self, *checks: Check) -> None:
        """Apply every check, or none: the first that refuses raises (RateLimited or a
        subclass, QuotaExceeded) and nothing is charged."""

    def give_back(self, rate: Rate, amount: int) -> None:
        """Return `amount` of what `rate` took (negative: used more); never fails."""

    def succeeded(self, key: str) -> None:
        """The account's password was right: forget its failures; never fails."""


class LocalLimits:
    """The limits of this process alone: today's in-memory GCRA and backoff."""

    def __init__(self, month_used: MonthUsed, failures: FailureBackoff) -> None:
        self._month_used = month_used
        self._failures = failures
        self._rates: dict[tuple[str, int], KeyedRateLimiter] = {}  # one per scope and rate

    async def check(self, *checks: Check) -> None:
        """See Limits.check (the budget's read is the only await: then all at once)."""
        checks = active(checks)
        for check in checks:
            if isinstance(check, Budget) and check.tokens \
                    and await self._month_used(check.user_id) >= check.tokens:
                raise over_budget(check)
        for check in checks:
            if isinstance(check, Rate):
                wait = self._limiter(check).wait(check.key, check.cost)
                if wait is not None:
                    raise check.error(wait, check.message)
            elif isinstance(check, Backoff):
                wait = self._failures.wait(check.key)
                if wait is not None:
                    raise RateLimited(wait, check.message)
        for check in checks:
            if isinstance(check, Rate):
                self._limiter(check).charge(check.key, check.cost)
            elif isinstance(check, Backoff):
                self._failures.charge(check.key)

    def give_back(self, rate: Rate, amount: int) -> None:
        """See Limits.give_back."""
        self._limiter(rate).give_back(rate.key, amount)

    def succeeded(self, key: str) -> None:
        """See Limits.succeeded."""
        self._failures.succeeded(key)

    def _limiter(self, rate: Rate) -> KeyedRateLimiter:
        found = self._rates.get((rate.scope, rate.per_minute))
        if found is None:
            found = self._rates[(rate.scope, rate.per_minute)] = KeyedRateLimiter(
                rate.per_minute)
        return found


def active(checks: tuple[Check, ...]) -> tuple[Check, ...]:
    """The checks that limit anything (a rate or budget of 0 is none)."""
    return tuple(c for c in checks if not isinstance(c, Rate) and not isinstance(c, Budget)
                 or isinstance(c, Rate) and c.per_minute > 0
                 or isinstance(c, Budget) and c.tokens > 0)


def key_of(value: Hashable) -> str | int:
    """A limit's key as text or a number (a tuple such as ("account", 7) joined)."""
    if isinstance(value, (str, int)):
        return value
    if isinstance(value, tuple):
        return ":".join(str(part) for part in value)
    return str(value)


async def check_and_admit(limits: Limits, checks: Sequence[Check],
                          admit: Callable[[], Awaitable[H]], together: bool) -> H:
    """The request's limits, then its admission to the queue. `together` (both ask Redis):
    both asked at the same moment, so one pipeline carries them (one round trip, not two);
    the limits' refusal still comes first, the admission then given back, and a refused
    admission leaves the limits charged, as when asked one after the other."""
    if not together:
        await limits.check(*checks)
        return await admit()
    checking = asyncio.ensure_future(limits.check(*checks))
    admitting = asyncio.ensure_future(admit())  # next in the loop: no pipeline between them
    try:
        await asyncio.wait((checking, admitting))
    except BaseException:  # the request left: neither is wanted
        checking.cancel()
        admitting.cancel()
        checking.add_done_callback(_heard)
        admitting.add_done_callback(_give_back)
        raise
    refused = checking.exception()
    if refused is not None:
        _give_back(admitting)
        raise refused
    return admitting.result()


def _heard(task: asyncio.Future[Any]) -> None:
    """A finished task's exception, taken so that it is not reported as never retrieved."""
    if not task.cancelled():
        task.exception()


def _give_back(task: asyncio.Future[Any]) -> None:
    """An admission no one will use: its place goes back."""
    if not task.cancelled() and task.exception() is None:
        task.result().release()
