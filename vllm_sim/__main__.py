"""Command line: python -m vllm_sim --host 127.0.0.1 --port 8000 [options]."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from .runner import start_simulator
from .settings import DEFAULT_MODEL, FAULT_MODES, SimSettings


def build_parser() -> argparse.ArgumentParser:
    """Describe the command-line options."""
    d = SimSettings()
    p = argparse.ArgumentParser(
        prog="python -m vllm_sim",
        description="OpenAI-compatible vLLM SIMULATOR: fake replies, real wire format, no GPU.",
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
    )
    settings.validate()
    return settings


async def serve(settings: SimSettings, host: str, port: int, access_log: bool) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await start_simulator(settings, host, port, access_log=access_log)
    print(f'vLLM SIMULATOR (not a real model) serving "{settings.model}" at {server.url}',
          flush=True)  # fmt: skip
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options and serve; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    loop_factory = None
    try:  # uvloop is faster for benchmarks but optional
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings, args.host, args.port, args.access_log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
