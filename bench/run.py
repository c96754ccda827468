"""Load benchmark: chatgate + the vLLM simulator as separate processes, wrk as the load.

    .venv/bin/python bench/run.py                 # every scenario, 10 s each
    .venv/bin/python bench/run.py --duration 20 --only chat_new chat_stream

Prints a Markdown table (requests/s, latency percentiles, non-2xx) and checks afterwards that
every answered chat message is in the database. Needs `wrk` (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk"
SCENARIOS = {
    # name: (method/lua script, path, connections, what it measures)
    "health": ("GET", "/health", 64, "bare pass-through: no auth, no database"),
    "verify": ("verify.lua", "/api/auth/verify", 64, "token check answered from the TTL cache"),
    "list": ("list.lua", "/api/conversations?limit=20", 64, "a page of conversations (one read)"),
    "search": ("search.lua", "/api/search?q=quokka", 64, "full-text search over own messages"),
    "chat_new": ("chat.lua:new", "/api/chat", 128,
                 "chat, new conversation: user msg + conversation + reply committed"),
    "chat_turn": ("chat.lua:turn", "/api/chat", 128,
                  "chat in an existing conversation: history read + 2 rows committed"),
    "chat_stream": ("chat.lua:stream", "/api/chat", 128, "streaming chat (SSE), 16 deltas"),
    "v1_direct": ("v1.lua:direct", "SIM/v1/chat/completions", 32,
                  "the simulator called directly (no chatgate): the upstream's own ceiling"),
    "v1_passthrough": ("v1.lua:direct", "PASS/v1/chat/completions", 32,
                       "a bare aiohttp pass-through (bench/passthrough.py): the design's ceiling"),
    "v1_chat": ("v1.lua:whole", "/v1/chat/completions", 32,
                "/v1 chat, API key, queue, workers, usage counted: no conversation stored"),
    "v1_stream": ("v1.lua:stream", "/v1/chat/completions", 32, "/v1 chat streamed, 16 tokens"),
}


def free_port() -> int:
    """An unused TCP port on loopback."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, timeout: float = 20, expect_any: bool = False) -> None:
    """Poll until the URL answers (with any status when `expect_any`)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as resp:
                    if resp.status < 500 or expect_any:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


async def prepare(base: str, users: int) -> list[dict[str, object]]:
    """Register users, give each a conversation with a few messages, return tokens and ids."""
    out = []
    async with aiohttp.ClientSession(base) as s:
        for i in range(users):
            async with s.post("/api/auth/register",
                              json={"username": f"bench{i}", "password": "load-test-pass"}) as r:
                token = (await r.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with s.post("/api/chat", json={"message": "tell me about the quokka"},
                              headers=headers) as r:
                conv = (await r.json())["conversation_id"]
            async with s.post("/api/keys", json={"name": "bench"}, headers=headers) as r:
                key = (await r.json())["key"]
            out.append({"token": token, "conversation_id": conv, "key": key})
    return out


def run_wrk(base: str, script: str, path: str, conns: int, duration: int,
            users: list[dict[str, object]]) -> dict[str, object]:
    """One wrk run; returns its parsed summary."""
    script, _, mode = script.partition(":")
    env = dict(os.environ, BENCH_USERS=json.dumps(users), BENCH_CHAT=mode)
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if script.endswith(".lua"):
        cmd += ["-s", str(LUA / script)]
    cmd.append(base + path)
    text = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    lat = {p: m.group(2) for p in ("50", "90", "99")
           if (m := re.search(rf"\s{p}(\.000)?%\s+(\S+)", text))}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    total = re.search(r"(\d+) requests in", text)
    return {"rps": rps, "p50": lat.get("50"), "p90": lat.get("90"), "p99": lat.get("99"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "requests": int(total.group(1)) if total else 0}


def start_pair(db: Path, sim_args: list[str], **settings: object) -> tuple[
        subprocess.Popen[bytes], subprocess.Popen[bytes], str, str]:
    """The simulator and run.py as processes on free ports, limits lifted; CHATGATE_<settings>."""
    sim_port, port = free_port(), free_port()
    sim = subprocess.Popen([sys.executable, "-m", "vllm_sim", "--port", str(sim_port), *sim_args],
                           cwd=ROOT, stdout=subprocess.DEVNULL)
    env = dict(os.environ, CHATGATE_SERVER__PORT=str(port), CHATGATE_DATABASE__PATH=str(db),
               CHATGATE_LLM__BASE_URL=f"http://127.0.0.1:{sim_port}/v1",
               CHATGATE_LIMITS__CHAT_PER_USER_PER_MINUTE="1000000",
               CHATGATE_LIMITS__LOGIN_PER_IP_PER_MINUTE="1000000",
               CHATGATE_LIMITS__UPSTREAM_RPS="1000000", CHATGATE_QUEUE__MAX_PER_USER="0",
               CHATGATE_QUEUE__MAX_RUNNING_PER_USER="1000000",
               CHATGATE_LIMITS__CONVERSATIONS_PER_USER_PER_MINUTE="0",
               CHATGATE_LIMITS__MAX_CONVERSATIONS_PER_USER="0",
               CHATGATE_LIMITS__MAX_STORED_CHARS_PER_USER="0")
    env.update({f"CHATGATE_{key.upper()}": str(value) for key, value in settings.items()})
    server = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL)
    return sim, server, f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{port}"


def start_passthrough(sim_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """bench/passthrough.py as a process: the ceiling chatgate's /v1 is measured against."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("passthrough.py")),
                             str(port), sim_url + "/v1"], cwd=ROOT, stdout=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_rows(db: Path) -> tuple[int, int]:
    """(assistant replies stored complete, all messages)."""
    with sqlite3.connect(db) as conn:
        done = conn.execute("SELECT count(*) FROM messages WHERE role='assistant' "
                            "AND status='complete'").fetchone()[0]
        total = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    return done, total


async def main() -> int:
    """Start both processes, run the scenarios, print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="chatgate-bench-"))
    sim, server, sim_url, base = start_pair(
        tmp / "bench.db", ["--ttft-ms", "0", "--tpot-ms", "0", "--reply-tokens", "16",
                           "--capacity", "1024"], QUEUE__WORKERS=args.workers,
        QUEUE__MAX_SIZE=4096)
    passthrough: subprocess.Popen[bytes] | None = None
    pass_url = ""
    try:
        await wait_http(sim_url + "/health")
        await wait_http(base + "/health")
        users = await prepare(base, args.users)
        rows = []
        for name in args.only or SCENARIOS:
            script, path, conns, what = SCENARIOS[name]
            target, front = base, server
            if path.startswith("SIM/"):
                target, path, front = sim_url, path[3:], sim
            elif path.startswith("PASS/"):
                if passthrough is None:
                    passthrough, pass_url = start_passthrough(sim_url)
                    await wait_http(pass_url + "/health", expect_any=True)
                target, path, front = pass_url, path[4:], passthrough
            before = count_rows(tmp / "bench.db")
            cpu = cpu_seconds(front.pid), cpu_seconds(sim.pid)
            result = run_wrk(target, script, path, conns, args.duration, users)
            used = cpu_seconds(front.pid) - cpu[0], cpu_seconds(sim.pid) - cpu[1]
            after = count_rows(tmp / "bench.db")
            result["stored"] = after[0] - before[0]
            n = max(1, int(result["requests"]))  # type: ignore[call-overload]
            result["server_cpu_ms"] = round(used[0] * 1000 / n, 3)
            result["sim_cpu_ms"] = round(used[1] * 1000 / n, 3)
            rows.append((name, what, conns, result))
            print(f"{name}: {result}", file=sys.stderr, flush=True)
        print("| scenario | what | conns | req/s | p50 | p90 | p99 | non-2xx | replies stored "
              "| server CPU/req | simulator CPU/req |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, what, conns, r in rows:
            stored = r["stored"] if name.startswith("chat") else "-"  # /v1 stores no chat
            print(f"| {name} | {what} | {conns} | {r['rps']:,.0f} | {r['p50']} | {r['p90']} | "
                  f"{r['p99']} | {r['non2xx']} | {stored} | {r['server_cpu_ms']} ms | "
                  f"{r['sim_cpu_ms']} ms |")
    finally:
        if passthrough is not None:
            passthrough.kill()
        for proc in (server, sim):
            proc.send_signal(signal.SIGTERM)
        for proc in (server, sim):
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
