"""The chat turn: store the user's message, queue the job, follow it, store the reply."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Union

import orjson

from workers.errors import JobCancelled, ShuttingDown, WorkerError
from workers.job import CompletionRequest, Delta, Failed, Finished, Job, Started
from workers.pool import WorkerPool

from .config import Config
from .memory import MemoryManager
from .ratelimit import KeyedRateLimiter, RateLimited
from .storage import Database, DatabaseBusy, StorageError
from .storage.rows import MessageRow

QUEUE_POLL_S = 0.5  # how often a waiting stream re-reads its queue position
STORE_RETRY_S = (0.2, 0.5, 1.0)  # pauses between tries to store a reply while the db is busy
log = logging.getLogger(__name__)


class ChatRejected(Exception):
    """The job could not be queued; the user's message is stored and can be retried."""

    def __init__(self, cause: WorkerError, conversation_id: int, user_message_id: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.conversation_id = conversation_id
        self.user_message_id = user_message_id


@dataclass(slots=True)
class Turn:
    """One accepted chat turn: its stored user message and its queued job."""

    conversation_id: int
    user_message: MessageRow
    job: Job
    settled: bool = False  # the reply, or what there is of it, went to storage (exactly once)


@dataclass(frozen=True, slots=True)
class Queued:
    """The job is waiting; `position` jobs will be served before it."""

    position: int


@dataclass(frozen=True, slots=True)
class Done:
    """The reply is complete and stored."""

    message: MessageRow
    usage: dict[str, Any]
    finish_reason: str


@dataclass(frozen=True, slots=True)
class Error:
    """The turn failed; `message` is the stored partial reply, if any was generated."""

    error: Exception
    message: MessageRow | None


ChatEvent = Union[Queued, Delta, Done, Error]


def title_from(message: str, limit: int = 60) -> str:
    """A conversation title from its first message: the first line, cut at a word."""
    line = " ".join(message.strip().split("\n", 1)[0].split())
    if len(line) <= limit:
        return line or "New chat"
    cut = line[:limit].rsplit(" ", 1)[0] or line[:limit]
    return cut + "…"


class ChatService:
    """Plain async functions behind POST /api/chat; no HTTP in here."""

    def __init__(self, db: Database, memory: MemoryManager, pool: WorkerPool,
                 config: Config) -> None:
        self._db = db
        self._memory = memory
        self._pool = pool
        self._config = config
        self._limiter = KeyedRateLimiter(config.limits.chat_per_user_per_minute)

    async def start(self, user_id: int, message: str | None, conversation_id: int | None,
                    max_tokens: int | None = None, temperature: float | None = None, *,
                    regenerate: bool = False, edit_message_id: int | None = None) -> Turn:
        """Accept a turn: commit the user's message first, then queue the job.

        `regenerate` re-asks the conversation's last user message; `edit_message_id`
        replaces that message's text first. Both drop the replies that followed it.
        """
        retry_after = self._limiter.hit(user_id)
        if retry_after is not None:
            raise RateLimited(retry_after, "chat rate limit reached, slow down")
        place = self._pool.reserve(user_id)  # a full queue refuses here: nothing stored
        try:
            if conversation_id is not None and (regenerate or edit_message_id is not None):
                edit = None if edit_message_id is None else (edit_message_id, message or "")
                stored, history = await self._memory.rewind(user_id, conversation_id, edit)
                conv_id = conversation_id
            else:
                assert message is not None
                conv_id, stored, history = await self._memory.add_user_message(
                    user_id, conversation_id, message, title_from(message))
        except BaseException:
            place.release()
            raise
        llm = self._config.llm
        request = CompletionRequest(
            self._memory.prompt(history, stored["content"]),
            max_tokens if max_tokens is not None else llm.max_tokens,
            temperature if temperature is not None else llm.temperature)
        job = Job(owner=user_id, request=request)
        try:
            self._pool.submit(job, place)
        except WorkerError as err:
            raise ChatRejected(err, conv_id, stored["id"]) from err
        return Turn(conv_id, stored, job)

    async def follow(self, turn: Turn) -> AsyncIterator[ChatEvent]:
        """Queue positions while waiting, then deltas, then Done or Error (reply stored)."""
        job = turn.job
        last: int | None = None
        while True:
            if job.state == "queued":
                position = self._pool.queue.position(job)
                if position is not None and position != last:
                    last = position
                    yield Queued(position)
                try:
                    async with asyncio.timeout(QUEUE_POLL_S):
                        event = await job.events.get()
                except TimeoutError:
                    continue
            else:
                event = await job.events.get()
            if isinstance(event, Started):
                continue
            if isinstance(event, Delta):
                yield job.merge_waiting(event)  # one write to the client, not many
            elif isinstance(event, Finished):
                c = event.completion
                try:
                    stored = await self._keep_complete(turn, event)
                except StorageError as err:  # e.g. the conversation was deleted meanwhile
                    yield Error(err, None)
                    return
                yield Done(stored, c.usage, c.finish_reason)
                return
            elif isinstance(event, Failed):
                yield Error(event.error, await self._keep_partial(turn, event.error, event.partial))
                return

    async def abandon(self, turn: Turn) -> None:
        """The client left: stop the job and store what it produced, unless already stored.

        The job may have finished (or failed) while its last events still waited for the
        client: those are read here, so a complete reply is kept complete.
        """
        if turn.settled:
            return
        job = turn.job
        job.cancel()  # a waiting or running job stops; a finished one is left as it is
        outcome: Finished | Failed | None = None
        while not job.events.empty():
            event = job.events.get_nowait()
            if isinstance(event, (Finished, Failed)):
                outcome = event
        if isinstance(outcome, Finished):
            try:
                await self._keep_complete(turn, outcome)
            except StorageError:
                log.warning("could not store the reply of conversation %d", turn.conversation_id)
            return
        error = outcome.error if outcome is not None else JobCancelled("cancelled")
        await self._keep_partial(turn, error, "".join(job.partial))

    async def _keep_complete(self, turn: Turn, finished: Finished) -> MessageRow:
        c = finished.completion
        stored = await self._store(turn, c.text, "complete",
                                   orjson.dumps(c.usage).decode() if c.usage else None)
        if c.usage:
            stored["usage"] = c.usage
        return stored

    async def _keep_partial(self, turn: Turn, error: Exception, partial: str) -> MessageRow | None:
        turn.settled = True
        if not partial:
            return None
        status = "incomplete" if isinstance(error, (JobCancelled, ShuttingDown)) else "error"
        try:
            return await self._store(turn, partial, status)
        except StorageError:
            return None  # e.g. the conversation was deleted meanwhile: nowhere to keep it

    async def _store(self, turn: Turn, content: str, status: str,
                     usage: str | None = None) -> MessageRow:
        """Store the reply once; a busy database gets a few more tries (the user saw the text)."""
        turn.settled = True
        for delay in STORE_RETRY_S:
            try:
                return await self._memory.append(turn.conversation_id, "assistant", content,
                                                 status, usage)
            except DatabaseBusy:
                await asyncio.sleep(delay)
        return await self._memory.append(turn.conversation_id, "assistant", content, status, usage)
