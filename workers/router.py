"""Which model server a job goes to: per model, the healthy replica with the least load, the
same one for the same conversation, and another one when an attempt fails before its first
token."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ModelNotFound, ModelUnavailable, UpstreamError, UpstreamRejected
from .job import Ending, Job
from .leases import Leases, LocalLeases, Slot, Ticket
from .replica import Replica
from .stream import Progress
from .upstream import Retryable, UpstreamClient, UpstreamSettings

log = logging.getLogger(__name__)
# A replica answering these is misconfigured for us (key, model name): out at once, and the
# request tried elsewhere. Other 4xx are the client's own mistake.
_REPLICA_FAULTS = {401: "auth", 403: "auth", 404: "model"}
Attempt = Callable[[UpstreamClient, str, Progress], Awaitable[Ending]]
# Asks the shared caps for a lease on one of these replicas (in order of preference): its
# index, or None after a wait for room.
Gate = Callable[[Sequence[Slot]], Awaitable[int | None]]


@dataclass(frozen=True)
class AffinitySettings:
    """Conversation affinity (the `routing` section's part of it)."""

    affinity: bool = True
    affinity_slack: float = 4.0  # how much busier than the least busy a sticky replica may be
    affinity_ttl_s: float = 3600.0
    affinity_size: int = 100_000


class _Sticky:
    """Affinity key -> replica: the least recently used forgotten first past `size`, an entry
    unused for `ttl` seconds ignored (an OrderedDict: a turn pays a dict lookup, no more)."""

    def __init__(self, size: int, ttl: float) -> None:
        self._entries: OrderedDict[Hashable, tuple[Replica, float]] = OrderedDict()
        self._size, self._ttl = size, ttl

    def get(self, key: Hashable, now: float) -> Replica | None:
        found = self._entries.get(key)
        if found is None or now - found[1] > self._ttl:
            return None
        return found[0]

    def put(self, key: Hashable, replica: Replica, now: float) -> None:
        self._entries[key] = (replica, now)
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


class ModelRoute:
    """One model: its replicas, its served name and where its conversations went last."""

    def __init__(self, name: str, served_name: str, replicas: Sequence[Replica],
                 settings: AffinitySettings) -> None:
        self.name = name  # what clients ask for ("" until learned, for an unnamed shorthand)
        self.served_name = served_name  # what the servers call it ("" until learned)
        self.replicas = list(replicas)
        self._s = settings
        self._sticky = _Sticky(settings.affinity_size, settings.affinity_ttl_s)
        self._turn = 0
        self._waiters: list[asyncio.Future[None]] = []
        self.affinity = {"hit": 0, "moved": 0, "new": 0}
        self.failovers = 0
        self.unavailable = 0  # requests refused because every replica was out
        self.starting = 0  # jobs workers took that hold no replica yet: room promised to them

    @property
    def available(self) -> bool:
        """Whether any replica may take requests now."""
        return any(r.routable for r in self.replicas)

    @property
    def has_room(self) -> bool:
        """Whether one more request could start now on some routable replica, besides the
        jobs workers took already and that hold no replica yet."""
        return self.room_for(background=False)

    def room_for(self, background: bool) -> bool:
        """`has_room`; a background job also leaves the model's last place to a chat turn
        (unless the model has a single place), so a turn never waits for one to end."""
        free = total = 0
        for r in self.replicas:
            if r.routable:
                if not r.spec.max_concurrency:
                    return True
                total += r.spec.max_concurrency
                free += max(0, r.spec.max_concurrency - r.in_flight)
        spare = 1 if background and total > 1 else 0
        return free > self.starting + spare

    def others_routable(self, replica: Replica) -> bool:
        """Whether a replica besides this one may take requests now."""
        return any(r.routable for r in self.replicas if r is not replica)

    def learn(self, served: Sequence[str]) -> None:
        """Take the name from a replica's model list when none was configured."""
        if not self.served_name and served:
            self.served_name = served[0]
            self.name = self.name or served[0]

    def unavailable_error(self) -> ModelUnavailable:
        """The error for a request that finds every replica out (and why, for the log)."""
        self.unavailable += 1
        why = "; ".join(f"{r.label}: {r.state}, {r.reason}" for r in self.replicas)
        log.warning("model %s: every replica is out (%s)", self.name, why)
        which = f"the model `{self.name}`" if self.name else "the model"
        return ModelUnavailable(f"{which} is unavailable: every server of it is down or "
                                "recovering, try again shortly")

    async def acquire(self, key: Hashable | None, avoid: Iterable[Replica],
                      exclude: Iterable[Replica] = (), gate: Gate | None = None) -> Replica:
        """A replica for one attempt (its in-flight count taken), waiting while every routable
        one is full; replicas in `avoid` (tried already) only when no other is routable, those
        in `exclude` (timed out for this job) never. With a `gate` (caps shared with other
        processes), the lease is taken on the chosen replica, else on the next with room."""
        avoided, excluded = set(avoid), set(exclude)
        while True:
            routable = [r for r in self.replicas if r.routable and r not in excluded]
            if not routable:
                raise self.unavailable_error()
            fresh = [r for r in routable if r not in avoided] or routable
            free = [r for r in fresh if r.has_room]
            replica = self._pick(key, free)
            if replica is not None and gate is not None:
                now = time.monotonic()
                order = [replica, *sorted((r for r in free if r is not replica),
                                          key=lambda r: r.score(now))]
                got = await gate([(r.label, r.spec.max_concurrency) for r in order])
                if got is None:
                    continue  # waited for room: look at the replicas again
                replica = order[got]
            if replica is not None:
                replica.in_flight += 1
                replica.requests += 1
                return replica
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def release(self, replica: Replica) -> None:
        """An attempt on `replica` ended: its place may go to a waiting one."""
        replica.in_flight -= 1
        self.wake()

    def wake(self) -> None:
        """Let every waiting attempt look again (room was made or health changed)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _pick(self, key: Hashable | None, free: list[Replica]) -> Replica | None:
        """The least loaded of `free` (ties taken in turn), unless the key's sticky replica is
        among them and not much busier."""
        if not free:
            return None
        now = time.monotonic()
        self._turn += 1
        best, best_score = free[0], float("inf")
        n = len(free)
        for i in range(n):
            replica = free[(self._turn + i) % n]
            score = replica.score(now)
            if score < best_score:
                best, best_score = replica, score
        if key is None or not self._s.affinity:
            return best
        sticky = self._sticky.get(key, now)
        if sticky is not None and sticky in free and \
                sticky.score(now) <= best_score + self._s.affinity_slack:
            self.affinity["hit"] += 1
            best = sticky
        else:
            self.affinity["moved" if sticky is not None else "new"] += 1
        self._sticky.put(key, best, now)  # the TTL counts from its last use, not its first
        return best


class Router:
    """The models and their replicas; runs each job's attempts, failing over between them."""

    def __init__(self, routes: Sequence[ModelRoute], settings: UpstreamSettings,
                 on_change: Callable[[], None] | None = None) -> None:
        if not routes:
            raise ValueError("a router needs at least one model")
        self.routes = list(routes)
        self._s = settings
        self.on_change = on_change or (lambda: None)  # the pool's queue looks again
        self._claims: dict[Job, ModelRoute] = {}  # taken by a worker, no replica held yet
        # The caps shared with other processes (the pool sets them): a lease per attempt.
        self.leases: Leases = LocalLeases()
        self.shared = False
        # Called once per attempt that got a first token: (model, replica, seconds).
        self.on_first_token: Callable[[str, str, float], None] = lambda *_: None

    @property
    def default(self) -> ModelRoute:
        """The first configured model: what a request that names none gets."""
        return self.routes[0]

    def names(self) -> list[str]:
        """The models clients may ask for, in configured order (unlearned ones left out)."""
        return [route.name for route in self.routes if route.name]

    async def named(self) -> list[ModelRoute]:
        """The models clients may ask for, after asking the servers of any model without a
        name yet what they call it."""
        if any(not route.name for route in self.routes):
            await self.learn_names()
        return [route for route in self.routes if route.name]

    def find(self, name: str | None) -> ModelRoute:
        """The route for a model name (None or "": the default), or ModelNotFound."""
        if not name:
            return self.default
        for route in self.routes:
            if route.name == name:
                return route
        raise ModelNotFound(f"The model `{name}` does not exist.")

    async def lookup(self, name: str | None) -> ModelRoute:
        """find(), but first ask the servers of an unnamed model what they call it."""
        if name:
            await self.named()
        try:
            return self.find(name)
        except ModelNotFound:
            for route in self.routes:
                if not route.name:  # its servers did not say: it may be this one
                    raise route.unavailable_error() from None
            raise

    async def learn_names(self) -> None:
        """Ask each model without a name yet for its servers' model list (first answer wins);
        not the servers that are out (a hung one would hold each request for the timeout:
        the probes learn the name when one is back)."""
        for route in self.routes:
            for replica in route.replicas if not route.name else ():
                if not replica.routable:
                    continue
                try:
                    route.learn(await replica.client.list_models())
                    break
                except UpstreamError:
                    continue

    def check(self, route: ModelRoute) -> None:
        """Refuse at once (ModelUnavailable) when every replica of the model is out."""
        if not route.available:
            raise route.unavailable_error()

    def can_start(self, job: Job) -> bool:
        """Whether a worker should take this job now: its model has room, or has no replica
        at all (then it fails fast instead of waiting)."""
        route = self._route_of(job)
        if route is None:
            return True  # an unknown model fails when run
        return route.room_for(job.background) or not route.available

    def claim(self, job: Job) -> None:
        """A worker took the job: its model's room is held for it until it holds a replica,
        so the workers looking next do not take jobs that room cannot carry."""
        route = self._route_of(job)
        if route is not None:
            route.starting += 1
            self._claims[job] = route

    def unclaim(self, job: Job) -> None:
        """The job holds a replica now, or ended without one."""
        route = self._claims.pop(job, None)
        if route is not None:
            route.starting -= 1

    def _route_of(self, job: Job) -> ModelRoute | None:
        try:
            return self.find(job.model)
        except ModelNotFound:
            return None

    def changed(self) -> None:
        """Health or load changed: waiting attempts and the queue look again."""
        for route in self.routes:
            route.wake()
        self.on_change()

    async def run(self, job: Job, attempt: Attempt,
                  before_attempt: Callable[[], Any] | None = None) -> Ending:
        """Run the job's attempts: each on a replica of its model, another one after a failure
        before the first token (within `retries`); never after the first token."""
        route = self.find(job.model)
        tried: list[Replica] = []
        timed_out: set[Replica] = set()  # never tried again for this job
        ticket = job.lease if self.shared else None
        gate = None if ticket is None else self._gate(ticket)
        while True:
            replica = await route.acquire(job.affinity, tried, timed_out, gate)
            self.unclaim(job)
            job.replica = replica.label
            progress = Progress()
            try:
                if before_attempt is not None:
                    await before_attempt()
                begun = time.monotonic()
                served = route.served_name or await self._learn(route, replica)
                ending = await attempt(replica.client, served, progress)
            except Retryable as retry:
                replica.failed(retry.reason, str(retry.error), route.others_routable(replica))
                error: UpstreamError = retry.error
                reason = retry.reason
            except UpstreamRejected as err:
                fault = _REPLICA_FAULTS.get(err.status)
                if fault == "model" and "model" not in err.detail.lower():
                    fault = None  # a 404 about something else (a path a proxy lacks): ours
                if fault is None:  # the request's own fault: the replica is fine
                    replica.succeeded(None)
                    raise
                replica.failed(fault, f"answered {err.status}: {err.detail}"[:200])
                error, reason = err, fault
            except UpstreamError as err:  # after the first token: never retried
                replica.failed("stream", str(err), route.others_routable(replica))
                raise
            else:
                ttft = None if progress.first is None else max(0.0, progress.first - begun)
                replica.succeeded(ttft)
                if ttft is not None:
                    self.on_first_token(route.name, replica.label, ttft)
                return ending
            finally:
                if ticket is not None:
                    self.leases.stop(ticket)
                route.release(replica)
                if replica.state != "healthy":
                    self.on_change()
            tried.append(replica)
            if reason == "timeout":
                timed_out.add(replica)
            await self._before_retry(job, route, tried, timed_out, error)

    def _gate(self, ticket: Ticket) -> Gate:
        """The lease step of one job's attempts."""
        def gate(slots: Sequence[Slot]) -> Awaitable[int | None]:
            return self.leases.start(ticket, slots)
        return gate

    async def _before_retry(self, job: Job, route: ModelRoute, tried: list[Replica],
                            timed_out: set[Replica], error: UpstreamError) -> None:
        """Raise `error` if the retry budget is spent or only replicas that timed out for this
        job are left (a timeout is never retried on the replica that timed out); else wait if
        only tried replicas are left."""
        attempts = len(tried)
        others = [r for r in route.replicas if r.routable and r not in tried]
        if attempts > self._s.retries or (timed_out and not any(
                r.routable and r not in timed_out for r in route.replicas)):
            raise error
        if others:
            job.failovers += 1
            route.failovers += 1
        log.info("model %s: attempt %d on %s failed (%s); trying %s", route.name, attempts,
                 tried[-1].label, error, "another replica" if others else "again")
        if not others and route.available:  # none routable: acquire refuses at once
            backoff = self._s.retry_backoff_s * 2 ** (attempts - 1)
            await asyncio.sleep(backoff * (0.5 + random.random()))

    async def _learn(self, route: ModelRoute, replica: Replica) -> str:
        """The served name of a model configured without one, asked of the replica."""
        try:
            route.learn(await replica.client.list_models())
        except UpstreamRejected as err:
            raise UpstreamRejected(str(err), err.status, "cannot list the models") from err
        except UpstreamError as err:
            raise Retryable(err, "connect") from err
        if not route.served_name:
            raise UpstreamError("the model server lists no model")
        return route.served_name
