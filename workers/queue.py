"""The one bounded job queue, served round-robin across owners so no one starves the rest."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterator

from .job import Job


class _Lanes:
    """Per-owner FIFO lanes; the dict's order is the rotation order.

    `taken` sums the weights (sequences asked of the model) of each owner's jobs handed to a
    worker and not yet done: an owner whose next job would take them past their running cap
    is passed over (keeping their turn) until one of their jobs ends. An owner with nothing
    running may always start their next job, so one heavier than the cap runs, alone.
    """

    def __init__(self, max_running: int,
                 can_start: Callable[[Job], bool] | None = None) -> None:
        self.lanes: dict[Hashable, deque[Job]] = {}
        self.can_start = can_start  # whether the job's model has room now (the router's)
        self.size = 0
        self.max_running = max_running  # for jobs that carry no cap of their own; 0 = none
        self.taken: Counter[Hashable] = Counter()

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Job]:
        for lane in self.lanes.values():
            yield from lane

    def push(self, job: Job) -> None:
        lane = self.lanes.get(job.owner)
        if lane is None:
            lane = self.lanes[job.owner] = deque()
        lane.append(job)
        self.size += 1

    def ready(self, owner: Hashable, lane: deque[Job]) -> bool:
        """May a worker take this owner's next job now (does its weight fit their cap)?"""
        head = lane[0]
        cap = self.max_running if head.max_running is None else head.max_running
        running = self.taken[owner]
        if cap and running and running + head.weight > cap:
            return False
        return self.can_start is None or self.can_start(head)

    def next_owner(self) -> Hashable | None:
        """The first owner in the rotation whose next job may run now, or None."""
        # Owners passed over have a job running or wait for room on their job's model: a scan
        # of at most the waiting owners, and in the usual case the first lane is ready.
        for owner, lane in self.lanes.items():
            if self.ready(owner, lane):
                return owner
        return None

    def pop(self) -> Job:
        owner = self.next_owner()
        if owner is None:
            raise asyncio.QueueEmpty
        job = self.take(owner)
        self.taken[owner] += job.weight
        return job

    def take(self, owner: Hashable) -> Job:
        """The owner's next job; the owner goes to the back of the rotation (owners passed
        over stay ahead)."""
        lane = self.lanes.pop(owner)
        job = lane.popleft()
        if lane:
            self.lanes[owner] = lane
        self.size -= 1
        return job

    def done(self, job: Job) -> None:
        self.taken[job.owner] -= job.weight
        if self.taken[job.owner] <= 0:
            del self.taken[job.owner]

    def remove(self, job: Job) -> bool:
        lane = self.lanes.get(job.owner)
        if lane is None:
            return False
        try:
            lane.remove(job)
        except ValueError:
            return False
        if not lane:
            del self.lanes[job.owner]
        self.size -= 1
        return True


class FairQueue(asyncio.Queue[Job]):
    """asyncio.Queue with per-owner round-robin order (overriding _init/_put/_get, as
    PriorityQueue does) and a cap on each owner's running weight (the sequences their
    running jobs ask of the model; a job's `weight`, 1 for most).

    `empty()` means "no job a worker may take now": `get()` waits while every waiting job's
    owner is at their running cap; `qsize()` still counts every waiting interactive job.
    Whoever takes a job calls `done(job)` when it ends, which lets that owner's next job go.

    Background jobs (`job.background`) wait in lanes of their own, put with `put_background`:
    a worker takes one only when no interactive job may start now, and at most
    `background_cap` of them run at once. They take none of the interactive places (`maxsize`,
    `qsize()`, owners' running caps): `background_max` bounds them.
    """

    _queue: _Lanes
    _unfinished_tasks: int  # asyncio.Queue's own counters, kept right when a job is removed
    _finished: asyncio.Event
    _getters: deque[asyncio.Future[None]]

    def __init__(self, maxsize: int = 0, max_running: int = 0,
                 can_start: Callable[[Job], bool] | None = None, *,
                 background_cap: int = 1, background_max: int = 0) -> None:
        super().__init__(maxsize)
        self._queue.max_running = max_running
        self._queue.can_start = can_start
        self._background = _Lanes(0, can_start)
        self.background_cap = max(1, background_cap)
        self.background_max = background_max  # most background jobs waiting; 0 = no bound
        self.background_running = 0

    def _init(self, maxsize: int) -> None:
        self._queue = _Lanes(0)

    def _put(self, item: Job) -> None:
        item.on_cancel_queued = self.remove
        self._queue.push(item)

    def _next(self) -> _Lanes | None:
        """The lanes a worker takes from now: interactive first; background only when no
        interactive job may start and fewer than the cap run."""
        if self._queue.next_owner() is not None:
            return self._queue
        if self.background_running < self.background_cap and \
                self._background.next_owner() is not None:
            return self._background
        return None

    def _get(self) -> Job:
        lanes = self._next()
        if lanes is None:
            raise asyncio.QueueEmpty
        job = lanes.pop()
        job.times.taken = time.monotonic()
        if job.background:
            self.background_running += 1
        # One ending job can free room for several (weights): pass the wake-up along while
        # jobs are ready, as asyncio only wakes one waiting worker per put or done.
        if self._next() is not None:
            self._wakeup_next(self._getters)  # type: ignore[attr-defined]
        return job

    def put_background(self, job: Job) -> bool:
        """Queue a background job unless `background_max` wait already; never waits, never
        raises: False means it was not queued (the caller drops it)."""
        if self.background_max and len(self._background) >= self.background_max:
            return False
        job.background = True
        job.on_cancel_queued = self.remove
        self._background.push(job)
        self._unfinished_tasks += 1
        self._finished.clear()
        self._wakeup_next(self._getters)  # type: ignore[attr-defined]
        return True

    def background_waiting(self) -> int:
        """How many background jobs wait."""
        return len(self._background)

    def empty(self) -> bool:
        """True when no waiting job may be taken now (none waits, their owners are at their
        running cap, or only background jobs wait and their cap is reached)."""
        return self._next() is None

    def kick(self) -> None:
        """Room was made outside the queue (a replica came back): wake a worker if a job may
        go now."""
        if self._getters and not self.empty():
            self._wakeup_next(self._getters)  # type: ignore[attr-defined]

    def running(self, owner: Hashable) -> int:
        """The weight (sequences asked of the model) of this owner's interactive jobs taken
        and not done yet: the number of jobs when each asks for one."""
        return self._queue.taken[owner]

    def done(self, job: Job) -> None:
        """A job taken from the queue has ended: its owner may run another."""
        if job.background:
            self._background.done(job)
            self.background_running -= 1
        else:
            self._queue.done(job)
        if not self.empty():
            self._wakeup_next(self._getters)  # type: ignore[attr-defined]

    def remove(self, job: Job) -> bool:
        """Take a waiting job out (its client left); True if it was still queued."""
        if not (self._background if job.background else self._queue).remove(job):
            return False
        self._unfinished_tasks -= 1
        if self._unfinished_tasks == 0:
            self._finished.set()
        if not job.background:
            self._wakeup_next(self._putters)  # type: ignore[attr-defined]
        return True

    def owner_count(self, owner: Hashable) -> int:
        """How many interactive jobs this owner has waiting."""
        lane = self._queue.lanes.get(owner)
        return len(lane) if lane else 0

    def jobs_of(self, owner: Hashable) -> list[Job]:
        """This owner's waiting jobs, background ones too, in order (a copy: cancelling one
        removes it)."""
        return [*self._queue.lanes.get(owner, ()), *self._background.lanes.get(owner, ())]

    def position(self, job: Job) -> int | None:
        """How many queued jobs will be served before this one; None if not queued.

        The rotation's order; an owner at their running cap also waits for one of their own
        jobs to end, which no count of others' jobs can tell.
        """
        lanes = self._queue.lanes
        lane = lanes.get(job.owner)
        if lane is None:
            return None
        try:
            k = lane.index(job)
        except ValueError:
            return None
        ahead = 0
        before = True  # owners earlier in the rotation also go first in round k
        for owner, other in lanes.items():
            if owner == job.owner:
                before = False
                ahead += k
                continue
            ahead += min(len(other), k) + (1 if before and len(other) > k else 0)
        return ahead

    def drain(self) -> list[Job]:
        """Remove and return every waiting job in rotation order (at shutdown), capped
        owners' too, then the background ones."""
        jobs: list[Job] = []
        for lanes in (self._queue, self._background):
            while lanes.lanes:
                jobs.append(lanes.take(next(iter(lanes.lanes))))
                self.task_done()
        self._wakeup_next(self._putters)  # type: ignore[attr-defined]
        return jobs
