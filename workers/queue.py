"""The one bounded job queue, served round-robin across owners so no one starves the rest."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable, Iterator

from .job import Job


class _Lanes:
    """Per-owner FIFO lanes; the dict's order is the rotation order."""

    def __init__(self) -> None:
        self.lanes: dict[Hashable, deque[Job]] = {}
        self.size = 0

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

    def pop(self) -> Job:
        owner = next(iter(self.lanes))
        lane = self.lanes.pop(owner)
        job = lane.popleft()
        if lane:
            self.lanes[owner] = lane  # to the back of the rotation
        self.size -= 1
        return job

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
    PriorityQueue does)."""

    _queue: _Lanes
    _unfinished_tasks: int  # asyncio.Queue's own counters, kept right when a job is removed
    _finished: asyncio.Event

    def _init(self, maxsize: int) -> None:
        self._queue = _Lanes()

    def _put(self, item: Job) -> None:
        item.on_cancel_queued = self.remove
        self._queue.push(item)

    def _get(self) -> Job:
        return self._queue.pop()

    def remove(self, job: Job) -> bool:
        """Take a waiting job out (its client left); True if it was still queued."""
        if not self._queue.remove(job):
            return False
        self._unfinished_tasks -= 1
        if self._unfinished_tasks == 0:
            self._finished.set()
        self._wakeup_next(self._putters)  # type: ignore[attr-defined]
        return True

    def owner_count(self, owner: Hashable) -> int:
        """How many jobs this owner has waiting."""
        lane = self._queue.lanes.get(owner)
        return len(lane) if lane else 0

    def jobs_of(self, owner: Hashable) -> list[Job]:
        """This owner's waiting jobs, in order (a copy: cancelling one removes it)."""
        return list(self._queue.lanes.get(owner, ()))

    def position(self, job: Job) -> int | None:
        """How many queued jobs will be served before this one; None if not queued."""
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
        """Remove and return every waiting job (at shutdown)."""
        jobs: list[Job] = []
        while not self.empty():
            jobs.append(self.get_nowait())
            self.task_done()
        return jobs
