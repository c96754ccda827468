"""Running the app on a real socket: used by run.py, the tests and the benchmarks alike."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from workers.upstream import redact_url

from . import keys
from .app import create_app
from .config import Config
from .listener import CappedSite
from .processes import ProcessInfo
from .storage.urls import where

log = logging.getLogger(__name__)


@dataclass
class Running:
    """A started server: its app, runner and address."""

    app: web.Application
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        """Graceful stop: refuse new work, let handlers finish within the grace, clean up."""
        await self.runner.cleanup()


async def start(config: Config, process: ProcessInfo | None = None) -> Running:
    """Start serving `config` (port 0 picks a free port) and return once it listens;
    `process`: one of several processes on the port (SO_REUSEPORT)."""
    app = await create_app(config, process)
    server = config.server
    # Long search queries travel in the URL: allow request lines up to 64 KiB.
    handler_args: dict[str, Any] = {"access_log": None, "max_line_size": 65536,
                                    "max_field_size": 16384,
                                    "keepalive_timeout": server.keepalive_timeout_s}
    runner = web.AppRunner(app, handler_cancellation=True,
                           shutdown_timeout=server.shutdown_grace_s, **handler_args)
    await runner.setup()
    site = CappedSite(runner, server.host, server.port, backlog=1024,
                      max_connections=server.max_connections,
                      header_timeout=server.header_timeout_s, handler_args=handler_args,
                      reuse_port=process is not None)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    _check_file_limit(server.max_connections)
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    return Running(app, runner, f"http://{shown}:{port}")


def _check_file_limit(max_connections: int) -> None:
    """A connection cap above the open-file limit is no cap (accept() fails first): raise the
    soft limit as far as the hard one allows, and say so if that is not enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + 256  # the database, the model server's connections, logs
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warning("server.max_connections is %d but the open-file limit is %d: raise it "
                    "(ulimit -n %d) or lower server.max_connections to %d", max_connections,
                    target, need, max(1, target - 256))


async def serve(config: Config, stop: asyncio.Event, process: ProcessInfo | None = None,
                ready: Callable[[], None] | None = None) -> None:
    """Serve until `stop` is set, then stop gracefully; `ready` is called once listening."""
    running = await start(config, process)
    if ready is not None:
        try:
            ready()
        except BaseException:
            await running.stop()
            raise
    # Start-up objects live for the whole process: keep them out of every later GC pass.
    gc.collect()
    gc.freeze()
    _warn_plain_http(config)
    models = "; ".join(
        f"{model.name or 'model'} on " + ", ".join(redact_url(r.url) for r in model.replicas)
        for model in config.model_list)
    database = (f"PostgreSQL {where(config.database.url)}" if config.database.url
                else config.database.path)
    if process is not None and process.index:  # the first process speaks for them all
        log.info("process %d of %d serving %s", process.index + 1, process.count, running.url)
    else:
        of = f" in {process.count} processes" if process is not None else ""
        print(f"chatgate serving {running.url}{of} (database {database}; {models})",
              flush=True)
        print(f"Ready: open {running.url} in a browser and create an account (the first one on "
              "a new database is the administrator). Ctrl-C stops.", flush=True)
    try:
        await stop.wait()
        await _drain(running, config.server.drain_s)
    finally:
        log.info("shutting down: finishing running replies for up to %.0fs",
                 config.server.shutdown_grace_s)
        await running.stop()


async def _drain(running: Running, seconds: float) -> None:
    """Answer /ready with 503 for `seconds` while serving on, so a load balancer stops sending
    requests before the listener closes (one queued in its backlog then would be reset)."""
    if seconds > 0:
        log.info("draining: /ready answers 503 for %.1fs, then the listener closes", seconds)
        running.app[keys.STATUS].draining = True
        await asyncio.sleep(seconds)


def _warn_plain_http(config: Config) -> None:
    """Cookies without Secure over a network are readable in transit: say so once."""
    try:
        loopback = ipaddress.ip_address(config.server.host).is_loopback
    except ValueError:
        loopback = config.server.host == "localhost"
    if not loopback and not config.server.proxy_hops:
        log.warning("serving plain HTTP on %s: put TLS in front (and set "
                    "server.trusted_proxy_hops) so session cookies are Secure", config.server.host)
