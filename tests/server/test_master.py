"""Several server processes on one port (`server.processes`), as real processes: the master
restarts a child that dies, SIGTERM drains them all, /metrics counts them all, a
revocation through one process is refused by another within a second, and a user disabled
through one process has their reply in another stopped."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
import time
from contextlib import AsyncExitStack, closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tests.support.app import User, register_over_http
from tests.support.paths import ROOT
from tests.support.procs import (
    Proc,
    children_of,
    free_port,
    serving_pid,
    start_server_process,
    start_simulator_process,
)
from tests.support.sse import collect, events


class Pinned:
    """Connections from one client port: the kernel gives the same 4-tuple to the same
    process, so every request goes there (and the connection is kept alive besides)."""

    def __init__(self, url: str) -> None:
        self.port = free_port()
        connector = aiohttp.TCPConnector(limit=1, local_addr=("127.0.0.1", self.port))
        self.session = aiohttp.ClientSession(url, connector=connector,
                                             cookie_jar=aiohttp.DummyCookieJar())
        self.server_port = urlsplit(url).port

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """Status and body (JSON, else text)."""
        async with self.session.request(method, path, **kwargs) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    def pid(self, pids: list[int]) -> int | None:
        """The process serving this connection."""
        assert self.server_port is not None
        return serving_pid(self.server_port, self.port, pids)


async def pinned_to_each(server: Proc, stack: AsyncExitStack, count: int = 2,
                         tries: int = 60) -> tuple[list[Pinned], int]:
    """A connection served by each of `count` different children (the kernel picks the
    process per connection), and how many /health requests that took."""
    found: dict[int, Pinned] = {}
    asked = 0
    for _ in range(tries):
        pinned = Pinned(server.url)
        stack.push_async_callback(pinned.session.close)
        status, _ = await pinned.call("GET", "/health")
        asked += 1
        assert status == 200
        pid = pinned.pid(children_of(server.proc.pid))
        if pid is not None and pid not in found:
            found[pid] = pinned
            if len(found) == count:
                return list(found.values()), asked
    raise AssertionError(f"never reached {count} different processes: {sorted(found)}")


async def children(server: Proc, count: int, not_in: frozenset[int] = frozenset(),
                   timeout: float = 30) -> list[int]:
    """Wait until the master has `count` children, none of them in `not_in`."""
    deadline = time.monotonic() + timeout
    while True:
        pids = children_of(server.proc.pid)
        if len(pids) == count and not set(pids) & not_in:
            return pids
        assert time.monotonic() < deadline, f"children: {pids}"
        await asyncio.sleep(0.05)


async def refused_within(pinned: Pinned, path: str, headers: dict[str, str],
                         limit_s: float = 1.0) -> float:
    """Poll `path` on the pinned process until it refuses the credential; the delay seen."""
    start = time.monotonic()
    while True:
        status, _ = await pinned.call("GET", path, headers=headers)
        waited = time.monotonic() - start
        if status in (401, 403):
            return waited
        assert waited < limit_s, f"{path} still answered {status} after {waited:.2f}s"
        await asyncio.sleep(0.01)


async def test_a_revocation_through_one_process_is_refused_by_another_within_a_second(
        tmp_path: Path) -> None:
    sim = await start_simulator_process()
    server = await start_server_process(tmp_path / "two.db", sim.url + "/v1",
                                        SERVER__PROCESSES=2)
    delays: dict[str, float] = {}
    try:
        async with AsyncExitStack() as stack:
            await children(server, 2)
            (a, b), _ = await pinned_to_each(server, stack)
            admin = await register_over_http(server.url, "boss")  # the first: administrator
            users = [await register_over_http(server.url, f"user{i}") for i in range(4)]

            async def cached_on_b(user: User) -> None:
                assert (await b.call("GET", "/api/auth/verify", headers=user.headers))[0] == 200

            # 1. A token signed out through A.
            await cached_on_b(users[0])
            assert (await a.call("POST", "/api/auth/logout", headers=users[0].headers))[0] \
                in (200, 204)
            delays["logout"] = await refused_within(b, "/api/auth/verify", users[0].headers)

            # 2. A password changed through A: the user's older tokens die.
            await cached_on_b(users[1])
            status, body = await a.call("POST", "/api/auth/password", headers=users[1].headers,
                                        json={"current_password": users[1].password,
                                              "new_password": "brand-new-lantern-77"})
            assert status == 200, body
            delays["password"] = await refused_within(b, "/api/auth/verify", users[1].headers)
            fresh = {"Authorization": f"Bearer {body['access_token']}"}
            assert (await b.call("GET", "/api/auth/verify", headers=fresh))[0] == 200

            # 3. A user disabled by an administrator through A.
            await cached_on_b(users[2])
            status, body = await a.call("POST", f"/api/admin/users/{users[2].id}/disable",
                                        headers=admin.headers)
            assert status == 200, body
            delays["disable"] = await refused_within(b, "/api/auth/verify", users[2].headers)

            # 4. An API key deleted through A.
            status, key = await a.call("POST", "/api/keys", headers=users[3].headers,
                                       json={"name": "script"})
            assert status == 201, key
            by_key = {"Authorization": f"Bearer {key['key']}"}
            assert (await b.call("GET", "/v1/models", headers=by_key))[0] == 200
            assert (await a.call("DELETE", f"/api/keys/{key['id']}",
                                 headers=users[3].headers))[0] == 204
            delays["api key"] = await refused_within(b, "/v1/models", by_key)
        print("revocation delays seen by the other process:",
              ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in delays.items()))
    finally:
        try:
            assert await server.signal(signal.SIGTERM) == 0
        finally:
            await server.stop()
            await sim.signal(signal.SIGTERM)


async def test_a_user_disabled_through_one_process_has_their_reply_in_another_stopped(
        tmp_path: Path) -> None:
    """Without Redis the database poll carries it: the reply streaming in the other process
    stops (stored `incomplete`) and that process refuses the user's jobs until re-enabled."""
    sim = await start_simulator_process("--tpot-ms", "30", "--reply-tokens", "400")
    db = tmp_path / "jobs.db"
    server = await start_server_process(db, sim.url + "/v1", SERVER__PROCESSES=2)
    try:
        async with AsyncExitStack() as stack:
            await children(server, 2)
            (a, b), _ = await pinned_to_each(server, stack)
            admin = await register_over_http(server.url, "boss")
            user = await register_over_http(server.url, "hog")
            resp = await b.session.post("/api/chat", headers=user.headers,
                                        json={"message": "a long one", "stream": True})
            deltas = 0
            async for name, _ in events(resp):
                deltas += name == "message"
                if deltas == 2:
                    break
            since = time.monotonic()
            status, body = await a.call("POST", f"/api/admin/users/{user.id}/disable",
                                        headers=admin.headers)
            assert status == 200, body
            last = (await collect(resp))[-1]
            took = time.monotonic() - since
            resp.close()
            print(f"the reply in the other process stopped after {took * 1000:.0f} ms")
            assert last[0] == "error" and last[1]["error"]["code"] == "cancelled", last
            assert took < 1.5  # a poll (0.5 s), one read of the account, the stop
            with closing(sqlite3.connect(db)) as conn:
                stored = conn.execute("SELECT status FROM messages WHERE role = 'assistant'"
                                      ).fetchall()
            assert stored == [("incomplete",)]

            async with aiohttp.ClientSession() as s:
                async with s.post(sim.url + "/sim/config",
                                  json={"tpot_ms": 1, "reply_tokens": 8}) as r:
                    assert r.status == 200
            status, body = await a.call("POST", f"/api/admin/users/{user.id}/enable",
                                        headers=admin.headers)
            assert status == 200, body
            status, body = await b.call("POST", "/api/auth/login", json={
                "username": user.name, "password": user.password})
            assert status == 200, body
            again = {"Authorization": f"Bearer {body['access_token']}"}
            deadline = time.monotonic() + 10  # until b has read the enable too
            while (status := (await b.call("POST", "/api/chat", headers=again,
                                           json={"message": "hi"}))[0]) != 200:
                assert status == 403 and time.monotonic() < deadline, status
                await asyncio.sleep(0.05)
    finally:
        try:
            assert await server.signal(signal.SIGTERM) == 0
        finally:
            await server.stop()
            await sim.signal(signal.SIGTERM)


async def test_a_killed_child_is_started_again_and_serves(tmp_path: Path) -> None:
    sim = await start_simulator_process()
    server = await start_server_process(tmp_path / "kill.db", sim.url + "/v1",
                                        SERVER__PROCESSES=2)
    try:
        first = await children(server, 2)
        async with AsyncExitStack() as stack:
            await pinned_to_each(server, stack)  # both serve: started, not starting
        victim = first[0]
        os.kill(victim, signal.SIGKILL)
        now = await children(server, 2, not_in=frozenset({victim}))
        (new,) = set(now) - set(first)
        deadline = time.monotonic() + 30  # once listening, the new one takes connections
        while True:
            pinned = Pinned(server.url)
            try:
                status, _ = await pinned.call("GET", "/health")
                if status == 200 and pinned.pid(now) == new:
                    break
            finally:
                await pinned.session.close()
            assert time.monotonic() < deadline, "the restarted process never served"
            await asyncio.sleep(0.05)
    finally:
        try:
            assert await server.signal(signal.SIGTERM) == 0
        finally:
            await server.stop()
            await sim.signal(signal.SIGTERM)


async def test_sigterm_drains_every_process_streams_finish_and_exit_0(tmp_path: Path) -> None:
    sim = await start_simulator_process("--ttft-ms", "10", "--tpot-ms", "40",
                                        "--reply-tokens", "40")
    db = tmp_path / "drain.db"
    server = await start_server_process(db, sim.url + "/v1", SERVER__PROCESSES=2,
                                        SERVER__SHUTDOWN_GRACE_S=20)
    try:
        async with AsyncExitStack() as stack:
            await children(server, 2)
            pinned, _ = await pinned_to_each(server, stack)
            user = await register_over_http(server.url, "stayer")
            streams = []
            for each in pinned:  # one streaming reply in flight in each process
                resp = await each.session.post("/api/chat", headers=user.headers,
                                               json={"message": "tell me", "stream": True})
                assert resp.status == 200
                stack.push_async_callback(_release, resp)
                streams.append(resp)
            for resp in streams:  # each has started answering
                async for line in resp.content:
                    if line.startswith(b"data:") and b"delta" in line:
                        break
            code = asyncio.create_task(server.signal(signal.SIGTERM))
            finished = await asyncio.gather(*(collect(r) for r in streams))
            assert await code == 0
        assert [stream[-1][0] for stream in finished] == ["done", "done"]
        with closing(sqlite3.connect(db)) as conn:
            stored = conn.execute("SELECT status FROM messages WHERE role = 'assistant'"
                                  ).fetchall()
        assert stored == [("complete",), ("complete",)]
    finally:
        await server.stop()
        await sim.signal(signal.SIGTERM)


async def _release(resp: aiohttp.ClientResponse) -> None:
    resp.release()


async def test_metrics_add_up_the_requests_of_every_process(tmp_path: Path) -> None:
    sim = await start_simulator_process()
    server = await start_server_process(tmp_path / "metrics.db", sim.url + "/v1",
                                        SERVER__PROCESSES=2)
    try:
        async with AsyncExitStack() as stack:
            await children(server, 2)
            (a, b), asked = await pinned_to_each(server, stack)
            for _ in range(5):
                assert (await a.call("GET", "/health"))[0] == 200
            for _ in range(7):
                assert (await b.call("GET", "/health"))[0] == 200
            total = 1 + asked + 12  # start_server_process asked once, when it came up
            deadline = time.monotonic() + 15  # each process writes its counts every second
            while True:
                status, text = await a.call("GET", "/metrics")
                assert status == 200
                found = re.search(r'^chatgate_requests_total\{method="GET",route="/health",'
                                  r'status="200"\} (\S+)$', text, re.M)
                if found and float(found[1]) == total:
                    break
                assert time.monotonic() < deadline, (total, found and found[0])
                await asyncio.sleep(0.2)
            assert len(re.findall(r"^# TYPE chatgate_requests_total counter$", text, re.M)) == 1
    finally:
        try:
            assert await server.signal(signal.SIGTERM) == 0
        finally:
            await server.stop()
            await sim.signal(signal.SIGTERM)


async def test_processes_that_refuse_to_start_stop_the_master_with_their_message(
        tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA user_version = 999")
    env = dict(os.environ, CHATGATE_DATABASE__PATH=str(db),
               CHATGATE_LLM__BASE_URL="http://127.0.0.1:9/v1", CHATGATE_SERVER__PROCESSES="2")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "--port", "0", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "newer than this program" in text and "Traceback" not in text
    assert "could not start" in text and "restarting" not in text
    assert children_of(proc.pid) == []


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


async def test_a_killed_master_leaves_no_process_behind(tmp_path: Path) -> None:
    sim = await start_simulator_process()
    server = await start_server_process(tmp_path / "orphans.db", sim.url + "/v1",
                                        SERVER__PROCESSES=2)
    try:
        pids = await children(server, 2)
        await server.stop()  # SIGKILL: the master cannot pass anything on
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in pids):  # the kernel told them: they drained
            assert time.monotonic() < deadline, [p for p in pids if not _gone(p)]
            await asyncio.sleep(0.05)
    finally:
        await server.stop()
        await sim.signal(signal.SIGTERM)
