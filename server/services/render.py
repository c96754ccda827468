"""Markdown to safe HTML: markdown-it-py with raw HTML off, then nh3 sanitising the result.

`render` is the one renderer (the chat stream and conversation reads both use it). `Renderer`
decides when it runs: each stored reply at most once while it stays in a bounded cache, in a
separate process (Markdown parsing is pure-Python CPU work: in a thread it would share the
GIL with the event loop), and never more than a bounded amount of work for one request.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import nh3
from markdown_it import MarkdownIt

if TYPE_CHECKING:  # the render process imports this module: keep its imports light
    from ..config import RenderConfig

log = logging.getLogger(__name__)

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}) \
    .enable(["table", "strikethrough"])
_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td",
}
# No style attributes: the Content-Security-Policy forbids inline styles anyway.
_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}}
# A cache entry's bookkeeping, beyond its HTML's characters.
_ENTRY_OVERHEAD = 200


def render(markdown: str) -> str:
    """Sanitised HTML for one message: no raw HTML, no images, only http/https/mailto links."""
    html = _MD.render(markdown)
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES,
                     url_schemes={"http", "https", "mailto"},
                     link_rel="noopener noreferrer", strip_comments=True,
                     set_tag_attribute_values={"a": {"target": "_blank"}})


@dataclass
class RenderStats:
    """What the renderer did: replies rendered, served from cache, or left unrendered."""

    rendered: int = 0
    rendered_chars: int = 0
    cache_hits: int = 0
    skipped: int = 0
    failed: int = 0


class _HtmlCache:
    """Least-recently-used HTML by message id, bounded by characters held."""

    def __init__(self, max_chars: int) -> None:
        self._max = max_chars
        self._size = 0
        self._items: OrderedDict[int, tuple[int, str]] = OrderedDict()

    def get(self, message_id: int, digest: int) -> str | None:
        """The HTML of this message if cached for this very content."""
        item = self._items.get(message_id)
        if item is None or item[0] != digest:
            return None
        self._items.move_to_end(message_id)
        return item[1]

    def put(self, message_id: int, digest: int, html: str) -> None:
        """Keep one message's HTML, dropping the least recently used beyond the bound."""
        old = self._items.pop(message_id, None)
        if old is not None:
            self._size -= len(old[1]) + _ENTRY_OVERHEAD
        cost = len(html) + _ENTRY_OVERHEAD
        if cost > self._max:
            return
        self._items[message_id] = (digest, html)
        self._size += cost
        while self._size > self._max:
            _, (_, dropped) = self._items.popitem(last=False)
            self._size -= len(dropped) + _ENTRY_OVERHEAD


class Renderer:
    """Renders stored replies once, off the event loop, within per-reply and per-request caps.

    A reply that is not rendered gets None (the client shows its Markdown source as text):
    longer than `max_reply_chars`, beyond this request's `max_chars_per_request`, more than
    `max_pending_chars` already waiting to render, or still rendering after `wait_s`. A render the
    request stopped waiting for goes on and is cached, so a later request gets it.
    """

    def __init__(self, config: RenderConfig) -> None:
        self._config = config
        self._cache = _HtmlCache(config.cache_mb * 1_000_000)
        self._running: dict[int, asyncio.Future[str]] = {}
        self._pending_chars = 0
        self._executor: Executor | None = None
        self.stats = RenderStats()

    async def html(self, replies: Sequence[tuple[int, str]]) -> list[str | None]:
        """HTML for each (message id, Markdown) reply, or None where it was not rendered."""
        results: list[str | None] = [None] * len(replies)
        waits: dict[int, asyncio.Future[str]] = {}
        budget = self._config.max_chars_per_request
        # Newest first: a capped request still renders the end of the conversation, read first.
        for index in reversed(range(len(replies))):
            message_id, text = replies[index]
            digest = hash(text)
            cached = self._cache.get(message_id, digest)
            if cached is not None:
                self.stats.cache_hits += 1
                results[index] = cached
                continue
            future = self._running.get(message_id)
            if future is None:
                if not self._affordable(len(text), budget):
                    self.stats.skipped += 1
                    continue
                budget -= len(text)
                future = self._submit(message_id, digest, text)
            waits[index] = future
        if waits:
            done, _ = await asyncio.wait(waits.values(), timeout=self._config.wait_s)
            for index, future in waits.items():
                if future in done and not future.cancelled() and future.exception() is None:
                    results[index] = future.result()
        return results

    async def one(self, message_id: int, text: str) -> str | None:
        """HTML for one reply (see `html`)."""
        return (await self.html([(message_id, text)]))[0]

    def close(self) -> None:
        """Stop the render process; renders still waiting are dropped."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _affordable(self, chars: int, budget: int) -> bool:
        config = self._config
        return (chars <= config.max_reply_chars and chars <= budget
                and self._pending_chars + chars <= config.max_pending_chars)

    def _submit(self, message_id: int, digest: int, text: str) -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool(), render, text)
        self._running[message_id] = future
        self._pending_chars += len(text)
        future.add_done_callback(partial(self._finished, message_id, digest, len(text)))
        return future

    def _finished(self, message_id: int, digest: int, chars: int,
                  future: asyncio.Future[str]) -> None:
        self._running.pop(message_id, None)
        self._pending_chars -= chars
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            self.stats.rendered += 1
            self.stats.rendered_chars += chars
            self._cache.put(message_id, digest, future.result())
            return
        self.stats.failed += 1
        if isinstance(error, BrokenProcessPool):
            self._executor = None  # the process died: the next render starts a new one
        log.warning("rendering message %d failed: %r", message_id, error)

    def _pool(self) -> Executor:
        if self._executor is None:
            processes = self._config.processes
            if processes:
                # spawn, not fork: the server process has threads (SQLite, password hashing).
                # The child imports the main module, so it must guard `if __name__ == ...`.
                self._executor = ProcessPoolExecutor(
                    processes, mp_context=multiprocessing.get_context("spawn"))
            else:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="render")
        return self._executor
