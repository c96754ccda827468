"""Upstream caps held across every process and node: a lease per in-flight request in Redis.

Each cap is a sorted set of leases scored by their expiry (Redis's clock): the deployment's
workers, the background jobs' share, each replica's max_concurrency, each user's running
weight and waiting jobs. One Lua call drops the expired leases, counts and adds if under the
caps; leases are renewed while held, so a node that dies gives its leases back within
`coordination.lease_ttl_s`. While Redis is down each process keeps to its share of the caps.
The pool reaches this through `workers.leases.Leases` (matched by shape: this room never
imports `workers`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import RedisError

from ..logthrottle import Throttle
from .batch import Batcher
from .line import Line
from .link import DOWN, RedisLink
from .scripts import ACQUIRE, ADMIT, RELEASE, RENEW

log = logging.getLogger(__name__)
WORKERS_FULL = -1  # acquire's refusal for want of a deployment-wide place: nobody can start
# Slot: (replica label, its max_concurrency or 0), as workers.leases.Slot.
Slot = tuple[str, int]


class Claim(Protocol):
    """What a lease asks about a job (workers.leases.Ticket has this shape)."""

    @property
    def id(self) -> int: ...
    @property
    def owner(self) -> Hashable: ...
    @property
    def running_cap(self) -> int: ...
    @property
    def weight(self) -> int: ...
    @property
    def background(self) -> bool: ...
    # Set on each grant: the seconds the attempt waits for its slot of the upstream rate,
    # taken with the lease (None: not taken here, the pool's own pace decides).
    paced: float | None


def whole(total: int) -> int:
    """One process alone: its share of a cap is all of it."""
    return total


@dataclass
class _Hold:
    """What one job holds in Redis (or, while it is down, in this process's counts)."""

    member: str
    owner: str
    order: tuple[bool, int] = (False, 0)  # place in this node's line: turns first, then age
    queued: bool = False  # its owner's waiting entry is in Redis
    running: list[tuple[str, int, int]] = field(default_factory=list)  # (key, weight, cap)
    slot: str | None = None  # the replica label of the running attempt
    granted: bool = False  # an attempt runs now
    shared: bool = False  # its running leases are in Redis (not granted while it was down)


class RedisLeases:
    """workers.leases.Leases on Redis; one per process."""

    def __init__(self, link: RedisLink, *, workers: int, background_cap: int,
                 ttl_s: float = 10.0, renew_s: float = 3.0,
                 share: Callable[[int], int] = whole, backoff_s: float = 0.5,
                 batcher: Batcher | None = None, upstream_rps: float = 0.0) -> None:
        # share: this process's part of a cap while Redis is down (server.processes: each
        # process an equal share, the procs' split()). upstream_rps: a grant takes the next
        # slot of this one global rate in the same call (RedisPace's, on the same key), so
        # an attempt costs no round trip of its own for it (0: not taken here).
        self._link = link
        self._client: Any = link.client
        self._workers = workers
        self._background_cap = background_cap
        self._ttl_ms = int(ttl_s * 1000)
        self._renew_s = renew_s
        self._share = share
        self._token = f"{link.node_id}/{secrets.token_hex(3)}"  # unique per process start
        self._holds: dict[int, _Hold] = {}
        self._in_flight = 0  # attempts running in this process (the fallback's counts)
        self._per_slot: Counter[str] = Counter()
        self._order = itertools.count()
        self._pending: list[tuple[str, str, int, int]] = []  # releases not sent yet
        self._unsent: list[tuple[str, str, int, int]] = []  # releases Redis was down for
        self._flushing: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.line = Line(backoff_s)
        self.channel = link.key("{leases}", "freed")
        # Calls made while one pipeline is in flight go together in the next (share the
        # process's one batcher with the limits, so a turn's calls share round trips too).
        self.batcher = batcher or Batcher(link)
        self._acquire = self.batcher.script(ACQUIRE)
        self._admit = self.batcher.script(ADMIT)
        self._release = self.batcher.script(RELEASE)
        self._renew = self.batcher.script(RENEW)
        self.stats: Counter[str] = Counter()  # granted, refused, local (granted while down)
        interval = 1.0 / upstream_rps if upstream_rps > 0 else 0.0
        self._pace = [interval, max(0.0, 1.0 - interval)]  # a burst of one second's worth

    def key(self, *parts: object) -> str:
        """A lease key: one hash tag, so every script's keys share a Redis Cluster slot."""
        return self._link.key("{leases}", *parts)

    async def start_tasks(self) -> None:
        """Renew held leases, hear releases elsewhere, put leases back when Redis returns."""
        self._link.on_change(self._changed)
        self._tasks = [asyncio.create_task(self._renewing(), name="lease-renew"),
                       asyncio.create_task(self._listening(), name="lease-freed")]

    async def close(self) -> None:
        """Stop the tasks; send what is still to release (best effort)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.line.close()
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)

    def _hold(self, claim: Claim) -> _Hold:
        hold = self._holds.get(claim.id)
        if hold is None:
            hold = self._holds[claim.id] = _Hold(f"{self._token}/{claim.id}", str(claim.owner))
        return hold

    async def admit(self, claim: Claim, max_queued: int) -> bool:
        """Count a waiting job of the owner's across the deployment; False at `max_queued`."""
        if not max_queued or not self._link.up:
            return True  # no cap, or this process's own count decides
        hold = self._hold(claim)
        try:
            ok = await self._admit([self.key("queued", hold.owner)],
                                   [self._ttl_ms, hold.member, max_queued])
        except DOWN as err:
            self._link.mark_down(err)
            return True
        except RedisError as err:  # never a refusal for our own fault: this process decides
            _failed("admit", err)
            return True
        hold.queued = bool(ok)
        if not ok:
            del self._holds[claim.id]
        return bool(ok)

    async def start(self, claim: Claim, slots: Sequence[Slot]) -> int | None:
        """A lease for one attempt on the first slot with room (its index), waiting in this
        node's line while there is none."""
        hold = self._hold(claim)
        if hold.order == (False, 0):
            hold.order = (claim.background, next(self._order) + 1)
        woken = False
        while True:
            try:
                got, stop = await self._try(claim, hold, slots)
            except BaseException:
                if woken:  # the round goes on without it
                    self.line.tried(False)
                raise
            if woken:
                self.line.tried(stop and got is None)
            if got is not None:
                return got
            woken = await self.line.wait(hold.order)

    def _keys(self, hold: _Hold, slots: Sequence[Slot]) -> list[str]:
        return [self.key("workers"), self.key("background"), self.key("running", hold.owner),
                self.key("queued", hold.owner),
                *(self.key("replica", label) for label, _ in slots)]

    async def _try(self, claim: Claim, hold: _Hold, slots: Sequence[Slot]) \
            -> tuple[int | None, bool]:
        """One ask: (index granted or None, whether nobody else can start either)."""
        claim.paced = None
        if not self._link.up:
            return self._local(claim, hold, slots)
        keys = self._keys(hold, slots)
        bg = self._background_cap if claim.background else 0
        args = [self._ttl_ms, hold.member, self._workers, bg, claim.running_cap,
                claim.weight, 1 if claim.background else 0, *self._pace,
                *(cap for _, cap in slots)]
        try:
            code, wait_us = map(int, await self._acquire(
                [*keys[:4], self.key("pace"), *keys[4:]], args))
        except DOWN as err:
            self._link.mark_down(err)
            return self._local(claim, hold, slots)
        except RedisError as err:  # no job fails for it: this process's share decides
            _failed("acquire", err)
            return self._local(claim, hold, slots)
        except asyncio.CancelledError:  # it may have been granted: give back what it asked
            self._queue_release(hold.member, [(k, 0, 0) for k in keys[:2] + keys[4:]]
                                + [(keys[2], claim.weight, 0)])
            raise
        if code < 1:
            self.stats["refused"] += 1
            return None, code == WORKERS_FULL
        hold.queued = False
        self._granted(claim, hold, slots, code - 1, shared=True)
        if self._pace[0]:
            claim.paced = wait_us / 1_000_000
        return code - 1, False

    def _local(self, claim: Claim, hold: _Hold, slots: Sequence[Slot]) \
            -> tuple[int | None, bool]:
        """Redis is down: this process keeps to its share of the workers and replicas (a
        user's caps are the pool's own, per process)."""
        spare = 1 if claim.background else 0
        if not _fits(self._in_flight, self._share(self._workers), spare):
            return None, True
        for i, (label, cap) in enumerate(slots):
            if not cap or _fits(self._per_slot[label], self._share(cap),
                                spare):
                self._granted(claim, hold, slots, i, shared=False)
                self.stats["local"] += 1
                return i, False
        return None, False

    def _granted(self, claim: Claim, hold: _Hold, slots: Sequence[Slot], index: int,
                 shared: bool) -> None:
        """Count the attempt; note the leases it holds (in Redis if `shared`, else to be put
        there should Redis come back while it runs)."""
        label, cap = slots[index]
        keys = self._keys(hold, slots)
        hold.running = [(keys[0], 0, self._workers), (keys[2], claim.weight, claim.running_cap)]
        if claim.background:
            hold.running.append((keys[1], 0, self._background_cap))
        if cap:
            hold.running.append((keys[4 + index], 0, cap))
        hold.granted, hold.shared, hold.slot = True, shared, label
        self._in_flight += 1
        self._per_slot[label] += 1
        self.stats["granted"] += 1

    def stop(self, claim: Claim) -> None:
        """The attempt ended: its leases go back (sent with others in one call)."""
        hold = self._holds.get(claim.id)
        if hold is None or not hold.granted:
            return
        hold.granted = False
        self._in_flight -= 1
        if hold.slot is not None:
            self._per_slot[hold.slot] -= 1
            if self._per_slot[hold.slot] <= 0:
                del self._per_slot[hold.slot]
        if hold.shared:
            self._queue_release(hold.member, hold.running)
        else:
            self.line.notify()  # a place of this process's share is free now
        hold.running = []

    def end(self, claim: Claim) -> None:
        """The job ended: everything it holds goes back."""
        self.stop(claim)
        hold = self._holds.pop(claim.id, None)
        if hold is not None and hold.queued:
            self._queue_release(hold.member, [(self.key("queued", hold.owner), 0, 0)])

    def _queue_release(self, member: str, held: Sequence[tuple[str, int, int]]) -> None:
        self._queue_release_entries([(key, member, weight, cap) for key, weight, cap in held])

    def _queue_release_entries(self, entries: list[tuple[str, str, int, int]]) -> None:
        self._pending += entries
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="lease-release")

    async def _flush(self) -> None:
        """Send every release queued meanwhile in one call (under load many share it)."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                if not self._link.up:
                    self._unsent += batch  # sent when Redis answers again
                else:
                    try:
                        await self._release([k for k, *_ in batch], [
                            self.channel, *itertools.chain.from_iterable(
                                (m, w, c) for _, m, w, c in batch)], waited=False)
                    except DOWN as err:
                        self._link.mark_down(err)
                        self._unsent += batch
                    except RedisError as err:  # not renewed: they expire
                        _failed("release", err)
                self.line.notify()  # waiting workers of this node look at once
        finally:
            self._flushing = None

    def _entries(self) -> tuple[list[str], list[str]]:
        """Every (key, member) this process holds: for renewal."""
        keys: list[str] = []
        members: list[str] = []
        for hold in self._holds.values():
            if hold.queued:
                keys.append(self.key("queued", hold.owner))
                members.append(hold.member)
            for key, weight, _ in hold.running if hold.shared else ():
                for m in [f"{hold.member}#{j}" for j in range(1, weight + 1)] if weight \
                        else [hold.member]:
                    keys.append(key)
                    members.append(m)
        return keys, members

    async def renew(self, mode: str = "XX") -> None:
        """Push the expiry of every held lease (mode "XX": only those still there)."""
        keys, members = self._entries()
        if keys and self._link.up:
            try:
                await self._renew(keys, [self._ttl_ms, mode, *members], waited=False)
            except DOWN as err:
                self._link.mark_down(err)
            except RedisError as err:
                _failed("renew", err)

    async def _renewing(self) -> None:
        while True:
            await asyncio.sleep(self._renew_s)
            await self.renew()

    def _changed(self, up: bool) -> None:
        """Redis went down (waiting workers try this process's share) or came back."""
        if up:
            task = asyncio.create_task(self._rejoin(), name="lease-rejoin")
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)
        else:
            self.line.notify()

    async def _rejoin(self) -> None:
        """Redis answers again (perhaps empty): put back every lease this process holds,
        those granted while it was down too, so the counts are the deployment's again."""
        for hold in self._holds.values():
            hold.shared = hold.shared or hold.granted
        await self.renew("ADD")
        if self._unsent:  # a blip, not a restart: what ended meanwhile is still counted
            unsent, self._unsent = self._unsent, []
            self._queue_release_entries(unsent)
        self.line.notify()

    async def _listening(self) -> None:
        """Releases that made room on another node wake this node's line."""
        while True:
            if not self._link.up:
                await asyncio.sleep(self._renew_s / 3)
                continue
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    if await pubsub.get_message(timeout=1.0) is not None:
                        self.line.notify()
            except DOWN as err:
                self._link.mark_down(err)
            finally:
                await pubsub.aclose()
            await asyncio.sleep(self._renew_s / 3)


_errors = Throttle(60.0)


def _failed(what: str, err: Exception) -> None:
    """Redis answered with an error (not down): said at most once a minute."""
    if _errors.allow() is not None:
        log.error("lease %s failed in Redis (%s: %s): this process's share decides meanwhile",
                  what, type(err).__name__, str(err)[:200])


def _fits(count: int, cap: int, spare: int) -> bool:
    """One more within `cap` (0 = none), leaving `spare` places when the cap has several."""
    return not cap or count + 1 + (spare if cap > 1 else 0) <= cap
