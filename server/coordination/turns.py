"""Running turns on Redis: one Stream per turn, a heartbeat per node, stops by pub/sub.

Keys (under the link's prefix):
- `turn:{id}` hash: who may follow the turn and its owner; `turn:{id}:ev` its Stream of
  records (deltas batched: `f` first event, `l` lengths, `t` text; or `end`); both expire
  `finished_ttl_s` after the end (a day after the start at most, if nobody ends it);
- `turn:{id}:end`: the live node that ends a dead node's turn (SET NX: one of them; the
  database's unique turn index decides between it and an owner that was only out of touch);
- `turn:{id}:seen`: a follower on another node read it lately (the owner keeps it going);
- `turns:running` hash: running turn -> owner; `node:{owner}`: the owner's heartbeat;
- `conv:{id}:turn`: the turn running in a conversation (its `running_turn_id` on any node);
- channel `node:{owner}:stop`: stop requests for the owner's turns.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..services.sharing import Entry, TurnUnavailable, still_cancelled
from .batch import Batcher
from .link import DOWN, RedisLink
from .scripts import REGISTER, UNHOLD

log = logging.getLogger(__name__)
RUNNING_TTL_S = 86_400  # a turn nobody ends (every node gone) is dropped after a day
BLOCK_S = 2.0  # a remote follower's wait for news (renewing its `seen` key each time)
CLAIM_TTL_S = 60  # a node that took a dead node's turn and died too: another retries after
RIDE_S = 0.005  # a registration waits this long for a pipeline to ride (the lease's)


class RedisTurns:
    """This node's turns on Redis (a TurnChannel), batched: one pipeline per tick for all."""

    def __init__(self, link: RedisLink, batcher: Batcher, finished_ttl_s: float,
                 flush_s: float, heartbeat_s: float, node_ttl_s: float,
                 max_records: int) -> None:
        self._link = link
        self._r: Any = link.client
        # The process's one batcher (the limits' and leases'): a turn's registration goes
        # with its lease, no round trip of its own.
        self._register = batcher.script(REGISTER)
        self._stats = batcher.stats  # the node's round trips: this writer's batches count too
        self.owner = f"{link.node_id}/{secrets.token_hex(4)}"  # this incarnation
        self._finished_ms = max(1, int(finished_ttl_s * 1000))
        self._flush_s = flush_s
        self._heartbeat_s = heartbeat_s
        self._node_ttl_ms = max(1, int(node_ttl_s * 1000))
        self._max_records = max_records
        # turn -> [first event, lengths, pieces] not sent yet; ends not sent yet
        self._pending: dict[str, tuple[int, list[int], list[str]]] = {}
        self._ends: dict[str, tuple[bytes, int]] = {}
        self._dirty = asyncio.Event()
        self._writing = asyncio.Lock()  # one writer at a time: a turn's records stay in order
        self._next_beat = 0.0
        # Heartbeats expire while Redis is away: nobody is judged dead until Redis has
        # answered long enough for every live node to have beaten again.
        self._up_since = time.monotonic() if link.up else None
        link.on_change(self._changed)
        kw = link.client.connection_pool.connection_kwargs
        self._blocking: Any = aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(
                connection_class=link.client.connection_pool.connection_class,
                **{**kw, "socket_timeout": BLOCK_S + (kw.get("socket_timeout") or 1.0)}),
            retry=Retry(NoBackoff(), 0))
        self.on_stop: Callable[[str], None] = lambda turn_id: None
        self._tasks: list[asyncio.Task[None]] = []

    def key(self, *parts: object) -> str:
        """A key under the deployment's prefix."""
        return self._link.key(*parts)

    def start(self) -> None:
        """Beat, write batches and listen for stops, until closed."""
        self._tasks = [asyncio.create_task(self._writer(), name="turns-writer"),
                       asyncio.create_task(self._listen(), name="turns-stops")]

    async def close(self) -> None:
        """Send what is pending (the ends of the turns stored at shutdown), then stop."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a task stuck in a client library must not hold shutdown
            await asyncio.wait(self._tasks, timeout=BLOCK_S * 2)
        if self._link.up and (self._pending or self._ends):
            await self._flush(beat=False)
        try:
            await self._r.delete(self.key("node", self.owner))
        except DOWN:
            pass
        await self._blocking.aclose()

    def _changed(self, up: bool) -> None:
        self._up_since = time.monotonic() if up else None

    # -- the owner's side ------------------------------------------------------------------

    async def register(self, turn_id: str, meta: dict[str, str]) -> bool:
        """Share a new turn: riding the next pipeline (its lease's, when a worker takes it
        at once), sent alone after RIDE_S if none comes."""
        if not self._link.up:
            return False
        fields = [v for pair in meta.items() for v in pair]
        try:
            await self._register(
                [self.key("turn", turn_id), self.key("turns", "running"),
                 self.key("conv", meta["conversation_id"], "turn"), self.key("node", self.owner)],
                [turn_id, self.owner, RUNNING_TTL_S, self._node_ttl_ms, *fields], ride=RIDE_S)
        except DOWN as err:
            self._down(err)
            return False
        return True

    def append(self, turn_id: str, number: int, text: str) -> None:
        """Buffer delta `number`; the writer sends it with the next tick's batch."""
        pending = self._pending.get(turn_id)
        if pending is None:
            self._pending[turn_id] = (number, [len(text)], [text])
            self._dirty.set()
        else:
            pending[1].append(len(text))
            pending[2].append(text)

    def forget(self, turn_id: str) -> None:
        """Drop a turn's buffered deltas (it could not be registered)."""
        self._pending.pop(turn_id, None)

    def end(self, turn_id: str, payload: bytes, conversation_id: int) -> None:
        """Buffer the turn's end; the writer sends it (after its deltas) with the next tick."""
        self._ends[turn_id] = (payload, conversation_id)
        self._dirty.set()

    async def _writer(self) -> None:
        while True:
            wait = max(0.0, self._next_beat - time.monotonic())
            try:
                await asyncio.wait_for(self._dirty.wait(), wait)
                await asyncio.sleep(self._flush_s)  # a tick: what comes meanwhile joins it
            except TimeoutError:
                pass
            self._dirty.clear()
            if not self._link.up:
                self._next_beat = time.monotonic() + self._heartbeat_s
                continue  # kept pending; sent when Redis answers again
            beat = time.monotonic() >= self._next_beat
            try:
                await self._flush(beat)
            except Exception:  # the writer must outlive any one batch
                log.exception("writing turns to Redis failed")
            still_cancelled()

    async def _flush(self, beat: bool) -> None:
        """One pipeline: every turn's new deltas (one record each), ends, the heartbeat."""
        async with self._writing:
            pending, self._pending = self._pending, {}
            ends, self._ends = self._ends, {}
            pipe = self._r.pipeline(transaction=False)
            for turn_id, batch in pending.items():
                self._xadd(pipe, turn_id, batch)
            for turn_id, (payload, conversation_id) in ends.items():
                pipe.eval(UNHOLD, 1, self.key("conv", conversation_id, "turn"), turn_id)
                stream = self.key("turn", turn_id, "ev")
                pipe.xadd(stream, {"end": payload}, maxlen=self._max_records, approximate=True)
                pipe.pexpire(stream, self._finished_ms)
                pipe.pexpire(self.key("turn", turn_id), self._finished_ms)
                pipe.hdel(self.key("turns", "running"), turn_id)
            if beat:
                pipe.set(self.key("node", self.owner), b"1", px=self._node_ttl_ms)
            self._stats["round_trips"] += 1
            self._stats["turn_batches"] += 1
            try:
                await pipe.execute()
            except DOWN as err:
                for turn_id, batch in pending.items():
                    self._requeue(turn_id, batch)
                self._ends = {**ends, **self._ends}
                self._down(err)
                return
        if beat:
            self._next_beat = time.monotonic() + self._heartbeat_s

    def _xadd(self, pipe: Any, turn_id: str, batch: tuple[int, list[int], list[str]]) -> None:
        stream = self.key("turn", turn_id, "ev")
        first, lengths, pieces = batch
        pipe.xadd(stream, {"f": first, "l": ",".join(map(str, lengths)), "t": "".join(pieces)},
                  maxlen=self._max_records, approximate=True)
        pipe.expire(stream, RUNNING_TTL_S)

    def _requeue(self, turn_id: str, batch: tuple[int, list[int], list[str]]) -> None:
        """A batch that may not have arrived goes first again (a reader skips a repeat)."""
        later = self._pending.get(turn_id)
        if later is not None:
            batch = (batch[0], batch[1] + later[1], batch[2] + later[2])
        self._pending[turn_id] = batch

    async def _listen(self) -> None:
        """Stop requests for this node's turns, resubscribing after an outage."""
        channel = self.key("node", self.owner, "stop")
        while True:
            pubsub = self._blocking.pubsub()
            try:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=BLOCK_S)
                    if message is not None and message["type"] == "message":
                        self.on_stop(message["data"].decode())
            except DOWN:
                still_cancelled()
                await asyncio.sleep(self._heartbeat_s)
            finally:
                await pubsub.aclose()

    # -- any node's side -------------------------------------------------------------------

    async def lookup(self, turn_id: str) -> dict[str, str] | None:
        """The turn's description, None if Redis does not know it."""
        raw = await self._call(self._r.hgetall(self.key("turn", turn_id)))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def read(self, turn_id: str, after: str | None,
                   wait: bool = True) -> list[Entry] | None:
        """Records after `after`: at once if there are any, else within BLOCK_S (renewing
        the `seen` key and checking the turn is still there, in the same round trip)."""
        stream = self.key("turn", turn_id, "ev")
        seen = self.key("turn", turn_id, "seen")
        if not wait:  # the sweep: what there is, and no follower to report
            raw = await self._call(self._r.xrange(stream, "(" + after if after else "-"))
            return [_entry(k, v) for k, v in raw]
        if after is None:  # a follower's first read: all there is, at once
            pipe = self._r.pipeline(transaction=False)
            pipe.set(seen, b"1", ex=int(BLOCK_S * 3))
            pipe.xrange(stream, "-")
            _, raw = await self._call(pipe.execute())
            if raw:
                return [_entry(k, v) for k, v in raw]
            after = "0-0"
        pipe = self._blocking.pipeline(transaction=False)
        pipe.set(seen, b"1", ex=int(BLOCK_S * 3))
        pipe.exists(self.key("turn", turn_id))
        pipe.xread({stream: after}, block=int(BLOCK_S * 1000))
        _, exists, got = await self._call(pipe.execute())
        if not got:
            return None if not exists else []
        return [_entry(k, v) for k, v in got[0][1]]

    async def running_in(self, conversation_ids: list[int]) -> list[str | None]:
        """The turn running in each conversation, if any (one MGET)."""
        found = await self._call(self._r.mget([self.key("conv", c, "turn")
                                                for c in conversation_ids]))
        return [None if v is None else v.decode() for v in found]

    async def ended(self, turn_id: str) -> bool:
        """Whether the turn is no longer running (or a live node is ending it)."""
        pipe = self._r.pipeline(transaction=False)
        pipe.hexists(self.key("turns", "running"), turn_id)
        pipe.exists(self.key("turn", turn_id, "end"))
        running, taken = await self._call(pipe.execute())
        return not running or bool(taken)

    async def stop(self, turn_id: str, owner: str) -> None:
        """Publish the stop to the owner's channel."""
        await self._call(self._r.publish(self.key("node", owner, "stop"), turn_id))

    async def followed(self, turn_id: str) -> bool:
        """Whether a remote follower renewed the turn's `seen` key lately."""
        return bool(await self._call(self._r.exists(self.key("turn", turn_id, "seen"))))

    async def orphans(self) -> list[str] | None:
        """Running turns whose owner's heartbeat is gone; None while this node has not yet
        seen Redis answer for two heartbeat lifetimes (every live node beats in that time:
        heartbeats that expired during an outage or a Redis restart come back first)."""
        since = self._up_since
        if since is None or time.monotonic() - since < 2 * self._node_ttl_ms / 1000:
            return None
        running = await self._call(self._r.hgetall(self.key("turns", "running")))
        owners = sorted({v.decode() for v in running.values()} - {self.owner})
        if not owners:
            return []
        pipe = self._r.pipeline(transaction=False)
        for owner in owners:
            pipe.exists(self.key("node", owner))
        alive = await self._call(pipe.execute())
        dead = {owner for owner, up in zip(owners, alive, strict=True) if not up}
        return [k.decode() for k, v in running.items() if v.decode() in dead]

    async def take(self, turn_id: str) -> bool:
        """SET NX of an orphan's outcome, for this node (expiring: a taker that dies too
        leaves it to another)."""
        return bool(await self._call(self._r.set(self.key("turn", turn_id, "end"),
                                                 self.owner, nx=True, ex=CLAIM_TTL_S)))

    def _down(self, err: BaseException) -> None:
        """Redis did not answer; unless the real cause was our own cancellation (which
        redis-py may report as a connection error): then that goes on."""
        still_cancelled()
        self._link.mark_down(err)

    async def _call(self, pending: Any) -> Any:
        """Await a command; an unreachable Redis becomes TurnUnavailable."""
        try:
            return await pending
        except DOWN as err:
            self._down(err)
            raise TurnUnavailable("the reply runs on another server and the shared store "
                                  "that reaches it is unavailable; retry shortly") from err


def _entry(key: bytes, fields: dict[bytes, bytes]) -> Entry:
    if b"end" in fields:
        return Entry(key.decode(), end=fields[b"end"])
    lengths = tuple(int(n) for n in fields[b"l"].split(b",")) if fields[b"l"] else ()
    return Entry(key.decode(), int(fields[b"f"]), lengths, fields[b"t"].decode())
