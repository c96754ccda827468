"""A turn's mark on its conversation: set with its question, ended when its reply is stored,
so one turn at a time runs in a conversation on every process and node (the database holds
the mark, in the same writes as the messages: no write of its own on a turn's path).

A running turn's mark is renewed every RENEW_S; one not renewed for STALE_S is its dead
node's and no longer holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..storage import DatabaseBusy, MessageStore, StorageError, TurnMark
from ..storage.rows import iso_at

log = logging.getLogger(__name__)
RENEW_S = 20.0
STALE_S = 60.0  # three renewals missed
UNMARK_RETRY_S = (0.2, 0.5, 1.0, 2.0)


class TurnMarks:
    """This node's turn marks: made, ended when no reply ends them, renewed while running."""

    def __init__(self, messages: MessageStore) -> None:
        self._messages = messages

    @staticmethod
    def new(turn_id: str) -> TurnMark:
        """The mark of a turn starting now."""
        return TurnMark(turn_id, iso_at(time.time() - STALE_S))

    async def unmark(self, conversation_id: int | None, turn_id: str) -> None:
        """End a mark no reply ended (stopped before any text, not stored); a database that
        stays busy leaves it to go stale."""
        for pause in (*UNMARK_RETRY_S, None):
            try:
                await self._messages.unmark(conversation_id, turn_id)
                return
            except DatabaseBusy:
                if pause is None:
                    break
                await asyncio.sleep(pause)
            except StorageError:  # e.g. closing: the turn must end all the same
                break
        log.warning("conversation %d stays marked for up to %g s: the database did not take "
                    "its turn's end", conversation_id, STALE_S)

    async def renew(self, running: Callable[[], list[tuple[int, str]]]) -> None:
        """Renew the marks of `running()` (conversation, turn) every RENEW_S, until cancelled."""
        while True:
            await asyncio.sleep(RENEW_S)
            marks = running()
            if not marks:
                continue
            try:
                await self._messages.renew(marks)
            except Exception:  # the next round tries again; marks outlive two misses
                log.exception("renewing %d turn marks failed", len(marks))
