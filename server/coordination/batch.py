"""Script calls sent together: what arrives while a batch is in flight goes in the next one,
one pipeline, so a thousand concurrent requests share a few round trips and one connection
instead of opening a connection each."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from .link import RedisLink

# script, keys, args, its caller's future, whether a request waits for it (on its path)
Call = tuple["Script", Sequence[str], Sequence[object], "asyncio.Future[Any]", bool]


class Script:
    """A Lua script, run by EVALSHA (loaded once per Redis; again after NOSCRIPT, as after a
    restart), through the link's batcher."""

    def __init__(self, batcher: Batcher, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._batcher = batcher

    async def __call__(self, keys: Sequence[str], args: Sequence[object], *,
                       waited: bool = True, ride: float = 0.0) -> Any:
        """The script's answer; raises what Redis raised (or the connection's error).
        `waited`: False for what no request waits on (releases, renewals, what is owed).
        `ride`: wait up to this long for another call to go with (see Batcher.call)."""
        return await self._batcher.call(self, keys, args, waited, ride)


class Batcher:
    """One pipeline at a time; calls made meanwhile wait for the next (never longer than one
    round trip), so a lone call costs what it would alone."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._waiting: list[Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._go = asyncio.Event()  # a call that does not ride came: send now
        # round_trips: exchanges with Redis (pipelines, and script loads after NOSCRIPT);
        # waited: those that carried a call a request waited on (its path); calls: EVALSHAs.
        self.stats: Counter[str] = Counter()

    def script(self, source: str) -> Script:
        """A script run through this batcher."""
        return Script(self, source)

    async def call(self, script: Script, keys: Sequence[str], args: Sequence[object],
                   waited: bool = True, ride: float = 0.0) -> Any:
        """Queue one EVALSHA and wait for its answer. With `ride`, a call that has no
        pipeline to join waits up to `ride` seconds for one that does not ride (e.g. a
        turn's registration for its lease, asked a moment later), then goes alone."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((script, keys, args, future, waited))
        if self._sender is None:  # a task of its own: a caller that leaves stops no one else
            self._go.clear()
            self._sender = asyncio.create_task(self._send(ride), name="redis-batch")
        if not ride:
            self._go.set()
        return await future

    async def _send(self, ride: float) -> None:
        try:
            if ride and not self._go.is_set():
                try:
                    await asyncio.wait_for(self._go.wait(), ride)
                except TimeoutError:
                    pass
                except asyncio.CancelledError:  # nobody will send them: their callers hear it
                    for *_, future, _ in self._waiting:
                        future.cancel()
                    self._waiting = []
                    raise
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await self._run(batch)
                except BaseException as err:  # the connection failed: every call hears it
                    for *_, future, _ in batch:
                        if future.done():
                            continue
                        if isinstance(err, asyncio.CancelledError):
                            future.cancel()
                        else:
                            future.set_exception(err)
                    if isinstance(err, asyncio.CancelledError):
                        raise
        finally:
            self._sender = None

    async def _run(self, batch: list[Call]) -> None:
        results = await self._pipeline(batch)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:  # Redis restarted (or flushed its scripts): load them, send those again
            for source in {batch[i][0].source for i in missing}:
                self.stats["round_trips"] += 1
                await self._link.client.script_load(source)
            again = await self._pipeline([batch[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        for (*_, future, _), result in zip(batch, results, strict=True):
            if future.done():  # its caller left
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _pipeline(self, batch: list[Call]) -> list[Any]:
        pipe: Any = self._link.client.pipeline(transaction=False)
        waited = False
        for script, keys, args, _, on_path in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            waited = waited or on_path
        self.stats["round_trips"] += 1
        self.stats["waited"] += waited
        self.stats["calls"] += len(batch)
        return list(await pipe.execute(raise_on_error=False))
