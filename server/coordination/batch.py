"""Script calls made in the same turn of the event loop go to Redis together: one pipeline,
one round trip, however many turns asked (as the database's writer batches commits)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError


class Batch:
    """EVALSHA calls queued during one loop iteration, sent in one pipeline after it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._calls: list[tuple[Any, list[Any], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # pipelines sent (a script missing on Redis costs one more)
        self.calls = 0

    def call(self, script: Any, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue one script call (a `register_script` object); its result when it is back."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._calls:
            loop.call_soon(self._send)
        self._calls.append((script, [len(keys), *keys, *args], fut))
        self.calls += 1
        return fut

    def _send(self) -> None:
        calls, self._calls = self._calls, []
        task = asyncio.create_task(self._run(calls), name="redis-batch")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, calls: list[tuple[Any, list[Any], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._pipeline(calls)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:  # Redis restarted (or was flushed): load the scripts, send those again
                for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                    await self._client.script_load(script.script)
                again = await self._pipeline([calls[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except BaseException as err:  # Redis down (or the task cancelled): every caller hears
            for _, _, fut in calls:
                if not fut.done():
                    fut.set_exception(err if isinstance(err, Exception)
                                      else ConnectionError("stopped"))
            if not isinstance(err, Exception):
                raise
            return
        for (_, _, fut), result in zip(calls, results, strict=True):
            if fut.done():
                continue  # its caller was cancelled
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def _pipeline(self, calls: list[tuple[Any, list[Any], asyncio.Future[Any]]]) \
            -> list[Any]:
        self.round_trips += 1
        async with self._client.pipeline(transaction=False) as pipe:
            for script, params, _ in calls:
                pipe.evalsha(script.sha, *params)
            return list(await pipe.execute(raise_on_error=False))

    async def close(self) -> None:
        """Wait for the calls in flight."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
