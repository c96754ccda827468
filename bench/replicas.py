"""Several model servers: chatgate with 1, 2 and 4 simulated vLLM replicas of one model.

    .venv/bin/python bench/replicas.py            # about 2.5 minutes
    .venv/bin/python bench/replicas.py --quick    # about 1 minute, a smoke check

Everything runs as separate processes: `python -m vllm_sim --ports ...` (the replicas) and
`python run.py --config FILE` (chatgate, config written to a temp dir); this process is the
load. Each virtual client holds conversations of `--turns` turns (a new conversation, then
follow-ups in it) and sends them one after another, streamed (`"stream": true`), closed loop.
Time to first token is measured here: from sending the turn to its first `delta` event (to the
first content chunk when calling a replica directly).

1. Scaling: replicas whose capacity (vLLM's max_num_seqs) saturates, at a concurrency above
   all of them together. Each replica count is measured twice: the replicas called directly
   (round-robin per turn, the same prompts chatgate would send: the upstream's own numbers)
   and through chatgate. The ceiling is replicas x capacity / reply time, where the reply
   time is ttft + (tokens - 1) x tpot: what the simulated GPUs can serve at most.
2. Affinity: two replicas with a prefix cache (a turn whose earlier conversation the replica
   has seen gets `--hit-ttft-ms` instead of `--miss-ttft-ms`), below saturation; chatgate
   with routing.affinity true, then false (and, for reference, the replicas called directly,
   sticky per conversation and a random replica per turn). Reports follow-up turns' time to first
   token and the replicas' own counters (vllm:prefix_cache_hits_total / queries_total).

"other work" is the CPU the rest of the machine used during a run (all cores busy, minus the
load, chatgate and the simulator): on a shared machine, the figures of a run with much of it
are not to be trusted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replica_load import MODEL, Load, TurnFn, chatgate_turn, direct_turn, pct, run_load

from run import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "load-test-pass"


@dataclass
class Sim:
    """The simulator process and its replicas' base URLs (…/v1)."""

    proc: subprocess.Popen[bytes]
    urls: list[str]

    async def counters(self) -> list[dict[str, float]]:
        """Each replica's vLLM counters from GET /metrics."""
        out = []
        async with aiohttp.ClientSession() as s:
            for url in self.urls:
                async with s.get(url.removesuffix("/v1") + "/metrics") as r:
                    text = await r.text()
                out.append({line.split("{")[0].removeprefix("vllm:"): float(line.split()[-1])
                            for line in text.splitlines() if line.startswith("vllm:")})
        return out


async def start_sim(replicas: int, capacity: int, ttft_ms: float, tpot_ms: float, tokens: int,
                    hit_ttft_ms: float | None = None) -> Sim:
    """`python -m vllm_sim` serving `replicas` replicas of MODEL on free ports."""
    ports = [free_port() for _ in range(replicas)]
    cmd = [sys.executable, "-m", "vllm_sim", "--ports", ",".join(map(str, ports)),
           "--model", MODEL, "--capacity", str(capacity), "--ttft-ms", str(ttft_ms),
           "--tpot-ms", str(tpot_ms), "--reply-tokens", str(tokens),
           "--prefix-cache-size", "100000"]
    if hit_ttft_ms is not None:
        cmd += ["--prefix-hit-ttft-ms", str(hit_ttft_ms)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    sim = Sim(proc, [f"http://127.0.0.1:{p}/v1" for p in ports])
    for url in sim.urls:
        await wait_http(url.removesuffix("/v1") + "/health")
    return sim


def write_config(folder: Path, port: int, urls: list[str], max_concurrency: int,
                 affinity: bool, workers: int, system_prompt: str) -> Path:
    """chatgate's config for these replicas, with the per-user limits lifted as bench/run.py
    lifts them (one machine's load must not be rate-limited)."""
    replicas = "".join(f"      - url: {url}\n        max_concurrency: {max_concurrency}\n"
                       for url in urls)
    text = f"""server: {{host: 127.0.0.1, port: {port}, access_log: false}}
database: {{path: {folder / 'bench.db'}}}
limits:
  chat_per_user_per_minute: 1000000
  login_per_ip_per_minute: 1000000
  upstream_rps: 1000000
  conversations_per_user_per_minute: 0
  max_conversations_per_user: 0
  max_stored_chars_per_user: 0
queue: {{workers: {workers}, max_size: 4096, max_per_user: 0, max_running_per_user: 1000000}}
memory: {{system_prompt: {json.dumps(system_prompt)}}}
models:
  - name: {MODEL}
    replicas:
{replicas}routing:
  affinity: {str(affinity).lower()}
  probe_interval_s: 2
"""
    path = folder / "config.yaml"
    path.write_text(text)
    return path


async def start_chatgate(folder: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    """`python run.py --config FILE`, without any CHATGATE_* variables of this shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
    log = (folder / "chatgate.log").open("wb")
    proc = subprocess.Popen([sys.executable, "run.py", "--config", str(config)], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        await wait_http(f"http://127.0.0.1:{port}/health", timeout=30)
    except RuntimeError:
        proc.kill()
        sys.exit(f"chatgate did not start:\n{(folder / 'chatgate.log').read_text()[-2000:]}")
    return proc


async def register(base: str, users: int) -> list[str]:
    """Access tokens of `users` new accounts."""
    async with aiohttp.ClientSession(base) as s:

        async def one(i: int) -> str:
            async with s.post("/api/auth/register",
                              json={"username": f"bench{i}", "password": PASSWORD}) as r:
                return str((await r.json())["access_token"])

        return list(await asyncio.gather(*(one(i) for i in range(users))))


def stop(*procs: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM each process, then wait (kill after 30 s)."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        if proc is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def sim_stats(sim: Sim, reset: bool = False) -> list[dict[str, float]]:
    """Each replica's /sim/stats (POST /sim/reset first when `reset`: counters and cache)."""
    out = []
    async with aiohttp.ClientSession() as s:
        for url in sim.urls:
            root = url.removesuffix("/v1")
            if reset:
                async with s.post(root + "/sim/reset") as r:
                    await r.read()
            async with s.get(root + "/sim/stats") as r:
                out.append(await r.json())
    return out


@dataclass
class Row:
    """One line of a result table."""

    label: str
    load: Load
    window: tuple[float, float]
    stats: list[dict[str, float]]  # each replica's /sim/stats after the run
    counters: list[dict[str, float]]  # each replica's /metrics after the run
    server_cpu_ms: float | None = None  # chatgate's CPU per measured turn
    others: float = 0.0  # cores other work on the machine kept busy meanwhile (noise)

    @property
    def rate(self) -> float:
        """Turns per second in the measured window."""
        return self.load.rate(*self.window)

    def ttft(self, follow_up: bool | None = None) -> list[float]:
        """Times to first token of turns sent in the window (follow-ups only, or first turns)."""
        return [t.ttft for t in self.load.turns if t.sent >= self.window[0]
                and (follow_up is None or t.follow_up == follow_up)]

    def split(self) -> str:
        """Requests each replica served, as shares."""
        done = [s["completed"] for s in self.stats]
        total = sum(done) or 1
        return " / ".join(f"{100 * d / total:.0f}%" for d in done)


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy (not idle or waiting on I/O) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(label: str, sim: Sim, turn: TurnFn, args: argparse.Namespace, clients: int,
                  server: subprocess.Popen[bytes] | None = None, think: float = 0.0) -> Row:
    """One run against `sim` with fresh counters and prefix caches."""
    await sim_stats(sim, reset=True)
    cpu = cpu_seconds(server.pid) if server else 0.0
    ours, machine = cpu + cpu_seconds(sim.proc.pid), machine_busy_s()
    load, start, end = await run_load(turn, clients, args.turns, args.warmup, args.seconds,
                                      label, think)
    ours = (cpu_seconds(server.pid) if server else 0.0) + cpu_seconds(sim.proc.pid) - ours
    # Cores busy with other work on the machine meanwhile: the noise in this run's figures.
    others = (machine_busy_s() - machine - ours - load.client_cpu_s) / (end - start + args.warmup)
    sent = max(1, len(load.turns))  # CPU is shared over every turn, warm-up included
    load.turns = [t for t in load.turns if t.done >= start]  # the warm-up's are not measured
    row = Row(label, load, (start, end), await sim_stats(sim), await sim.counters(),
              others=max(0.0, others))
    if server:
        row.server_cpu_ms = (cpu_seconds(server.pid) - cpu) * 1000 / sent
    server_cpu = "" if row.server_cpu_ms is None else f", chatgate CPU {row.server_cpu_ms:.2f} ms"
    print(f"  {label}: {row.rate:.0f} turns/s, ttft p50 {pct(row.ttft(), 50):.1f} ms, "
          f"{load.failed} failed, split {row.split()}, most in flight at a replica "
          f"{'/'.join(str(int(st['max_in_flight'])) for st in row.stats)}, client CPU "
          f"{load.client_cpu_s * 1000 / sent:.2f} ms/turn{server_cpu}, other work on the "
          f"machine {row.others:.2f} cores",
          file=sys.stderr, flush=True)
    return row


async def through_chatgate(label: str, sim: Sim, args: argparse.Namespace, clients: int,
                           capacity: int, affinity: bool, system_prompt: str,
                           think: float = 0.0) -> Row:
    """Start chatgate on `sim`'s replicas (max_concurrency: their capacity), measure, stop."""
    folder = Path(tempfile.mkdtemp(prefix="chatgate-replicas-"))
    port = free_port()
    limit = capacity if args.max_concurrency < 0 else args.max_concurrency
    config = write_config(folder, port, sim.urls, limit, affinity, args.workers, system_prompt)
    server = await start_chatgate(folder, config, port)
    try:
        base = f"http://127.0.0.1:{port}"
        tokens = await register(base, args.users)
        turn = chatgate_turn(base, tokens, args.tokens)
        row = await measure(label, sim, turn, args, clients, server, think)
        async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
            routing = [line for line in (await r.text()).splitlines()
                       if not line.startswith("#") and ("affinity" in line or "failover" in line)]
        print("    chatgate /metrics: " + "; ".join(routing), file=sys.stderr)
        return row
    finally:
        stop(server)
        shutil.rmtree(folder, ignore_errors=True)


async def scaling(args: argparse.Namespace) -> list[tuple[int, Row, Row]]:
    """Direct and through chatgate, for each replica count."""
    out = []
    for n in args.replicas:
        sim = await start_sim(n, args.capacity, args.ttft_ms, args.tpot_ms, args.tokens)
        try:
            direct = await measure(f"{n} direct", sim, direct_turn(
                sim.urls, "round-robin", args.tokens, SYSTEM), args, args.clients)
            gate = await through_chatgate(f"{n} chatgate", sim, args, args.clients,
                                          args.capacity, True, SYSTEM)
        finally:
            stop(sim.proc)
        out.append((n, direct, gate))
    return out


async def affinity(args: argparse.Namespace) -> list[Row]:
    """Two replicas with a prefix cache: chatgate with affinity on and off, and the replicas
    called directly, sticky and random per turn. No system prompt, so that only a conversation's
    own history can hit (a shared system prompt would make every first turn a hit too). Clients
    pause between turns, as people do: without a pause, the replica that just answered a
    conversation's turn is the least busy one when its next turn comes, and least-load routing
    alone looks sticky."""
    sim = await start_sim(2, args.capacity_affinity, args.miss_ttft_ms, args.tpot_ms,
                          args.tokens, args.hit_ttft_ms)
    think, clients = args.think_ms / 1000, args.clients_affinity
    try:
        rows = []
        for label, pick in (("direct, sticky per conversation", "sticky"),
                            ("direct, random replica per turn", "random")):
            turn = direct_turn(sim.urls, pick, args.tokens, "")
            rows.append(await measure(label, sim, turn, args, clients, None, think))
        for on in (True, False):
            rows.append(await through_chatgate(
                f"chatgate, routing.affinity: {str(on).lower()}", sim, args, clients,
                args.capacity_affinity, on, "", think))
        return rows
    finally:
        stop(sim.proc)


SYSTEM = "You are a helpful assistant."  # chatgate's default memory.system_prompt


def ms(value: float) -> str:
    """Milliseconds for a table cell."""
    return f"{value:.1f} ms"


def print_scaling(args: argparse.Namespace, results: list[tuple[int, Row, Row]]) -> None:
    """The scaling table as Markdown."""
    reply_s = (args.ttft_ms + (args.tokens - 1) * args.tpot_ms) / 1000
    print(f"\n### Scaling: {args.clients} clients, conversations of {args.turns} turns; each "
          f"replica capacity {args.capacity}, ttft {args.ttft_ms:g} ms, tpot {args.tpot_ms:g} "
          f"ms, {args.tokens} tokens (reply {reply_s * 1000:.0f} ms, ceiling "
          f"{args.capacity / reply_s:.0f} turns/s a replica)\n")
    print("| replicas | path | turns/s | vs direct | vs ceiling | TTFT p50 | p90 | p99 "
          "| requests per replica | failed | chatgate CPU/turn | other work |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, direct, gate in results:
        ceiling = n * args.capacity / reply_s
        for row in (direct, gate):
            path = "chatgate" if row is gate else "direct (round-robin)"
            ratio = f"{row.rate / direct.rate:.2f}" if row is gate else "1"
            cpu = f"{row.server_cpu_ms:.2f} ms" if row.server_cpu_ms is not None else "-"
            t = row.ttft()
            print(f"| {n} | {path} | {row.rate:.0f} | {ratio} | {row.rate / ceiling:.2f} "
                  f"(of {ceiling:.0f}) | {ms(pct(t, 50))} | {ms(pct(t, 90))} | "
                  f"{ms(pct(t, 99))} | {row.split()} | {row.load.failed} | {cpu} | "
                  f"{row.others:.2f} cores |")


def print_affinity(args: argparse.Namespace, rows: list[Row]) -> None:
    """The affinity table as Markdown."""
    print(f"\n### Affinity: 2 replicas, capacity {args.capacity_affinity}, ttft "
          f"{args.miss_ttft_ms:g} ms ({args.hit_ttft_ms:g} ms on a prefix-cache hit), tpot "
          f"{args.tpot_ms:g} ms, {args.tokens} tokens; {args.clients_affinity} clients, "
          f"conversations of {args.turns} turns, {args.think_ms:g} ms (±50 %) between turns\n")
    print("| path | turns/s | follow-up TTFT mean | p50 | p90 | p99 | first-turn TTFT p50 "
          "| prefix-cache hits / queries | follow-ups that hit | requests per replica "
          "| other work |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        hits = sum(c.get("prefix_cache_hits_total", 0) for c in row.counters)
        queries = sum(c.get("prefix_cache_queries_total", 0) for c in row.counters)
        share = hits / max(1, row.load.follow_ups)
        f = row.ttft(follow_up=True)
        mean = sum(f) / len(f) * 1000 if f else float("nan")  # two modes: p50 may sit on either
        print(f"| {row.label} | {row.rate:.0f} | {ms(mean)} | {ms(pct(f, 50))} | "
              f"{ms(pct(f, 90))} | {ms(pct(f, 99))} | {ms(pct(row.ttft(follow_up=False), 50))} | "
              f"{hits:.0f} / {queries:.0f} | {100 * share:.0f}% | {row.split()} | "
              f"{row.others:.2f} cores |")


async def main() -> int:
    """Parse options, run the scenarios, print the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 s runs after 1 s of warm-up")
    p.add_argument("--only", choices=("scaling", "affinity"))
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=10, help="measured time of each run")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured start of each run")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients (scaling)")
    p.add_argument("--turns", type=int, default=4, help="turns per conversation")
    p.add_argument("--users", type=int, default=16, help="accounts the clients share")
    p.add_argument("--workers", type=int, default=64, help="chatgate's queue.workers")
    p.add_argument("--capacity", type=int, default=8, help="each replica's max running")
    p.add_argument("--max-concurrency", type=int, default=-1,
                   help="each replica's max_concurrency in chatgate (default: --capacity)")
    p.add_argument("--ttft-ms", type=float, default=20)
    p.add_argument("--tpot-ms", type=float, default=5)
    p.add_argument("--tokens", type=int, default=16, help="reply length (max_tokens)")
    p.add_argument("--clients-affinity", type=int, default=32)
    p.add_argument("--think-ms", type=float, default=250,
                   help="mean pause between two turns of a conversation (affinity)")
    p.add_argument("--capacity-affinity", type=int, default=32)
    p.add_argument("--miss-ttft-ms", type=float, default=60)
    p.add_argument("--hit-ttft-ms", type=float, default=5)
    args = p.parse_args()
    if args.quick:
        args.seconds, args.warmup = 3, 1
    started = time.perf_counter()
    scaled = await scaling(args) if args.only != "affinity" else []
    rows = await affinity(args) if args.only != "scaling" else []
    spent = time.perf_counter() - started
    print(f"\n{os.cpu_count()} cores; {spent:.0f} s in all", file=sys.stderr)
    if scaled:
        print_scaling(args, scaled)
    if rows:
        print_affinity(args, rows)
    return 0


if __name__ == "__main__":
    try:
        import uvloop
        sys.exit(uvloop.run(main()))
    except ImportError:
        sys.exit(asyncio.run(main()))
