"""Debian's HAProxy on loopback, run from deploy/haproxy.cfg itself (its variables set to the
test's ports), in the foreground (master-worker), so the tests and the deployment cannot drift."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from tests.support.engines import require
from tests.support.paths import ROOT
from tests.support.procs import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
TEMPLATE = ROOT / "deploy" / "haproxy.cfg"
NODE_NAMES = ("node1", "node2", "node3")  # the servers deploy/haproxy.cfg declares


class HAProxy:
    """A running HAProxy in front of three nodes: its URL, its stats, reload and stop."""

    def __init__(self, workdir: Path, nodes: Sequence[str], check_inter: str) -> None:
        if len(nodes) != len(NODE_NAMES):
            raise ValueError(f"deploy/haproxy.cfg has {len(NODE_NAMES)} nodes")
        self.workdir = workdir
        self.port, self.stats_port = free_port(), free_port()
        self.nodes = dict(zip(NODE_NAMES, nodes, strict=True))  # name -> host:port
        self.check_inter = check_inter
        self.config = workdir / "haproxy.cfg"
        self.log = workdir / "haproxy.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The load balancer's address, as clients use it."""
        return f"http://127.0.0.1:{self.port}"

    def environ(self) -> dict[str, str]:
        """The variables deploy/haproxy.cfg reads, aimed at loopback."""
        env = dict(os.environ, HAPROXY_BIND=f"127.0.0.1:{self.port}",
                   HAPROXY_STATS_BIND=f"127.0.0.1:{self.stats_port}",
                   CHECK_INTER=self.check_inter, CHECK_FAST=self.check_inter,
                   HAPROXY_MAXCONN="2000")  # within this machine's open-file limit
        for i, address in enumerate(self.nodes.values(), 1):
            env[f"NODE{i}_ADDR"] = address
        return env

    async def start(self) -> None:
        """Copy the template into the work dir, check it, run it in the foreground."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TEMPLATE, self.config)
        check = await asyncio.create_subprocess_exec(
            HAPROXY, "-c", "-q", "-f", str(self.config), env=self.environ(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await check.communicate()
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused the config: {out.decode()}")
        with open(self.log, "ab") as log:
            # -W: master-worker (SIGUSR2 reloads, old workers finish their streams); -db: stay
            # in the foreground.
            self.proc = await asyncio.create_subprocess_exec(
                HAPROXY, "-W", "-db", "-f", str(self.config), env=self.environ(),
                stdout=log, stderr=log)
        await self._wait_listening()

    async def _wait_listening(self, timeout: float = 15) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await self.stats()
                return
            except (OSError, aiohttp.ClientError):
                if self.proc is not None and self.proc.returncode is not None:
                    raise RuntimeError(f"haproxy exited: {self.log.read_text()}") from None
                if loop.time() > deadline:
                    raise TimeoutError("haproxy did not come up") from None
                await asyncio.sleep(0.05)

    async def stats(self) -> list[dict[str, str]]:
        """The stats page as CSV rows (pxname, svname, status, stot, ...)."""
        url = f"http://127.0.0.1:{self.stats_port}/stats;csv"
        async with aiohttp.ClientSession() as s, s.get(url) as resp:
            text = (await resp.text()).lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))

    async def servers(self) -> dict[str, dict[str, str]]:
        """The backend's servers by name (backups as node1-open, ...)."""
        return {row["svname"]: row for row in await self.stats()
                if row["pxname"] == "nodes" and row["svname"] not in ("BACKEND", "FRONTEND")}

    async def states(self) -> dict[str, str]:
        """Each node's check state: UP, DOWN, or a transition (UP 1/2, ...)."""
        servers = await self.servers()
        return {name: servers[name]["status"] for name in NODE_NAMES}

    async def sessions(self) -> dict[str, int]:
        """How many connections HAProxy has opened to each node so far (backups included)."""
        servers = await self.servers()
        return {name: int(servers[name]["stot"]) + int(servers[f"{name}-open"]["stot"])
                for name in NODE_NAMES}

    async def wait_states(self, want: dict[str, str], timeout: float = 30) -> None:
        """Poll until each named node shows the wanted state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            now = await self.states()
            if all(now[name] == state for name, state in want.items()):
                return
            assert loop.time() < deadline, f"haproxy states {now}, wanted {want}"
            await asyncio.sleep(0.05)

    async def reload(self) -> None:
        """SIGUSR2 to the master: a new worker takes new connections, the old one finishes."""
        assert self.proc is not None and self.proc.returncode is None
        self.proc.send_signal(signal.SIGUSR2)

    async def stop(self) -> None:
        """Stop at once (SIGTERM to the master stops the workers) and wait."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None


async def start_haproxy(workdir: Path, nodes: Sequence[str],
                        check_inter: str = "250ms") -> HAProxy:
    """HAProxy from deploy/haproxy.cfg in front of three host:port nodes, checks every
    `check_inter` (the deployment's 2 s is slow for a test)."""
    require("HAProxy", HAPROXY)
    proxy = HAProxy(workdir, nodes, check_inter)
    await proxy.start()
    return proxy
