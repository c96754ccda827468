"""Crashes, signals, locks and absent upstreams: nothing acknowledged is lost, nothing leaks."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server import keys
from server.runner import start
from tests.support import postgres
from tests.support.app import error_of, make_config, register_over_http, wait_ready
from tests.support.engines import require
from tests.support.procs import free_port, start_server_process, start_simulator_process
from tests.support.sse import collect, events
from vllm_sim import SimSettings, start_simulator


async def test_sigkill_under_load_loses_no_acknowledged_message(tmp_path: Path) -> None:
    sim = await start_simulator_process("--ttft-ms", "2", "--tpot-ms", "1", "--reply-tokens", "8",
                                        "--capacity", "512")
    db = tmp_path / "kill.db"
    server = await start_server_process(db, sim.url + "/v1", QUEUE__WORKERS=16,
                                        QUEUE__MAX_SIZE=1024, QUEUE__MAX_PER_USER=0)
    acked: list[dict[str, Any]] = []
    try:
        users = [await register_over_http(server.url, f"load{i}") for i in range(10)]
        stop = asyncio.Event()

        async def client(n: int) -> None:
            user, conv = users[n % len(users)], None
            async with aiohttp.ClientSession(server.url) as s:
                i = 0
                while not stop.is_set():
                    i += 1
                    text = f"client {n} message {i}"
                    body: dict[str, Any] = {"message": text}
                    if conv is not None and i % 3:
                        body["conversation_id"] = conv
                    try:
                        async with s.post("/api/chat", json=body, headers=user.headers) as resp:
                            if resp.status != 200:
                                continue
                            reply = await resp.json()
                    except (TimeoutError, aiohttp.ClientError):
                        return  # the server is gone
                    conv = reply["conversation_id"]
                    acked.append({"text": text, "conversation_id": conv,
                                  "reply": reply["message"]})

        clients = [asyncio.create_task(client(n)) for n in range(32)]
        while len(acked) < 300:
            await asyncio.sleep(0.05)
        await asyncio.sleep(random.uniform(0.0, 0.3))
        await server.signal(signal.SIGKILL)
        stop.set()
        await asyncio.gather(*clients)
    finally:
        await server.stop()
        await sim.signal(signal.SIGTERM)

    def check() -> tuple[str, int]:
        with sqlite3.connect(db) as conn:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            lost = 0
            for ack in acked:
                row = conn.execute("SELECT content, status, conversation_id FROM messages "
                                   "WHERE id = ?", (ack["reply"]["id"],)).fetchone()
                user = conn.execute("SELECT 1 FROM messages WHERE conversation_id = ? AND "
                                    "role = 'user' AND content = ?",
                                    (ack["conversation_id"], ack["text"])).fetchone()
                if row != (ack["reply"]["content"], "complete", ack["conversation_id"]) or not user:
                    lost += 1
            # Nothing half-written: counters agree with rows, every reply follows a question.
            bad_counts = conn.execute(
                "SELECT count(*) FROM conversations c WHERE message_count != "
                "(SELECT count(*) FROM messages m WHERE m.conversation_id = c.id)").fetchone()[0]
            orphans = conn.execute(
                "SELECT count(*) FROM messages a WHERE a.role = 'assistant' AND NOT EXISTS "
                "(SELECT 1 FROM messages u WHERE u.conversation_id = a.conversation_id "
                "AND u.role = 'user' AND u.id < a.id)").fetchone()[0]
            assert bad_counts == 0 and orphans == 0
        return integrity, lost

    integrity, lost = await asyncio.to_thread(check)
    print(f"SIGKILL under load: {lost} of {len(acked)} acknowledged replies lost")
    assert integrity == "ok"
    assert lost == 0 and len(acked) >= 300

    # The database opens again and the old tokens still work (secret kept beside the db).
    sim = await start_simulator_process()
    server = await start_server_process(db, sim.url + "/v1")
    try:
        async with aiohttp.ClientSession(server.url) as s:
            async with s.get("/api/conversations", headers=users[0].headers) as resp:
                assert resp.status == 200 and (await resp.json())["conversations"]
    finally:
        assert await server.signal(signal.SIGTERM) == 0
        await sim.signal(signal.SIGTERM)


async def test_sigterm_finishes_streams_refuses_queued_and_exits_0(tmp_path: Path) -> None:
    sim = await start_simulator_process("--ttft-ms", "10", "--tpot-ms", "25",
                                        "--reply-tokens", "30")
    server = await start_server_process(tmp_path / "term.db", sim.url + "/v1", QUEUE__WORKERS=2,
                                        QUEUE__MAX_RUNNING_PER_USER=2,  # one user, both workers
                                        SERVER__SHUTDOWN_GRACE_S=15)
    try:
        user = await register_over_http(server.url, "stayer")
        async with aiohttp.ClientSession(server.url) as s:
            streams = []
            for i in range(5):
                resp = await s.post("/api/chat", json={"message": f"m{i}", "stream": True},
                                    headers=user.headers)
                assert resp.status == 200
                streams.append(resp)
                await asyncio.sleep(0.05)  # in order: the first two run, the rest queue
            results = [asyncio.create_task(collect(r)) for r in streams]
            await asyncio.sleep(0.2)
            code = asyncio.create_task(server.signal(signal.SIGTERM))
            finished = await asyncio.gather(*results)
            assert await code == 0
        last = [stream[-1] for stream in finished]
        assert [name for name, _ in last[:2]] == ["done", "done"]
        for name, data in last[2:]:
            assert name == "error" and data["error"]["code"] == "shutting_down"
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession(server.url) as s:
                await s.get("/health")
    finally:
        await server.stop()
        await sim.signal(signal.SIGTERM)


def _hold_lock(db: Path, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(db, timeout=10, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


@pytest.mark.parametrize(("hold_s", "status"), [(0.2, 201), (1.5, 503)])
async def test_locked_database_waits_then_fails_clearly(tmp_path: Path, simulator, hold_s: float,
                                                         status: int) -> None:
    running = await start(make_config(tmp_path, simulator.url, database={"busy_timeout_ms": 600}))
    try:
        user = await register_over_http(running.url, "patient")
        locked = threading.Event()
        holder = asyncio.create_task(asyncio.to_thread(
            _hold_lock, Path(running.app[keys.CONFIG].database.path), hold_s, locked))
        await asyncio.to_thread(locked.wait)
        async with aiohttp.ClientSession(running.url) as s:
            async with s.post("/api/conversations", json={"title": "t"},
                              headers=user.headers) as resp:
                if status == 201:
                    assert resp.status == 201
                else:
                    await error_of(resp, 503, "database_busy")
                    assert resp.headers["Retry-After"]
            await holder
            async with s.post("/api/conversations", json={"title": "after"},
                              headers=user.headers) as resp:
                assert resp.status == 201  # and it recovers at once
    finally:
        await running.stop()


async def test_postgres_restarted_gives_503s_then_serves_without_a_restart(
        tmp_path: Path, simulator: Any, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL stopped under a running app: what needs it answers 503 database_unavailable
    (no 500, no traceback); once it is back, the same app serves again by itself."""
    require("PostgreSQL", str(postgres.PG_BIN / "postgres"))
    # Its own cluster (this one is stopped), started from the main thread: see PgCluster.start.
    cluster = postgres.start_cluster()
    running = None
    try:
        # A password in the URL (trust authentication ignores it) that no log line may show.
        url = cluster.url(await cluster.create_database()).replace("postgres@",
                                                                   "postgres:s3cret-word@")
        running = await start(make_config(tmp_path, simulator.url,
                                          database={"url": url, "connect_timeout_s": 2}))
        user = await register_over_http(running.url, "steady")
        async with aiohttp.ClientSession(running.url) as s:
            async with s.post("/api/keys", json={"name": "k"}, headers=user.headers) as resp:
                assert resp.status == 201
            await asyncio.to_thread(cluster.stop)
            async with s.get("/health") as resp:
                assert resp.status == 200  # the process itself is fine
            async with s.get("/api/keys", headers=user.headers) as resp:  # a read
                await error_of(resp, 503, "database_unavailable")
                assert resp.headers["Retry-After"]
            async with s.post("/api/memories", json={"content": "down"},  # a write
                              headers=user.headers) as resp:
                await error_of(resp, 503, "database_unavailable")
            async with s.post("/api/auth/register",
                              json={"username": "during", "password": "quiet-lantern-42"}) as r:
                await error_of(r, 503, "database_unavailable")
            cluster.start()
            deadline = time.monotonic() + 30
            while True:  # polled: the first request after the restart must already succeed
                async with s.get("/api/keys", headers=user.headers) as resp:
                    if resp.status == 200:
                        assert [k["name"] for k in (await resp.json())["keys"]] == ["k"]
                        break
                assert time.monotonic() < deadline, "never served again after the restart"
                await asyncio.sleep(0.1)
            async with s.post("/api/memories", json={"content": "back"},
                              headers=user.headers) as resp:
                assert resp.status == 201
            await register_over_http(running.url, "after")
    finally:
        if running is not None:
            await running.stop()
        await asyncio.to_thread(cluster.destroy)
    assert "Traceback" not in caplog.text and "unhandled error" not in caplog.text
    assert "s3cret-word" not in caplog.text


async def test_upstream_absent_at_start_then_recovers(tmp_path: Path) -> None:
    port = free_port()
    running = await start(make_config(tmp_path, f"http://127.0.0.1:{port}/v1",
                                      llm={"retries": 0}))
    sim = None
    try:
        user = await register_over_http(running.url, "early")
        async with aiohttp.ClientSession(running.url) as s:
            async with s.get("/ready") as resp:
                body = await resp.json()
                assert resp.status == 503 and body == {"status": "unavailable"}
            async with s.post("/api/chat", json={"message": "hello?"}, headers=user.headers) as r:
                await error_of(r, 503, "model_unavailable")  # at once: nothing there
            sim = await start_simulator(SimSettings(ttft_ms=1, tpot_ms=1), port=port)
            await wait_ready(s)  # the next probe finds it: no restart
            async with s.get("/ready") as resp:
                assert resp.status == 200 and await resp.json() == {"status": "ok"}
            async with s.post("/api/chat", json={"message": "now?"}, headers=user.headers) as r:
                assert r.status == 200
    finally:
        await running.stop()
        if sim:
            await sim.close()


async def test_faults_lose_no_worker_and_leak_nothing(tmp_path: Path, simulator) -> None:
    running = await start(make_config(tmp_path, simulator.url, queue={"workers": 4},
                                      llm={"first_token_timeout_s": 0.3, "retries": 0}))
    pool = running.app[keys.POOL]
    try:
        user = await register_over_http(running.url, "faulty")
        async with aiohttp.ClientSession(running.url) as s:
            async def chat(stream: bool) -> None:
                async with s.post("/api/chat", json={"message": "x", "stream": stream},
                                  headers=user.headers) as resp:
                    await resp.read()

            async def faults() -> tuple[int, int]:
                for mode in ("reset", "malformed", "500", "hang", "hang_after_first"):
                    async with s.post(simulator.root_url + "/sim/faults",
                                      json={"mode": mode, "count": 1, "after_tokens": 1}) as r:
                        assert r.status == 200
                    await chat(stream=mode in ("reset", "malformed"))
                await chat(False)
                await asyncio.sleep(0.3)
                return len(asyncio.all_tasks()), len(os.listdir("/proc/self/fd"))

            # Round one reaches the steady state (pooled connections); later rounds must not grow.
            first = await faults()
            for _ in range(3):
                tasks, fds = await faults()
                assert tasks <= first[0] and fds <= first[1]
            assert pool.live_workers == 4 and pool.stats.running == 0
            assert pool.stats.failed >= 15
    finally:
        await running.stop()


async def test_disconnect_storm_leaves_pool_clean(tmp_path: Path, simulator) -> None:
    running = await start(make_config(tmp_path, simulator.url, queue={"workers": 2}))
    async with aiohttp.ClientSession(simulator.root_url) as s:
        await s.post("/sim/config", json={"tpot_ms": 20, "reply_tokens": 100})
    try:
        user = await register_over_http(running.url, "impatient")
        async with aiohttp.ClientSession(running.url) as s:
            for _ in range(6):
                resp = await s.post("/api/chat", json={"message": "go", "stream": True},
                                    headers=user.headers)
                async for name, _ in events(resp):
                    if name in ("message", "queued"):
                        break
                resp.close()
        pool = running.app[keys.POOL]
        for _ in range(100):
            if pool.stats.running == 0 and pool.queue.qsize() == 0:
                break
            await asyncio.sleep(0.02)
        assert pool.stats.running == 0 and pool.queue.qsize() == 0 and pool.live_workers == 2
        assert simulator.stats.running == 0
    finally:
        await running.stop()


async def test_ready_answers_while_every_worker_is_busy(tmp_path: Path, simulator) -> None:
    async with aiohttp.ClientSession(simulator.root_url) as s:
        await s.post("/sim/config", json={"tpot_ms": 50, "reply_tokens": 60})
    running = await start(make_config(tmp_path, simulator.url, queue={
        "workers": 2, "max_running_per_user": 2}))  # one user holds both workers
    try:
        user = await register_over_http(running.url, "busy")
        async with aiohttp.ClientSession(running.url) as s:
            chats = [asyncio.create_task(s.post("/api/chat", json={"message": "long"},
                                                headers=user.headers)) for _ in range(2)]
            while running.app[keys.POOL].stats.running < 2:
                await asyncio.sleep(0.01)
            async with s.get("/ready") as resp:
                assert resp.status == 200, await resp.text()
            for task in chats:
                (await task).close()
    finally:
        await running.stop()
