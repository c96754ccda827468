"""Run the simulator on real TCP inside the caller's event loop."""

from __future__ import annotations

from aiohttp import web
from aiohttp.log import access_logger as aiohttp_access_logger

from .app import STATE, create_sim_app
from .engine import SimStats
from .settings import SimSettings


class SimServer:
    """A simulator listening on real TCP inside the caller's event loop."""

    def __init__(self, runner: web.AppRunner, app: web.Application, host: str, port: int) -> None:
        """Wrap a started runner."""
        self.runner, self.app, self.host, self.port = runner, app, host, port

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

    async def close(self) -> None:
        """Stop listening, end in-flight handlers and release the port."""
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
