"""workers/router.py: which replica an attempt goes to, against simulators over real TCP.

Least load (in-flight counts, weights, the servers' own metrics), each replica's
max_concurrency, conversation affinity, and the pool's workers kept off a full model.
Failover and health: test_failover.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.routing import (
    TEXT,
    Knobs,
    Routes,
    assert_finished,
    collect,
    hold,
    job,
    next_event,
    occupy,
    run_job,
    start,
    stop,
    wait_for,
)
from vllm_sim import SimCluster, SimSettings, start_replicas
from workers.job import Delta, Finished
from workers.pool import WorkerPool
from workers.probe import Prober, ProbeSettings


@pytest.fixture
async def sims() -> AsyncIterator[SimCluster]:
    """Three fast echoing simulators with a prefix cache."""
    cluster = await start_replicas([SimSettings(ttft_ms=2, tpot_ms=1, echo=True)] * 3)
    yield cluster
    await cluster.close()


# --- least load ----------------------------------------------------------------------------


async def test_in_flight_attempts_spread_evenly_over_three_replicas(
        sims: SimCluster, routes: Routes) -> None:
    router = routes.router(routes.route(sims.urls))
    hold(*sims)
    tasks = start(router, [job(f"u{i}") for i in range(6)])
    await wait_for(lambda: sum(s.stats.running for s in sims) == 6)
    assert [r.in_flight for r in router.default.replicas] == [2, 2, 2]
    assert [s.stats.requests_total for s in sims] == [2, 2, 2]
    await stop(tasks)
    assert [r.in_flight for r in router.default.replicas] == [0, 0, 0]
    await wait_for(lambda: all(s.stats.running == 0 for s in sims))


async def test_a_heavier_replica_takes_its_share(sims: SimCluster, routes: Routes) -> None:
    route = routes.route([routes.replica(sims[0].url, weight=2), routes.replica(sims[1].url)])
    router = routes.router(route)
    hold(sims[0], sims[1])
    tasks = start(router, [job(f"u{i}") for i in range(6)])
    await wait_for(lambda: sims[0].stats.running + sims[1].stats.running == 6)
    assert [r.in_flight for r in route.replicas] == [4, 2]
    await stop(tasks)


async def test_others_load_seen_in_metrics_steers_new_requests_away(
        sims: SimCluster, routes: Routes) -> None:
    route = routes.route(sims.urls[:2])
    router = routes.router(route)
    busy = await occupy(routes, sims[0], 3)
    await Prober(router, ProbeSettings()).round()
    assert route.replicas[0].load is not None and route.replicas[0].load.running == 3
    for _ in range(3):  # sequential: our own in-flight count stays 0 between them
        assert (await run_job(router, job())).text == TEXT
    assert sims[1].stats.completed == 3 and sims[0].stats.completed == 0
    await stop(busy)


# --- each replica's own limit ----------------------------------------------------------------


@pytest.mark.parametrize(("workers", "caps"), [(6, (2, 1)), (3, (3, 3))])
async def test_max_concurrency_is_never_exceeded_nor_the_pools_workers(
        sims: SimCluster, routes: Routes, workers: int, caps: tuple[int, int]) -> None:
    for sim in sims:
        sim.settings.ttft_ms = 10
    route = routes.route([routes.replica(sim.url, max_concurrency=cap, pool_size=8)
                          for sim, cap in zip(sims, caps, strict=False)])
    pool = WorkerPool(routes.router(route), workers=workers, max_queue=64)
    pool.start()
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, sims[0].stats.in_flight + sims[1].stats.in_flight)
            await asyncio.sleep(0.001)

    sampler = asyncio.create_task(sample())
    jobs = [job(f"user{i % 5}") for i in range(24)]
    for j in jobs:
        pool.submit(j)
    for events in await asyncio.gather(*(collect(j) for j in jobs)):
        assert_finished(events)
    await stop([sampler])
    await pool.stop()
    for sim, cap in zip(sims, caps, strict=False):
        assert 0 < sim.stats.max_in_flight <= cap
    assert peak <= workers
    assert sims[0].stats.completed + sims[1].stats.completed == 24


async def test_a_waiting_attempt_gets_the_slot_when_one_frees(
        sims: SimCluster, routes: Routes) -> None:
    route = routes.route([routes.replica(sims[0].url, max_concurrency=1)])
    router = routes.router(route)
    hold(sims[0])
    first = job("a", "first")
    [running] = start(router, [first])
    await next_event(first, Delta)
    sims[0].settings.fault = "none"
    second = job("b", "second")
    [waiting] = start(router, [second])
    await asyncio.sleep(0.1)  # time to go wrong: it must wait, not start
    assert not waiting.done() and sims[0].stats.requests_total == 1
    assert not route.has_room
    await stop([running])
    assert (await waiting).text == "second"  # type: ignore[attr-defined]
    assert sims[0].stats.max_in_flight == 1


# --- affinity ------------------------------------------------------------------------------


async def test_a_conversation_stays_on_its_replica_and_hits_its_prefix_cache(
        sims: SimCluster, routes: Routes) -> None:
    route = routes.route(sims.urls)
    router = routes.router(route)
    first = job(text="hello there", affinity="conv-1")
    await run_job(router, first)
    messages = [{"role": "user", "content": "hello there"},
                {"role": "assistant", "content": "hello there"},
                {"role": "user", "content": "and again"}]
    for _ in range(3):
        follow = job(affinity="conv-1")
        follow.request.messages[:] = messages  # type: ignore[union-attr]
        await run_job(router, follow)
        assert follow.replica == first.replica
    assert route.affinity == {"hit": 3, "moved": 0, "new": 1}
    [sim] = [s for s in sims if s.url == first.replica]
    assert sim.stats.requests_total == 4 and sim.stats.prefix_cache_hits >= 3


async def test_an_active_conversation_keeps_its_replica_past_the_affinity_ttl(
        sims: SimCluster, routes: Routes) -> None:
    """The TTL forgets conversations gone idle, not ones that go on."""
    route = routes.route(sims.urls, knobs=Knobs(affinity_ttl_s=1.5))
    router = routes.router(route)
    for _ in range(9):  # half as long again as the TTL in all, a sixth of it between messages
        await run_job(router, job(affinity="conv-1"))
        await asyncio.sleep(0.25)
    assert route.affinity == {"hit": 8, "moved": 0, "new": 1}


async def test_a_conversation_moves_when_its_replica_is_much_busier(
        sims: SimCluster, routes: Routes) -> None:
    route = routes.route(sims.urls[:2])
    router = routes.router(route)
    prober = Prober(router, ProbeSettings())
    first = job(affinity="conv-1")
    await run_job(router, first)
    [sticky] = [s for s in sims if s.url == first.replica]
    busy = await occupy(routes, sticky, 3)  # within the slack (4): it stays
    await prober.round()
    again = job(affinity="conv-1")
    await run_job(router, again)
    assert again.replica == first.replica
    busy += await occupy(routes, sticky, 3)  # 6 busier: it moves to the idle one
    await prober.round()
    moved = job(affinity="conv-1")
    await run_job(router, moved)
    assert moved.replica != first.replica
    assert route.affinity == {"hit": 1, "moved": 1, "new": 1}
    await stop(busy)


async def test_a_conversation_moves_when_its_replica_is_out(
        sims: SimCluster, routes: Routes) -> None:
    route = routes.route(sims.urls[:2])
    router = routes.router(route)
    first = job(affinity="conv-1")
    await run_job(router, first)
    [sticky] = [s for s in sims if s.url == first.replica]
    await sticky.down()
    await Prober(router, ProbeSettings()).round()
    moved = job(affinity="conv-1")
    assert (await run_job(router, moved)).text == TEXT
    assert moved.replica != first.replica and moved.failovers == 0
    assert route.affinity["moved"] == 1


# --- the pool's workers and full models ----------------------------------------------------


async def test_workers_leave_a_full_model_to_run_another_models_jobs(
        sims: SimCluster, routes: Routes) -> None:
    full = routes.route([routes.replica(sims[0].url, max_concurrency=1)], name="a")
    other = routes.route([sims[1].url], name="b")
    router = routes.router(full, other)
    pool = WorkerPool(router, workers=3, max_queue=64)
    pool.start()
    hold(sims[0])
    blocker = job("u0", "blocker", model="a")
    pool.submit(blocker)
    await next_event(blocker, Delta)
    sims[0].settings.fault = "none"
    waiting = [job(f"u{i}", f"a {i}", model="a") for i in range(1, 4)]
    for j in waiting:
        pool.submit(j)  # model a is full: no worker takes these
    others = [job(f"v{i}", f"b {i}", model="b") for i in range(6)]
    for j in others:
        pool.submit(j)
    for j, events in zip(others, await asyncio.gather(*(collect(j) for j in others)),
                         strict=True):
        assert_finished(events, j.request.messages[-1]["content"])  # type: ignore[union-attr]
    assert all(j.state == "queued" for j in waiting) and pool.queue.qsize() == 3
    assert pool.stats.running == 1 and sims[0].stats.requests_total == 1
    blocker.cancel()  # room on model a: its jobs run, one at a time
    for j in waiting:
        assert_finished(await collect(j), j.request.messages[-1]["content"])  # type: ignore[union-attr]
    assert sims[0].stats.max_in_flight == 1
    await pool.stop()


async def test_a_burst_for_a_full_model_holds_no_more_workers_than_its_room(
        sims: SimCluster, routes: Routes) -> None:
    """Jobs queued together for a model with room for one: one worker takes one of them,
    the others wait in the queue, not in workers, while another model's jobs run."""
    full = routes.route([routes.replica(sims[0].url, max_concurrency=1)], name="a")
    other = routes.route([sims[1].url], name="b")
    pool = WorkerPool(routes.router(full, other), workers=3, max_queue=64)
    pool.start()
    hold(sims[0])
    burst = [job(f"u{i}", f"a {i}", model="a") for i in range(3)]
    for j in burst:
        pool.submit(j)  # before any worker has run: the model's room is all there is
    await next_event(burst[0], Delta)
    others = [job(f"v{i}", f"b {i}", model="b") for i in range(4)]
    for j in others:
        pool.submit(j)
    for events in await asyncio.gather(*(collect(j) for j in others)):
        assert isinstance(events[-1], Finished), events
    assert [j.state for j in burst] == ["running", "queued", "queued"]
    assert pool.stats.running == 1 and sims[0].stats.requests_total == 1
    await pool.stop()
