"""run.py, the entry point, as a newcomer meets it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.support.paths import ROOT


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
