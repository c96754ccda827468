"""The turns a user can follow: running ones, and finished ones for a short while after.

A turn nobody follows keeps generating for a grace period (a reloaded page comes back for
it); then it is stopped, so a closed laptop does not hold a model slot to the end.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from workers.errors import JobCancelled

from .turns import Followable, Replay, Turn

FINISHED_KEPT = 10_000  # most finished turns kept followable (the oldest go first)


class TurnNotFound(Exception):
    """No turn of this user has that id (or it ended too long ago)."""


class TurnRegistry:
    """Finds turns by id for their owner, and stops the ones nobody follows."""

    def __init__(self, grace_s: float, finished_ttl_s: float, max_detached: int,
                 elsewhere: Callable[[Turn], Awaitable[bool]] | None = None) -> None:
        self._grace_s = grace_s
        self._ttl_s = finished_ttl_s
        self._max_detached = max_detached  # unfollowed running turns per user
        self._running: dict[str, Turn] = {}
        self._by_conversation: dict[int, Turn] = {}  # the latest running turn of each
        self._finished: OrderedDict[str, tuple[Replay, float]] = OrderedDict()
        self._detached: dict[int, set[Turn]] = {}
        # Whether a shared turn is followed on another node (asked when its grace ends).
        self._elsewhere = elsewhere
        self._asking: set[asyncio.Task[None]] = set()

    def add(self, turn: Turn) -> None:
        """A turn was accepted."""
        self._running[turn.id] = turn
        self._by_conversation[turn.conversation_id] = turn

    def find(self, user_id: int, turn_id: str) -> Followable:
        """The user's turn with this id, running or recently finished (else TurnNotFound)."""
        turn: Followable | None = self._running.get(turn_id)
        if turn is None:
            kept = self._finished.get(turn_id)
            if kept is not None and time.monotonic() - kept[1] <= self._ttl_s:
                turn = kept[0]
        if turn is None or turn.user_id != user_id:  # another's: as if it did not exist
            raise TurnNotFound("no such turn: it ended a while ago, or it is not yours")
        return turn

    def running_by_id(self, turn_id: str) -> Turn | None:
        """A turn running here, whoever's it is (a stop relayed by another node)."""
        return self._running.get(turn_id)

    def running_in(self, conversation_id: int) -> Turn | None:
        """The turn generating a reply in this conversation now, if any."""
        return self._by_conversation.get(conversation_id)

    def running(self) -> list[Turn]:
        """Every turn not finished yet (at shutdown)."""
        return list(self._running.values())

    def attached(self, turn: Turn) -> None:
        """Someone follows the turn again: no stop pending."""
        if turn.grace is not None:
            turn.grace.cancel()
            turn.grace = None
        self._forget_detached(turn)

    def detached(self, turn: Turn) -> None:
        """Nobody follows the running turn any more: stop it after the grace period (at once
        if the user already has their most unfollowed turns)."""
        if turn.outcome is not None:
            return  # generated already: only being stored
        mine = self._detached.setdefault(turn.user_id, set())
        if len(mine) >= self._max_detached:
            turn.job.cancel(JobCancelled("too many replies were running with nobody reading"))
            return
        mine.add(turn)
        loop = asyncio.get_running_loop()
        turn.grace = loop.call_later(self._grace_s, self._abandon, turn)

    def ended(self, turn: Turn) -> None:
        """The turn's job ended: nothing more to stop."""
        self.attached(turn)
        if self._by_conversation.get(turn.conversation_id) is turn:
            del self._by_conversation[turn.conversation_id]

    def finished(self, turn: Turn) -> None:
        """The turn's outcome is stored: followable a while longer (what is left of it: its
        reply and last event), then forgotten."""
        self._running.pop(turn.id, None)
        now = time.monotonic()
        self._finished[turn.id] = (turn.replay(), now)
        while self._finished:
            _, at = next(iter(self._finished.values()))
            if len(self._finished) <= FINISHED_KEPT and now - at <= self._ttl_s:
                break
            self._finished.popitem(last=False)

    def _abandon(self, turn: Turn) -> None:
        turn.grace = None
        if turn.followers != 0 or turn.outcome is not None:
            return
        if turn.mirror is not None and self._elsewhere is not None:
            task = asyncio.create_task(self._ask(turn, self._elsewhere))
            self._asking.add(task)
            task.add_done_callback(self._asking.discard)
            return
        self._stop_unfollowed(turn)

    async def _ask(self, turn: Turn, elsewhere: Callable[[Turn], Awaitable[bool]]) -> None:
        """A shared turn nobody follows here: another grace period if someone follows it
        on another node, else stopped."""
        followed = await elsewhere(turn)
        if turn.followers != 0 or turn.outcome is not None or turn.grace is not None:
            return
        if followed:
            turn.grace = asyncio.get_running_loop().call_later(self._grace_s, self._abandon,
                                                               turn)
        else:
            self._stop_unfollowed(turn)

    def _stop_unfollowed(self, turn: Turn) -> None:
        turn.job.cancel(JobCancelled(
            f"nobody followed the reply for {self._grace_s:g} s, so it was stopped"))

    def _forget_detached(self, turn: Turn) -> None:
        mine = self._detached.get(turn.user_id)
        if mine is not None:
            mine.discard(turn)
            if not mine:
                del self._detached[turn.user_id]
