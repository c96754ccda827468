"""Markdown to safe HTML in child processes, each stored reply once, within CPU caps.

`render` (server/services/markdown.py) is the one renderer (the chat stream and conversation
reads both use it). `Renderer` decides when it runs: each stored reply at most once while it
stays in a bounded cache, in child processes (`python -m server.services.render`: Markdown
parsing is pure-Python CPU work that in a thread would share the GIL with the event loop),
which give up on a reply that takes more CPU time than its length allows (pathological
Markdown costs ~10x ordinary Markdown per character), and never more than a bounded amount of
work for one request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the render process imports this module: keep its imports light
    from ..config import RenderConfig

log = logging.getLogger(__name__)

_ENTRY_OVERHEAD = 200  # a cache entry's bookkeeping, beyond its HTML's characters
_FAILED = 0xFFFFFFFF  # the length the render process answers when `render` gave up or raised
_ROOT = Path(__file__).resolve().parents[2]  # where `server` is importable from
_READY = b"R"  # the render process's first byte: imported, ready for work
MIN_CPU_S = 0.1  # CPU time any reply may take, however short
START_TIMEOUT_S = 60.0  # a loaded machine may take seconds to start Python


def render(markdown: str, rich_cpu_s: float = float("inf")) -> str:
    """Sanitised HTML for one message (server/services/markdown.py does it)."""
    # Imported where rendering runs: the server process need not hold Pygments and latex2mathml.
    from .markdown import render as render_markdown
    return render_markdown(markdown, rich_cpu_s)


@dataclass
class RenderStats:
    """What the renderer did: replies rendered, served from cache, declined or abandoned."""

    rendered: int = 0
    cache_hits: int = 0
    skipped: int = 0
    failed: int = 0

    def counts(self) -> dict[str, int]:
        """The /metrics view: each reply asked for, by what happened to it."""
        return {"rendered": self.rendered, "cached": self.cache_hits,
                "declined": self.skipped, "gave_up": self.failed}


class _HtmlCache:
    """Least-recently-used HTML by message id (None: abandoned), bounded by characters held."""

    def __init__(self, max_chars: int) -> None:
        self._max = max_chars
        self._size = 0
        self._items: OrderedDict[int, tuple[int, str | None]] = OrderedDict()

    def get(self, message_id: int, digest: int) -> tuple[bool, str | None]:
        """(known, HTML) of this message if cached for this very content."""
        item = self._items.get(message_id)
        if item is None or item[0] != digest:
            return False, None
        self._items.move_to_end(message_id)
        return True, item[1]

    def put(self, message_id: int, digest: int, html: str | None) -> None:
        """Keep one message's HTML, dropping the least recently used beyond the bound."""
        old = self._items.pop(message_id, None)
        if old is not None:
            self._size -= len(old[1] or "") + _ENTRY_OVERHEAD
        cost = len(html or "") + _ENTRY_OVERHEAD
        if cost > self._max:
            return
        self._items[message_id] = (digest, html)
        self._size += cost
        while self._size > self._max:
            _, (_, dropped) = self._items.popitem(last=False)
            self._size -= len(dropped or "") + _ENTRY_OVERHEAD


@dataclass
class _Job:
    """One reply waiting for a render process."""

    owner: int
    message_id: int
    digest: int
    text: str
    future: asyncio.Future[str | None]
    keep: bool = True  # cache the HTML (not for a streaming reply's text so far)


class _FairJobs:
    """Jobs by owner, served round-robin: one account's backlog does not delay another's.

    An owner with nothing waiting goes to the front: someone reading one conversation waits
    for the reply being rendered at most, not for a round of everyone with a backlog.
    """

    def __init__(self) -> None:
        self._ready: asyncio.Queue[None] = asyncio.Queue()  # one item per job waiting
        self._owners: OrderedDict[int, deque[_Job]] = OrderedDict()

    def put(self, job: _Job) -> None:
        """Queue a job behind its owner's earlier ones."""
        jobs = self._owners.get(job.owner)
        if jobs is None:
            jobs = self._owners[job.owner] = deque()
            self._owners.move_to_end(job.owner, last=False)
        jobs.append(job)
        self._ready.put_nowait(None)

    async def get(self) -> _Job:
        """The next owner's oldest job."""
        await self._ready.get()
        owner, jobs = next(iter(self._owners.items()))
        job = jobs.popleft()
        if jobs:
            self._owners.move_to_end(owner)
        else:
            del self._owners[owner]
        return job


class Renderer:
    """Renders stored replies once, in child processes, within per-reply and per-request caps.

    A reply that is not rendered gets None (the client shows its Markdown source as text):
    longer than `max_reply_chars`; beyond this request's `max_chars_per_request`; its owner
    already has `max_chars_per_request` waiting, or everyone `max_pending_chars`; still
    rendering after `wait_s`; or given up over its CPU time (remembered, so it is not tried
    again). A render the request stopped waiting for goes on and is cached, so a later
    request gets it.
    """

    def __init__(self, config: RenderConfig) -> None:
        self._config = config
        self._cache = _HtmlCache(config.cache_mb * 1_000_000)
        self._running: dict[int, asyncio.Future[str | None]] = {}
        self._pending_chars = 0
        self._pending_by_owner: dict[int, int] = {}
        self._jobs = _FairJobs()
        self._workers: list[asyncio.Task[None]] = []
        self._snapshots = 0  # numbers the streaming snapshots (negative ids: no message's)
        # The process limits itself by CPU time; this wall-clock bound only catches a stuck one.
        self._wall_s = 10 * config.max_render_cpu_s + 10
        self.stats = RenderStats()

    async def html(self, owner: int, replies: Sequence[tuple[int, str]]) -> list[str | None]:
        """HTML for each (message id, Markdown) reply of user `owner`; None where not rendered."""
        results: list[str | None] = [None] * len(replies)
        waits: dict[int, asyncio.Future[str | None]] = {}
        budget = self._config.max_chars_per_request
        # Newest first: a capped request still renders the end of the conversation, read first.
        for index in reversed(range(len(replies))):
            message_id, text = replies[index]
            digest = hash(text)
            known, cached = self._cache.get(message_id, digest)
            if known:
                self.stats.cache_hits += 1
                results[index] = cached
                continue
            future = self._running.get(message_id)
            if future is None:
                if not self._affordable(owner, len(text), budget):
                    self.stats.skipped += 1
                    continue
                budget -= len(text)
                future = self._submit(_Job(owner, message_id, digest, text,
                                           asyncio.get_running_loop().create_future()))
            waits[index] = future
        if waits:
            done, _ = await asyncio.wait(waits.values(), timeout=self._config.wait_s)
            for index, future in waits.items():
                if future in done:
                    results[index] = future.result()
        return results

    async def one(self, owner: int, message_id: int, text: str) -> str | None:
        """HTML for one reply (see `html`)."""
        return (await self.html(owner, [(message_id, text)]))[0]

    async def snapshot(self, owner: int, text: str) -> str | None:
        """HTML for a streaming reply's text so far: within the same caps as a stored reply,
        never cached (the text grows); None if declined or not done within `wait_s`."""
        if not self._affordable(owner, len(text), self._config.max_chars_per_request):
            self.stats.skipped += 1
            return None
        self._snapshots += 1
        future = self._submit(_Job(owner, -self._snapshots, hash(text), text,
                                   asyncio.get_running_loop().create_future(), keep=False))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._config.wait_s)
        except TimeoutError:
            return None

    async def close(self) -> None:
        """Stop the render processes; renders still waiting are dropped."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    def _affordable(self, owner: int, chars: int, budget: int) -> bool:
        config = self._config
        # A user's own backlog is capped at one request's worth: parallel requests add nothing.
        mine = self._pending_by_owner.get(owner, 0) + chars
        return (chars <= config.max_reply_chars and chars <= budget
                and mine <= config.max_chars_per_request
                and self._pending_chars + chars <= config.max_pending_chars)

    def _submit(self, job: _Job) -> asyncio.Future[str | None]:
        if not self._workers:
            self._workers = [asyncio.create_task(self._work(), name=f"render-{n}")
                             for n in range(self._config.processes)]
        self._running[job.message_id] = job.future
        self._pending_chars += len(job.text)
        owed = self._pending_by_owner
        owed[job.owner] = owed.get(job.owner, 0) + len(job.text)
        self._jobs.put(job)
        return job.future

    async def _work(self) -> None:
        """One render process: start it when needed, feed it one reply at a time."""
        process: asyncio.subprocess.Process | None = None
        try:
            while True:
                job = await self._jobs.get()
                if process is not None and process.returncode is not None:
                    process = None  # it died between replies (killed, out of memory): replace
                if process is None:
                    try:
                        process = await _start_process()
                    except OSError as err:
                        log.error("cannot start a render process: %r", err)
                        self._finish(job, None, remember=False)
                        continue
                html: str | None = None
                try:
                    html = await asyncio.wait_for(
                        _exchange(process, job.text, self._cpu_s(len(job.text))), self._wall_s)
                except ValueError:
                    # Over its CPU time (pathological Markdown) or the renderer raised.
                    log.warning("rendering message %d gave up", job.message_id)
                except (TimeoutError, OSError, asyncio.IncompleteReadError) as err:
                    # Stuck or dead: a new process for the next reply; this one is not retried.
                    log.warning("rendering message %d abandoned: %r", job.message_id, err)
                    await _stop_process(process)
                    process = None
                self._finish(job, html)
        finally:
            if process is not None:
                await _stop_process(process)

    def _cpu_s(self, chars: int) -> float:
        """CPU time a reply may take: its length's share of max_render_cpu_s, at least 0.1 s."""
        config = self._config
        return max(MIN_CPU_S, config.max_render_cpu_s * chars / max(1, config.max_reply_chars))

    def _finish(self, job: _Job, html: str | None, remember: bool = True) -> None:
        self._running.pop(job.message_id, None)
        self._pending_chars -= len(job.text)
        left = self._pending_by_owner.pop(job.owner) - len(job.text)
        if left:
            self._pending_by_owner[job.owner] = left
        if remember and job.keep:
            self._cache.put(job.message_id, job.digest, html)
        if html is None:
            self.stats.failed += 1
        else:
            self.stats.rendered += 1
        if not job.future.done():
            job.future.set_result(html)


async def _start_process() -> asyncio.subprocess.Process:
    """A render process: this module run as a program, its stdin and stdout the channel."""
    # Only what Python needs: the server's environment may hold secrets (CHATGATE_AUTH__SECRET).
    env = {"PYTHONPATH": os.pathsep.join(
        p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.services.render", cwd=_ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    try:  # start-up is not counted in any reply's time
        ready = await asyncio.wait_for(process.stdout.readexactly(1), START_TIMEOUT_S)
    except (TimeoutError, asyncio.IncompleteReadError) as err:
        await _stop_process(process)
        raise OSError(f"the render process did not start: {err!r}") from err
    if ready != _READY:
        await _stop_process(process)
        raise OSError(f"the render process said {ready!r} instead of ready")
    return process


async def _exchange(process: asyncio.subprocess.Process, text: str, cpu_s: float) -> str:
    """Send one reply's Markdown (its CPU milliseconds, length, UTF-8); read back its HTML."""
    assert process.stdin is not None and process.stdout is not None
    data = text.encode("utf-8", "surrogatepass")
    head = int(cpu_s * 1000).to_bytes(4, "big") + len(data).to_bytes(4, "big")
    process.stdin.write(head + data)
    await process.stdin.drain()
    size = int.from_bytes(await process.stdout.readexactly(4), "big")
    if size == _FAILED:
        raise ValueError("the renderer gave up")
    return (await process.stdout.readexactly(size)).decode("utf-8", "surrogatepass")


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    """Kill a render process and reap it."""
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()


class _OverTime(BaseException):
    """A reply used up its CPU time (not an Exception: no library handler swallows it)."""


def _over_time(signum: int, frame: object) -> None:
    raise _OverTime


def _serve() -> None:
    """The render process: read length-prefixed Markdown, answer length-prefixed HTML."""
    with contextlib.suppress(OSError):
        os.nice(5)  # the server's event loop goes first when the cores are busy
    # CPU time, not wall time: a busy machine slows a render down but does not fail it.
    signal.signal(signal.SIGPROF, _over_time)
    from .markdown import warm_up
    warm_up()  # imports are start-up, not any reply's CPU time
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sink.write(_READY)
    sink.flush()
    while len(head := source.read(8)) == 8:
        cpu_s = int.from_bytes(head[:4], "big") / 1000
        text = source.read(int.from_bytes(head[4:], "big")).decode("utf-8", "surrogatepass")
        try:
            signal.setitimer(signal.ITIMER_PROF, cpu_s)
            try:
                # Half the allowance at most for highlighting and math: then plain, not failed.
                html = render(text, rich_cpu_s=cpu_s / 2)
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
            data = html.encode("utf-8", "surrogatepass")
        except (_OverTime, Exception):  # noqa: BLE001 - answered as a failure; the server logs it
            sink.write(_FAILED.to_bytes(4, "big"))
        else:
            sink.write(len(data).to_bytes(4, "big") + data)
        sink.flush()


if __name__ == "__main__":
    _serve()
