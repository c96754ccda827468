"""/v1 benchmarks that wrk cannot run: added latency at a fixed rate, and 1,000 slow streams.

    .venv/bin/python bench/v1.py latency [--rate 100] [--seconds 20]
    .venv/bin/python bench/v1.py streams [--streams 1000] [--tokens 20]

`latency` sends requests at a fixed rate (open loop: a slow answer does not slow the sender)
to the simulator directly, then through chatgate's /v1 and /api/chat, against a realistic
upstream (20 ms to the first token, 5 ms per token, 16 tokens), and prints the latency
percentiles of each and what chatgate adds; it also reads the overhead histogram that
chatgate itself exports on /metrics. `streams` holds N streaming /v1 requests open at once
against a slow upstream (100 ms per token) and reports how many completed and the server's
peak memory (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import start_pair, wait_http

BODY = {"model": "vllm-simulator", "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 16}


def pct(values: list[float], p: float) -> float:
    """The p-th percentile in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000


async def open_loop(url: str, body: dict[str, Any], headers: dict[str, str], rate: float,
                    seconds: float) -> list[float]:
    """Latencies of requests sent every 1/rate s for `seconds`, whatever the answers do."""
    latencies: list[float] = []
    failures = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one() -> None:
            nonlocal failures
            started = time.perf_counter()
            async with s.post(url, json=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    failures += 1
                    return
            latencies.append(time.perf_counter() - started)

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    if failures:
        print(f"  {failures} requests failed", file=sys.stderr)
    return latencies


def histogram_quantile(text: str, name: str, route: str, q: float) -> float:
    """Prometheus' histogram_quantile over one series, in milliseconds."""
    buckets = [(float(le), float(v)) for le, v in re.findall(
        rf'^{name}_bucket{{le="([^"]+)",route="{re.escape(route)}"}} (\S+)$', text, re.M)]
    total = buckets[-1][1]
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le * 1000
            share = (rank - prev_count) / (count - prev_count) if count > prev_count else 0
            return (prev_le + (le - prev_le) * share) * 1000
        prev_le, prev_count = le, count
    return float("nan")


async def user(base: str) -> tuple[str, str]:
    """A registered user's token and a new API key."""
    async with aiohttp.ClientSession(base) as s:
        async with s.post("/api/auth/register",
                          json={"username": "bench", "password": "load-test-pass"}) as r:
            token = (await r.json())["access_token"]
        async with s.post("/api/keys", json={"name": "bench"},
                          headers={"Authorization": f"Bearer {token}"}) as r:
            return token, (await r.json())["key"]


async def latency(rate: float, seconds: float) -> None:
    """Added latency at a fixed rate against a realistic upstream."""
    tmp = Path(tempfile.mkdtemp(prefix="chatgate-v1-"))
    sim, server, sim_url, base = start_pair(
        tmp / "bench.db", ["--ttft-ms", "20", "--tpot-ms", "5", "--reply-tokens", "16",
                           "--capacity", "1024"])
    try:
        await wait_http(sim_url + "/health")
        await wait_http(base + "/health")
        token, key = await user(base)
        streamed = {**BODY, "stream": True}
        auth_key = {"Authorization": f"Bearer {key}"}
        # name: (url, body, headers, the baseline it is compared with)
        runs = {
            "direct to the simulator": (sim_url + "/v1/chat/completions", BODY, {}, None),
            "direct to the simulator, streamed": (sim_url + "/v1/chat/completions", streamed,
                                                  {}, None),
            "chatgate /v1/chat/completions": (base + "/v1/chat/completions", BODY, auth_key,
                                              "direct to the simulator"),
            "chatgate /v1/chat/completions, streamed": (
                base + "/v1/chat/completions", streamed, auth_key,
                "direct to the simulator, streamed"),
            # /api/chat always streams from the model server: its baseline is the streamed call.
            "chatgate /api/chat (2 commits + history)": (
                base + "/api/chat", {"message": "hello", "max_tokens": 16},
                {"Authorization": f"Bearer {token}"}, "direct to the simulator, streamed"),
        }
        results: dict[str, list[float]] = {}
        for name, (url, body, headers, _) in runs.items():
            await open_loop(url, body, headers, rate, 2)  # warm up
            results[name] = await open_loop(url, body, headers, rate, seconds)
        print(f"| path ({rate:g} req/s, {seconds:g} s) | p50 | p90 | p99 | added p50 | added p99 |")
        print("|---|---|---|---|---|---|")
        for name, values in results.items():
            baseline = runs[name][3]
            added = ("-", "-") if baseline is None else (
                f"{pct(values, 50) - pct(results[baseline], 50):.2f} ms",
                f"{pct(values, 99) - pct(results[baseline], 99):.2f} ms")
            print(f"| {name} | {pct(values, 50):.2f} ms | {pct(values, 90):.2f} ms | "
                  f"{pct(values, 99):.2f} ms | {added[0]} | {added[1]} |")
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/metrics") as r:
                text = await r.text()
        for route in ("/v1/chat/completions", "/api/chat"):
            print(f"chatgate_overhead_seconds {route}: p50 "
                  f"{histogram_quantile(text, 'chatgate_overhead_seconds', route, 0.5):.2f} ms, "
                  f"p99 {histogram_quantile(text, 'chatgate_overhead_seconds', route, 0.99):.2f}"
                  " ms (from /metrics, bucket-interpolated)")
    finally:
        stop(server, sim)
        shutil.rmtree(tmp, ignore_errors=True)


async def queue_sample(s: aiohttp.ClientSession, base: str) -> tuple[float, float]:
    """The queue depth and busy workers, as /metrics shows them now."""
    async with s.get(base + "/metrics") as r:
        text = await r.text()
    values = dict(re.findall(r"^(chatgate_queue_depth|chatgate_workers_busy) (\S+)$", text, re.M))
    return (float(values.get("chatgate_queue_depth", 0)),
            float(values.get("chatgate_workers_busy", 0)))


async def watch_queue(s: aiohttp.ClientSession, base: str, seen: list[tuple[float, float]],
                      stop: asyncio.Event) -> None:
    """Sample the queue every 0.25 s until stopped."""
    while not stop.is_set():
        seen.append(await queue_sample(s, base))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


async def streams(count: int, tokens: int, workers: int) -> None:
    """N slow streams at once: all must complete; report the server's peak memory and the
    queue filling and draining as /metrics showed it."""
    tmp = Path(tempfile.mkdtemp(prefix="chatgate-v1-"))
    workers = workers or count
    sim, server, sim_url, base = start_pair(
        tmp / "bench.db", ["--ttft-ms", "100", "--tpot-ms", "100", "--reply-tokens",
                           str(tokens), "--capacity", str(count * 2)],
        QUEUE__WORKERS=workers, QUEUE__MAX_SIZE=count * 2, QUEUE__MAX_PER_USER=count * 2)
    try:
        await wait_http(sim_url + "/health")
        await wait_http(base + "/health")
        _, key = await user(base)
        body = {**BODY, "stream": True, "max_tokens": tokens}
        headers = {"Authorization": f"Bearer {key}"}
        done = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=600)) as s:

            async def one() -> None:
                nonlocal done
                async with s.post(base + "/v1/chat/completions", json=body,
                                  headers=headers) as resp:
                    text = await resp.text()
                if resp.status == 200 and text.rstrip().endswith("data: [DONE]"):
                    done += 1

            seen: list[tuple[float, float]] = []
            stop_watch = asyncio.Event()
            watcher = asyncio.create_task(watch_queue(s, base, seen, stop_watch))
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(count)))
            spent = time.perf_counter() - started
            stop_watch.set()
            await watcher
            peak_depth = max((d for d, _ in seen), default=0.0)
            peak_busy = max((b for _, b in seen), default=0.0)
            after = await queue_sample(s, base)
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak = re.search(r"VmHWM:\s+(\d+) kB", status)
        rss = re.search(r"VmRSS:\s+(\d+) kB", status)
        print(f"{done} of {count} streams of {tokens} tokens completed in {spent:.1f} s; "
              f"server peak RSS {int(peak.group(1)) / 1024 if peak else 0:.0f} MB, "
              f"now {int(rss.group(1)) / 1024 if rss else 0:.0f} MB")
        print(f"/metrics during the run: queue depth up to {peak_depth:.0f}, workers busy up to "
              f"{peak_busy:.0f} of {workers}; after it: depth {after[0]:.0f}, busy {after[1]:.0f}")
    finally:
        stop(server, sim)
        shutil.rmtree(tmp, ignore_errors=True)


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then wait."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    """Parse the subcommand and run it."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--rate", type=float, default=100)
    lat.add_argument("--seconds", type=float, default=20)
    st = sub.add_parser("streams")
    st.add_argument("--streams", type=int, default=1000)
    st.add_argument("--tokens", type=int, default=20)
    st.add_argument("--workers", type=int, default=0,
                    help="queue.workers (default: one per stream; fewer shows the queue fill)")
    args = parser.parse_args()
    if args.what == "latency":
        asyncio.run(latency(args.rate, args.seconds))
    else:
        asyncio.run(streams(args.streams, args.tokens, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
