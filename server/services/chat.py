"""The chat turn: store the user's message, queue the job, and own the turn to its end."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable
from typing import Any

import orjson

from workers.errors import JobCancelled, ModelNotFound, ShuttingDown, WorkerError
from workers.job import CompletionRequest, Finished, Job
from workers.pool import WorkerPool
from workers.router import ModelRoute

from ..config import ChatConfig, LLMConfig, ModelConfig
from ..storage import ConversationBusy, DatabaseBusy, StorageError, TurnStored
from ..storage.rows import MessageRow
from .caps import Caps, Overrides
from .failures import failure_of
from .limits import Rate, check_and_admit
from .marks import TurnMarks
from .memory import MemoryManager
from .metrics import Metrics
from .profile import Profile
from .prompt import PromptAssembler
from .registry import TurnNotFound, TurnRegistry
from .sharing import NODE_LOST, TurnSharing, TurnUnavailable, encode_end
from .text import visible
from .turns import Done, Failed, Followable, Outcome, Turn
from .usage import UsageMeter

STORE_RETRY_S = (0.2, 0.5, 1.0)  # pauses between tries to store a reply while the db is busy
log = logging.getLogger(__name__)
TAKEN = ("this server was out of touch with the others for too long: another one ended "
         "the reply and kept what it had received")


class TurnRunning(Exception):
    """A reply is being generated in this conversation: a turn started now would hang from a
    question whose answer is not stored yet (the tree's next message needs a settled leaf)."""


class ChatRejected(Exception):
    """The job could not be queued; the user's message is stored and can be retried."""

    def __init__(self, cause: WorkerError, conversation_id: int, user_message_id: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.conversation_id = conversation_id
        self.user_message_id = user_message_id


# Markdown's block markers at a line's start (headings, quotes, list items) and its emphasis
# and code marks: a title shows the words, not the syntax ("# Plan" -> "Plan").
_BLOCK_MARKS = re.compile(r"^(?:\s*(?:#{1,6}(?=\s)|>|[-*+](?=\s)|\d{1,9}[.)](?=\s)))+\s*")
_INLINE_MARKS = re.compile(r"\*\*|__|~~|`+|(?<![\w*])\*(?=\S)|(?<=\S)\*(?![\w*])")


def title_from(message: str, limit: int = 60) -> str:
    """A conversation title from its first message: its first line of text without
    Markdown's marks (a code fence line is skipped), cut at a word."""
    lines = [ln for ln in message.strip().split("\n")
             if ln.strip() and not ln.lstrip().startswith(("```", "~~~"))]
    first = _INLINE_MARKS.sub("", _BLOCK_MARKS.sub("", lines[0])) if lines else ""
    line = " ".join(visible(first).split())
    if len(line) <= limit:
        return line or "New chat"
    cut = line[:limit].rsplit(" ", 1)[0] or line[:limit]
    return cut + "…"


class ChatService:
    """Accepts turns and owns each one: one task per turn stores its reply, exactly once."""

    def __init__(self, memory: MemoryManager, pool: WorkerPool, defaults: LLMConfig,
                 chat_per_minute: int, meter: UsageMeter, metrics: Metrics,
                 caps: Caps, models: tuple[ModelConfig, ...] = (),
                 config: ChatConfig | None = None, *, prompts: PromptAssembler,
                 marks: TurnMarks) -> None:
        config = config or ChatConfig()
        self.turns = TurnRegistry(config.detached_grace_s, config.finished_turn_ttl_s,
                                  config.max_detached_per_user, self._followed_elsewhere)
        # Turns shared with other nodes (followed and stopped through any of them), when
        # the app has a channel for it (Redis); None: this process alone, as ever.
        self.sharing: TurnSharing | None = None
        self._memory = memory
        self._router = pool.router
        self._models = {model.name: model for model in models}
        self._caps = caps
        self._pool = pool
        self._defaults = defaults
        self.marks = marks
        self._chat_per_minute = chat_per_minute
        self._meter = meter
        self._metrics = metrics
        self._storing: set[asyncio.Task[None]] = set()  # ended, outcome being stored
        # (user, conversation) with a turn from its start until its outcome is stored: one at
        # a time. Keyed by the user too: another user's id must still answer 404, not 409.
        self._busy: set[tuple[int, int]] = set()
        self._prompts = prompts
        # Told of each complete reply once stored (the app adds them: generated titles,
        # summaries of older turns, memory suggestions); each must return at once.
        self.replied: list[Callable[[Turn, MessageRow], None]] = []

    async def start(self, user_id: int, message: str | None, conversation_id: int | None,
                    max_tokens: int | None = None, temperature: float | None = None, *,
                    regenerate: bool = False, edit_message_id: int | None = None,
                    message_id: int | None = None, key_id: int | None = None,
                    limits: Overrides = None, model: str | None = None,
                    settings: dict[str, Any] | None = None) -> Turn:
        """Accept a turn: commit the user's message first, then queue the job.

        A message follows the conversation's active branch. `edit_message_id` stores a new
        version of that message beside it; `regenerate` answers a message again
        (`message_id`, or the question of the reply it names; default: the active branch's
        last). Both start a new branch: what followed stays on the old one. `limits` are the
        user's overrides of the caps. `model` (default: the conversation's, else the first
        configured) becomes the conversation's model. `settings` (checked) are a new
        conversation's own, stored with it in the same transaction and used from this turn.
        """
        held = None if conversation_id is None else (user_id, conversation_id)
        if held is not None:
            if held in self._busy:
                raise TurnRunning("a reply is being generated in this conversation; wait for "
                                  "it to end (or stop it) before sending another turn")
            self._busy.add(held)  # before any await: a parallel start sees it
        try:
            turn = await self._start(user_id, message, conversation_id, max_tokens,
                                     temperature, regenerate, edit_message_id, message_id,
                                     key_id, limits, model, settings)
        except BaseException:
            if held is not None:
                self._busy.discard(held)
            raise
        self._busy.add((user_id, turn.conversation_id))  # a new conversation's too
        return turn

    def check_idle(self, user_id: int, conversation_id: int) -> None:
        """TurnRunning while a turn of this user runs in the conversation (a branch is not
        deleted under a reply being generated)."""
        if (user_id, conversation_id) in self._busy:
            raise TurnRunning("a reply is being generated in this conversation; wait for it "
                              "to end (or stop it) first")

    async def _start(self, user_id: int, message: str | None, conversation_id: int | None,
                     max_tokens: int | None, temperature: float | None, regenerate: bool,
                     edit_message_id: int | None, message_id: int | None, key_id: int | None,
                     limits: Overrides, model: str | None,
                     settings: dict[str, Any] | None = None) -> Turn:
        """`start` once the conversation is held for this turn."""
        chosen = self._router.find(model) if model else None  # unknown: refused, nothing kept
        if chosen is None and conversation_id is None:
            chosen = self._router.default
        if chosen is not None:
            self._router.check(chosen)  # every replica out: refused at once, nothing kept
        # The user's chat rate, a new conversation's rate and the monthly budget: one check,
        # all charged or none; then the user's place in the queue (a full queue refuses:
        # nothing stored). With Redis both share one round trip.
        chat = Rate("chat", user_id, self._chat_per_minute, "chat rate limit reached, slow down")
        new = (self._caps.conversation_rate(user_id, limits),) if conversation_id is None else ()
        place = await check_and_admit(
            self._caps.limits, (chat, *new, self._caps.budget(user_id, limits)),
            lambda: self._pool.admit(user_id), self._pool.shared)
        quota = self._caps.quota(limits)
        keep = (chosen.name or None) if chosen is not None else None
        # The turn marks its conversation with its question until its reply is stored: one
        # turn at a time there on every process and node (services/marks.py).
        turn_id = secrets.token_urlsafe(12)
        mark = self.marks.new(turn_id)
        try:
            profile = await self._prompts.profile(user_id)  # cached; read before anything kept
            if conversation_id is not None and edit_message_id is not None:
                stored, history, used = await self._memory.edit(
                    user_id, conversation_id, edit_message_id, message or "", quota, keep, mark)
                conv_id = conversation_id
            elif conversation_id is not None and regenerate:
                stored, history, used = await self._memory.regenerate(
                    user_id, conversation_id, message_id, keep, mark)
                conv_id = conversation_id
            else:
                assert message is not None
                conv_id, stored, history, used = await self._memory.add_user_message(
                    user_id, conversation_id, message, title_from(message), quota, keep, mark,
                    settings if conversation_id is None else None)
        except ConversationBusy as err:
            place.release()
            raise TurnRunning("a reply is being generated in this conversation; wait for it "
                              "to end (or stop it) before sending another turn") from err
        except BaseException as err:
            place.release()
            if isinstance(err, (asyncio.CancelledError, DatabaseBusy)):
                # The write may have committed all the same (it is shielded; a lost commit
                # is not a refusal): a question no turn will answer must not hold its mark.
                task = asyncio.create_task(self.marks.unmark(conversation_id, turn_id))
                self._storing.add(task)  # close() waits for it too
                task.add_done_callback(self._storing.discard)
            raise
        route = chosen or self._route_of(used.model)
        request = self._request(profile, route, used.settings, history, stored["content"],
                                max_tokens, temperature)
        # A conversation's turns go to one replica while it is healthy: its prefix cache
        # then holds the conversation's earlier turns.
        job = Job(owner=user_id, request=request, max_running=self._caps.running(limits),
                  model=route.name, affinity=("conversation", conv_id))
        turn = Turn(turn_id, conv_id, stored, job, self._pool.queue.position,
                    self._ended, user_id, key_id, self.turns.attached, self.turns.detached)
        turn.history_full = history.full  # older turns left out: worth a summary
        turn.first_exchange = edit_message_id is None and not regenerate \
            and stored.get("parent_id") is None
        try:
            if chosen is None:
                self._router.check(route)  # the conversation's model, known only now
            self._pool.submit(job, place)
        except WorkerError as err:
            place.release()
            # The message is kept: so is why it got no reply, for a page loaded later.
            if await self._store_quietly(conv_id, stored["id"], "", "error",
                                         route.name or None, err, turn_id) is None:
                await self.marks.unmark(conv_id, turn_id)
            raise ChatRejected(err, conv_id, stored["id"]) from err
        self.turns.add(turn)
        if self.sharing is not None:
            # Its deltas are buffered from the first; shared once registered (one round
            # trip, before the client hears of the turn). Shielded: the job runs anyway.
            self.sharing.attach(turn)
            await asyncio.shield(self.sharing.register(turn))
        return turn

    async def find(self, user_id: int, turn_id: str) -> Followable:
        """The user's turn, running or just ended, here or on another node (TurnNotFound if
        none; TurnUnavailable if another node may have it and cannot be asked)."""
        try:
            return self.turns.find(user_id, turn_id)
        except TurnNotFound:
            if self.sharing is None:
                raise
            remote = await self.sharing.find(user_id, turn_id)
            if remote is None:
                raise
            return remote

    async def stop(self, user_id: int, turn_id: str) -> bool:
        """Stop the user's turn (TurnNotFound if none), on whichever node runs it: its
        generation is aborted and what it produced is stored `incomplete`. False if it had
        ended already."""
        try:
            turn = self.turns.find(user_id, turn_id)
        except TurnNotFound:
            if self.sharing is None:
                raise
            stopped = await self.sharing.stop(user_id, turn_id)
            if stopped is None:
                raise
            return stopped
        if not isinstance(turn, Turn) or turn.outcome is not None:
            return False  # ended already
        turn.job.cancel(JobCancelled("stopped by the user"))
        return True

    def stop_here(self, turn_id: str) -> None:
        """Another node relayed a user's stop of a turn running here."""
        turn = self.turns.running_by_id(turn_id)
        if turn is not None and turn.outcome is None:
            turn.job.cancel(JobCancelled("stopped by the user"))

    async def _followed_elsewhere(self, turn: Turn) -> bool:
        """Whether a follower on another node keeps the unfollowed-here turn going."""
        if turn.mirror is None or self.sharing is None:
            return False
        try:
            return await self.sharing.channel.followed(turn.id)
        except TurnUnavailable:  # unreachable: nobody can be following through it
            return False

    async def store_orphan(self, conversation_id: int, parent_id: int, text: str,
                           model: str | None, turn: str) -> MessageRow | None:
        """Store a dead node's partial reply `incomplete`, or with no text an empty `error`
        one that says why, like any failed turn (None: nowhere to keep it; TurnStored: that
        node had stored it). Either ends the conversation's mark, and is the turn's one
        outcome: the node, if it was only out of touch, stores nothing more."""
        if text:
            return await self._store_quietly(conversation_id, parent_id, text, "incomplete",
                                             model, None, turn)
        return await self._store_quietly(conversation_id, parent_id, "", "error", model,
                                         JobCancelled(NODE_LOST), turn)

    def running_turn_id(self, conversation_id: int) -> str | None:
        """The id of the turn generating a reply in this conversation now, if any (here)."""
        turn = self.turns.running_in(conversation_id)
        return turn.id if turn is not None else None

    async def running_turn_ids(self, conversation_ids: list[int]) -> list[str | None]:
        """The turn generating a reply in each of the user's conversations now, on this
        node or another (only this node's while the shared store is down)."""
        here = [self.running_turn_id(c) for c in conversation_ids]
        if self.sharing is None or all(here) or not conversation_ids:
            return here
        try:
            shared = await self.sharing.channel.running_in(conversation_ids)
        except TurnUnavailable:
            return here
        return [mine or other for mine, other in zip(here, shared, strict=True)]

    async def models(self) -> list[dict[str, object]]:
        """The models a chat may use, the default first, and whether each answers now."""
        default = self._router.default
        return [{"name": route.name, "default": route is default, "available": route.available}
                for route in await self._router.named()]

    def _request(self, profile: Profile, route: ModelRoute, own: dict[str, Any],
                 history: list[dict[str, str]], message: str, max_tokens: int | None,
                 temperature: float | None) -> CompletionRequest:
        """What the model is asked: the settings by precedence, with the user's memories
        (see PromptAssembler.settings), then the history and the new message."""
        turn = self._prompts.settings(profile, route.name, own, max_tokens, temperature)
        return CompletionRequest(self._memory.prompt(history, message, turn.system),
                                 turn.max_tokens, turn.temperature)

    def _route_of(self, model: str | None) -> ModelRoute:
        """The conversation's model, or the first one if it has none (or it is gone)."""
        try:
            return self._router.find(model)
        except ModelNotFound:
            return self._router.default

    def running_marks(self) -> list[tuple[int, str]]:
        """(conversation, turn) of each turn running here, for renewing their marks."""
        return [(turn.conversation_id, turn.id) for turn in self.turns.running()]

    async def close(self) -> None:
        """Stop every unfinished turn and wait until each has stored what it generated."""
        for turn in self.turns.running():
            turn.job.cancel(ShuttingDown("the server is shutting down"))
        await asyncio.gather(*self._storing, return_exceptions=True)

    def _ended(self, turn: Turn, outcome: Outcome) -> None:
        """The job ended (called by the turn, synchronously): store its outcome in a task of
        its own, shielded from whoever follows the turn."""
        self.turns.ended(turn)
        self._metrics.job_ended(turn.job, outcome)
        if isinstance(outcome, Finished):
            self._meter.record(turn.user_id, turn.key_id, outcome.completion.usage)
        task = asyncio.create_task(self._own(turn, outcome))
        self._storing.add(task)
        task.add_done_callback(self._storing.discard)

    async def _own(self, turn: Turn, outcome: Outcome) -> None:
        """Store the outcome once, then tell the followers (here and on other nodes)."""
        sharing = self.sharing if turn.mirror is not None else None
        try:
            # Stored under the turn's id, once: a node judged dead while it was only out of
            # touch finds another node has ended its turn (the database decides).
            event = await self._settle(turn, outcome)
        except TurnStored:  # ...and that store ended the conversation's mark
            event = Failed(JobCancelled(TAKEN), None)
        except Exception:  # whatever happens, the follower gets an end
            log.exception("storing the reply of conversation %d failed", turn.conversation_id)
            event = Failed(StorageError("the reply could not be stored"), None)
        if event.message is None:
            # No reply stored: the conversation is free all the same.
            await self.marks.unmark(turn.conversation_id, turn.id)
        # The leaf is settled: the next turn may come.
        self._busy.discard((turn.user_id, turn.conversation_id))
        turn.push(event)
        self.turns.finished(turn)
        if sharing is not None:
            sharing.channel.end(turn.id, encode_end(event), turn.conversation_id)

    async def _settle(self, turn: Turn, outcome: Outcome) -> Done | Failed:
        """Store the outcome under the turn's id (TurnStored: another node did) and make the
        followers' last event of it."""
        if isinstance(outcome, Finished):
            c = outcome.completion
            try:
                stored = await self._store(turn.conversation_id, turn.user_message["id"],
                                           turn.job.model or None, c.text, "complete",
                                           orjson.dumps(c.usage).decode() if c.usage else None,
                                           turn=turn.id)
            except TurnStored:
                raise
            except StorageError as err:  # e.g. the conversation was deleted meanwhile
                return Failed(err, None)
            if c.usage:
                stored["usage"] = c.usage
            for follow_up in self.replied:  # e.g. a generated title after the first reply
                follow_up(turn, stored)
            return Done(stored, c.usage, c.finish_reason)
        # Stopped (by the user, nobody reading, shutdown): what came is kept, if anything.
        # Failed: kept even if empty, with why, so a later page shows the error and Retry.
        stopped = isinstance(outcome.error, (JobCancelled, ShuttingDown))
        if stopped and not outcome.partial:
            return Failed(outcome.error, None)
        kept = await self._store_quietly(
            turn.conversation_id, turn.user_message["id"], outcome.partial,
            "incomplete" if stopped else "error",
            turn.job.model or None, None if stopped else outcome.error, turn.id)
        return Failed(outcome.error, kept)

    async def _store_quietly(self, conversation_id: int, parent_id: int, content: str,
                             status: str,
                             model: str | None, error: WorkerError | None,
                             turn: str | None = None) -> MessageRow | None:
        """Store a reply that failed or was stopped; None if there is nowhere to keep it
        (e.g. the conversation was deleted meanwhile). TurnStored as _store."""
        why = None
        if error is not None:
            _, code, message, _ = failure_of(error)
            why = orjson.dumps({"code": code, "message": message}).decode()
        try:
            return await self._store(conversation_id, parent_id, model, content, status,
                                     error=why, turn=turn)
        except TurnStored:
            raise
        except StorageError:
            return None

    async def _store(self, conversation_id: int, parent_id: int, model: str | None,
                     content: str, status: str, usage: str | None = None,
                     error: str | None = None, turn: str | None = None) -> MessageRow:
        """Store the reply under its question; a busy database gets a few more tries (the user
        saw the text). A shared `turn`'s reply stored already: TurnStored, unless it is
        this one's own (a try whose answer was lost had committed it)."""
        pauses, retried = iter(STORE_RETRY_S), False
        while True:
            try:
                return await self._memory.append(conversation_id, "assistant", content, status,
                                                 usage, model, error, parent_id, turn)
            except DatabaseBusy:
                pause = next(pauses, None)
                if pause is None:
                    raise
                await asyncio.sleep(pause)
                retried = True
            except TurnStored as err:
                if retried and (err.row["content"], err.row["status"]) == (content, status):
                    return err.row
                raise
