"""Every rate limit shared by all processes and nodes: one Lua call per request in Redis,
the process's own limits whenever Redis does not answer (a request never fails for it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from ..logthrottle import Throttle
from ..services.limits import (
    Backoff,
    Budget,
    Check,
    LocalLimits,
    MonthUsed,
    Rate,
    active,
    over_budget,
)
from ..services.ratelimit import RateLimited
from .batch import Batcher
from .link import DOWN, RedisLink, stop
from .scripts import LIMITS, PACE

log = logging.getLogger(__name__)
_errors = Throttle(60.0)  # an error answer (not an outage) repeats per request: once a minute
_UNKNOWN = 3  # the script's answer for a month it has not counted (see scripts.py)
Op = tuple[str, str, tuple[float, ...]]  # kind, key, numbers


class RedisLimits:
    """The `Limits` of server/services/limits.py, kept in Redis; `local` while it is down.

    What need not hold up a request (tokens given back, failures forgiven, usage counted
    towards the budgets) is owed by this process and goes with the next check of the same
    key or in one call for everything owed: at once for tokens given back (the key's next
    request may come through another node), else within `flush_s`.
    """

    def __init__(self, link: RedisLink, local: LocalLimits, month_used: MonthUsed,
                 free_failures: int, max_delay_s: float, window_s: float = 900.0,
                 flush_s: float = 1.0) -> None:
        self._link = link
        self._local = local
        self._month_used = month_used  # the database's count, to seed a month in Redis
        self._backoff = (float(free_failures), float(max_delay_s),
                         float(max(window_s, max_delay_s)))
        self.batcher = Batcher(link)  # shared with RedisPace: one pipeline in flight
        self._script = self.batcher.script(LIMITS)
        self._owed: dict[tuple[str, str], float] = {}  # (kind, key) -> amount, not yet sent
        self._intervals: dict[str, float] = {}  # a given-back rate's key -> its interval
        self._flush_s = flush_s
        self._flusher: asyncio.Task[None] | None = None
        self._soon = asyncio.Event()  # something owed should not wait for the next second
        self._closing = False
        self.fallbacks = 0  # checks answered by this process's limits (Redis unreachable)
        self.calls = 0  # calls to Redis (what a request costs, for tests and benchmarks)

    async def check(self, *checks: Check) -> None:
        """See Limits.check: one EVALSHA (two for a month not yet counted in Redis)."""
        checks = active(checks)
        if not checks:
            return
        if not self._link.up:
            await self._fallback(checks)
            return
        ops = [self._op(c) for c in checks]
        owed = self._take_owed({key for _, key, _ in ops})
        try:
            why, index, ms = await self._call(owed + ops, waited=True)
            index -= len(owed)  # what was owed never refuses: the index is a check's
            owed = []  # sent
            if why == _UNKNOWN:  # a month this Redis has not counted: the database's count
                budget = checks[index - 1]
                assert isinstance(budget, Budget)
                seed = await self._month_used(budget.user_id)
                why, index, ms = await self._call(
                    [self._op(c, seed if c is budget else -1) for c in checks], waited=True)
        except (*DOWN, RedisError) as err:
            self._failed(err)
            self._give_back_owed(owed)
            await self._fallback(checks)
            return
        if why:
            self._refuse(checks[index - 1], why, ms)

    def give_back(self, rate: Rate, amount: int) -> None:
        """See Limits.give_back: sent with the key's next check, or within a second."""
        if rate.per_minute <= 0 or not amount:
            return
        self._local.give_back(rate, amount)  # the fallback's allowance too
        key = self._rate_key(rate)
        self._intervals[key] = 60.0 / rate.per_minute
        self._owe("a", key, amount)
        self._soon.set()  # the key's next request may be on another node: send it now

    def succeeded(self, key: str) -> None:
        """See Limits.succeeded."""
        self._local.succeeded(key)
        self._owed[("d", self._link.key("fail", key))] = 0

    def used(self, user_id: int, tokens: int) -> None:
        """Count a reply's tokens towards the user's monthly budget (UsageMeter.counted)."""
        if tokens > 0:
            self._owe("u", self._budget_key(user_id), tokens)

    async def start(self) -> None:
        """Send what is owed every `flush_s` seconds."""
        self._flusher = asyncio.create_task(self._flush_loop(), name="redis-limits-flush")

    async def close(self) -> None:
        """Stop the flusher and send what is owed, if Redis answers."""
        self._closing = True
        if self._flusher is not None:
            await stop(self._flusher)
        await self.flush()

    async def flush(self) -> None:
        """Send everything owed, in one call (kept for the next try if Redis is down)."""
        if not self._owed or not self._link.up:
            return
        owed = self._take_owed(None)
        try:
            await self._call(owed, waited=False)
        except (*DOWN, RedisError) as err:
            self._failed(err)
            self._give_back_owed(owed)

    async def _flush_loop(self) -> None:
        """Every `flush_s`, or at once when told (what is owed meanwhile goes together)."""
        while not self._closing:
            try:
                await asyncio.wait_for(self._soon.wait(), self._flush_s)
            except TimeoutError:
                pass
            self._soon.clear()
            await self.flush()

    async def _call(self, ops: list[Op], waited: bool) -> tuple[int, int, int]:
        """Run the ops in one EVALSHA: (why, op's number from 1, ms); why 0: all passed.
        `waited`: a request waits for the answer (not what is owed, sent meanwhile)."""
        keys = [key for _, key, _ in ops]
        args = [",".join([kind, *map(repr, numbers), *["0"] * (3 - len(numbers))])
                for kind, _, numbers in ops]
        self.calls += 1
        answer = int(await self._script(keys, args, waited=waited))  # (ms * 100 + op) * 10 + why
        return answer % 10, answer // 10 % 100, answer // 1000

    def _failed(self, err: BaseException) -> None:
        """Redis did not answer (down: the link says so once) or answered an error."""
        if isinstance(err, DOWN):
            self._link.mark_down(err)
        elif _errors.allow() is not None:  # not "down", but no answer we can use
            log.error("shared limits failed (%s): using this process's", type(err).__name__)

    async def _fallback(self, checks: tuple[Check, ...]) -> None:
        self.fallbacks += 1
        await self._local.check(*checks)

    @staticmethod
    def _refuse(check: Check, why: int, ms: int) -> None:
        wait = ms / 1000
        if isinstance(check, Rate):
            raise check.error(wait, check.message)
        if isinstance(check, Backoff):
            raise RateLimited(wait, check.message)
        raise over_budget(check)

    def _op(self, check: Check, seed: int = -1) -> Op:
        if isinstance(check, Rate):
            return ("g", self._rate_key(check),
                    (60.0 / check.per_minute, float(check.cost), float(check.per_minute)))
        if isinstance(check, Backoff):
            return ("f", self._link.key("fail", check.key), self._backoff)
        return ("b", self._budget_key(check.user_id), (float(check.tokens), float(seed)))

    def _rate_key(self, rate: Rate) -> str:
        # The rate is part of the key, as in-process (one limiter per rate): a user whose own
        # limit is raised starts afresh, not owing what the lower one counted.
        return self._link.key("rate", rate.scope, rate.per_minute, rate.key)

    def _budget_key(self, user_id: int) -> str:
        return self._link.key("budget", user_id, time.strftime("%Y-%m", time.gmtime()))

    def _owe(self, kind: str, key: str, amount: float) -> None:
        self._owed[(kind, key)] = self._owed.get((kind, key), 0) + amount

    def _take_owed(self, keys: set[str] | None) -> list[Op]:
        """What is owed (for these keys, or all), as ops, no longer owed."""
        taken = [(kind, key) for kind, key in self._owed if keys is None or key in keys]
        ops: list[Op] = []
        for kind, key in taken:
            amount = self._owed.pop((kind, key))
            if kind == "a":
                ops.append((kind, key, (self._intervals.pop(key, 0.0), amount)))
            else:
                ops.append((kind, key, (amount,)))
        return ops

    def _give_back_owed(self, ops: list[Op]) -> None:
        """A call that failed: what it carried is owed again."""
        for kind, key, numbers in ops:
            if kind == "a":
                self._intervals[key] = numbers[0]
            self._owe(kind, key, numbers[-1])


class RedisPace:
    """`limits.upstream_rps` as one rate for every node (the pool's `Pace`): each upstream
    request reserves the next slot in Redis and waits for it; this process's own
    `AsyncLimiter` while Redis is down."""

    def __init__(self, link: RedisLink, rps: float, local: Callable[[], Awaitable[Any]],
                 batcher: Batcher) -> None:
        self._link = link
        # The leases' hash slot: a lease's grant takes its slot of this rate in the same call
        # (RedisLeases with upstream_rps), on this key, so both count against one rate.
        self._key = link.key("{leases}", "pace")
        interval = 1.0 / rps
        self._args = [interval, max(0.0, 1.0 - interval)]  # a burst of one second's worth
        self._local = local
        self._script = batcher.script(PACE)
        self.fallbacks = 0  # requests paced by this process alone (Redis unreachable)
        self.calls = 0

    async def acquire(self) -> None:
        """Wait for this request's slot of the global rate."""
        if self._link.up:
            try:
                self.calls += 1
                wait_us = int(await self._script([self._key], list(self._args)))
            except DOWN as err:
                self._link.mark_down(err)
            except RedisError as err:
                if _errors.allow() is not None:
                    log.error("shared upstream rate failed (%s): using this process's",
                              type(err).__name__)
            else:
                if wait_us > 0:
                    await asyncio.sleep(wait_us / 1_000_000)
                return
        self.fallbacks += 1
        await self._local()
