"""A streaming reply's text so far, rendered to HTML at a bounded rate (`event: render`), so a
browser shows formatted Markdown before the reply ends, never with a script of its own."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .. import keys
from ..middleware.auth import principal_of


class Snapshots:
    """Renders the text a stream has sent at most once every `interval` seconds, one render
    at a time; `ready()` gives the finished one as an SSE event (the caller writes it)."""

    def __init__(self, request: web.Request, interval: float) -> None:
        self._renderer = request.app[keys.RENDERER]
        self._owner = principal_of(request).user["id"]
        self._interval = interval
        self._pieces: list[str] = []
        self._last = time.monotonic()  # the first render waits an interval: short replies none
        self._task: asyncio.Task[str | None] | None = None
        self._upto = 0

    def grow(self, text: str) -> None:
        """More of the reply was sent: render the whole so far if it is time."""
        self._pieces.append(text)
        now = time.monotonic()
        if self._task is None and now - self._last >= self._interval:
            self._last = now
            whole = "".join(self._pieces)
            self._pieces = [whole]
            # In UTF-16 code units, as the page's JavaScript strings count: an emoji is two.
            self._upto = len(whole.encode("utf-16-le")) // 2
            self._task = asyncio.create_task(self._renderer.snapshot(self._owner, whole))

    def ready(self) -> tuple[int, str] | None:
        """(characters covered, HTML) of a render just finished, once; None otherwise."""
        if self._task is None or not self._task.done():
            return None
        task, self._task = self._task, None
        html = None if task.cancelled() or task.exception() else task.result()
        return None if html is None else (self._upto, html)

    def close(self) -> None:
        """The stream ended: a render under way is no longer wanted."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            if task.done() and not task.cancelled():
                task.exception()  # seen: an error of a render nobody waits for is not logged
