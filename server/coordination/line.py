"""A node's workers waiting for a shared lease, tried in order when room may have been made."""

from __future__ import annotations

import asyncio

Order = tuple[bool, int]  # (background, age): chat turns first, then who asked first


class Line:
    """Waiting workers in order: chat turns before background jobs, then first come.

    Room may have been made (a release here or elsewhere, Redis back, or every `backoff_s`
    while someone waits: a dead node's leases expire unannounced): a *round* wakes the
    waiters one at a time in order, each asking Redis once; the round stops at the first
    refused for want of a deployment-wide place (nobody after it could start either) and goes
    on past one refused for its own reasons (its user's cap, its model's replicas). So a
    release costs the node one or two round trips, not one per waiting worker, and nobody is
    overtaken by a later job that wants the same place.
    """

    def __init__(self, backoff_s: float) -> None:
        self._backoff_s = backoff_s
        self._waiting: dict[asyncio.Future[None], Order] = {}
        self._round: list[asyncio.Future[None]] = []
        self._trying = False  # a waiter of the round is asking now
        self._again = False  # room was made during the round: another one after it
        self._ticker: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    async def wait(self, order: Order) -> bool:
        """Wait for a round's turn; True once it comes (then call `tried` after asking)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiting[fut] = order
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="lease-line")
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # its turn came as it was stopped
                self.tried(False)
            raise
        finally:
            self._waiting.pop(fut, None)
        return True

    def notify(self) -> None:
        """Room may have been made: start a round (or another one after this one)."""
        if self._round or self._trying:
            self._again = True
            return
        self._round = sorted(self._waiting, key=self._waiting.__getitem__)
        self._next()

    def tried(self, full: bool) -> None:
        """The waiter whose turn it was has asked; `full`: refused for want of a
        deployment-wide place (the round ends)."""
        self._trying = False
        if full:
            self._round.clear()
        self._next()

    def _next(self) -> None:
        while self._round:
            fut = self._round.pop(0)
            if not fut.done():
                self._trying = True
                fut.set_result(None)
                return
        if self._again:
            self._again = False
            self.notify()

    async def _tick(self) -> None:
        """While anyone waits: a round every backoff_s."""
        try:
            while self._waiting:
                await asyncio.sleep(self._backoff_s)
                self.notify()
        finally:
            self._ticker = None

    def close(self) -> None:
        """Stop the ticker (the waiters are the pool's to cancel)."""
        if self._ticker is not None:
            self._ticker.cancel()
