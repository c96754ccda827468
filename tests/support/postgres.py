"""A throwaway PostgreSQL cluster on loopback: Debian's PostgreSQL 15, a tmp dir, a free port.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system user
(runuser). Durability is off (fsync, synchronous_commit, full_page_writes): the data dies with
the test session anyway. A test gets a database of its own (a copy of a migrated template), or
the session's shared one emptied (faster, for the API suite).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from server.storage.postgres import migrate


def _pg_bin() -> Path:
    """CHATGATE_PG_BIN, else Debian's PostgreSQL 15, else the newest installed (15 or later:
    CREATE DATABASE ... STRATEGY)."""
    if os.environ.get("CHATGATE_PG_BIN"):
        return Path(os.environ["CHATGATE_PG_BIN"])
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "postgres").exists():
        return preferred
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else preferred


PG_BIN = _pg_bin()
TEMPLATE = "chatgate_template"
_names = itertools.count(1)
T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from sync code (a sync fixture), on a loop of its own in
    another thread: the test's own event loop is never touched."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def available() -> bool:
    """Whether this machine has the PostgreSQL server binaries."""
    return (PG_BIN / "postgres").exists()


def _die_with_parent() -> None:
    """In the child before exec: its own session, and SIGTERM when the test process dies
    (Linux), so a killed test run leaves no server behind (runuser passes SIGTERM on). The
    signal follows the thread that started it: start servers from the main thread."""
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() still ends it on a normal exit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One postgres server process over a tmp data directory; `url(db)` reaches a database."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chatgate-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0
        if self._as_root:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def url(self, database: str = "postgres") -> str:
        """The connection URL of a database on this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._as_root else list(args)

    def init(self) -> None:
        """Create the data directory (trust auth on loopback: nothing here is secret)."""
        subprocess.run(self._cmd(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                                 "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it accepts connections."""
        log = open(self.root / "server.log", "ab")
        self._proc = subprocess.Popen(
            self._cmd(str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                      "-c", "listen_addresses=127.0.0.1",
                      "-c", f"unix_socket_directories={self.root}",
                      "-c", "fsync=off", "-c", "synchronous_commit=off",
                      "-c", "full_page_writes=off", "-c", "max_connections=200",
                      "-c", "shared_buffers=32MB"),
            stdout=log, stderr=log, preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            ready = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1",
                                    "-p", str(self.port)], check=False).returncode == 0
            if ready:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT to the postmaster: sessions ended, then a clean stop); wait
        for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:  # runuser does not pass signals on: the postmaster's pid is in its pid file
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGINT)
        except (OSError, ValueError, IndexError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for a failure message."""
        try:
            text = (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def destroy(self) -> None:
        """Stop the server and delete its files."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    async def make_template(self) -> None:
        """Create the migrated template that each test's database copies."""
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        conn = await asyncpg.connect(self.url(TEMPLATE))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def create_database(self, migrated: bool = True) -> str:
        """A fresh database (a copy of the migrated template, or empty); its name."""
        name = f"t{os.getpid()}_{next(_names)}"
        template = TEMPLATE if migrated else "template0"
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        finally:
            await conn.close()
        return name

    async def empty_database(self, name: str) -> None:
        """Empty every table of a migrated database and restart its ids: a few ms (DELETE
        with triggers and foreign keys off, then each identity restarted; TRUNCATE takes
        ~30 ms), for tests that share a database."""
        conn = await asyncpg.connect(self.url(name), server_settings={"lock_timeout": "10s"})
        try:
            tables = [r[0] for r in await conn.fetch(
                "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename != 'schema_version'")]
            sequences = [r[0] for r in await conn.fetch(
                "SELECT quote_ident(sequencename) FROM pg_sequences "
                "WHERE schemaname = 'public'")]
            await conn.execute(
                "SET session_replication_role = replica;"
                + "".join(f"DELETE FROM {table};" for table in tables)
                + "".join(f"ALTER SEQUENCE {seq} RESTART;" for seq in sequences))
        finally:
            await conn.close()

    async def drop_database(self, name: str) -> None:
        """Drop a database, ending any session still on it."""
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


def start_cluster() -> PgCluster:
    """Initialise, start and template a cluster (the caller destroys it)."""
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        run_sync(cluster.make_template())
    except BaseException:
        cluster.destroy()
        raise
    return cluster
