"""A real Redis server from Debian's package, on a loopback port, for one test (or module)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import redis.asyncio as aioredis

from tests.support.engines import require
from tests.support.procs import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """redis-server in the foreground, nothing persisted; stop and start it again at will."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The address chatgate is given (coordination.redis_url)."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start on the same port (a restart keeps the address, loses the data)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--daemonize", "no", "--loglevel", "warning",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        client = aioredis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            for _ in range(200):
                try:
                    if await client.ping():
                        return
                except (OSError, aioredis.ConnectionError):
                    await asyncio.sleep(0.025)
            raise TimeoutError(f"redis-server on port {self.port} did not come up")
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """Kill it (as a crash would) and wait until it is gone."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None

    async def restart(self) -> None:
        """Stop, then start on the same port."""
        await self.stop()
        await self.start()


async def start_redis(workdir: Path) -> RedisServer:
    """A running Redis in `workdir`."""
    require("redis-server", REDIS_SERVER)
    server = RedisServer(workdir)
    await server.start()
    return server
