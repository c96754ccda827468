"""Render attack: replies of pathological Markdown read with render=html, /health timed meanwhile.

    .venv/bin/python bench/render_attack.py [--seconds 10] [--clients 6] [--conversations 6]
    .venv/bin/python bench/render_attack.py --root /path/to/other/checkout   # e.g. before a fix

chatgate and the simulator (in echo mode: a reply repeats the user's message) run as separate
processes, as in bench/run.py. One account stores `--conversations` conversations of `--replies`
replies of `"![" * 10000` each, then `--clients` clients (in a process of their own) read them
with `GET /api/conversations/{id}?render=html` in a loop for `--seconds`. A probe sends one
`GET /health` at a time, first with the server idle, then during the attack, and prints the
latency percentiles of both, the attack's own request latencies and how many replies came back
with `html` (rendered) or `html: null` (declined by the render caps). Meanwhile another user
(the victim) sends an ordinary Markdown message with `render: "html"` twice a second: its
latency and whether its reply came back rendered show what the attack costs everyone else.
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
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, cpu_seconds, free_port, wait_http

HOSTILE = "![" * 10000


def children(pid: int) -> list[int]:
    """The process's direct children (the render process, when it runs)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000


def start(root: Path, db: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], str]:
    """The echoing simulator and `root`/run.py as processes on free ports; the server's URL."""
    sim_port, port = free_port(), free_port()
    sim = subprocess.Popen([sys.executable, "-m", "vllm_sim", "--port", str(sim_port), "--echo",
                            "--ttft-ms", "0", "--tpot-ms", "0"], cwd=root,
                           stdout=subprocess.DEVNULL)
    env = dict(os.environ, CHATGATE_SERVER__PORT=str(port), CHATGATE_DATABASE__PATH=str(db),
               CHATGATE_LLM__BASE_URL=f"http://127.0.0.1:{sim_port}/v1",
               CHATGATE_LIMITS__CHAT_PER_USER_PER_MINUTE="1000000",
               CHATGATE_SERVER__ACCESS_LOG="false")
    server = subprocess.Popen([sys.executable, "run.py"], cwd=root, env=env,
                              stdout=subprocess.DEVNULL)
    return sim, server, f"http://127.0.0.1:{port}"


async def store(base: str, conversations: int, replies: int) -> tuple[dict[str, str], list[int]]:
    """Register the attacker and store the hostile replies; its headers and conversation ids."""
    async with aiohttp.ClientSession(base) as s:
        async with s.post("/api/auth/register",
                          json={"username": "attacker", "password": "load-test-pass"}) as r:
            headers = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
        ids = []
        for _ in range(conversations):
            conv = None
            for _ in range(replies):
                body = {"message": HOSTILE, **({"conversation_id": conv} if conv else {})}
                async with s.post("/api/chat", json=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    conv = (await r.json())["conversation_id"]
            assert conv is not None
            ids.append(conv)
    return headers, ids


async def attack(base: str, seconds: float, clients: int) -> int:
    """The attack itself (run in its own process): prints one JSON line of what it saw."""
    headers, ids = json.loads(os.environ["BENCH_HEADERS"]), json.loads(os.environ["BENCH_IDS"])
    deadline = time.monotonic() + seconds
    times: list[float] = []
    rendered = declined = 0

    async def client(n: int, s: aiohttp.ClientSession) -> None:
        nonlocal rendered, declined
        while time.monotonic() < deadline:
            started = time.monotonic()
            async with s.get(f"/api/conversations/{ids[n % len(ids)]}?render=html",
                             headers=headers) as resp:
                body = await resp.json()
            times.append(time.monotonic() - started)
            htmls = [m.get("html") for m in body["messages"] if m["role"] == "assistant"]
            rendered += sum(h is not None for h in htmls)
            declined += sum(h is None for h in htmls)

    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(base, timeout=timeout) as s:
        await asyncio.gather(*(client(n, s) for n in range(clients)))
    print(json.dumps({"requests": len(times), "p50_ms": round(percentile(times, 50)),
                      "p99_ms": round(percentile(times, 99)),
                      "max_ms": round(max(times, default=0) * 1000),
                      "rendered": rendered, "declined": declined}))
    return 0


async def probe(base: str, until: float) -> list[float]:
    """GET /health one at a time (every 20 ms) until `until`; the latencies in seconds."""
    times = []
    async with aiohttp.ClientSession(base) as s:
        while time.monotonic() < until:
            started = time.monotonic()
            async with s.get("/health") as resp:
                await resp.read()
            times.append(time.monotonic() - started)
            await asyncio.sleep(0.02)
    return times


async def victim(base: str, until: float) -> tuple[list[float], int]:
    """Another user chatting with render=html; (latencies, replies that came back rendered)."""
    times, rendered = [], 0
    async with aiohttp.ClientSession(base) as s:
        async with s.post("/api/auth/register",
                          json={"username": "victim", "password": "load-test-pass"}) as r:
            headers = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
        while time.monotonic() < until:
            started = time.monotonic()
            body = {"message": f"**hello** `{len(times)}` [link](https://example.org)",
                    "render": "html"}
            async with s.post("/api/chat", json=body, headers=headers) as resp:
                reply = await resp.json()
            times.append(time.monotonic() - started)
            rendered += reply["message"]["html"] is not None
            await asyncio.sleep(0.5)
    return times, rendered


async def main() -> int:
    """Start the processes, store the replies, probe idle, then probe under the attack."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--replies", type=int, default=12)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose run.py to start")
    parser.add_argument("--attack-only", nargs=2, metavar=("URL", "SECONDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack_only:
        return await attack(args.attack_only[0], float(args.attack_only[1]), args.clients)
    tmp = Path(tempfile.mkdtemp(prefix="chatgate-render-"))
    sim, server, base = start(args.root.resolve(), tmp / "attack.db")
    try:
        await wait_http(base + "/health")
        headers, ids = await store(base, args.conversations, args.replies)
        idle = await probe(base, time.monotonic() + min(args.seconds, 5))
        env = dict(os.environ, BENCH_HEADERS=json.dumps(headers), BENCH_IDS=json.dumps(ids))
        cpu = cpu_seconds(server.pid), {c: cpu_seconds(c) for c in children(server.pid)}
        load = subprocess.Popen([sys.executable, __file__, "--clients", str(args.clients),
                                 "--attack-only", base, str(args.seconds)],
                                env=env, stdout=subprocess.PIPE, text=True)
        until = time.monotonic() + args.seconds
        busy, (chats, chats_rendered) = await asyncio.gather(probe(base, until),
                                                             victim(base, until))
        out, _ = await asyncio.to_thread(load.communicate)
        used = cpu_seconds(server.pid) - cpu[0]
        helpers = sum(cpu_seconds(c) - cpu[1].get(c, 0.0) for c in children(server.pid))
        seen = json.loads(out.strip().splitlines()[-1])
        print(f"root {args.root}: {args.conversations} conversations x {args.replies} replies "
              f"of {len(HOSTILE)} chars, {args.clients} clients, {args.seconds:g} s")
        print("| phase | /health p50 | /health p99 | /health max | probes |")
        print("|---|---|---|---|---|")
        for name, times in (("idle", idle), ("under attack", busy)):
            print(f"| {name} | {percentile(times, 50):.1f} ms | {percentile(times, 99):.1f} ms "
                  f"| {max(times) * 1000:.1f} ms | {len(times)} |")
        print(f"attack: {seen['requests']} reads, p50 {seen['p50_ms']} ms, p99 {seen['p99_ms']} "
              f"ms, max {seen['max_ms']} ms; replies with html {seen['rendered']}, html null "
              f"{seen['declined']}; CPU: server process {used:.1f} s, its render process(es) "
              f"{helpers:.1f} s")
        print(f"victim: {len(chats)} chats with render=html, p50 {percentile(chats, 50):.0f} ms, "
              f"max {max(chats, default=0) * 1000:.0f} ms; rendered {chats_rendered}/{len(chats)}")
        return 0
    finally:
        for proc in (server, sim):
            proc.send_signal(signal.SIGTERM)
        for proc in (server, sim):
            proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
