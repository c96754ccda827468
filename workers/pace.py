"""How fast requests go to the model servers: what the pool waits on before each attempt."""

from __future__ import annotations

from typing import Protocol


class Pace(Protocol):
    """A rate of upstream requests: `acquire` returns when the next one may go. The pool's
    own is an `aiolimiter.AsyncLimiter` (this process alone); the server may give it one
    shared by every node (server/coordination/limits.py: `RedisPace`)."""

    async def acquire(self) -> None:
        """Wait until one more request may go."""
