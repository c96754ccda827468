"""What the cluster mode costs: one node on SQLite vs one on PostgreSQL + Redis, and two
processes vs one, for /api/chat and /v1 (wrk as the load, the simulator as the upstream).

    .venv/bin/python bench/cluster.py                       # every setup, 10 s a scenario
    .venv/bin/python bench/cluster.py --only sqlite pg_redis --duration 20

Starts its own throwaway PostgreSQL (Debian's postgresql package; fsync on, commits as durable
as SQLite's default: synchronous_commit off, or each on disk with --durable fsync) and Redis
(redis-server). Counts per request: the Redis round trips the node made, those a request
waited on and all (chatgate_redis_round_trips_total in /metrics); the commands Redis ran for
them, the scripts' insides included (INFO commandstats); PostgreSQL transactions
(pg_stat_database.xact_commit: commits and reads); and the replies stored.
Needs `wrk`, `postgresql` and `redis-server` (apt-get install).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/run.py before run.py

from run import count_rows, cpu_seconds, prepare, run_wrk, start_pair, wait_http
from tests.support.postgres import start_cluster
from tests.support.redis import start_redis

SCENARIOS = {
    # name: (wrk script, path, connections)
    "chat_turn": ("chat.lua:turn", "/api/chat", 128),
    "chat_stream": ("chat.lua:stream", "/api/chat", 128),
    "v1_chat": ("v1.lua:whole", "/v1/chat/completions", 32),
}
SETUPS = {
    # name: (PostgreSQL?, Redis?, processes)
    "sqlite": (False, False, 1),
    "pg_redis": (True, True, 1),
    "sqlite_2proc": (False, False, 2),
    "pg_redis_2proc": (True, True, 2),
    "pg": (True, False, 1),
    "sqlite_redis": (False, True, 1),
    "sqlite_redis_2proc": (False, True, 2),
    "pg_2proc": (True, False, 2),
}


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (a master and its server processes)."""
    total = cpu_seconds(pid)
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    if kids.exists():
        for child in kids.read_text().split():
            try:
                total += tree_cpu(int(child))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


async def redis_calls(url: str) -> dict[str, int]:
    """Commands Redis has answered so far, by command (INFO commandstats, INFO left out)."""
    client: Any = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()
            if k != "cmdstat_info"}


async def scrape(base: str) -> dict[str, float]:
    """What /metrics says so far of the Redis round trips (`waited`, `all`) and the database's
    writes (`write`, `batch`: the transactions that committed them, `retry`)."""
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as resp:
        text = await resp.text()
    found = dict.fromkeys(("waited", "all", "write", "batch", "retry"), 0.0)
    for line in text.splitlines():
        for family, kinds in (("chatgate_redis_round_trips_total{", ("waited", "all")),
                              ("chatgate_db_writes_total{", ("write", "batch", "retry"))):
            if line.startswith(family):
                for kind in kinds:
                    if f'kind="{kind}"' in line:
                        found[kind] = float(line.rsplit(" ", 1)[1])
    return found


async def pg_commits(url: str) -> int:
    """Transactions committed in the database so far."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT xact_commit FROM pg_stat_database "
                                       "WHERE datname = current_database()"))
    finally:
        await conn.close()


async def pg_rows(url: str) -> tuple[int, int]:
    """(assistant replies stored complete, all messages)."""
    conn = await asyncpg.connect(url)
    try:
        done = await conn.fetchval("SELECT count(*) FROM messages WHERE role = 'assistant' "
                                   "AND status = 'complete'")
        total = await conn.fetchval("SELECT count(*) FROM messages")
        return int(done), int(total)
    finally:
        await conn.close()


async def run_setup(name: str, args: argparse.Namespace, tmp: Path, pg: Any,
                    redis_url: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Start one setup, run every scenario against it, stop it."""
    engines, shared, processes = SETUPS[name]
    settings: dict[str, object] = {"QUEUE__WORKERS": args.workers, "QUEUE__MAX_SIZE": 4096,
                                   "SERVER__PROCESSES": processes}
    db_url = ""
    if engines:
        db_url = pg.url(await pg.create_database())
        settings.update(DATABASE__URL=db_url)
    if shared:
        settings.update(COORDINATION__REDIS_URL=redis_url)
    db = tmp / f"{name}.db"
    sim, server, sim_url, base = start_pair(
        db, ["--ttft-ms", "0", "--tpot-ms", "0", "--reply-tokens", "16", "--capacity", "1024"],
        **settings)
    rows = []
    try:
        await wait_http(sim_url + "/health")
        await wait_http(base + "/health", timeout=60)
        users = await prepare(base, args.users)
        for scenario in args.scenarios:
            script, path, conns = SCENARIOS[scenario]
            stored0 = await pg_rows(db_url) if engines else count_rows(db)
            calls0 = await redis_calls(redis_url) if shared else {}
            seen0 = await scrape(base)
            commits0 = await pg_commits(db_url) if engines else 0
            cpu0 = tree_cpu(server.pid)
            result = run_wrk(base, script, path, conns, args.duration, users)
            cpu = tree_cpu(server.pid) - cpu0
            n = max(1, int(result["requests"]))
            seen = {k: v - seen0[k] for k, v in (await scrape(base)).items()}
            result["writes_per_commit"] = round(seen["write"] / max(1.0, seen["batch"]), 1)
            result["write_retries"] = int(seen["retry"])
            if shared:
                result["trips_waited"] = round(seen["waited"] / n, 2)
                result["trips_all"] = round(seen["all"] / n, 2)
                calls = await redis_calls(redis_url)
                used = {k: v - calls0.get(k, 0) for k, v in calls.items()}
                result["redis_per_req"] = round(sum(used.values()) / n, 2)
                result["redis_by_command"] = {k: round(v / n, 2) for k, v in used.items() if v}
            if engines:
                result["commits_per_req"] = round((await pg_commits(db_url) - commits0) / n, 3)
            stored1 = await pg_rows(db_url) if engines else count_rows(db)
            result["stored"] = stored1[0] - stored0[0]
            result["server_cpu_ms"] = round(cpu * 1000 / n, 3)
            rows.append((name, scenario, result))
            print(f"{name} {scenario}: {result}", file=sys.stderr, flush=True)
    finally:
        for proc in (server, sim):
            proc.send_signal(signal.SIGTERM)
        for proc in (server, sim):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return rows


async def main() -> int:
    """Start the engines, run each setup in turn, print one table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--only", nargs="*", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--scenarios", nargs="*", choices=list(SCENARIOS),
                        default=list(SCENARIOS))
    parser.add_argument("--durable", choices=("sqlite-like", "fsync"), default="sqlite-like",
                        help="PostgreSQL's commits: 'sqlite-like' (synchronous_commit off: a "
                             "crash of the machine may lose the last moments, as SQLite's "
                             "synchronous=NORMAL may) or 'fsync' (each commit on disk)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="chatgate-cluster-bench-"))
    pg = start_cluster()
    redis = await start_redis(tmp / "redis")
    rows = []
    try:
        conn = await asyncpg.connect(pg.url())
        try:  # the test cluster trades safety for speed; a benchmark must not
            for setting in ("fsync", "full_page_writes"):
                await conn.execute(f"ALTER SYSTEM SET {setting} = on")
            sync = "on" if args.durable == "fsync" else "off"
            await conn.execute(f"ALTER SYSTEM SET synchronous_commit = {sync}")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        for name in args.only:
            rows += await run_setup(name, args, tmp, pg, redis.url)
    finally:
        await redis.stop()
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| setup | scenario | req/s | p50 | p99 | non-2xx | replies stored | server CPU/req "
          "| Redis round trips/req (waited on / all) | Redis commands run/req "
          "| PostgreSQL commits/req | writes per commit (retried) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, scenario, r in rows:
        stored = r["stored"] if scenario.startswith("chat") else "-"
        print(f"| {name} | {scenario} | {r['rps']:,.0f} | {r['p50']} | {r['p99']} | "
              f"{r['non2xx']} | {stored} | {r['server_cpu_ms']} ms | "
              f"{r.get('trips_waited', '-')} / {r.get('trips_all', '-')} | "
              f"{r.get('redis_per_req', '-')} | "
              f"{r.get('commits_per_req', '-')} | "
              f"{r['writes_per_commit']} ({r['write_retries']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
