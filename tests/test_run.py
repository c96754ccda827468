"""run.py, the entry point, as a newcomer meets it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import aiohttp

from tests.support.app import register_over_http
from tests.support.paths import ROOT
from tests.support.procs import free_port, wait_up


def test_a_taken_port_is_said_at_once_with_how_to_pick_another(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = dict(os.environ, CHATGATE_DATABASE__PATH=str(tmp_path / "db.sqlite"))
        done = subprocess.run([sys.executable, "run.py", "--demo", "--port", str(port)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"--port {port + 1}" in done.stderr and str(port) in done.stderr
    # Said before anything else started: no simulator, no database.
    assert "SIMULATOR" not in done.stdout
    assert not (tmp_path / "db.sqlite").exists()


def test_processes_that_cannot_share_the_workers_are_refused_once(tmp_path) -> None:
    env = dict(os.environ, CHATGATE_DATABASE__PATH=str(tmp_path / "db.sqlite"),
               CHATGATE_QUEUE__WORKERS="2")
    done = subprocess.run([sys.executable, "run.py", "--processes", "3", "--port", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("queue.workers is 2, fewer than server.processes (3)") == 1
    assert not (tmp_path / "db.sqlite").exists()  # said before any process started


async def test_the_demo_runs_in_several_processes_on_one_simulator(tmp_path) -> None:
    port = free_port()
    env = dict(os.environ, CHATGATE_DATABASE__PATH=str(tmp_path / "db.sqlite"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "--demo", "--processes", "2", "--port", str(port), cwd=ROOT,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_up(url + "/health")
        user = await register_over_http(url, "demo-user")
        async with aiohttp.ClientSession(url) as s:
            async with s.post("/api/chat", json={"message": "hello"},
                              headers=user.headers) as resp:
                assert resp.status == 200, await resp.text()
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
        text = out.decode()
        assert text.count("SIMULATOR") == 2  # one simulator, shared: its two replicas
        assert text.count("chatgate serving") == 1 and "in 2 processes" in text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_an_unreachable_postgresql_stops_start_up_with_one_line_and_no_password(
        tmp_path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, CHATGATE_DATABASE__PATH=str(tmp_path / "db.sqlite"),
               CHATGATE_DATABASE__URL=f"postgresql://chat:s3cret-word@127.0.0.1:{port}/chatgate",
               CHATGATE_DATABASE__CONNECT_TIMEOUT_S="2", CHATGATE_SERVER__PORT="0")
    done = subprocess.run([sys.executable, "run.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode not in (0, None)
    assert "Traceback" not in done.stderr, done.stderr
    assert f"127.0.0.1:{port}/chatgate" in done.stderr
    assert "s3cret-word" not in done.stderr + done.stdout


def test_serving_on_postgresql_names_where_never_the_password(tmp_path, pg_url: str) -> None:
    # Trust authentication on the test cluster: the password is carried, never checked.
    url = pg_url.replace("postgres@", "postgres:s3cret-word@")
    env = dict(os.environ, CHATGATE_DATABASE__PATH=str(tmp_path / "db.sqlite"),
               CHATGATE_DATABASE__URL=url, CHATGATE_SERVER__PORT="0",
               CHATGATE_LLM__BASE_URL="http://127.0.0.1:9/v1")
    proc = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the serving line (or EOF if start-up failed)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "chatgate serving" in line, err
    assert f"PostgreSQL 127.0.0.1:{pg_url.rsplit(':', 1)[1]}" in line
    assert "s3cret-word" not in line + err
