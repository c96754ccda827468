"""A chat job: what to ask the model, and the channel that carries the answer back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .errors import JobCancelled, WorkerError
from .leases import Ticket


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """An OpenAI-style chat completion request, without the model name."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """An OpenAI request passed on as the client sent it, but for the model's served name."""

    path: str  # under the model server's /v1: "/chat/completions" or "/completions"
    body: dict[str, Any]
    stream: bool
    hide_usage: bool  # usage was asked for our accounting only: the client never sees it
    request_id: str


@dataclass(frozen=True, slots=True)
class Ending:
    """How the model ended a reply (its text is the job's to keep)."""

    finish_reason: str
    usage: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished reply."""

    text: str
    finish_reason: str
    usage: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Started:
    """A worker took the job off the queue."""


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the reply."""

    text: str


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes of the model server's answer, passed on untouched (forwarded requests)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Finished:
    """The reply is complete."""

    completion: Completion


@dataclass(frozen=True, slots=True)
class Failed:
    """The job ended without a complete reply; `partial` is what had been generated."""

    error: WorkerError
    partial: str


Event = Started | Delta | Raw | Finished | Failed
State = Literal["queued", "running", "done"]


class EventSink(Protocol):
    """Where a job's events go: an asyncio.Queue by default, or the follower's own object."""

    def put_nowait(self, item: Event) -> None:
        """Take one event, synchronously."""


@dataclass(slots=True)
class Times:
    """When the job was queued, taken off the queue by a worker, started, answered first, and
    ended (monotonic s)."""

    queued: float
    taken: float | None = None  # stamped by the queue the moment it hands the job out
    started: float | None = None
    first: float | None = None
    ended: float | None = None

    @property
    def upstream_s(self) -> float:
        """Time spent with the model server (0 if it never got there)."""
        if self.started is None:
            return 0.0
        return (self.ended or time.monotonic()) - self.started


@dataclass(eq=False)
class Job:
    """One request on its way through the queue; knows nothing of HTTP or storage."""

    owner: Hashable
    request: CompletionRequest | ForwardRequest = field(repr=False)
    state: State = "queued"
    events: EventSink = field(default_factory=lambda: asyncio.Queue[Event](), repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    partial: list[str] = field(default_factory=list, repr=False)  # the reply so far, kept once
    # Set by the queue: removes the job while it waits.
    on_cancel_queued: Callable[[Job], bool] | None = field(default=None, repr=False)
    times: Times = field(default_factory=lambda: Times(time.monotonic()), repr=False)
    # Most of this owner's jobs that may run at once (the user's cap, set by whoever queues
    # it); None = the pool's default, 0 = no cap.
    max_running: int | None = None
    # How many sequences the job asks the model for (an OpenAI request's n or best_of): what
    # it counts against its owner's running cap, since vLLM carries each as a sequence.
    weight: int = 1
    model: str = ""  # the configured model's name ("" = the first)
    # Jobs with the same key go to the same replica while it is healthy and not much busier
    # (its prefix cache then holds their common prompt): a conversation, a /v1 user.
    affinity: Hashable | None = None
    replica: str | None = field(default=None, repr=False)  # the replica tried last (shown URL)
    failovers: int = 0  # attempts moved to another replica before the first token
    # Low priority (a title, a summary): served only when no interactive job may start, never
    # past the queue's background cap, and dropped rather than refused when there is no room.
    background: bool = False
    # Its claim on the caps a deployment shares (set by the pool when leases are shared).
    lease: Ticket | None = field(default=None, repr=False)

    def emit(self, event: Event) -> None:
        """Send an event to whoever waits for the job."""
        if isinstance(event, Delta):
            self.partial.append(event.text)
            self.times.first = self.times.first or time.monotonic()
        elif isinstance(event, Raw):
            self.times.first = self.times.first or time.monotonic()
        elif isinstance(event, Started):
            self.times.started = time.monotonic()
        elif isinstance(event, (Finished, Failed)):
            self.state = "done"
            self.times.ended = time.monotonic()
        self.events.put_nowait(event)

    def finish(self, ending: Ending) -> None:
        """End the job with its complete reply (the deltas it emitted, joined)."""
        if self.state != "done":
            self.emit(Finished(Completion("".join(self.partial), ending.finish_reason,
                                          ending.usage)))

    def fail(self, error: WorkerError) -> None:
        """End the job with an error, keeping what was generated."""
        if self.state != "done":
            self.emit(Failed(error, "".join(self.partial)))

    def cancel(self, error: WorkerError | None = None) -> None:
        """Stop the job: leave the queue, or abort the running upstream call."""
        if self.state == "queued" and self.on_cancel_queued is not None:
            self.on_cancel_queued(self)
        elif self.state == "running" and self.task is not None:
            self.task.cancel()
        self.fail(error or JobCancelled("the request was cancelled"))
