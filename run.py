"""Entry point: `python run.py [--config PATH] [--host H] [--port P] [--demo]`, or
`python run.py migrate [--from FILE] [--to postgresql://...]` (SQLite -> PostgreSQL)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import socket
import sys

from server.batches import BatchWriter
from server.config import Config, ConfigError, ModelConfig, load_config
from server.runner import serve
from server.storage import StorageError
from vllm_sim import SimSettings, start_replicas
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
    args = parser.parse_args(argv)
    listener = _log_off_the_loop()
    try:
        config = load_config(args.config)
        if args.host:
            config = config.replace("server", host=args.host)
        if args.port is not None:
            config = config.replace("server", port=args.port)
    except ConfigError as err:
        print(f"chatgate: configuration error: {err}", file=sys.stderr)
        return 2
    taken = _port_taken(config.server.host, config.server.port)
    if taken:  # said before anything else starts (the demo's simulator included)
        print(f"chatgate: cannot listen on {config.server.host}:{config.server.port} ({taken}); "
              f"pick another port with --port {config.server.port + 1} "
              "(or server.port in the config)", file=sys.stderr)
        return 1
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency; this is a fallback
        runner = asyncio.Runner()
    try:
        with runner:
            return runner.run(_run(config, max(1, args.demo_replicas) if args.demo else 0))
    finally:
        listener.close()  # writes out what is still pending


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


async def _run(config: Config, demo_replicas: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    simulator = None
    try:
        if demo_replicas:
            settings = SimSettings(ttft_ms=300, tpot_ms=40, demo=True, reply_tokens=48)
            simulator = await start_replicas([settings] * max(1, demo_replicas))
            replicas = tuple(ReplicaSpec(url) for url in simulator.urls)
            config = dataclasses.replace(config, models=(ModelConfig(replicas=replicas),))
            for i, replica in enumerate(simulator):
                print(f"vLLM SIMULATOR (not a real model) at {replica.url}; take it down with "
                      f"curl -X POST {simulator[0].root_url}/sim/replicas/{i}/down", flush=True)
        await serve(config, stop)
    except (ConfigError, OSError, StorageError) as err:
        print(f"chatgate: cannot start: {err}", file=sys.stderr)
        return 1
    finally:
        if simulator is not None:
            await simulator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
