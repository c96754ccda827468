"""A chat turn: a server-side object that lives apart from any HTTP connection.

Its job (in the worker pool) feeds it synchronously; at the job's end the chat service (its
owner) stores the outcome; a follower (the HTTP handler) reads its events.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from workers import job as jobs

from ..storage.rows import MessageRow

QUEUE_POLL_S = 0.5  # how often a waiting follower re-reads its queue position


@dataclass(frozen=True, slots=True)
class Queued:
    """The job is waiting; `position` jobs will be served before it."""

    position: int


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the reply."""

    text: str


@dataclass(frozen=True, slots=True)
class Done:
    """The reply is complete and stored."""

    message: MessageRow
    usage: dict[str, Any]
    finish_reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The turn failed; `message` is the stored partial reply, if any was generated."""

    error: Exception
    message: MessageRow | None


TurnEvent = Queued | Delta | Done | Failed
Outcome = jobs.Finished | jobs.Failed


class Turn:
    """One accepted chat turn: its stored user message, its job and what it has produced."""

    def __init__(self, conversation_id: int, user_message: MessageRow, job: jobs.Job,
                 position: Callable[[jobs.Job], int | None],
                 on_end: Callable[[Turn, Outcome], None]) -> None:
        self.conversation_id = conversation_id
        self.user_message = user_message
        self.job = job
        self.outcome: Outcome | None = None  # how the job ended, once it has
        self._position = position
        self._on_end = on_end
        self._events: deque[TurnEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        job.events = self  # the worker's events come straight here: no task hop per delta

    def put_nowait(self, item: jobs.Event) -> None:
        """The job's event sink: deltas go to the follower, the end to the owner."""
        if isinstance(item, jobs.Delta):
            self.push(Delta(item.text))
        elif isinstance(item, (jobs.Finished, jobs.Failed)) and self.outcome is None:
            self.outcome = item
            self._on_end(self, item)

    def push(self, event: TurnEvent) -> None:
        """Hand an event to the follower."""
        self._events.append(event)
        _wake(self._waiter)

    async def follow(self) -> AsyncGenerator[TurnEvent, None]:
        """Queue positions while waiting, then deltas, then Done or Failed (reply stored).

        A follower that leaves early (its client went away) stops the turn's job; the
        owner then stores what was generated.
        """
        last: int | None = None
        try:
            while True:
                if not self._events:
                    if self.job.state == "queued":
                        position = self._position(self.job)
                        if position is not None and position != last:
                            last = position
                            yield Queued(position)
                            continue
                    await self._wait(QUEUE_POLL_S if self.job.state == "queued" else None)
                    continue
                event = self._events.popleft()
                if isinstance(event, Delta) and self._events and isinstance(self._events[0], Delta):
                    event = self._merge(event)  # a slow reader gets fewer, larger pieces
                yield event
                if isinstance(event, (Done, Failed)):
                    return
        finally:
            self.job.cancel()  # a no-op once the job is done

    def _merge(self, first: Delta) -> Delta:
        texts = [first.text]
        while self._events and isinstance(self._events[0], Delta):
            texts.append(self._events.popleft().text)  # type: ignore[union-attr]
        return Delta("".join(texts))

    async def _wait(self, timeout: float | None) -> None:
        """Until the next event (or `timeout`): a bare future, the cheapest wait there is."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
