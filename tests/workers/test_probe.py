"""workers/probe.py: vLLM's /metrics parsed, and the prober against simulators over real TCP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from tests.support.procs import free_port
from tests.support.routing import TEXT, Routes, job, run_job, wait_for
from vllm_sim import SimCluster, SimServer, SimSettings, create_sim_app, start_replicas
from workers.errors import ModelNotFound, ModelUnavailable
from workers.probe import Prober, ProbeSettings, parse_load

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# What vLLM 0.10's V1 engine serves with data parallelism (two engines), trimmed.
VLLM_V1 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.625
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 12.0
vllm:num_preemptions_total{engine="0",model_name="m"} 5.0
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
process_cpu_seconds_total 123.4
"""

# An older vLLM (V0): no labels but the model's, the KV-cache gauge under its old name,
# samples with timestamps, a label value with spaces and braces.
VLLM_V0 = """\
vllm:num_requests_running{model_name="my {odd} model"} 2 1712345678000
vllm:num_requests_waiting 5 1712345678000
vllm:num_requests_swapped{model_name="my {odd} model"} 1
vllm:gpu_cache_usage_perc{model_name="my {odd} model"} 0.5 1712345678000
"""


def test_parse_load_sums_engines_and_keeps_the_fullest_kv_cache() -> None:
    assert parse_load(VLLM_V1) == {"running": 7.0, "waiting": 1.0, "kv": 0.625}


def test_parse_load_reads_old_names_timestamps_and_unlabelled_samples() -> None:
    assert parse_load(VLLM_V0) == {"running": 2.0, "waiting": 5.0, "kv": 0.5}


@pytest.mark.parametrize("text", ["", "process_cpu_seconds_total 1.0\n",
                                  "# HELP vllm:num_requests_running running\n",
                                  "<html>not found</html>"])
def test_parse_load_of_a_page_without_vllm_gauges_is_none(text: str) -> None:
    assert parse_load(text) is None


def test_parse_load_skips_a_sample_it_cannot_read() -> None:
    text = "vllm:num_requests_running{engine=\"0\"}\nvllm:num_requests_waiting 2\n"
    assert parse_load(text) == {"waiting": 2.0}


@pytest.fixture
async def sims() -> AsyncIterator[SimCluster]:
    """Two fast echoing simulators."""
    cluster = await start_replicas([SimSettings(ttft_ms=2, tpot_ms=1, echo=True)] * 2)
    yield cluster
    await cluster.close()


async def test_parse_load_reads_the_simulators_metrics(sims: SimCluster, routes: Routes) -> None:
    route = routes.route([sims[0].url])
    sims[0].settings.fault = "hang_after_first"
    task = asyncio.create_task(run_job(routes.router(route), job()))
    await wait_for(lambda: sims[0].stats.running == 1)
    text = await route.replicas[0].client.load()
    assert text is not None
    load = parse_load(text)
    assert load is not None and load["running"] == 1.0 and load["waiting"] == 0.0
    assert 0.0 < load["kv"] <= 1.0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_probe_reads_each_replicas_load(sims: SimCluster, routes: Routes) -> None:
    route = routes.route(sims.urls)
    await Prober(routes.router(route), ProbeSettings()).round()
    for replica in route.replicas:
        assert replica.state == "healthy"
        assert replica.load is not None and replica.load.running == 0.0
        assert time.monotonic() - replica.load.at < 60


async def test_a_replica_serving_another_model_is_down_with_a_clear_reason(
        routes: Routes) -> None:
    async with await start_replicas([SimSettings(model="llama"),
                                     SimSettings(model="qwen")]) as sims:
        route = routes.route(sims.urls, served_name="llama")
        await Prober(routes.router(route), ProbeSettings()).round()
        right, wrong = route.replicas
        assert right.state == "healthy" and wrong.state == "down"
        assert wrong.reason == "it does not serve `llama` (it serves: qwen)"


async def test_a_replica_refusing_the_key_is_down_with_a_clear_reason(routes: Routes) -> None:
    async with await start_replicas([SimSettings(api_key="k")] * 2) as sims:
        good = routes.replica(sims[0].url, api_key="k")
        bad = routes.replica(sims[1].url, api_key="wrong")
        await Prober(routes.router(routes.route([good, bad])), ProbeSettings()).round()
        assert good.state == "healthy" and good.load is not None
        assert bad.state == "down" and "401" in bad.reason and "api_key" in bad.reason


async def test_an_unnamed_model_learns_its_name(sims: SimCluster, routes: Routes) -> None:
    route = routes.route(sims.urls, name="", served_name="")
    router = routes.router(route)
    assert router.names() == []
    await Prober(router, ProbeSettings()).round()
    assert route.name == route.served_name == "vllm-simulator"
    assert router.names() == ["vllm-simulator"] and router.find("vllm-simulator") is route
    with pytest.raises(ModelNotFound):
        router.find("gpt-4")


async def test_a_name_asked_of_an_unnamed_model_no_server_answers_for_is_unavailable(
        routes: Routes) -> None:
    """Its servers could not say what they serve: it may be that model, so not a 404."""
    route = routes.route([f"http://127.0.0.1:{free_port()}/v1"], name="", served_name="")
    with pytest.raises(ModelUnavailable):
        await routes.router(route).lookup("vllm-simulator")


async def test_lookup_asks_the_servers_of_an_unnamed_model(sims: SimCluster,
                                                           routes: Routes) -> None:
    route = routes.route(sims.urls, name="", served_name="")
    router = routes.router(route)
    assert await router.lookup("vllm-simulator") is route
    assert route.served_name == "vllm-simulator"
    with pytest.raises(ModelNotFound):
        await router.lookup("gpt-4")


async def test_the_probe_loop_takes_a_replica_out_and_brings_it_back(
        sims: SimCluster, routes: Routes) -> None:
    route = routes.route(sims.urls)
    router = routes.router(route)
    changes: list[int] = []
    router.on_change = lambda: changes.append(1)
    loop = asyncio.create_task(Prober(router, ProbeSettings(probe_interval_s=0.05)).run())
    await sims[1].down()
    await wait_for(lambda: route.replicas[1].state == "down")
    await sims[1].up()
    await wait_for(lambda: route.replicas[1].state == "healthy")
    assert changes  # the pool's queue was told to look again
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)


async def start_with_metrics(page: Callable[[int], tuple[int, str] | None],
                             hits: list[int]) -> SimServer:
    """A simulator whose /metrics answers `page(n)` (status, text) on the n-th scrape, or its
    own page when that is None: another server's metrics, or a failing one."""

    @web.middleware
    async def metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/metrics":
            hits.append(len(hits) + 1)
            answer = page(len(hits))
            if answer is not None:
                return web.Response(status=answer[0], text=answer[1])
        return await handler(request)

    app = create_sim_app(SimSettings(ttft_ms=2, tpot_ms=1, echo=True))
    app.middlewares.insert(0, metrics)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return SimServer(runner, app, "127.0.0.1", runner.addresses[0][1])


async def test_a_server_without_vllm_metrics_is_routed_by_in_flight_only(
        sims: SimCluster, routes: Routes) -> None:
    hits: list[int] = []
    plain = await start_with_metrics(lambda _: (200, "process_cpu_seconds_total 1.0\n"), hits)
    try:
        route = routes.route([plain.url, sims[0].url])
        router = routes.router(route)
        prober = Prober(router, ProbeSettings())
        await prober.round()
        other, vllm = route.replicas
        assert other.state == "healthy" and other.load is None and hits == [1]
        assert vllm.load is not None
        await prober.round()
        assert hits == [1]  # not asked again: it has none
        other.in_flight = 2  # as if two of our requests ran there
        assert other.score(time.monotonic()) == 2.0
        other.in_flight = 0
        for _ in range(4):
            assert (await run_job(router, job())).text == TEXT
        assert plain.stats.completed > 0 and sims[0].stats.completed > 0
    finally:
        await plain.close()


async def test_a_metrics_page_failing_for_a_while_is_read_again(routes: Routes) -> None:
    """A 5xx from /metrics is a passing failure (a proxy's hiccup, a busy server), not a
    server without metrics: the next probes read it again."""
    hits: list[int] = []
    sim = await start_with_metrics(lambda n: (503, "busy") if n == 1 else None, hits)
    try:
        route = routes.route([sim.url])
        prober = Prober(routes.router(route), ProbeSettings())
        await prober.round()
        [replica] = route.replicas
        assert replica.state == "healthy" and replica.load is None
        await prober.round()
        assert hits == [1, 2] and replica.load is not None
    finally:
        await sim.close()


async def test_a_metrics_page_arriving_in_pieces_is_read_whole(routes: Routes) -> None:
    """vLLM's page is tens of KB, its gauges after the process_* and python_gc_* series: over a
    real network it arrives in several reads, and the gauges must still be found (a first read
    without them made the replica "not vLLM" for good)."""
    head = "".join(f"python_gc_objects_collected_total{{generation=\"{i}\"}} 1.0\n"
                   for i in range(200)).encode()
    tail = VLLM_V1.encode()

    @web.middleware
    async def pieces(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/metrics":
            return await handler(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.content_length = len(head) + len(tail)  # as vLLM's page: not chunked
        await resp.prepare(request)
        await resp.write(head)
        await asyncio.sleep(0.2)  # the rest comes in a later network read
        await resp.write(tail)
        await resp.write_eof()
        return resp

    app = create_sim_app(SimSettings(ttft_ms=2, tpot_ms=1, echo=True))
    app.middlewares.insert(0, pieces)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    sim = SimServer(runner, app, "127.0.0.1", runner.addresses[0][1])
    try:
        route = routes.route([sim.url])
        prober = Prober(routes.router(route), ProbeSettings())
        await prober.round()
        [replica] = route.replicas
        assert replica.load is not None and replica.load.running == 7.0
        assert replica.load.waiting == 1.0
    finally:
        await sim.close()


async def test_a_name_asked_of_an_unnamed_model_whose_servers_are_down_fails_fast(
        routes: Routes) -> None:
    """A server that accepts connections but never answers (a hung host) is down after two
    probes; a request naming a model then gets its 503 at once, not after asking that server
    again and waiting out the model-list timeout (per request, per replica)."""
    accepted: list[asyncio.StreamWriter] = []

    async def hang(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # never answers

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        route = routes.route([f"http://127.0.0.1:{port}/v1"], name="", served_name="")
        router = routes.router(route)
        prober = Prober(router, ProbeSettings(probe_timeout_s=0.2))
        await prober.round()
        await prober.round()
        [replica] = route.replicas
        assert replica.state == "down"
        seen = len(accepted)
        with pytest.raises(ModelUnavailable):
            await router.lookup("vllm-simulator")
        assert len(accepted) == seen  # the down server was not asked again
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
