"""workers/router.py: failover between replicas and their health, against simulators over TCP.

An attempt that fails before its first token moves to another replica (the job's text
intact), never after it; failing replicas cool down or go down, never the last one left;
a model with every replica out fails fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import aiohttp
import pytest

from tests.support.procs import free_port
from tests.support.routing import (
    TEXT,
    WORDS,
    Knobs,
    Routes,
    assert_finished,
    collect,
    fault,
    job,
    occupy,
    run_job,
    stop,
    wait_for,
)
from vllm_sim import SimCluster, SimServer, SimSettings, start_replicas
from workers.errors import ModelUnavailable, UpstreamError, UpstreamTimeout
from workers.job import Ending, ForwardRequest, Job
from workers.pool import WorkerPool
from workers.probe import Prober, ProbeSettings
from workers.router import Router
from workers.stream import Progress
from workers.upstream import UpstreamClient


@pytest.fixture
async def sims() -> AsyncIterator[SimCluster]:
    """Two fast echoing simulators."""
    cluster = await start_replicas([SimSettings(ttft_ms=2, tpot_ms=1, echo=True)] * 2)
    yield cluster
    await cluster.close()


async def sticky(router: Router, sims: SimCluster, key: str) -> tuple[SimServer, SimServer]:
    """Run a first job for `key`: the replica it stuck to, and the other one."""
    first = job(affinity=key)
    assert (await run_job(router, first)).text == TEXT
    [on] = [s for s in sims if s.url == first.replica]
    [off] = [s for s in sims if s is not on]
    return on, off


@pytest.mark.parametrize("failure", ["gone", "reset", "503", "timeout"])
async def test_a_failure_before_the_first_token_moves_to_another_replica(
        sims: SimCluster, routes: Routes, control: aiohttp.ClientSession, failure: str) -> None:
    route = routes.route(sims.urls, first_token_timeout_s=1.0 if failure == "timeout" else 10)
    router = routes.router(route, retries=2)
    bad, good = await sticky(router, sims, "conv-1")
    if failure == "gone":
        await bad.down()  # its kept-alive connection is cut: a reset, or a refusal
    else:
        await fault(control, bad, {"timeout": "hang"}.get(failure, failure), after_tokens=0)
    j = job(affinity="conv-1")
    assert (await run_job(router, j)).text == TEXT
    assert "".join(j.partial) == TEXT  # nothing from the failed attempt, nothing twice
    assert j.failovers == 1 and route.failovers == 1
    assert j.replica == good.url and good.stats.completed == 1
    if failure == "timeout":
        await wait_for(lambda: bad.stats.aborted == 1)
    [replica] = [r for r in route.replicas if r.label == bad.url]
    assert replica.errors.total() == 1
    reason = {"gone": replica.errors.most_common(1)[0][0], "503": "status"}.get(failure, failure)
    assert replica.errors[reason] == 1
    assert replica.state == ("down" if reason == "connect" else "healthy")


async def test_a_refused_connection_moves_to_another_replica_and_takes_it_out(
        sims: SimCluster, routes: Routes) -> None:
    route = routes.route([f"http://127.0.0.1:{free_port()}/v1", sims[0].url])
    router = routes.router(route, retries=2)
    dead = route.replicas[0]
    jobs: list[Job] = []
    while dead.state == "healthy":
        assert len(jobs) < 5, "the dead replica was never tried"
        jobs.append(job())
        assert (await run_job(router, jobs[-1])).text == TEXT == "".join(jobs[-1].partial)
    assert dead.state == "down" and dead.errors["connect"] == 1
    assert sum(j.failovers for j in jobs) == 1 and jobs[-1].failovers == 1
    assert (await run_job(router, job())).text == TEXT
    assert dead.errors.total() == 1 and sims[0].stats.completed == len(jobs) + 1


async def test_a_replica_that_timed_out_is_not_tried_again_for_that_job(
        sims: SimCluster, routes: Routes, control: aiohttp.ClientSession) -> None:
    """A times out, B answers 503: the third attempt goes to B again, not back to A."""
    route = routes.route(sims.urls, first_token_timeout_s=1.0)
    router = routes.router(route, retries=2)
    slow, busy = sims
    others = await occupy(routes, busy, 2)  # B looks busier: A is every attempt's first pick
    await Prober(router, ProbeSettings()).round()
    await fault(control, slow, "hang", count=3)
    await fault(control, busy, "503")
    j = job()
    assert (await run_job(router, j)).text == TEXT
    assert j.replica == busy.url and j.failovers == 1
    assert slow.stats.requests_total == 1  # timed out once, never asked again
    assert busy.stats.requests_total == 2 + 2 and busy.stats.completed == 1
    await stop(others)


async def test_a_failure_after_the_first_token_is_never_moved(
        sims: SimCluster, routes: Routes, control: aiohttp.ClientSession) -> None:
    route = routes.route(sims.urls)
    router = routes.router(route, retries=2)
    bad, good = await sticky(router, sims, "conv-1")
    await fault(control, bad, "reset", after_tokens=3)
    j = job(affinity="conv-1")
    with pytest.raises(UpstreamError):
        await run_job(router, j)
    assert "".join(j.partial) == "".join(WORDS[:3])  # the partial reply is kept
    assert j.failovers == 0 and route.failovers == 0
    assert good.stats.requests_total == 0


async def test_a_replica_refusing_our_key_is_out_at_once_and_the_other_answers(
        routes: Routes) -> None:
    async with await start_replicas([SimSettings(ttft_ms=2, tpot_ms=1, echo=True,
                                                 api_key=key) for key in ("a", "b")]) as sims:
        wrong = routes.replica(sims[0].url, api_key="not-a")
        route = routes.route([wrong, routes.replica(sims[1].url, api_key="b")])
        router = routes.router(route, retries=2)
        jobs = [job() for _ in range(4)]
        for j in jobs:
            assert (await run_job(router, j)).text == TEXT
        assert wrong.state == "down" and "401" in wrong.reason
        assert wrong.errors["auth"] == 1  # tried once, then out of routing
        assert sum(j.failovers for j in jobs) == 1
        assert sims[1].stats.completed == 4 and sims[0].stats.requests_total == 0


async def test_a_failing_replica_cools_down_longer_each_time(
        sims: SimCluster, routes: Routes) -> None:
    knobs = Knobs(cooldown_s=0.3, max_cooldown_s=10.0)
    route = routes.route(sims.urls, knobs=knobs)
    router = routes.router(route, retries=2)
    bad, good = route.replicas
    sims[0].settings.fault = "503"  # every request to it fails
    spells = []
    for _ in range(2):
        await wait_for(lambda: bad.state == "healthy")
        while bad.state == "healthy":  # its requests move to the other one
            j = job()
            assert (await run_job(router, j)).text == TEXT
        spells.append(bad.reason.split(" s:", 1)[0])
        while bad.state == "cooling":  # meanwhile none goes there
            before = sims[0].stats.requests_total
            assert (await run_job(router, job())).text == TEXT
            assert sims[0].stats.requests_total == before or bad.state == "healthy"
    assert spells == ["cooling down for 0.3", "cooling down for 0.6"]
    assert good.state == "healthy" and good.errors.total() == 0


async def test_the_last_routable_replica_is_never_cooled_down(
        sims: SimCluster, routes: Routes) -> None:
    route = routes.route(sims.urls, knobs=Knobs(cooldown_s=60.0))  # cooling to the end
    router = routes.router(route, retries=0)
    for sim in sims:
        sim.settings.fault = "503"
    for _ in range(12):
        with pytest.raises(UpstreamError):
            await run_job(router, job())
    states = sorted(r.state for r in route.replicas)
    assert states == ["cooling", "healthy"]  # the first to fail enough; the other stays
    router.check(route)  # still available: failing requests beat certain refusals
    for sim in sims:
        sim.settings.fault = "none"
    assert (await run_job(router, job())).text == TEXT


async def test_a_healthy_probe_brings_a_down_replica_back(
        sims: SimCluster, routes: Routes) -> None:
    route = routes.route(sims.urls)
    router = routes.router(route)
    prober = Prober(router, ProbeSettings())
    await sims[0].down()
    await prober.round()
    assert [r.state for r in route.replicas] == ["down", "healthy"]
    assert "probe failed" in route.replicas[0].reason
    for _ in range(3):
        assert (await run_job(router, job())).text == TEXT
    assert sims[1].stats.completed == 3
    await sims[0].up()
    await prober.round()
    assert [r.state for r in route.replicas] == ["healthy", "healthy"]
    for _ in range(4):
        assert (await run_job(router, job())).text == TEXT
    assert sims[0].stats.completed > 0


async def test_a_model_with_every_replica_out_fails_fast(
        sims: SimCluster, routes: Routes) -> None:
    route = routes.route(sims.urls)
    router = routes.router(route, retries=2)
    for sim in sims:
        await sim.down()
    await Prober(router, ProbeSettings()).round()
    assert not route.available
    with pytest.raises(ModelUnavailable) as info:
        router.check(route)
    assert "`m`" in str(info.value)
    attempts = []

    async def count() -> None:
        attempts.append(1)

    with pytest.raises(ModelUnavailable):
        await run_job(router, job(), count)
    assert attempts == []  # no replica was even tried
    pool = WorkerPool(router, workers=2, max_queue=8)
    pool.start()
    j = job()
    assert router.can_start(j)  # a worker takes it, to fail it at once rather than queue it
    pool.submit(j)
    [_, failed] = await collect(j)
    assert isinstance(failed.error, ModelUnavailable)  # type: ignore[union-attr]
    assert route.unavailable == 3
    await pool.stop()


async def test_the_pool_fails_over_with_the_jobs_events_intact(
        sims: SimCluster, routes: Routes, control: aiohttp.ClientSession) -> None:
    route = routes.route(sims.urls)
    router = routes.router(route, retries=2)
    bad, _ = await sticky(router, sims, "conv-1")
    await fault(control, bad, "503")
    pool = WorkerPool(router, workers=2, max_queue=8)
    pool.start()
    j = job(affinity="conv-1")
    pool.submit(j)
    assert_finished(await collect(j))  # Started, the deltas of one attempt, Finished
    assert j.failovers == 1
    await pool.stop()


async def test_a_long_non_streamed_answer_that_times_out_is_not_run_again_elsewhere(
        sims: SimCluster, routes: Routes) -> None:
    """A non-streamed answer comes whole at the end: its read timeout may be the model still
    generating, not a dead replica. Trying it on the others would run the same long generation
    on each of them (and count each as a failing replica); it ends once, as a timeout."""
    for sim in sims:
        sim.settings.slowdown = 300.0  # 8 tokens: about 2.4 s of generation, the answer last
    route = routes.route(sims.urls, first_token_timeout_s=0.5)
    router = routes.router(route, retries=2)
    body = {"model": "m", "messages": [{"role": "user", "content": TEXT}], "stream": False}
    j = Job(owner="alice", request=ForwardRequest("/chat/completions", body, False, False, "r"))

    def attempt(client: UpstreamClient, model: str, progress: Progress) -> Awaitable[Ending]:
        return client.forward(model, ForwardRequest("/chat/completions", body, False, False,
                                                     "r"), lambda _: None, progress)

    with pytest.raises(UpstreamTimeout):
        await router.run(j, attempt)
    assert sum(s.stats.requests_total for s in sims) == 1 and j.failovers == 0
    await wait_for(lambda: sum(s.stats.aborted for s in sims) == 1)


async def test_a_404_about_the_model_takes_the_replica_out_but_another_404_does_not(
        sims: SimCluster, routes: Routes) -> None:
    route = routes.route(sims.urls)
    router = routes.router(route, retries=2)
    first, second = route.replicas

    async def forward(path: str, model: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        j = Job(owner="alice", request=ForwardRequest(path, body, False, False, "r1"))

        def attempt(client: UpstreamClient, served: str, progress: Progress
                    ) -> Awaitable[Ending]:
            return client.forward(served, j.request, lambda data: None,  # type: ignore[arg-type]
                                  progress)
        await router.run(j, attempt)

    # A path the server lacks (as a proxy in front of it might answer): the request's fault.
    with pytest.raises(UpstreamError) as info:
        await forward("/no/such/path", "ignored")
    assert getattr(info.value, "status", None) == 404
    assert first.state == second.state == "healthy"
    # The server saying it does not serve the model: misconfigured, out, tried elsewhere.
    route.served_name = "a-model-nobody-serves"
    with pytest.raises(ModelUnavailable):
        await forward("/chat/completions", "ignored")
    assert first.state == second.state == "down" and "404" in first.reason
