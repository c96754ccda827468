"""A fixed pool of workers: each takes a job off the queue and runs one upstream call at a time."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from .errors import OwnerBlocked, QueueFull, ShuttingDown, UpstreamError, WorkerError
from .job import Delta, Ending, ForwardRequest, Job, Raw, Started
from .leases import Leases, LocalLeases, Ticket
from .pace import Pace
from .queue import FairQueue
from .router import Router
from .stream import Progress
from .upstream import UpstreamClient

log = logging.getLogger(__name__)


@dataclass
class Place:
    """A place held in the queue between admission and submission."""

    owner: Hashable
    pool: WorkerPool
    held: bool = True
    ticket: Ticket | None = None  # its count among the owner's waiting jobs, when shared

    def release(self) -> None:
        """Give the place back (submitting uses it; a failed store must release it)."""
        if self.held:
            self.held = False
            self.pool._release(self.owner)  # noqa: SLF001
        if self.ticket is not None:  # not handed to a job: its shared count goes too
            self.pool.leases.end(self.ticket)
            self.ticket = None


@dataclass
class PoolStats:
    """Counters for health checks, tests and benchmarks."""

    submitted: int = 0
    rejected: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    running: int = 0
    dropped: int = 0  # background jobs not queued: no room among them, closed, or blocked
    paced_by_lease: int = 0  # attempts whose upstream slot came with their (shared) lease


class WorkerPool:
    """Owns the queue and the worker tasks; upstream concurrency never exceeds `workers`, nor
    one replica's `max_concurrency` (the router's)."""

    def __init__(self, router: Router, *, workers: int, max_queue: int,
                 max_per_owner: int = 0, max_running_per_owner: int = 0,
                 rps: float = 100.0, background_share: float = 0.25,
                 background_max_waiting: int = 256, leases: Leases | None = None,
                 pace: Callable[[AsyncLimiter], Pace] | None = None) -> None:
        # max_running_per_owner: how many workers one owner's jobs may hold at once, for jobs
        # that carry no cap of their own (0 = no cap).
        # A worker takes a job only when its model has room, so workers do not pile up
        # waiting on one full model while another's jobs wait behind them.
        # Background jobs may hold at most this share of the workers (at least one).
        self.background_cap = max(1, int(workers * background_share))
        self.queue = FairQueue(max_queue, max_running_per_owner, router.can_start,
                               background_cap=self.background_cap,
                               background_max=background_max_waiting)
        router.on_change = self.queue.kick
        self.stats = PoolStats()
        self.router = router
        # Caps shared with other processes (None: this process alone, today's counts only).
        self.leases: Leases = leases or LocalLeases()
        self.shared = router.shared = leases is not None
        router.leases = self.leases
        self._max_running_per_owner = max_running_per_owner
        self._size = workers
        self._max_per_owner = max_per_owner
        # `rps` upstream requests a second from this process; `pace`, given this limiter
        # (its fallback), may make the rate one shared with other processes and nodes.
        local = AsyncLimiter(rps, 1.0)
        self._limiter: Pace = local if pace is None else pace(local)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed: str | None = None
        self._reserved: Counter[Hashable] = Counter()
        self._active: set[Job] = set()  # running now (to stop an owner's jobs at once)
        # Owners whose new jobs are refused: a request that passed authentication just before
        # its account was disabled must not queue a job after the disabling cancelled theirs.
        self._blocked: dict[Hashable, str] = {}

    @property
    def closed(self) -> str | None:
        """Why the pool takes no new jobs, or None while it does."""
        return self._closed

    @property
    def live_workers(self) -> int:
        """Worker tasks still alive (should always equal the pool size while open)."""
        return sum(1 for t in self._tasks if not t.done())

    def start(self) -> None:
        """Start the worker tasks."""
        self._tasks = [asyncio.create_task(self._work(), name=f"worker-{i}")
                       for i in range(self._size)]

    def reserve(self, owner: Hashable) -> Place:
        """Hold a place in the queue for `owner`, or raise QueueFull / ShuttingDown at once.

        The server reserves before it stores the user's message, so a refusal is instant and
        leaves nothing behind, and a stored message always has its place in the queue.
        """
        self._check_room(owner)
        self._reserved[owner] += 1
        return Place(owner, self)

    async def admit(self, owner: Hashable) -> Place:
        """`reserve`, and with shared caps the owner's waiting jobs counted across every
        process too (QueueFull past `max_per_owner` there): one shared round trip."""
        place = self.reserve(owner)
        if not self.shared:
            return place
        ticket = Ticket(owner)
        try:
            admitted = await self.leases.admit(ticket, self._max_per_owner)
        except BaseException:
            place.release()
            self.leases.end(ticket)
            raise
        if not admitted:
            place.release()
            self.stats.rejected += 1
            raise QueueFull("you already have the most requests waiting that one user may have",
                            per_owner=True)
        place.ticket = ticket
        return place

    def submit(self, job: Job, place: Place | None = None) -> None:
        """Queue a job now (into its reserved place, if any); never waits."""
        ticket = None
        if place is not None:
            ticket, place.ticket = place.ticket, None  # the job's now
            place.release()
        try:
            if self._closed:
                raise ShuttingDown(self._closed)
            if job.owner in self._blocked:
                raise OwnerBlocked(self._blocked[job.owner])
            if place is None:
                self._check_room(job.owner)
        except WorkerError:
            if ticket is not None:
                self.leases.end(ticket)
            raise
        self._ticket(job, ticket)
        self.queue.put_nowait(job)  # room is guaranteed: reservations count as taken
        job.on_cancel_queued = self._cancel_queued
        self.stats.submitted += 1

    def _ticket(self, job: Job, ticket: Ticket | None) -> None:
        """Give the job its claim on the shared caps (when they are shared)."""
        if not self.shared:
            return
        ticket = ticket or Ticket(job.owner)
        ticket.running_cap = self._max_running_per_owner if job.max_running is None \
            else job.max_running
        ticket.weight = job.weight
        ticket.background = job.background
        job.lease = ticket

    def _end(self, job: Job) -> None:
        """The job is over: its shared counts go (a no-op when not shared)."""
        if job.lease is not None:
            self.leases.end(job.lease)
            job.lease = None

    def _cancel_queued(self, job: Job) -> bool:
        """Take a waiting job out of the queue (its client left), its shared counts too."""
        removed = self.queue.remove(job)
        if removed:
            self._end(job)
        return removed

    def offer(self, job: Job) -> bool:
        """Queue a background job if there is room for it among the background ones; never
        waits, never raises. False (counted as dropped) when closed, the owner is blocked or
        `background_max_waiting` jobs wait: a background job is worth nothing to wait for."""
        if self._closed or job.owner in self._blocked or not self.queue.put_background(job):
            self.stats.dropped += 1
            return False
        job.on_cancel_queued = self._cancel_queued
        self._ticket(job, None)
        self.stats.submitted += 1
        return True

    def _check_room(self, owner: Hashable) -> None:
        if self._closed:
            raise ShuttingDown(self._closed)
        if owner in self._blocked:
            raise OwnerBlocked(self._blocked[owner])
        if self._max_per_owner and \
                self.queue.owner_count(owner) + self._reserved[owner] >= self._max_per_owner:
            self.stats.rejected += 1
            raise QueueFull("you already have the most requests waiting that one user may have",
                            per_owner=True)
        if self.queue.qsize() + self._reserved.total() >= self.queue.maxsize:
            self.stats.rejected += 1
            raise QueueFull("the chat queue is full, try again shortly")

    def _release(self, owner: Hashable) -> None:
        self._reserved[owner] -= 1
        if self._reserved[owner] <= 0:
            del self._reserved[owner]

    def cancel_owner(self, owner: Hashable, error: WorkerError, block: bool = False) -> int:
        """Stop every queued and running job of one owner (an account disabled or deleted);
        with `block`, refuse their new jobs until `unblock_owner`. How many were stopped."""
        if block:
            self._blocked[owner] = str(error)
        jobs = self.queue.jobs_of(owner) + [j for j in self._active if j.owner == owner]
        for job in jobs:
            job.cancel(error)
        return len(jobs)

    def unblock_owner(self, owner: Hashable) -> None:
        """Take an owner's jobs again (their account was enabled)."""
        self._blocked.pop(owner, None)

    def close_intake(self, reason: str = "the server is shutting down") -> None:
        """Refuse new jobs and fail every queued one; running interactive jobs go on, running
        background ones are stopped (their workers are free for the interactive ones)."""
        self._closed = reason
        for job in self.queue.drain():
            self._end(job)
            job.fail(ShuttingDown(reason))
        for job in [j for j in self._active if j.background]:
            job.cancel(ShuttingDown(reason))

    async def stop(self) -> None:
        """Cancel the workers (and so any job still running)."""
        self.close_intake()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            self.queue.task_done()
            self.router.claim(job)  # before another worker asks whether its model has room
            try:
                if job.state == "queued":  # else cancelled while waiting: never sent upstream
                    await self._hold(job)
            finally:
                self._end(job)
                self.router.unclaim(job)
                self.queue.done(job)  # its owner may run another now

    async def _hold(self, job: Job) -> None:
        """Run one job to its end on this worker."""
        job.state = "running"
        job.task = asyncio.create_task(self._run(job))
        self.stats.running += 1
        self._active.add(job)
        try:
            await asyncio.wait({job.task})
        except asyncio.CancelledError:
            job.task.cancel()
            await asyncio.wait({job.task})
            raise
        finally:
            self.stats.running -= 1
            self._active.discard(job)

    async def _pace(self, job: Job) -> None:
        """Before each attempt: the wait for the slot of the upstream rate its lease took
        (one round trip for both, with Redis), else a slot of the pool's own pace."""
        ticket = job.lease
        wait = None if ticket is None else ticket.paced
        if ticket is None or wait is None:
            await self._limiter.acquire()
            return
        ticket.paced = None  # one slot per attempt: a retry's lease takes its own
        self.stats.paced_by_lease += 1
        if wait > 0:
            await asyncio.sleep(wait)

    async def _run(self, job: Job) -> None:
        job.emit(Started())
        try:
            request = job.request
            if isinstance(request, ForwardRequest):
                def attempt(client: UpstreamClient, model: str, progress: Progress) \
                        -> Awaitable[Ending]:
                    return client.forward(model, request, lambda data: job.emit(Raw(data)),
                                          progress)
            else:
                def attempt(client: UpstreamClient, model: str, progress: Progress) \
                        -> Awaitable[Ending]:
                    return client.complete(model, request, lambda text: job.emit(Delta(text)),
                                           progress)
            ending = await self.router.run(job, attempt, lambda: self._pace(job))
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            job.fail(ShuttingDown("the job was stopped"))
            raise
        except WorkerError as err:
            self.stats.failed += 1
            job.fail(err)
        except Exception as err:
            log.exception("job failed unexpectedly")
            self.stats.failed += 1
            job.fail(UpstreamError(f"internal error: {type(err).__name__}"))
        else:
            self.stats.completed += 1
            job.finish(ending)
