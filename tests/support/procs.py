"""Real processes for crash and signal tests: run.py and the simulator, each in its own process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.app import database_url
from tests.support.paths import ROOT


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process with its base URL."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url

    async def signal(self, sig: int) -> int:
        """Send a signal and wait for the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 60)

    async def stop(self) -> None:
        """Make sure it is gone."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def wait_up(url: str, timeout: float = 30) -> None:
    """Poll url until it answers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"{url} did not come up")
            await asyncio.sleep(0.05)


async def start_simulator_process(*args: str, port: int | None = None) -> Proc:
    """python -m vllm_sim on a free port."""
    port = port or free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllm_sim", "--port", str(port), *args, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL)
    sim = Proc(proc, f"http://127.0.0.1:{port}")
    await wait_up(sim.url + "/health")
    return sim


async def start_server_process(db: Path, llm_url: str, **env: Any) -> Proc:
    """python run.py with CHATGATE_* overrides on a free port."""
    port = free_port()
    environ = dict(os.environ, CHATGATE_SERVER__PORT=str(port), CHATGATE_DATABASE__PATH=str(db),
                   CHATGATE_LLM__BASE_URL=llm_url,
                   CHATGATE_LIMITS__CHAT_PER_USER_PER_MINUTE="100000",
                   CHATGATE_LIMITS__LOGIN_PER_IP_PER_MINUTE="100000",
                   CHATGATE_LIMITS__CONVERSATIONS_PER_USER_PER_MINUTE="100000")
    if database_url() is not None:  # the test's PostgreSQL database (the file keeps the log)
        environ["CHATGATE_DATABASE__URL"] = str(database_url())
    environ.update({f"CHATGATE_{k.upper()}": str(v) for k, v in env.items()})
    # Its log goes to a file beside the database: a pipe nobody reads would fill up.
    with open(db.with_suffix(".log"), "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "run.py", cwd=ROOT, env=environ,
            stdout=asyncio.subprocess.DEVNULL, stderr=log)
    server = Proc(proc, f"http://127.0.0.1:{port}")
    await wait_up(server.url + "/health")
    return server


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (Linux /proc), by pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "(command name)"
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def serving_pid(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the server side of the loopback connection from `client_port`
    (Linux: the socket's inode in /proc/net/tcp, then the processes' descriptors)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                parts = line.split()
                local, remote = parts[1], parts[2]
                if (int(local.rsplit(":", 1)[1], 16) == server_port
                        and int(remote.rsplit(":", 1)[1], 16) == client_port):
                    inode = parts[9]
    if inode is None:
        return None
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


__all__ = ["Proc", "children_of", "free_port", "serving_pid", "signal", "start_server_process",
           "start_simulator_process"]
