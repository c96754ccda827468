"""A feed: events handed from a job (synchronously) to the one task that follows them."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

E = TypeVar("E")


class Feed(Generic[E]):
    """A queue with one reader, woken through a bare future (the cheapest wait there is)."""

    def __init__(self) -> None:
        self._events: deque[E] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def push(self, event: E) -> None:
        """Hand an event to the reader."""
        self._events.append(event)
        _wake(self._waiter)

    async def wait(self, timeout: float | None = None) -> None:
        """Until the next event is pushed (or `timeout` passes)."""
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
