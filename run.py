"""Entry point: `python run.py [--config PATH] [--host H] [--port P] [--processes N] [--demo]`,
or `python run.py migrate [--from FILE] [--to postgresql://...]` (SQLite -> PostgreSQL)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from server.batches import BatchWriter
from server.config import Config, ConfigError, ModelConfig, load_config
from server.master import Master, hold_port
from server.processes import ProcessInfo, follow_master, share
from server.runner import serve
from server.storage import StorageError
from vllm_sim import SimCluster, SimSettings, start_replicas
from workers.replica import ReplicaSpec


def main(argv: list[str] | None = None) -> int:
    """Parse flags, load the config, and serve until SIGINT/SIGTERM (or run `migrate`)."""
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["migrate"]:
        from server.copydb import main as migrate

        return migrate(given[1:])
    parser = argparse.ArgumentParser(description="chatgate: a chat backend for vLLM")
    parser.add_argument("--config", default="config.yaml",
                        help="YAML config (default ./config.yaml)")
    parser.add_argument("--host", help="override server.host")
    parser.add_argument("--port", type=int, help="override server.port")
    parser.add_argument("--demo", action="store_true",
                        help="also start the vLLM simulator and serve its model from it")
    parser.add_argument("--demo-replicas", type=int, default=2, metavar="N",
                        help="simulated replicas of the demo's model (default 2)")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="override server.processes: N server processes on the port")
    # Set by the master on the command line of each server process it starts.
    for hidden in ("--child-index", "--ready-fd", "--master-pid"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--metrics-dir", help=argparse.SUPPRESS)
    parser.add_argument("--demo-urls", help=argparse.SUPPRESS)  # the master's simulator
    args = parser.parse_args(argv)
    listener = _log_off_the_loop()
    try:
        config = load_config(args.config)
        if args.host:
            config = config.replace("server", host=args.host)
        if args.port is not None:
            config = config.replace("server", port=args.port)
        if args.processes is not None:
            config = config.replace("server", processes=max(1, args.processes))
        count = config.server.processes
        if args.demo_urls:
            config = _demo_config(config, args.demo_urls.split(","))
        if args.child_index is not None:  # one of the master's processes
            follow_master(args.master_pid)
            process = ProcessInfo(args.child_index, count, args.metrics_dir)
            # Each process's share of the global caps, unless Redis holds them for the
            # whole deployment (then the share is only the fallback while Redis is down).
            if not config.coordination.redis_url:
                config = share(config, process.index, count)
        else:
            process = None
            share(config, 0, count)  # a cap too small to share: said once, by the master
    except ConfigError as err:
        print(f"chatgate: configuration error: {err}", file=sys.stderr)
        return 2
    if process is not None:
        return _serve_child(config, process, args.ready_fd, listener)
    taken = _port_taken(config.server.host, config.server.port)
    if taken:  # said before anything else starts (the demo's simulator included)
        print(f"chatgate: cannot listen on {config.server.host}:{config.server.port} ({taken}); "
              f"pick another port with --port {config.server.port + 1} "
              "(or server.port in the config)", file=sys.stderr)
        return 1
    runner = _event_loop()
    demo = max(1, args.demo_replicas) if args.demo else 0
    try:
        with runner:
            if count > 1:
                return runner.run(_run_master(config, demo, args.config, args.host))
            return runner.run(_run(config, demo))
    finally:
        listener.close()  # writes out what is still pending


def _event_loop() -> asyncio.Runner:
    try:
        import uvloop
        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency; this is a fallback
        return asyncio.Runner()


def _serve_child(config: Config, process: ProcessInfo, ready_fd: int,
                 listener: logging.Handler) -> int:
    """One of the master's server processes: serve on the shared port, say when listening."""
    def ready() -> None:
        try:
            os.write(ready_fd, b"1")
        except OSError:  # the master is gone: the kernel's SIGTERM (follow_master) is coming
            pass
        finally:
            os.close(ready_fd)

    try:
        with _event_loop() as runner:
            return runner.run(_run(config, 0, process, ready))
    finally:
        listener.close()


class _OffTheLoop(logging.Handler):
    """Log records kept in memory and written by a thread in batches (server/batches.py): the
    event loop never waits on a slow stderr."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()

        def write(records: list[logging.LogRecord]) -> None:
            for record in records:
                target.handle(record)

        self._writer = BatchWriter(write, "log-writer")
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        self._writer.add(record)

    def close(self) -> None:
        """Write what is still pending, then stop the thread."""
        self._writer.stop()
        super().close()


def _log_off_the_loop() -> _OffTheLoop:
    """Log records are written by a thread of their own (see _OffTheLoop)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    writer = _OffTheLoop(handler)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(writer)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return writer


def _port_taken(host: str, port: int) -> str | None:
    """Why the listen address cannot be bound (as the server will bind it), or None."""
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            return err.strerror or str(err)
    return None


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _demo(replicas: int) -> SimCluster:
    settings = SimSettings(ttft_ms=300, tpot_ms=40, demo=True, reply_tokens=48)
    simulator = await start_replicas([settings] * max(1, replicas))
    for i, replica in enumerate(simulator):
        print(f"vLLM SIMULATOR (not a real model) at {replica.url}; take it down with "
              f"curl -X POST {simulator[0].root_url}/sim/replicas/{i}/down", flush=True)
    return simulator


def _demo_config(config: Config, urls: list[str]) -> Config:
    """Serve the simulator's model (its name learned from it) from each of its replicas."""
    replicas = tuple(ReplicaSpec(url) for url in urls)
    return dataclasses.replace(config, models=(ModelConfig(replicas=replicas),))


async def _run(config: Config, demo_replicas: int, process: ProcessInfo | None = None,
               ready: Callable[[], None] | None = None) -> int:
    stop = _stop_on_signals()
    simulator = None
    try:
        if demo_replicas:
            simulator = await _demo(demo_replicas)
            config = _demo_config(config, simulator.urls)
        await serve(config, stop, process, ready)
    except (ConfigError, OSError, StorageError) as err:
        print(f"chatgate: cannot start: {err}", file=sys.stderr)
        return 1
    finally:
        if simulator is not None:
            await simulator.close()
    return 0


async def _run_master(config: Config, demo_replicas: int, config_path: str,
                      host: str | None) -> int:
    """Several processes: hold the port, start them (and the demo's simulator, shared), keep
    them running until SIGTERM/SIGINT, then have them all drain."""
    stop = _stop_on_signals()
    server = config.server
    try:
        holder = hold_port(server.host, server.port)
    except OSError as err:
        print(f"chatgate: cannot listen on {server.host}:{server.port} ({err.strerror or err})",
              file=sys.stderr)
        return 1
    port = holder.getsockname()[1]
    metrics_dir = tempfile.mkdtemp(prefix="chatgate-metrics-")  # fresh at every start
    simulator = None
    try:
        fixed = []
        if demo_replicas:
            simulator = await _demo(demo_replicas)
            fixed = ["--demo-urls", ",".join(simulator.urls)]
        fixed += ["--config", config_path, *(["--host", host] if host else []),
                 "--port", str(port), "--processes", str(server.processes),
                 "--metrics-dir", metrics_dir, "--master-pid", str(os.getpid())]

        def command(index: int, ready_fd: int) -> list[str]:
            return [sys.executable, str(Path(__file__).resolve()), *fixed,
                    "--child-index", str(index), "--ready-fd", str(ready_fd)]

        return await Master(command, server.processes, metrics_dir).run(stop)
    finally:
        holder.close()
        if simulator is not None:
            await simulator.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
