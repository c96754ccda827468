"""The master of several server processes on one port (`server.processes`): it holds the port,
starts the processes, restarts one that dies, and on SIGTERM/SIGINT has each drain as a lone
process does (server/runner.py), then exits 0 when they all did.

Each process listens on the port itself with SO_REUSEPORT, so the kernel spreads new
connections over them and a dead one takes only its own connections with it. The master
serves nothing and holds no resource of theirs but the port (bound, never listening, so a
restarting process always finds it free of anyone else) and the metrics folder.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping

from .services.metrics_merge import retire

log = logging.getLogger(__name__)

# (index, fd the process writes one byte to once it listens) -> its command line
Command = Callable[[int, int], list[str]]

RESTART_MIN_S = 0.5  # a process that keeps dying waits longer each time, up to the max
RESTART_MAX_S = 30.0
STABLE_S = 30.0  # one that lived this long starts again from the shortest wait


def hold_port(host: str, port: int) -> socket.socket:
    """Bind the port (0: a free one) with SO_REUSEPORT, never listening: the processes bind
    it too, and nobody else can while the master lives."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, port))
    except BaseException:
        holder.close()
        raise
    return holder


class Master:
    """Runs `count` processes made by `command` and keeps them running until stopped."""

    def __init__(self, command: Command, count: int, metrics_dir: str,
                 env: Mapping[str, str] | None = None) -> None:
        self._command = command
        self._count = count
        self._metrics_dir = metrics_dir
        self._env = dict(env) if env is not None else None
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        self._wake = asyncio.Event()  # ends a restart's wait when stopping
        self._retiring = asyncio.Lock()  # one fold into the retired totals at a time

    async def run(self, stop: asyncio.Event) -> int:
        """Start every process, keep them running until `stop` is set, then drain them all.
        0 when every process ended cleanly; a process's code when one could not start."""
        loop = asyncio.get_running_loop()
        started = [loop.create_future() for _ in range(self._count)]
        keepers = [asyncio.create_task(self._keep(i, started[i]), name=f"process-{i}")
                   for i in range(self._count)]
        first = asyncio.ensure_future(asyncio.gather(*started))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([first, stopped], return_when=asyncio.FIRST_COMPLETED)
        failed = first.done() and not all(first.result())
        if failed:
            log.error("stopping the other server processes")
        else:
            await stopped  # serving: until SIGTERM or SIGINT
            log.info("stopping %d server processes: each finishes its running replies",
                     self._count)
        self.stop()
        codes = await asyncio.gather(*keepers)
        first.cancel()
        stopped.cancel()
        if failed:
            return next((c for c in codes if c not in (0, -signal.SIGTERM)), 1) or 1
        return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1

    def stop(self) -> None:
        """Have every process drain and exit (again: harmless)."""
        self._stopping = True
        self._wake.set()
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)

    async def _keep(self, index: int, started: asyncio.Future[bool]) -> int:
        """Run process `index`, again whenever it dies, until stopping; its last exit code."""
        loop = asyncio.get_running_loop()
        delay = RESTART_MIN_S
        while True:
            since = loop.time()
            proc, ready = await self._spawn(index)
            code = await proc.wait() if not ready else None
            if not started.done():
                # Refusing to start (a configuration or database problem: an exit code) stops
                # the master; one killed by a signal while starting is started again.
                started.set_result(ready or code is None or code < 0)
                if not started.result():
                    log.error("server process %d (pid %d) could not start: it %s", index + 1,
                              proc.pid, _ended(code or 0))
            if code is None:
                code = await proc.wait()
            async with self._retiring:  # read, add, write: never two at once
                await asyncio.to_thread(retire, self._metrics_dir, proc.pid)
            if self._stopping or not started.result():  # stopping, or it could not start
                return code
            if loop.time() - since >= STABLE_S:
                delay = RESTART_MIN_S
            log.warning("server process %d (pid %d) %s; starting it again in %gs", index + 1,
                        proc.pid, _ended(code), delay)
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
            if self._stopping:  # stopped while waiting to start it again: nothing to drain
                return 0
            delay = min(delay * 2, RESTART_MAX_S)

    async def _spawn(self, index: int) -> tuple[asyncio.subprocess.Process, bool]:
        """Start process `index`; whether it came to listen (False: it exited first)."""
        read_end, write_end = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command(index, write_end), pass_fds=(write_end,), env=self._env,
                stdin=asyncio.subprocess.DEVNULL)
        finally:
            os.close(write_end)
        self._procs[index] = proc
        if self._stopping:  # stopped while it was being started
            proc.send_signal(signal.SIGTERM)
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", 0))
        try:
            return proc, await reader.read(1) == b"1"  # EOF: it exited (or closed it) first
        finally:
            transport.close()


def _ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
