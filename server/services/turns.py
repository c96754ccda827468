"""A chat turn: a server-side object that lives apart from any HTTP connection.

Its job (in the worker pool) feeds it synchronously; at the job's end the chat service (its
owner) stores the outcome; any number of followers (HTTP handlers: the one that started it, a
reloaded page, a second tab) read its events, each from where it wants. Events of the reply
are numbered: the deltas 1, 2, 3 ... as they came from the model, the end the next number.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from workers import job as jobs

from ..storage.rows import MessageRow

QUEUE_POLL_S = 0.5  # how often a waiting follower re-reads its queue position
# What a finished turn's job asks for: nothing. Its prompt (the history: kilobytes) is not
# kept while the turn stays followable, only its reply.
_SENT = jobs.CompletionRequest([], 0, 0.0)


class _Discard:
    """Where a finished job's events would go: nowhere (the job holds no path back to its
    turn, so a finished turn is freed the moment the registry lets it go)."""

    def put_nowait(self, item: jobs.Event) -> None:
        """Drop it."""


_DISCARD = _Discard()


@dataclass(frozen=True, slots=True)
class Queued:
    """The job is waiting; `position` jobs will be served before it."""

    position: int


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the reply; `id` is the number of the last model event it holds."""

    text: str
    id: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    """The reply is complete and stored."""

    message: MessageRow
    usage: dict[str, Any]
    finish_reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The turn failed; `message` is the stored reply (partial, or empty with the error), if
    one could be stored."""

    error: Exception
    message: MessageRow | None


TurnEvent = Queued | Delta | Done | Failed
Outcome = jobs.Finished | jobs.Failed
Hook = Callable[["Turn"], None]


class Followable(Protocol):
    """A turn as its followers see it: running (Turn) or finished and kept a while (Replay)."""

    id: str
    user_id: int
    conversation_id: int
    user_message: MessageRow

    @property
    def model(self) -> str:
        """The configured model's name ("" for an unnamed default)."""

    @property
    def end_id(self) -> int:
        """The number of the end event."""

    @property
    def running(self) -> bool:
        """Whether its reply is still being generated or stored."""

    def follow(self, after: int = 0) -> AsyncGenerator[TurnEvent, None]:
        """Its events after event number `after`."""


class Replay:
    """A finished turn kept for followers: only its reply, its events' ends and its last
    event (a few objects, none the garbage collector has to walk but the end's own)."""

    __slots__ = ("_end", "_ends", "_text", "conversation_id", "id", "model", "user_id",
                 "user_message")

    def __init__(self, turn: Turn, text: str, ends: list[int], end: Done | Failed) -> None:
        self.id, self.user_id, self.model = turn.id, turn.user_id, turn.model
        self.conversation_id, self.user_message = turn.conversation_id, turn.user_message
        self._text, self._ends, self._end = text, array("q", ends), end

    @property
    def end_id(self) -> int:
        """The number of the end event."""
        return len(self._ends) + 1

    @property
    def running(self) -> bool:
        """Never: it has ended."""
        return False

    async def follow(self, after: int = 0) -> AsyncGenerator[TurnEvent, None]:
        """What came after event `after`, in one piece, then the end."""
        count = len(self._ends)
        seen = max(0, min(after, count))
        if seen < count:
            yield Delta(self._text[self._ends[seen - 1] if seen else 0:], count)
        yield self._end


class Turn:
    """One accepted chat turn: its stored user message, its job and what it has produced."""

    def __init__(self, turn_id: str, conversation_id: int, user_message: MessageRow,
                 job: jobs.Job, position: Callable[[jobs.Job], int | None],
                 on_end: Callable[[Turn, Outcome], None], user_id: int = 0,
                 key_id: int | None = None, on_attach: Hook | None = None,
                 on_detach: Hook | None = None) -> None:
        self.id = turn_id
        self.user_id = user_id
        self.key_id = key_id  # the API key that started it, if any (usage is counted per key)
        self.conversation_id = conversation_id
        self.user_message = user_message
        self.job = job
        self.outcome: Outcome | None = None  # how the job ended, once it has
        self.end: Done | Failed | None = None  # the last event, once the outcome is stored
        self.followers = 0
        self.history_full = False  # its prompt left older turns out for the history budget
        # A new message with nothing before it (not an edit or a regenerate): the
        # conversation's first exchange, which may ask for a generated title.
        self.first_exchange = False
        self.grace: asyncio.TimerHandle | None = None  # the owner's timer while unfollowed
        # Shared with other nodes: each delta is copied there too (number, text).
        self.mirror: Callable[[Turn, int, str], None] | None = None
        # The reply's pieces are the job's own (one per delta event: `job.partial`), joined
        # into one string once the turn has ended; `_ends[i]` is the reply's length after
        # event i + 1, so a follower can start after any event.
        self._pieces = job.partial
        self._ends: list[int] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._position = position
        self._on_end = on_end
        self._on_attach = on_attach
        self._on_detach = on_detach
        job.events = self  # the worker's events come straight here: no task hop per delta

    @property
    def end_id(self) -> int:
        """The number of the end event (after the last delta)."""
        return len(self._ends) + 1

    @property
    def model(self) -> str:
        """The configured model's name ("" for an unnamed default)."""
        return self.job.model

    def replay(self) -> Replay:
        """What is kept of the turn once it has ended (its last event pushed)."""
        assert self.end is not None
        return Replay(self, self._pieces[0] if self._pieces else "", self._ends, self.end)

    @property
    def running(self) -> bool:
        """Whether the reply is still being generated or stored."""
        return self.end is None

    def put_nowait(self, item: jobs.Event) -> None:
        """The job's event sink: deltas to the followers, the end to the owner."""
        if isinstance(item, jobs.Delta):
            self._ends.append((self._ends[-1] if self._ends else 0) + len(item.text))
            if self.mirror is not None:
                self.mirror(self, len(self._ends), item.text)
            self._wake()
        elif isinstance(item, (jobs.Finished, jobs.Failed)) and self.outcome is None:
            self.outcome = item
            self._on_end(self, item)
        elif isinstance(item, jobs.Started):
            self._wake()  # followers stop showing a queue position

    def push(self, end: Done | Failed) -> None:
        """The owner stored the outcome: this is the turn's last event."""
        text = "".join(self._pieces)
        self._pieces = self.job.partial = [text] if text else []  # one string from now on
        # Kept for followers a while: keep the reply, let go of the rest, and break the
        # turn <-> job cycle, so no garbage collection pass is needed to free it later.
        job = self.job
        job.request, job.events, job.on_cancel_queued, job.task = _SENT, _DISCARD, None, None
        self.end = end
        self._wake()

    async def follow(self, after: int = 0) -> AsyncGenerator[TurnEvent, None]:
        """The events after event number `after`: queue positions while waiting, the reply
        (what came since, in one piece, then as it comes), then Done or Failed.

        A follower that leaves early does not stop the turn: the owner hears that nobody
        follows it any more and decides (a grace period, then a stop).
        """
        self.followers += 1
        if self._on_attach is not None:
            self._on_attach(self)
        seen = max(0, min(after, len(self._ends)))
        last: int | None = None
        try:
            while True:
                count = len(self._ends)
                if seen < count:
                    yield Delta(self._text(seen, count), count)
                    seen = count
                    continue
                if self.end is not None:
                    yield self.end
                    return
                if self.job.state == "queued":
                    position = self._position(self.job)
                    if position is not None and position != last:
                        last = position
                        yield Queued(position)
                        continue
                await self._wait(QUEUE_POLL_S if self.job.state == "queued" else None)
        finally:
            self.followers -= 1
            if self.followers == 0 and self.end is None and self._on_detach is not None:
                self._on_detach(self)

    def _text(self, start: int, stop: int) -> str:
        """The reply's text from after event `start` to the end of event `stop`."""
        if self.end is None:  # one piece per event still
            return "".join(self._pieces[start:stop])
        text = self._pieces[0] if self._pieces else ""
        return text[self._ends[start - 1] if start else 0:self._ends[stop - 1]]

    async def _wait(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout, _wake, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _wake(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
