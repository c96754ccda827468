"""Run the simulator on real TCP inside the caller's event loop: one replica or several."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

from aiohttp import web
from aiohttp.log import access_logger as aiohttp_access_logger

from .app import STATE, create_sim_app
from .engine import SimStats
from .settings import SimSettings
from .state import Switch


class SimServer:
    """A simulator listening on real TCP inside the caller's event loop."""

    def __init__(self, runner: web.AppRunner, app: web.Application, host: str, port: int) -> None:
        """Wrap a started runner."""
        self.runner, self.app, self.host, self.port = runner, app, host, port
        self._up = True
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        app[STATE].switch = self

    @property
    def root_url(self) -> str:
        """Base address without the /v1 suffix, for /health and /sim/*."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """OpenAI base URL, e.g. http://127.0.0.1:8000/v1."""
        return f"{self.root_url}/v1"

    @property
    def settings(self) -> SimSettings:
        """Live settings; changes apply to new requests."""
        return self.app[STATE].settings

    @property
    def stats(self) -> SimStats:
        """Live counters."""
        return self.app[STATE].stats

    @property
    def is_up(self) -> bool:
        """True while the replica accepts connections."""
        return self._up

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def down(self, seconds: float | None = None) -> None:
        """Close the listening socket and abort open connections (clients see refused/reset)."""
        async with self._lock:
            self._cancel_timer()
            if self._up:
                self._up = False
                for site in list(self.runner.sites):
                    await site.stop()
                server = self.runner.server
                for conn in server.connections if server is not None else []:
                    if conn.transport is not None:
                        conn.transport.abort()
            if seconds is not None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(seconds, lambda: loop.create_task(self.up()))

    async def up(self) -> None:
        """Listen again on the same port."""
        async with self._lock:
            self._cancel_timer()
            if not self._up:
                await web.TCPSite(self.runner, self.host, self.port).start()
                self._up = True

    async def close(self) -> None:
        """Stop listening, end in-flight handlers and release the port."""
        self._cancel_timer()
        await self.runner.cleanup()

    async def __aenter__(self) -> SimServer:
        """Use as `async with await start_simulator(...)`."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close on leaving the block."""
        await self.close()


async def start_simulator(
    settings: SimSettings, host: str = "127.0.0.1", port: int = 0, access_log: bool = False
) -> SimServer:
    """Serve a simulator on host:port (0 picks a free port) in the running loop."""
    app = create_sim_app(settings)
    # handler_cancellation: a client hang-up cancels its handler, so aborts get counted.
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=1.0,
        access_log=aiohttp_access_logger if access_log else None,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return SimServer(runner, app, host, bound)


class SimCluster:
    """Several independent simulator replicas started together; index them like a list."""

    def __init__(self, replicas: list[SimServer]) -> None:
        """Wrap started replicas and let each one reach its siblings under /sim/replicas."""
        self.replicas = replicas
        self.total = SimStats()  # in flight across every replica (and the most at once)
        siblings: list[Switch] = list(replicas)
        for r in replicas:
            r.app[STATE].siblings = siblings
            r.app[STATE].group = self.total

    def __getitem__(self, index: int) -> SimServer:
        """The replica at `index`."""
        return self.replicas[index]

    def __len__(self) -> int:
        """How many replicas."""
        return len(self.replicas)

    def __iter__(self) -> Iterator[SimServer]:
        """The replicas in order."""
        return iter(self.replicas)

    @property
    def urls(self) -> list[str]:
        """Each replica's OpenAI base URL."""
        return [r.url for r in self.replicas]

    async def close(self) -> None:
        """Close every replica."""
        for r in self.replicas:
            await r.close()

    async def __aenter__(self) -> SimCluster:
        """Use as `async with await start_replicas(...)`."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close on leaving the block."""
        await self.close()


async def start_replicas(
    settings: Sequence[SimSettings],
    host: str = "127.0.0.1",
    ports: Sequence[int] | None = None,
    access_log: bool = False,
) -> SimCluster:
    """Serve one replica per settings (own state, own port; 0 or no ports picks free ones)."""
    if ports is not None and len(ports) != len(settings):
        raise ValueError("give one port per replica")
    started: list[SimServer] = []
    try:
        for i, s in enumerate(settings):
            port = ports[i] if ports is not None else 0
            started.append(await start_simulator(s, host, port, access_log=access_log))
    except BaseException:
        for r in started:
            await r.close()
        raise
    return SimCluster(started)
