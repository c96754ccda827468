"""The node's one Redis client, and whether Redis answers now (checked every second)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import CoordinationConfig

log = logging.getLogger(__name__)

# What "Redis is down" looks like to a caller: fall back, never fail the request for it.
DOWN = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


class RedisLink:
    """One client for the whole process; `up` says whether the last command got an answer."""

    def __init__(self, config: CoordinationConfig) -> None:
        # One try per command: a down Redis must cost one timeout, not a retry ladder.
        self.client: Any = aioredis.Redis.from_url(
            config.redis_url, socket_timeout=config.timeout_s,
            socket_connect_timeout=config.timeout_s, retry=Retry(NoBackoff(), 0))
        self.url = config.redis_url  # never logged: it may hold a password
        self.prefix = config.key_prefix
        self.node_id = config.node_id or f"{socket.gethostname()}:{os.getpid()}"
        self.up = False
        self.outages = 0  # times Redis went from answering to not
        self._interval = config.health_interval_s
        self._listeners: list[Callable[[bool], None]] = []
        self._health: asyncio.Task[None] | None = None
        self._closing = False

    def key(self, *parts: object) -> str:
        """A key under this deployment's prefix."""
        return self.prefix + ":".join(str(p) for p in parts)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(up)` each time Redis goes down or comes back."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Check Redis once (it may be down: the node serves anyway), then every interval."""
        await self.check()
        if not self.up:
            log.error("Redis is unreachable at start-up: limits and caps are per process "
                      "until it answers (checking every %g s)", self._interval)
        self._health = asyncio.create_task(self._watch(), name="redis-health")

    async def check(self) -> bool:
        """PING once; mark the link up or down by the answer."""
        try:
            await self.client.ping()
        except DOWN as err:
            self.mark_down(err)
        else:
            self.mark_up()
        return self.up

    def mark_down(self, err: BaseException) -> None:
        """A command found Redis unreachable: say so loudly, once per outage."""
        if not self.up:
            return
        self.up = False
        self.outages += 1
        log.error("Redis unreachable (%s): limits and caps fall back to per-process ones "
                  "until it answers", type(err).__name__)
        self._tell(False)

    def mark_up(self) -> None:
        """Redis answered: shared limits and caps apply again."""
        if self.up:
            return
        self.up = True
        if self.outages:
            log.warning("Redis answers again: limits and caps are shared again")
        self._tell(True)

    async def close(self) -> None:
        """Stop checking and close the client's connections."""
        self._closing = True
        if self._health is not None:
            await stop(self._health)
        await self.client.aclose()

    async def _watch(self) -> None:
        while not self._closing:  # a flag too: a cancel inside the client may be swallowed
            await asyncio.sleep(self._interval)
            if not self._closing:
                await self.check()

    def _tell(self, up: bool) -> None:
        for listener in self._listeners:
            try:
                listener(up)
            except Exception:  # one listener's bug must not stop the others hearing it
                log.exception("Redis state listener failed")


async def stop(task: asyncio.Task[None], wait_s: float = 5.0) -> None:
    """Cancel a background task and wait for it, at most `wait_s`: redis-py can swallow a
    cancel that lands as a command times out, and a shutdown must not hang on it (the task
    also checks a closing flag, so it ends at its next turn)."""
    task.cancel()
    await asyncio.wait({task}, timeout=wait_s)
