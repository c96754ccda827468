"""Turns shared across nodes: a running reply's events copied to a channel every node reads
(Redis Streams, in `server/coordination/turns.py`), so a turn is followed and stopped through
any node, and a dead node's turns are ended by a live one.

Event numbers are the model's delta events, counted by the owning node; the channel carries
each delta's length, so every node cuts the reply at the same numbers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from workers.errors import (
    JobCancelled,
    ShuttingDown,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)

from ..storage import DatabaseBusy, NotFound, StorageError, TurnStored
from ..storage.rows import MessageRow
from .turns import Delta, Done, Failed, Turn, TurnEvent

log = logging.getLogger(__name__)
NODE_LOST = ("the server generating this reply stopped before it ended; what it had "
             "generated is kept")


class TurnUnavailable(Exception):
    """The turn runs on another node and the channel that reaches it is down (or lost it)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of a turn's channel: deltas (`first` is the first one's number, `lengths`
    each one's length) or, with `end` set, the turn's last event."""

    key: str  # the channel's own id of the record (read on after it)
    first: int = 0
    lengths: tuple[int, ...] = ()
    text: str = ""
    end: bytes | None = None


class TurnChannel(Protocol):
    """Where a node shares its turns (implemented on Redis in server/coordination/turns.py).
    Reads raise TurnUnavailable when the channel is down; writes report it by their result."""

    owner: str  # this node's incarnation (a restarted node is a new owner)

    async def register(self, turn_id: str, meta: dict[str, str]) -> bool:
        """Share a new turn; False if the channel is down (the turn stays local)."""

    def append(self, turn_id: str, number: int, text: str) -> None:
        """Delta `number` of a shared turn (sent in a batch soon)."""

    def end(self, turn_id: str, payload: bytes, conversation_id: int) -> None:
        """The turn's last event (sent soon, then the turn expires after a while)."""

    async def running_in(self, conversation_ids: list[int]) -> list[str | None]:
        """The turn running in each conversation, on any node."""

    def forget(self, turn_id: str) -> None:
        """Drop what is buffered of a turn that could not be registered."""

    async def lookup(self, turn_id: str) -> dict[str, str] | None:
        """A shared turn's description (as registered, with `owner`), None if unknown."""

    async def read(self, turn_id: str, after: str | None,
                   wait: bool = True) -> list[Entry] | None:
        """The records after `after` (all when None), waiting a while for the first when
        there are none yet (if `wait`); None if the turn is gone from the channel."""

    async def ended(self, turn_id: str) -> bool:
        """Whether the turn has ended (or a node is ending it for its dead owner)."""

    async def stop(self, turn_id: str, owner: str) -> None:
        """Ask the owner to stop the turn."""

    async def followed(self, turn_id: str) -> bool:
        """Whether a follower on another node read the turn lately."""

    async def orphans(self) -> list[str] | None:
        """The running turns of nodes that stopped beating (never a live node's); None
        while this node cannot judge yet (the channel has not answered for long enough)."""

    async def take(self, turn_id: str) -> bool:
        """Take an orphan's outcome for this node (exactly one node gets True)."""


# (conversation, question, text, model, turn) -> the stored reply; TurnStored if it was.
Store = Callable[[int, int, str, "str | None", str], Awaitable["MessageRow | None"]]
Unmark = Callable[[int, str], Awaitable[None]]  # (conversation, turn)


class Replay:
    """A shared turn's reply rebuilt from its records, the same on every node."""

    def __init__(self) -> None:
        self.text = ""
        self.ends: list[int] = []  # the reply's length after each event
        self.end: Done | Failed | None = None
        self.after: str | None = None  # the last record read
        self.broken = False  # a gap: records were lost (the channel restarted empty)

    def absorb(self, entries: list[Entry]) -> None:
        """Add records in order; a record already seen (a retried write) adds nothing."""
        for entry in entries:
            self.after = entry.key
            if entry.end is not None:
                self.end = decode_end(entry.end)
                continue
            number = entry.first
            start = 0
            for length in entry.lengths:
                piece = entry.text[start:start + length]
                start += length
                if number == len(self.ends) + 1:
                    self.text += piece
                    self.ends.append(len(self.text))
                elif number > len(self.ends) + 1:
                    self.broken = True
                number += 1

    def since(self, seen: int) -> str:
        """The text after event `seen`."""
        return self.text[self.ends[seen - 1] if seen else 0:]


class RemoteTurn:
    """A turn running on another node, followed through the channel (a Followable)."""

    def __init__(self, channel: TurnChannel, turn_id: str, meta: dict[str, str]) -> None:
        self._channel = channel
        self.id = turn_id
        self.user_id = int(meta["user_id"])
        self.conversation_id = int(meta["conversation_id"])
        self.user_message: MessageRow = orjson.loads(meta["user_message"])
        self.model = meta.get("model", "")
        self._replay = Replay()

    @property
    def end_id(self) -> int:
        """The number of the end event."""
        return len(self._replay.ends) + 1

    @property
    def running(self) -> bool:
        """Whether its end has not been seen yet."""
        return self._replay.end is None

    async def follow(self, after: int = 0) -> AsyncGenerator[TurnEvent, None]:
        """What came after event `after` in one piece, then the rest as it comes, then the
        end; a channel that fails meanwhile ends it with TurnUnavailable."""
        replay = self._replay
        seen = max(0, after)
        while True:
            count = len(replay.ends)
            if seen < count:
                yield Delta(replay.since(seen), count)
                seen = count
                continue
            if replay.end is not None:
                yield replay.end
                return
            if replay.broken:
                yield Failed(TurnUnavailable("part of this reply was lost by the shared "
                                             "store; reload the conversation"), None)
                return
            try:
                entries = await self._channel.read(self.id, replay.after)
            except TurnUnavailable as err:
                yield Failed(err, None)
                return
            if entries is None:
                yield Failed(TurnUnavailable("this reply is no longer shared (the shared "
                                             "store lost it); reload the conversation"), None)
                return
            replay.absorb(entries)


class TurnSharing:
    """The chat service's side of sharing: mirror its turns, find others', end orphans."""

    def __init__(self, channel: TurnChannel, store: Store, unmark: Unmark) -> None:
        self.channel = channel
        self._store = store
        self._unmark = unmark  # a turn ended with nothing stored: its conversation is free
        self.sweeps = 0  # passes that judged which nodes are dead

    def attach(self, turn: Turn) -> None:
        """Copy the new turn's deltas from its first (buffered until registered)."""
        turn.mirror = self._append

    async def register(self, turn: Turn) -> None:
        """Share the turn; if the channel is down it stays local (followed and stopped
        only here) and nothing of it is sent."""
        meta = {"user_id": str(turn.user_id), "conversation_id": str(turn.conversation_id),
                "user_message": orjson.dumps(turn.user_message).decode(),
                "model": turn.model}
        if not await self.channel.register(turn.id, meta):
            turn.mirror = None
            self.channel.forget(turn.id)

    def _append(self, turn: Turn, number: int, text: str) -> None:
        self.channel.append(turn.id, number, text)

    async def find(self, user_id: int, turn_id: str) -> RemoteTurn | None:
        """The user's turn running (or just ended) on another node, if any."""
        meta = await self.channel.lookup(turn_id)
        if meta is None or meta.get("user_id") != str(user_id):
            return None
        return RemoteTurn(self.channel, turn_id, meta)

    async def stop(self, user_id: int, turn_id: str) -> bool | None:
        """Stop the user's turn on the node that runs it: None if unknown, False if it had
        ended already."""
        meta = await self.channel.lookup(turn_id)
        if meta is None or meta.get("user_id") != str(user_id):
            return None
        if await self.channel.ended(turn_id):
            return False
        await self.channel.stop(turn_id, meta["owner"])
        return True

    async def end_orphans(self) -> int:
        """End the turns of nodes that died: store each one's partial reply `incomplete`
        (exactly one node does it) and tell its followers. Returns how many were ended."""
        done = 0
        orphans = await self.channel.orphans()
        if orphans is None:
            return 0
        self.sweeps += 1
        for turn_id in orphans:
            if not await self.channel.take(turn_id):
                continue  # another node has it
            try:
                await self._end_orphan(turn_id)
                done += 1
            except TurnUnavailable:
                return done  # the channel went down: the claim expires, someone retries
        return done

    async def _end_orphan(self, turn_id: str) -> None:
        meta = await self.channel.lookup(turn_id)
        replay = Replay()
        replay.absorb(await self.channel.read(turn_id, None, wait=False) or [])
        if replay.end is not None:
            return  # it had ended after all
        kept = None
        if meta is not None:  # with no text yet: an empty failed reply, so the turn has one
            try:
                kept = await self._store(int(meta["conversation_id"]),
                                         orjson.loads(meta["user_message"])["id"], replay.text,
                                         meta.get("model") or None, turn_id)
            except TurnStored as err:  # its node stored it, then died before saying so
                kept = err.row
        if meta is not None and kept is None:
            await self._unmark(int(meta["conversation_id"]), turn_id)
        log.warning("ended turn %s of a node that stopped (%d characters kept)", turn_id,
                    len(replay.text))
        self.channel.end(turn_id, encode_end(Failed(JobCancelled(NODE_LOST), kept)),
                         int(meta["conversation_id"]) if meta is not None else 0)


# Failures travel by kind: the follower on another node maps them to the same answer.
_KINDS: dict[str, type[Exception]] = {
    "cancelled": JobCancelled, "shutting_down": ShuttingDown, "timeout": UpstreamTimeout,
    "upstream": UpstreamError, "not_found": NotFound, "busy": DatabaseBusy,
    "storage": StorageError,
}


def encode_end(event: Done | Failed) -> bytes:
    """A turn's last event as bytes for the channel."""
    if isinstance(event, Done):
        return orjson.dumps({"done": True, "message": event.message, "usage": event.usage,
                             "finish_reason": event.finish_reason})
    err = event.error
    data: dict[str, Any] = {"done": False, "message": event.message,
                            "kind": "storage", "text": str(err)}
    if isinstance(err, UpstreamRejected):
        data.update(kind="rejected", status=err.status, detail=err.detail)
    else:
        for kind, cls in _KINDS.items():
            if type(err) is cls:
                data["kind"] = kind
                break
        else:
            data["kind"] = "upstream" if isinstance(err, UpstreamError) else "storage"
    return orjson.dumps(data)


def decode_end(raw: bytes) -> Done | Failed:
    """The last event a channel carried."""
    data = orjson.loads(raw)
    if data["done"]:
        return Done(data["message"], data["usage"], data["finish_reason"])
    err: Exception
    if data["kind"] == "rejected":
        err = UpstreamRejected(data["text"], data["status"], data.get("detail", ""))
    else:
        err = _KINDS.get(data["kind"], StorageError)(data["text"])
    return Failed(err, data["message"])


async def sweep(sharing: TurnSharing, interval: float) -> None:
    """End dead nodes' turns every `interval` seconds, for as long as the node runs."""
    while True:
        await asyncio.sleep(interval)
        try:
            await sharing.end_orphans()
        except TurnUnavailable:
            pass  # the channel is down: nothing can be read, nobody else sweeps either
        except Exception:
            log.exception("ending a stopped node's turns failed")
        finally:
            still_cancelled()


def still_cancelled() -> None:
    """Raise CancelledError if this task was cancelled: a client library that turned the
    cancellation into a connection error (redis-py does, mid-command) must not make a
    loop outlive its stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
