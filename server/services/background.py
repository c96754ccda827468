"""Background jobs: low-priority model calls through the chat queue (titles, summaries of
older turns, memory suggestions), each ending in its text, or None.

They never delay a chat turn: the queue serves them only when no interactive job may start,
on at most `background.share` of the workers, and drops them (never an error for the user)
when `background.max_waiting` already wait. Nothing of theirs is stored here: the caller
decides what to keep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Hashable
from typing import Any

from workers.errors import JobCancelled, ShuttingDown
from workers.job import CompletionRequest, Event, Failed, Finished, Job
from workers.pool import WorkerPool

from .metrics import Metrics


class FollowUp:
    """The base of what runs after a stored reply (titles, summaries, suggestions): each piece
    of work in a task of its own, never awaited by the turn; `close` waits for them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` in the background, kept until it ends."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Wait for the work under way (close the background jobs first: their results then
        come at once, so only what is being stored is waited for)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _End:
    """A background job's event sink: only its end counts (deltas are the job's own)."""

    __slots__ = ("job", "kind", "owner", "result")

    def __init__(self, owner: BackgroundService, kind: str,
                 result: asyncio.Future[str | None]) -> None:
        self.owner, self.kind, self.result = owner, kind, result
        self.job: Job | None = None

    def put_nowait(self, item: Event) -> None:
        """Resolve the result at the job's end (synchronously, from the worker)."""
        if isinstance(item, Finished):
            self.owner.ended(self, "done", item.completion.text, item.completion.usage)
        elif isinstance(item, Failed):
            stopped = isinstance(item.error, (JobCancelled, ShuttingDown))
            self.owner.ended(self, "cancelled" if stopped else "failed", None, {})


class BackgroundService:
    """Submits background jobs to the worker pool and hands back their text."""

    def __init__(self, pool: WorkerPool, metrics: Metrics) -> None:
        self._pool = pool
        self._metrics = metrics
        self._jobs: set[Job] = set()  # queued or running: stopped at close
        self._closed = False
        metrics.watch_background(pool.queue.background_waiting,
                                 lambda: pool.queue.background_running)

    def submit(self, kind: str, owner: Hashable, model: str, messages: list[dict[str, str]],
               max_tokens: int, temperature: float = 0.2) -> asyncio.Future[str | None]:
        """Ask `model` ("" = the first) for a reply to `messages` at low priority.

        `kind` is a fixed word for the metrics ("title", "summary", "memory"); `owner` the
        user it is for (background jobs take turns across owners). The future gives the
        whole reply, or None when the job was dropped, failed or was cancelled; cancelling
        the future stops the job.
        """
        result: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        end = _End(self, kind, result)
        job = Job(owner=owner, request=CompletionRequest(messages, max_tokens, temperature),
                  events=end, model=model, background=True)
        end.job = job
        if self._closed or not self._pool.offer(job):
            self._metrics.background_ended(kind, "dropped", {})
            result.set_result(None)
            return result
        self._jobs.add(job)
        result.add_done_callback(lambda done: job.cancel() if done.cancelled() else None)
        return result

    def ended(self, end: _End, outcome: str, text: str | None,
              usage: dict[str, object]) -> None:
        """A job's end: counted once, its result given."""
        if end.job is not None:
            self._jobs.discard(end.job)
            end.job = None  # no job <-> sink cycle left for the collector
        self._metrics.background_ended(end.kind, outcome, usage)
        if not end.result.done():
            end.result.set_result(text)

    def jobs(self) -> list[Job]:
        """The background jobs queued or running now."""
        return list(self._jobs)

    async def close(self) -> None:
        """Stop every background job (queued or running); their results become None."""
        self._closed = True
        for job in list(self._jobs):
            job.cancel(ShuttingDown("the server is shutting down"))
