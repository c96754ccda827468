"""Overload benchmark: offer 5x what the queue and workers can hold; time every answer by status.

    .venv/bin/python bench/overload.py [--factor 5] [--seconds 10]

Capacity here is queue.workers running + queue.max_size waiting, with a simulator that takes
~1 s per reply. `factor` x capacity requests are kept in flight for `seconds`, by clients that
pause after a
refusal (--mode backoff) or by wrk resending at once (--mode flood); meanwhile a probe sends one
request at a time and records its latency per status (200 accepted, 503 refused). Then it checks
that the server answers at once, and prints the server's peak memory (VmHWM). Needs `wrk`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import LUA, start_pair, wait_http


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000


async def load_only(base: str, seconds: float, pause: float, clients: int) -> int:
    """The backoff load: clients that pause after a refusal, in a process of their own."""
    headers = json.loads(os.environ["BENCH_HEADERS"])
    deadline = time.monotonic() + seconds - 1.5
    counts: dict[int, int] = defaultdict(int)

    async def client(n: int, s: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            async with s.post("/api/chat", json={"message": f"load {n}"},
                              headers=headers[n % len(headers)]) as resp:
                await resp.read()
                counts[resp.status] += 1
                if resp.status != 200:
                    await asyncio.sleep(pause)

    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=0)) as s:
        await asyncio.gather(*(client(n, s) for n in range(clients)))
    print(" ".join(f"{status}: {count}" for status, count in sorted(counts.items())))
    return 0


async def main() -> int:
    """Start the processes, flood, report."""
    if sys.argv[1:2] == ["--load-only"]:
        base, rest = sys.argv[2], sys.argv[3:]
        opts = dict(zip(rest[::2], rest[1::2], strict=False))
        return await load_only(base, float(opts["--seconds"]), float(opts["--pause"]),
                               int(opts["--clients"]))
    parser = argparse.ArgumentParser()
    parser.add_argument("--factor", type=float, default=5)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--queue", type=int, default=64)
    parser.add_argument("--mode", choices=("backoff", "flood"), default="backoff",
                        help="backoff: clients pause after a refusal; flood: wrk resends at once")
    parser.add_argument("--pause", type=float, default=0.5, help="backoff pause in seconds")
    args = parser.parse_args()
    capacity = args.workers + args.queue
    in_flight = int(capacity * args.factor)
    tmp = Path(tempfile.mkdtemp(prefix="chatgate-overload-"))
    sim, server, sim_url, base = start_pair(
        tmp / "overload.db", ["--ttft-ms", "200", "--tpot-ms", "50", "--reply-tokens", "16"],
        QUEUE__WORKERS=args.workers, QUEUE__MAX_SIZE=args.queue)
    latencies: dict[int, list[float]] = defaultdict(list)
    try:
        await wait_http(sim_url + "/health")
        await wait_http(base + "/health")
        headers = []
        async with aiohttp.ClientSession(base) as s:
            for i in range(20):
                async with s.post("/api/auth/register",
                                  json={"username": f"over{i}", "password": "load-test-pass"}) as r:
                    headers.append({"Authorization": f"Bearer {(await r.json())['access_token']}"})
        if args.mode == "flood":
            # wrk keeps `in_flight` requests open and resends the moment one is refused (C, so
            # the load costs little CPU); a probe sends one request at a time meanwhile.
            users = [{"token": h["Authorization"].split()[1], "conversation_id": 0}
                     for h in headers]
            flood = subprocess.Popen(
                ["wrk", "-t2", f"-c{in_flight}", f"-d{args.seconds:.0f}s", "--timeout", "20s",
                 "-s", str(LUA / "chat.lua"), base + "/api/chat"],
                env=dict(os.environ, BENCH_USERS=json.dumps(users), BENCH_CHAT="new"),
                stdout=subprocess.PIPE,
                text=True)
        await asyncio.sleep(1.0)  # let the queue fill
        deadline = time.monotonic() + args.seconds - 1.5

        if args.mode == "backoff":  # the load runs in its own process: the probe's loop is idle
            flood = subprocess.Popen(
                [sys.executable, __file__, "--load-only", base, "--seconds", str(args.seconds),
                 "--pause", str(args.pause), "--clients", str(in_flight)],
                env=dict(os.environ, BENCH_HEADERS=json.dumps(headers)), stdout=subprocess.PIPE,
                text=True)
        async with aiohttp.ClientSession(base) as s:
            async def probe() -> None:
                began = time.monotonic()
                async with s.post("/api/chat", json={"message": "probe"},
                                  headers=headers[0]) as resp:
                    await resp.read()
                    latencies[resp.status].append(time.monotonic() - began)

            probes = []
            while time.monotonic() < deadline:  # 50 probes a second, each timed on its own
                probes.append(asyncio.create_task(probe()))
                await asyncio.sleep(0.02)
            await asyncio.gather(*probes)
            wrk_out = await asyncio.to_thread(flood.communicate)
            began = time.monotonic()
            async with s.get("/health") as resp:
                assert resp.status == 200
            after_health = time.monotonic() - began
            began = time.monotonic()
            async with s.post("/api/chat", json={"message": "after"}, headers=headers[0]) as r:
                after_status = r.status
            after_chat = time.monotonic() - began
        flood_summary = " ".join(line.strip() for line in wrk_out[0].splitlines()
                                 if "requests in" in line or "Non-2xx" in line or ": " in line)
        rss = next(line for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
                   if line.startswith("VmHWM"))
    finally:
        for proc in (server, sim):
            proc.send_signal(signal.SIGTERM)
        for proc in (server, sim):
            proc.wait(timeout=60)
    print(f"capacity {capacity} (workers {args.workers} + queue {args.queue}), "
          f"{in_flight} requests kept in flight for {args.seconds:.0f} s")
    pause = f", clients pause {args.pause} s after a refusal" if args.mode == "backoff" else ""
    print(f"mode {args.mode}{pause}: load answered {flood_summary}")
    print("probe requests during the load:")
    print("| status | count | p50 | p99 | max |")
    print("|---|---|---|---|---|")
    for status, values in sorted(latencies.items()):
        print(f"| {status} | {len(values)} | {percentile(values, 50):.1f} ms | "
              f"{percentile(values, 99):.1f} ms | {max(values) * 1000:.1f} ms |")
    print(f"after the load: /health in {after_health * 1000:.1f} ms, a chat answered "
          f"{after_status} in {after_chat * 1000:.0f} ms; server peak memory {rss.split()[1]} kB")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
