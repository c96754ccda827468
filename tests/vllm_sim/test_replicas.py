"""Several simulator replicas over real TCP: independence, prefix cache, /metrics, down/up."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.paths import ROOT
from vllm_sim import SimCluster, SimServer, SimSettings, start_replicas
from vllm_sim.__main__ import build_parser, ports_from_args, replica_settings, settings_from_args

from .wire import ask, chat_body

pytestmark = pytest.mark.asyncio
TURN1 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit"}]


@pytest_asyncio.fixture
async def pair() -> AsyncIterator[SimCluster]:
    """Two fast replicas; replica 1 is the slower, smaller one."""
    cluster = await start_replicas([SimSettings(ttft_ms=1, tpot_ms=1),
                                    SimSettings(ttft_ms=1, tpot_ms=3, capacity=4)])  # fmt: skip
    yield cluster
    await cluster.close()


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until cond() holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def chat(sim: SimServer, body: Any) -> tuple[int, Any, str | None]:
    """One chat on a fresh connection: status, JSON body and the prefix-cache header."""
    async with aiohttp.ClientSession() as s, s.post(f"{sim.url}/chat/completions",
                                                    json=body) as r:  # fmt: skip
        return r.status, orjson.loads(await r.read()), r.headers.get("X-Sim-Prefix-Cache")


async def ctl(sim: SimServer, path: str, body: Any = None) -> tuple[int, Any]:
    """POST (with a body) or GET a /sim/* endpoint on a fresh connection."""
    method = "GET" if body is None else "POST"
    async with aiohttp.ClientSession() as s, s.request(method, f"{sim.root_url}/sim/{path}",
                                                       json=body) as r:  # fmt: skip
        return r.status, orjson.loads(await r.read())


async def scrape(sim: SimServer) -> dict[str, tuple[dict[str, str], float]]:
    """GET /metrics and parse it as Prometheus text: sample name -> (labels, value)."""
    async with aiohttp.ClientSession() as s, s.get(f"{sim.root_url}/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    return {sample.name: (sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples}  # fmt: skip


async def refused(sim: SimServer) -> bool:
    """True when a new connection to the replica is refused."""
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{sim.root_url}/health") as r:
            await r.read()
    except aiohttp.ClientConnectorError:
        return True
    return False


async def test_replicas_have_their_own_ports_state_and_faults(pair: SimCluster) -> None:
    a, b = pair
    assert len(pair) == 2 and a.port != b.port and pair.urls == [a.url, b.url]
    assert (a.settings.tpot_ms, b.settings.tpot_ms, b.settings.capacity) == (1, 3, 4)
    assert (await ctl(a, "faults", {"mode": "503", "count": 2}))[0] == 200
    assert (await ctl(b, "config", {"slowdown": 10.0}))[1]["slowdown"] == 10.0
    for _ in range(2):
        assert (await chat(a, chat_body()))[0] == 503
        assert (await chat(b, chat_body()))[0] == 200
    assert (await chat(a, chat_body()))[0] == 200
    assert (a.stats.faults_injected, b.stats.faults_injected) == (2, 0)
    assert (a.stats.completed, b.stats.completed) == (1, 2)
    assert a.settings.slowdown == 1.0 and b.settings.tpot() == 30.0


async def test_reset_mid_stream_hits_only_its_replica(pair: SimCluster) -> None:
    a, b = pair
    await ctl(a, "faults", {"mode": "reset", "after_tokens": 2})
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.post(f"{a.url}/chat/completions", json=chat_body(stream=True)) as r:
                await r.read()
        async with s.post(f"{b.url}/chat/completions", json=chat_body(stream=True)) as r:
            assert (await r.read()).endswith(b"data: [DONE]\n\n")


async def test_prefix_cache_hits_the_next_turn_on_the_same_replica(pair: SimCluster) -> None:
    a, b = pair
    status, first, header = await chat(a, chat_body(TURN1))
    assert status == 200 and header == "miss"
    reply = {"role": "assistant", "content": first["choices"][0]["message"]["content"]}
    turn2 = chat_body([*TURN1, reply, {"role": "user", "content": "Another one"}])
    assert (await chat(a, turn2))[2] == "hit"
    assert (await chat(a, chat_body(TURN1)))[2] == "hit"  # a regenerate shares the prefix
    assert (await chat(a, ask("Unrelated question")))[2] == "miss"
    assert (await chat(b, turn2))[2] == "miss"  # the other replica never saw the conversation
    assert (a.stats.prefix_cache_queries, a.stats.prefix_cache_hits) == (4, 2)
    assert (b.stats.prefix_cache_queries, b.stats.prefix_cache_hits) == (1, 0)
    stats = (await ctl(a, "stats"))[1]
    assert (stats["prefix_cache_queries"], stats["prefix_cache_hits"]) == (4, 2)
    await ctl(a, "reset", {})
    assert (await chat(a, turn2))[2] == "miss"  # reset forgets the cache too


async def test_prefix_cache_on_legacy_completions_and_its_knobs(pair: SimCluster) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as s:
        seen = []
        for prompt in ("Story:\nOnce", "Story:\nTwice", ["Story:\nx", "y"]):
            async with s.post(f"{a.url}/completions", json={"prompt": prompt}) as r:
                assert r.status == 200
                seen.append(r.headers.get("X-Sim-Prefix-Cache"))
    assert seen == ["miss", "hit", None]  # a list of prompts is not looked up
    status, cfg = await ctl(b, "config", {"prefix_hit_ttft_ms": 0.5})
    assert status == 200 and b.settings.ttft_for(True) == 0.5
    assert (await ctl(b, "config", {"prefix_hit_ttft_ms": None}))[1]["prefix_hit_ttft_ms"] is None
    assert b.settings.ttft_for(True) == b.settings.ttft_ms
    assert (await ctl(b, "config", {"prefix_hit_ttft_ms": -1}))[0] == 400
    assert (await ctl(b, "config", {"slowdown": 0}))[0] == 400
    off = await start_replicas([SimSettings(ttft_ms=0, tpot_ms=0, prefix_cache_size=0)])
    async with off:
        assert (await chat(off[0], chat_body(TURN1)))[2] is None
        assert off[0].stats.prefix_cache_queries == 0


async def test_close_while_down_and_with_a_flip_pending(pair: SimCluster) -> None:
    a, b = pair
    await a.down(seconds=30)
    assert (await ctl(b, "replicas/1/down", {}))[0] == 200
    await a.close()
    await b.close()  # the pending flip is cancelled, nothing is left running
    assert not a.is_up


async def test_prefix_hit_reaches_its_first_token_first() -> None:
    slow_miss = SimSettings(ttft_ms=1500, tpot_ms=1, prefix_hit_ttft_ms=0)
    assert (slow_miss.ttft_for(True), slow_miss.ttft_for(False)) == (0, 1500)
    async with await start_replicas([slow_miss]) as cluster:
        sim = cluster[0]
        sim.settings.ttft_ms = 0  # prime the cache quickly
        await chat(sim, chat_body(TURN1))
        sim.settings.ttft_ms = 1500
        order: list[str] = []

        async def first_token(name: str, messages: list[dict[str, Any]]) -> None:
            async with aiohttp.ClientSession() as s, s.post(
                f"{sim.url}/chat/completions", json=chat_body(messages, stream=True)
            ) as r:
                await r.content.readline()  # the role chunk follows the time to first token
                order.append(name)
                await r.read()

        miss = asyncio.create_task(first_token("miss", [{"role": "user", "content": "new"}]))
        await wait_for(lambda: sim.stats.prefix_cache_queries == 2)
        await first_token("hit", [*TURN1, {"role": "user", "content": "more"}])
        await miss
    assert order == ["hit", "miss"]
    assert (sim.stats.prefix_cache_queries, sim.stats.prefix_cache_hits) == (3, 1)


async def test_metrics_use_vllm_names_and_follow_running_and_waiting() -> None:
    async with await start_replicas([SimSettings(ttft_ms=1, tpot_ms=1, capacity=2,
                                                 model="m1")]) as cluster:  # fmt: skip
        sim = cluster[0]
        m = await scrape(sim)
        want = {"vllm:num_requests_running", "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc", "vllm:prefix_cache_hits_total",
                "vllm:prefix_cache_queries_total"}  # fmt: skip
        assert want <= m.keys() and all(m[k] == ({"model_name": "m1"}, 0.0) for k in want)
        await ctl(sim, "faults", {"mode": "hang_after_first", "count": 3})
        body = {**ask("hold on"), "model": "m1"}
        tasks = [asyncio.create_task(chat(sim, body)) for _ in range(3)]
        await wait_for(lambda: (sim.stats.running, sim.stats.waiting) == (2, 1))
        m = await scrape(sim)
        assert m["vllm:num_requests_running"][1] == 2 and m["vllm:num_requests_waiting"][1] == 1
        assert m["vllm:kv_cache_usage_perc"][1] == 1.0
        assert m["vllm:prefix_cache_queries_total"][1] == 3
        assert (sim.stats.in_flight, sim.stats.max_in_flight, sim.stats.max_running) == (3, 3, 2)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await wait_for(lambda: (sim.stats.running, sim.stats.waiting) == (0, 0))
        m = await scrape(sim)
        assert m["vllm:num_requests_running"][1] == 0 and m["vllm:kv_cache_usage_perc"][1] == 0


async def test_down_refuses_connections_then_up_serves_on_the_same_port(pair: SimCluster) -> None:
    a, b = pair
    port = a.port
    await a.down()
    assert not a.is_up and await refused(a)
    assert (await chat(b, chat_body()))[0] == 200  # the sibling keeps serving
    await a.up()
    assert a.is_up and a.port == port and (await chat(a, chat_body()))[0] == 200


async def test_down_cuts_a_stream_in_flight(pair: SimCluster) -> None:
    a, _ = pair
    a.settings.tpot_ms = 50
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{a.url}/chat/completions", json=chat_body(stream=True)) as r:
            await r.content.readline()
            await a.down()
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
    await wait_for(lambda: a.stats.aborted == 1)
    await a.up()


async def test_siblings_flip_each_other_over_http(pair: SimCluster) -> None:
    a, b = pair
    status, listing = await ctl(a, "replicas")
    assert status == 200 and [r["up"] for r in listing] == [True, True]
    assert listing[1]["url"] == b.root_url
    assert (await ctl(a, "replicas/1/down", {}))[0] == 200
    await wait_for(lambda: not b.is_up)
    assert await refused(b)
    assert [r["up"] for r in (await ctl(a, "replicas"))[1]] == [True, False]
    assert (await ctl(a, "replicas/1/up", {}))[0] == 200
    await wait_for(lambda: b.is_up)
    assert (await chat(b, chat_body()))[0] == 200
    assert (await ctl(a, "replicas/7/down", {}))[0] == 404


async def test_down_for_a_while_comes_back_by_itself(pair: SimCluster) -> None:
    _, b = pair
    status, data = await ctl(b, "down", {"seconds": 0.3})
    assert status == 200 and data["seconds"] == 0.3
    await wait_for(lambda: not b.is_up)
    assert await refused(b)
    await wait_for(lambda: b.is_up)
    assert (await chat(b, chat_body()))[0] == 200
    assert (await ctl(b, "down", {"seconds": -1}))[0] == 400


async def test_start_replicas_checks_ports() -> None:
    with pytest.raises(ValueError):
        await start_replicas([SimSettings()], ports=[0, 0])


async def test_cli_replica_options() -> None:
    parse = build_parser().parse_args
    args = parse(["--replicas", "3", "--port", "9000", "--replica", "1:tpot_ms=50,capacity=8",
                  "--replica", "2:echo=true,prefix_cache_size=0", "--prefix-hit-ttft-ms", "2"])
    ports = ports_from_args(args)
    settings = replica_settings(settings_from_args(args), len(ports), args.replica)
    assert ports == [9000, 9001, 9002]
    assert [(s.tpot_ms, s.capacity, s.echo) for s in settings] == [
        (5.0, 256, False), (50.0, 8, False), (5.0, 256, True)]
    assert settings[2].prefix_cache_size == 0 and settings[0].prefix_hit_ttft_ms == 2
    assert ports_from_args(parse(["--ports", "9000,9005"])) == [9000, 9005]
    assert ports_from_args(parse(["--replicas", "2", "--port", "0"])) == [0, 0]
    base = SimSettings()
    for bad in ("3:tpot_ms=1", "x:tpot_ms=1", "1:model=x", "1:tpot_ms", "1:capacity=0",
                "1:echo=maybe", "1:capacity=big"):  # fmt: skip
        with pytest.raises(ValueError):
            replica_settings(base, 2, [bad])
    for argv in (["--ports", "a,b"], ["--replicas", "0"], ["--ports", "70000"]):
        with pytest.raises(ValueError):
            ports_from_args(parse(argv))


async def test_cli_serves_several_replicas() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllm_sim", "--replicas", "2", "--port", "0", "--ttft-ms", "0",
        "--replica", "1:tpot_ms=7", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        urls = []
        for i in range(2):
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert line.startswith(f'vLLM SIMULATOR (not a real model) replica {i} serving "')
            urls.append(line.split(" at ")[1].strip().removesuffix("/v1"))
        assert urls[0] != urls[1]
        async with aiohttp.ClientSession() as s:
            tpots = []
            for url in urls:
                async with s.get(f"{url}/sim/config") as r:
                    tpots.append((await r.json())["tpot_ms"])
            assert tpots == [5.0, 7.0]
            async with s.get(f"{urls[1]}/sim/replicas") as r:
                assert [x["url"] for x in await r.json()] == urls
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
