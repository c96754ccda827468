"""Command line: python -m vllm_sim --host 127.0.0.1 --port 8000 [options].

Several replicas in one process, each with its own state, counters and /sim/* controls:
  python -m vllm_sim --replicas 3 --port 9000          # ports 9000, 9001, 9002
  python -m vllm_sim --ports 9000,9005                 # two replicas on these ports
  python -m vllm_sim --replicas 2 --port 9000 --replica 1:tpot_ms=50,capacity=8
`--replica I:KNOB=VALUE[,KNOB=VALUE]` (repeatable) overrides settings of replica I (from 0);
knobs are the runtime ones (ttft_ms, tpot_ms, reply_tokens, capacity, echo, demo,
fault_after_tokens, slowdown, prefix_hit_ttft_ms) plus prefix_cache_size.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from collections.abc import Sequence

from .runner import start_replicas
from .settings import DEFAULT_MODEL, FAULT_MODES, RUNTIME_KNOBS, SimSettings

# Knobs --replica may override, with their types.
REPLICA_KNOBS: dict[str, type] = {**RUNTIME_KNOBS, "prefix_cache_size": int}


def build_parser() -> argparse.ArgumentParser:
    """Describe the command-line options."""
    d = SimSettings()
    p = argparse.ArgumentParser(
        prog="python -m vllm_sim",
        description="OpenAI-compatible vLLM SIMULATOR: fake replies, real wire format, no GPU.",
        epilog="Replicas: --replicas 3 --port 9000 serves ports 9000-9002; --ports 9000,9005 "
        "names them; --replica 1:tpot_ms=50,capacity=8 overrides replica 1's knobs. Each "
        "replica has its own /sim/* controls, /metrics, and POST /sim/down, and can flip any "
        "sibling with POST /sim/replicas/<i>/down or /up.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=DEFAULT_MODEL, help="served model name")
    p.add_argument("--ttft-ms", type=float, default=d.ttft_ms, help="time to first token")
    p.add_argument("--tpot-ms", type=float, default=d.tpot_ms, help="time per output token")
    p.add_argument("--reply-tokens", type=int, default=d.reply_tokens)
    p.add_argument("--capacity", type=int, default=d.capacity, help="max running sequences")
    p.add_argument("--max-model-len", type=int, default=d.max_model_len)
    p.add_argument("--echo", action="store_true", help="reply with the last user message")
    p.add_argument("--demo-replies", action="store_true",
                   help="canned Markdown answers picked by the prompt")  # fmt: skip
    p.add_argument("--allow-test-headers", action="store_true",
                   help="honour X-Sim-Reply and X-Sim-Fault request headers")  # fmt: skip
    p.add_argument("--api-key", default=None, help="require this bearer token on /v1")
    p.add_argument("--fault", choices=FAULT_MODES, default="none")
    p.add_argument("--fault-rate", type=float, default=d.fault_rate)
    p.add_argument("--fault-after-tokens", type=int, default=d.fault_after_tokens)
    p.add_argument("--seed", type=int, default=None, help="seed for the fault-rate dice")
    p.add_argument("--slowdown", type=float, default=d.slowdown,
                   help="multiply ttft and tpot (a slow replica)")  # fmt: skip
    p.add_argument("--prefix-cache-size", type=int, default=d.prefix_cache_size,
                   help="prompt prefixes remembered (0: off)")  # fmt: skip
    p.add_argument("--prefix-hit-ttft-ms", type=float, default=None,
                   help="time to first token when the prompt prefix is cached")  # fmt: skip
    p.add_argument("--replicas", type=int, default=1,
                   help="serve N replicas on consecutive ports from --port")  # fmt: skip
    p.add_argument("--ports", default=None, help="comma-separated ports, one replica each")
    p.add_argument("--replica", action="append", default=[], metavar="I:KNOB=VALUE,...",
                   help="override knobs of replica I (from 0); repeatable")  # fmt: skip
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    """Turn parsed options into validated settings."""
    settings = SimSettings(
        model=args.model,
        ttft_ms=args.ttft_ms,
        tpot_ms=args.tpot_ms,
        reply_tokens=args.reply_tokens,
        capacity=args.capacity,
        max_model_len=args.max_model_len,
        echo=args.echo,
        demo=args.demo_replies,
        allow_test_headers=args.allow_test_headers,
        api_key=args.api_key,
        fault=args.fault,
        fault_rate=args.fault_rate,
        fault_after_tokens=args.fault_after_tokens,
        seed=args.seed,
        slowdown=args.slowdown,
        prefix_cache_size=args.prefix_cache_size,
        prefix_hit_ttft_ms=args.prefix_hit_ttft_ms,
    )
    settings.validate()
    return settings


def ports_from_args(args: argparse.Namespace) -> list[int]:
    """The port of each replica: --ports, or --replicas consecutive ones from --port."""
    if args.ports:
        try:
            ports = [int(p) for p in args.ports.split(",")]
        except ValueError as exc:
            raise ValueError("--ports must be comma-separated integers") from exc
    else:
        if args.replicas < 1:
            raise ValueError("--replicas must be >= 1")
        ports = [0 if args.port == 0 else args.port + i for i in range(args.replicas)]
    if not ports or any(not 0 <= p <= 65535 for p in ports):
        raise ValueError("ports must be between 0 and 65535")
    return ports


def _typed(knob: str, text: str) -> object:
    kind = REPLICA_KNOBS.get(knob)
    if kind is None:
        raise ValueError(f"--replica: unknown knob {knob!r}")
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--replica: {knob} must be true or false")
        return text.lower() in ("true", "1")
    try:
        return kind(text)
    except ValueError as exc:
        raise ValueError(f"--replica: {knob} must be {kind.__name__}") from exc


def replica_settings(base: SimSettings, count: int, overrides: list[str]) -> list[SimSettings]:
    """One settings per replica: the base, changed by each `I:KNOB=VALUE,...` override."""
    out = [dataclasses.replace(base) for _ in range(count)]
    for spec in overrides:
        index, sep, rest = spec.partition(":")
        if not sep or not index.isdigit() or int(index) >= count:
            raise ValueError(f"--replica {spec!r}: want I:KNOB=VALUE with I below {count}")
        changes: dict[str, object] = {}
        for pair in rest.split(","):
            knob, eq, value = pair.partition("=")
            if not eq:
                raise ValueError(f"--replica {spec!r}: want KNOB=VALUE, got {pair!r}")
            changes[knob.strip()] = _typed(knob.strip(), value.strip())
        target = out[int(index)]
        for knob, typed in changes.items():
            setattr(target, knob, typed)
        target.validate()
    return out


async def serve(
    settings: list[SimSettings], host: str, ports: list[int], access_log: bool
) -> None:
    """Run until SIGINT or SIGTERM; one ready line per replica."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = await start_replicas(settings, host, ports, access_log=access_log)
    for i, server in enumerate(cluster):
        which = f"replica {i} " if len(cluster) > 1 else ""
        print(f'vLLM SIMULATOR (not a real model) {which}serving "{server.settings.model}" '
              f"at {server.url}", flush=True)  # fmt: skip
    try:
        await stop.wait()
    finally:
        await cluster.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options and serve; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ports = ports_from_args(args)
        settings = replica_settings(settings_from_args(args), len(ports), args.replica)
    except ValueError as exc:
        parser.error(str(exc))
    loop_factory = None
    try:  # uvloop is faster for benchmarks but optional
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings, args.host, ports, args.access_log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
