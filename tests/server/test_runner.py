"""Running on a real socket: the open-file limit follows the connection cap; SIGTERM with
server.drain_s answers /ready 503 while still serving, then stops."""

from __future__ import annotations

import asyncio
import resource
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.support.app import register_over_http
from tests.support.paths import ROOT
from tests.support.procs import start_server_process, start_simulator_process

_PROBE = ("import logging, resource\n"
          "logging.basicConfig()\n"
          "from server.runner import _check_file_limit\n"
          "_check_file_limit(4096)\n"
          "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")


def _lower_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


def test_the_open_file_limit_is_raised_for_the_connection_cap() -> None:
    """A soft limit of 1,024 would make a cap of 4,096 connections meaningless: the server
    raises it as far as the hard limit allows, and warns when that is not enough."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True,
                          text=True, preexec_fn=_lower_soft_limit, timeout=60, check=True)
    soft = int(done.stdout.strip())
    need = 4096 + 256
    if hard == resource.RLIM_INFINITY or hard >= need:
        assert soft == need and "open-file limit" not in done.stderr
    else:
        assert soft == hard and "open-file limit" in done.stderr


async def test_sigterm_with_drain_s_fails_ready_first_and_serves_on(tmp_path: Path) -> None:
    """server.drain_s: after SIGTERM, /ready answers 503 (a load balancer takes the node out)
    while the node still listens and answers chats; then it stops and exits 0."""
    sim = await start_simulator_process("--ttft-ms", "5", "--tpot-ms", "1")
    server = await start_server_process(tmp_path / "drain.db", sim.url + "/v1",
                                        SERVER__DRAIN_S=4, ROUTING__PROBE_INTERVAL_S=0.2)
    try:
        user = await register_over_http(server.url, "drainer")
        async with aiohttp.ClientSession(server.url) as s:
            async def ready() -> int:
                async with s.get("/ready") as resp:
                    return resp.status
            while await ready() != 200:  # the prober's first look at the replica
                await asyncio.sleep(0.05)
            code = asyncio.create_task(server.signal(signal.SIGTERM))
            while await ready() != 503:
                await asyncio.sleep(0.02)
            async with s.post("/api/chat", json={"message": "still there?"},
                              headers=user.headers) as resp:
                assert resp.status == 200, await resp.text()
            assert await code == 0
    finally:
        await server.stop()
        await sim.signal(signal.SIGTERM)
