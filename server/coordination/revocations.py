"""Revocations pushed to every node: published when stored here, heard on a dedicated
pub/sub connection everywhere else (the database, polled, stays the truth)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from .link import DOWN, RedisLink, stop

log = logging.getLogger(__name__)
Forget = Callable[[int, str | None, int | None], None]  # TokenService.forget


class Revocations:
    """Publishes `(user, jti, key id)` on one channel; calls `forget` for other nodes' ones.

    A message lost while Redis is down costs nothing the database poll does not recover: a
    revocation is stored before it is published, and every node also reads the auth events.
    """

    def __init__(self, link: RedisLink, forget: Forget, retry_s: float = 0.5) -> None:
        self._link = link
        self._forget = forget
        self._channel = link.key("revocations")
        self._me = secrets.token_hex(8)  # this instance (node ids may repeat in one process)
        self._retry_s = retry_s
        self._sending: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()  # set while listening (tests wait for it)
        self.subscriptions = 0  # times subscribed (again after each outage)
        self.heard = 0  # messages from other nodes acted on
        self._closing = False

    def publish(self, user_id: int, jti: str | None = None, key_id: int | None = None) -> None:
        """Tell the other nodes (returns at once; TokenService.announce calls it)."""
        if not self._link.up:
            return  # the other nodes' database poll carries it
        message = orjson.dumps({"from": self._me, "user": user_id, "jti": jti,
                                "key": key_id})
        task = asyncio.create_task(self._send(message))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def start(self) -> None:
        """Listen on a connection of its own until closed (subscribing again after an
        outage)."""
        self._listener = asyncio.create_task(self._listen(), name="redis-revocations")

    async def close(self) -> None:
        """Stop listening; let what is being published go first."""
        self._closing = True
        if self._sending:
            await asyncio.wait(self._sending, timeout=5.0)
        if self._listener is not None:
            await stop(self._listener)

    async def _send(self, message: bytes) -> None:
        try:
            await self._link.client.publish(self._channel, message)
        except DOWN as err:
            self._link.mark_down(err)
        except RedisError as err:
            log.warning("could not publish a revocation (%s); the database poll carries it",
                        type(err).__name__)

    async def _listen(self) -> None:
        while not self._closing:  # a flag too: a cancel inside the client may be swallowed
            pubsub: Any = self._link.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.subscriptions += 1
                self.subscribed.set()
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._heard(message.get("data"))
            except (*DOWN, RedisError) as err:
                self.subscribed.clear()
                if isinstance(err, DOWN):
                    self._link.mark_down(err)
                await asyncio.sleep(self._retry_s)
            finally:
                self.subscribed.clear()
                await asyncio.shield(_close(pubsub))

    def _heard(self, data: Any) -> None:
        try:
            body = orjson.loads(data)
            if body.get("from") == self._me:
                return  # ours: dropped here when it was made
            user, jti, key = body["user"], body.get("jti"), body.get("key")
            if not isinstance(user, int) or not isinstance(jti, (str, type(None))) \
                    or not isinstance(key, (int, type(None))):
                raise TypeError("bad field")
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
            log.warning("ignored a malformed revocation message")
            return
        self.heard += 1
        self._forget(user, jti, key)


async def _close(pubsub: Any) -> None:
    """Close the pub/sub connection, bounded: a shutdown never waits on a dead Redis."""
    try:
        await asyncio.wait_for(pubsub.aclose(), 1.0)
    except Exception:  # closing a connection Redis dropped: nothing left to do
        log.debug("closing the pub/sub connection failed", exc_info=True)
