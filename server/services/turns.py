"""A chat turn: a server-side object that lives apart from any HTTP connection.

Its job (in the worker pool) feeds it synchronously; at the job's end the chat service (its
owner) stores the outcome; a follower (the HTTP handler) reads its events.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from workers import job as jobs

from ..storage.rows import MessageRow
from .feed import Feed

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


class Turn(Feed[TurnEvent]):
    """One accepted chat turn: its stored user message, its job and what it has produced."""

    def __init__(self, conversation_id: int, user_message: MessageRow, job: jobs.Job,
                 position: Callable[[jobs.Job], int | None],
                 on_end: Callable[[Turn, Outcome], None], user_id: int = 0,
                 key_id: int | None = None) -> None:
        super().__init__()
        self.user_id = user_id
        self.key_id = key_id  # the API key that started it, if any (usage is counted per key)
        self.conversation_id = conversation_id
        self.user_message = user_message
        self.job = job
        self.outcome: Outcome | None = None  # how the job ended, once it has
        self._position = position
        self._on_end = on_end
        job.events = self  # the worker's events come straight here: no task hop per delta

    def put_nowait(self, item: jobs.Event) -> None:
        """The job's event sink: deltas go to the follower, the end to the owner."""
        if isinstance(item, jobs.Delta):
            self.push(Delta(item.text))
        elif isinstance(item, (jobs.Finished, jobs.Failed)) and self.outcome is None:
            self.outcome = item
            self._on_end(self, item)

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
                    await self.wait(QUEUE_POLL_S if self.job.state == "queued" else None)
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
