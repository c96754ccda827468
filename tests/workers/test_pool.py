"""workers/pool.py: WorkerPool and FairQueue against the vLLM simulator over real TCP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import pytest_asyncio

from tests.support.routing import (
    TEXT,
    WORDS,
    Routes,
    assert_finished,
    collect,
    fault,
    job,
    next_event,
    wait_for,
)
from vllm_sim import SimServer, SimSettings, start_simulator
from workers.errors import JobCancelled, OwnerBlocked, QueueFull, ShuttingDown, UpstreamError
from workers.job import Delta, Failed, Finished, Job, Started
from workers.pool import WorkerPool

MakePool = Callable[..., WorkerPool]


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A fast simulator that echoes the last user message."""
    server = await start_simulator(SimSettings(ttft_ms=2, tpot_ms=1, echo=True))
    yield server
    await server.close()


@pytest_asyncio.fixture
async def make_pool(sim: SimServer, routes: Routes) -> AsyncIterator[MakePool]:
    """Started pools over a router with one model on the simulator; stopped afterwards."""
    made: list[WorkerPool] = []

    def _make(workers: int = 2, max_queue: int = 64, max_per_owner: int = 0, rps: float = 100.0,
              pool_size: int = 0, start: bool = True, max_running: int = 0,
              retries: int = 2, background_share: float = 0.25,
              background_max_waiting: int = 256) -> WorkerPool:
        # pool_size: the session's connection limit; the replica has no limit of its own.
        replica = routes.replica(sim.url, pool_size=pool_size or workers)
        router = routes.router(routes.route([replica]), retries=retries)
        pool = WorkerPool(router, workers=workers, max_queue=max_queue,
                          max_per_owner=max_per_owner, max_running_per_owner=max_running,
                          rps=rps, background_share=background_share,
                          background_max_waiting=background_max_waiting)
        if start:
            pool.start()
        made.append(pool)
        return pool

    yield _make
    for pool in made:
        await pool.stop()


async def sim_messages(control: aiohttp.ClientSession, sim: SimServer) -> list[str]:
    """The last user message of every chat request the simulator received."""
    async with control.get(f"{sim.root_url}/sim/requests") as resp:
        assert resp.status == 200
        return [body["messages"][-1]["content"] for body in await resp.json()]


# --- the happy path ------------------------------------------------------------------------


async def test_jobs_complete_with_started_deltas_finished(make_pool: MakePool,
                                                          sim: SimServer) -> None:
    pool = make_pool(workers=2)
    jobs = [job(owner, f"message {i} from {owner}") for i, owner in enumerate("abcab")]
    for j in jobs:
        pool.submit(j)
    results = await asyncio.gather(*(collect(j) for j in jobs))
    for j, events in zip(jobs, results, strict=True):
        assert_finished(events, j.request.messages[-1]["content"])
        assert j.state == "done"
        assert "".join(j.partial) == j.request.messages[-1]["content"]
    assert pool.stats.submitted == 5 and pool.stats.completed == 5
    assert pool.stats.failed == 0 and pool.stats.running == 0
    assert sim.stats.requests_total == 5


async def test_burst_never_exceeds_the_worker_count_upstream(make_pool: MakePool,
                                                             sim: SimServer) -> None:
    sim.settings.ttft_ms = 10
    # The session could open 20 connections: only the pool's workers may limit concurrency.
    pool = make_pool(workers=3, pool_size=20)
    jobs = [job(f"user{i % 5}") for i in range(20)]
    for j in jobs:
        pool.submit(j)
    for events in await asyncio.gather(*(collect(j) for j in jobs)):
        assert_finished(events)
    assert sim.stats.requests_total == 20 and sim.stats.completed == 20
    assert sim.stats.max_running <= 3
    assert sim.stats.max_running == 3  # and the workers do run side by side
    assert pool.live_workers == 3


# --- cancellation --------------------------------------------------------------------------


async def test_job_cancelled_while_queued_never_reaches_the_model(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    pool = make_pool(workers=1)
    await fault(control, sim, "hang_after_first")
    blocker = job("a", "blocker")
    pool.submit(blocker)
    await next_event(blocker, Delta)  # the only worker is busy
    waiting = job("b", "never sent")
    pool.submit(waiting)
    assert pool.queue.qsize() == 1
    waiting.cancel()
    assert pool.queue.qsize() == 0
    [failed] = await collect(waiting)
    assert isinstance(failed, Failed) and isinstance(failed.error, JobCancelled)
    blocker.cancel()  # frees the worker
    after = job("c", "after")
    pool.submit(after)
    assert_finished(await collect(after), "after")
    assert await sim_messages(control, sim) == ["blocker", "after"]
    assert sim.stats.requests_total == 2


async def test_job_cancelled_while_running_aborts_upstream(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    pool = make_pool(workers=2)
    await fault(control, sim, "hang_after_first")
    running = job()
    pool.submit(running)
    assert isinstance(await running.events.get(), Started)
    first = await next_event(running, Delta)
    assert sim.stats.running == 1
    running.cancel()
    [failed] = await collect(running)
    assert isinstance(failed, Failed) and isinstance(failed.error, JobCancelled)
    assert failed.partial == first.text == WORDS[0]  # type: ignore[union-attr]
    await wait_for(lambda: sim.stats.aborted == 1 and sim.stats.running == 0)
    await wait_for(lambda: pool.stats.running == 0)
    assert pool.stats.cancelled == 1 and pool.live_workers == 2
    again = job()
    pool.submit(again)
    assert_finished(await collect(again))


# --- failures ------------------------------------------------------------------------------


async def test_upstream_failure_fails_the_job_and_the_worker_survives(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    pool = make_pool(workers=1, retries=2)
    await fault(control, sim, "reset", after_tokens=3)
    broken = job()
    pool.submit(broken)
    events = await collect(broken)
    assert isinstance(events[0], Started)
    failed = events[-1]
    assert isinstance(failed, Failed) and isinstance(failed.error, UpstreamError)
    deltas = [e.text for e in events[1:-1] if isinstance(e, Delta)]
    assert failed.partial == "".join(deltas) == "".join(WORDS[:3])
    assert pool.stats.failed == 1 and pool.live_workers == 1
    nxt = job()
    pool.submit(nxt)
    assert_finished(await collect(nxt))
    assert pool.stats.completed == 1 and pool.live_workers == 1
    assert sim.stats.requests_total == 2  # the broken stream was not retried


async def test_failure_before_any_token_has_empty_partial(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    pool = make_pool(workers=1, retries=1)
    await fault(control, sim, "500")
    broken = job()
    pool.submit(broken)
    events = await collect(broken)
    assert isinstance(events[0], Started) and len(events) == 2
    assert isinstance(events[1], Failed) and isinstance(events[1].error, UpstreamError)
    assert events[1].partial == ""
    assert pool.live_workers == 1


# --- intake --------------------------------------------------------------------------------


async def test_close_intake_fails_queued_jobs_and_refuses_new_ones(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    sim.settings.tpot_ms = 40  # the running job streams for ~0.3 s
    pool = make_pool(workers=1)
    running = job("a", TEXT)
    pool.submit(running)
    await next_event(running, Delta)
    queued = [job("b", "queued b"), job("c", "queued c"), job("b", "queued b2")]
    for j in queued:
        pool.submit(j)
    pool.close_intake("maintenance")
    assert pool.closed == "maintenance" and pool.queue.qsize() == 0
    for j in queued:
        [failed] = await collect(j)
        assert isinstance(failed, Failed) and isinstance(failed.error, ShuttingDown)
        assert failed.partial == ""
    with pytest.raises(ShuttingDown):
        pool.submit(job("d"))
    rest = await collect(running)  # the running job goes on to the end
    assert isinstance(rest[-1], Finished) and rest[-1].completion.text == TEXT
    assert await sim_messages(control, sim) == [TEXT]


async def test_submit_to_a_full_queue_raises_at_once(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    pool = make_pool(workers=1, max_queue=2)
    await fault(control, sim, "hang_after_first")
    busy = job("a")
    pool.submit(busy)
    await next_event(busy, Delta)
    pool.submit(job("b"))
    pool.submit(job("c"))
    with pytest.raises(QueueFull) as info:
        pool.submit(job("d"))  # a plain call: it cannot wait for room
    assert info.value.per_owner is False
    assert pool.stats.rejected == 1 and pool.stats.submitted == 3
    assert pool.queue.qsize() == 2


async def test_per_owner_cap_only_limits_that_owner(make_pool: MakePool) -> None:
    pool = make_pool(workers=1, max_queue=10, max_per_owner=2, start=False)
    pool.submit(job("a"))
    pool.submit(job("a"))
    with pytest.raises(QueueFull) as info:
        pool.submit(job("a"))
    assert info.value.per_owner is True
    pool.submit(job("b"))
    pool.submit(job("b"))
    pool.submit(job("c"))
    assert pool.queue.owner_count("a") == 2 and pool.queue.owner_count("b") == 2
    assert pool.stats.rejected == 1 and pool.stats.submitted == 5


async def test_per_owner_cap_counts_only_waiting_jobs(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    pool = make_pool(workers=1, max_queue=10, max_per_owner=1)
    await fault(control, sim, "hang_after_first")
    busy = job("a")
    pool.submit(busy)
    await next_event(busy, Delta)  # running, no longer waiting
    pool.submit(job("a"))
    with pytest.raises(QueueFull) as info:
        pool.submit(job("a"))
    assert info.value.per_owner is True
    pool.submit(job("b"))


async def test_a_user_at_the_running_cap_leaves_workers_to_others(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    pool = make_pool(workers=3, max_running=2)
    await fault(control, sim, "hang_after_first", count=2)  # a's first two hold their workers
    held = [job("a", "held 1"), job("a", "held 2")]
    for j in held:
        pool.submit(j)
    for j in held:
        await next_event(j, Delta)
    third = job("a", "third")
    pool.submit(third)  # a worker is free, but a is at the cap: the job waits
    other = job("b", "other")
    pool.submit(other)  # queued after a's third job, served first
    assert_finished(await collect(other), "other")
    assert third.state == "queued" and pool.queue.position(third) == 0
    assert pool.queue.running("a") == 2 and pool.stats.running == 2
    held[0].cancel()  # one of a's jobs ends: their waiting job runs at once
    assert_finished(await collect(third), "third")
    assert await sim_messages(control, sim) == ["held 1", "held 2", "other", "third"]
    held[1].cancel()
    await wait_for(lambda: pool.stats.running == 0 and pool.queue.running("a") == 0)


async def test_a_jobs_own_running_cap_overrides_the_pools(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    pool = make_pool(workers=3, max_running=1)
    await fault(control, sim, "hang_after_first", count=3)
    jobs = [job("a", f"held {i}") for i in range(3)]
    for j in jobs:
        j.max_running = 3  # this user's own cap (an admin's override), above the default
        pool.submit(j)
    for j in jobs:
        await next_event(j, Delta)
    assert pool.queue.running("a") == 3
    for j in jobs:
        j.cancel()


async def test_a_job_asking_for_many_sequences_counts_as_many_against_the_running_cap(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    pool = make_pool(workers=3, max_running=4)
    await fault(control, sim, "hang_after_first")  # a's n=4 job holds its worker
    heavy = job("a", "heavy")
    heavy.weight = 4  # four sequences at the model server: the whole cap
    pool.submit(heavy)
    await next_event(heavy, Delta)
    second = job("a", "second")
    pool.submit(second)  # two workers are free, but a's running weight is at the cap
    other = job("b", "other")
    pool.submit(other)  # queued after a's job, served first
    assert_finished(await collect(other), "other")
    assert second.state == "queued" and pool.queue.running("a") == 4
    assert pool.stats.running == 1
    heavy.cancel()  # the heavy job ends: a's waiting job runs at once
    assert_finished(await collect(second), "second")
    await wait_for(lambda: pool.stats.running == 0 and pool.queue.running("a") == 0)


async def test_a_job_heavier_than_the_running_cap_still_runs_alone(
        make_pool: MakePool, sim: SimServer) -> None:
    pool = make_pool(workers=2, max_running=2)
    huge = job("a", "huge")
    huge.weight = 64
    pool.submit(huge)
    assert_finished(await collect(huge), "huge")
    await wait_for(lambda: pool.queue.running("a") == 0)


# --- rate limit and shutdown ---------------------------------------------------------------


async def test_rate_limit_spreads_upstream_requests(make_pool: MakePool, sim: SimServer) -> None:
    pool = make_pool(workers=8, rps=4)
    jobs = [job(f"user{i}") for i in range(8)]
    started = time.monotonic()
    for j in jobs:
        pool.submit(j)
    for events in await asyncio.gather(*(collect(j) for j in jobs)):
        assert_finished(events)
    # A burst of 4, then one every 1/4 s: the 8th request cannot leave before 1 s.
    assert time.monotonic() - started >= 0.95
    assert sim.stats.requests_total == 8


async def test_stop_cancels_running_jobs_and_ends_every_worker(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    pool = make_pool(workers=2)
    await fault(control, sim, "hang_after_first", count=2)
    running = [job("a"), job("b")]
    for j in running:
        pool.submit(j)
    for j in running:
        await next_event(j, Delta)
    queued = job("c")
    pool.submit(queued)
    workers = [t for t in asyncio.all_tasks() if t.get_name().startswith("worker-")]
    assert len(workers) == 2
    await pool.stop()
    assert all(t.done() for t in workers)
    assert not [t for t in asyncio.all_tasks()
                if t.get_name().startswith("worker-") and not t.done()]
    assert pool.live_workers == 0
    for j in running:
        [failed] = await collect(j)
        assert isinstance(failed, Failed) and isinstance(failed.error, ShuttingDown)
        assert failed.partial == WORDS[0]
        assert j.task is not None and j.task.done()
    [failed] = await collect(queued)
    assert isinstance(failed, Failed) and isinstance(failed.error, ShuttingDown)
    assert pool.stats.cancelled == 2 and pool.stats.running == 0
    with pytest.raises(ShuttingDown):
        pool.submit(job())
    await wait_for(lambda: sim.stats.aborted == 2 and sim.stats.running == 0)
    assert sim.stats.requests_total == 2


async def test_a_blocked_owner_cannot_queue_a_job_after_their_jobs_were_cancelled(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    """Disabling an account cancels its jobs and refuses any it sends afterwards (a request
    already past authentication), until it is unblocked; other owners are untouched."""
    pool = make_pool(workers=2)
    await fault(control, sim, "hang_after_first")
    running = job("mallory")
    pool.submit(running)
    await next_event(running, Delta)
    assert pool.cancel_owner("mallory", JobCancelled("disabled"), True) == 1
    [failed] = await collect(running)
    assert isinstance(failed, Failed) and isinstance(failed.error, JobCancelled)
    with pytest.raises(OwnerBlocked):
        pool.submit(job("mallory"))
    with pytest.raises(OwnerBlocked):
        pool.reserve("mallory")
    other = job("alice")
    pool.submit(other)
    assert_finished(await collect(other))
    pool.unblock_owner("mallory")
    again = job("mallory")
    pool.submit(again)
    assert_finished(await collect(again))


# --- background jobs -----------------------------------------------------------------------


def background(owner: str, text: str) -> Job:
    """A low-priority job asking the echoing simulator to repeat `text`."""
    j = job(owner, text)
    j.background = True
    return j


async def test_a_background_job_waits_behind_interactive_ones_queued_after_it(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    sim.settings.tpot_ms = 20
    pool = make_pool(workers=1)
    running = job("a", TEXT)
    pool.submit(running)
    await next_event(running, Delta)
    bg = background("a", "title please")
    assert pool.offer(bg)
    later = [job("b", "later b"), job("c", "later c")]
    for j in later:
        pool.submit(j)
    results = await asyncio.gather(collect(running), *(collect(j) for j in later), collect(bg))
    assert all(isinstance(r[-1], Finished) for r in results)
    assert await sim_messages(control, sim) == [TEXT, "later b", "later c", "title please"]
    assert pool.stats.dropped == 0 and pool.queue.background_running == 0


async def test_background_jobs_beyond_their_bound_are_dropped_not_refused(
        make_pool: MakePool, sim: SimServer) -> None:
    sim.settings.tpot_ms = 40
    pool = make_pool(workers=1, background_max_waiting=2)
    running = job("a", TEXT)
    pool.submit(running)
    await next_event(running, Delta)
    kept = [background("a", "one"), background("b", "two")]
    assert all(pool.offer(j) for j in kept)
    assert not pool.offer(background("c", "three"))  # no exception: just not queued
    assert pool.stats.dropped == 1 and pool.queue.qsize() == 0
    pool.submit(job("d", "interactive"))  # the interactive places are untouched
    pool.cancel_owner("e", JobCancelled("gone"), block=True)
    assert not pool.offer(background("e", "blocked"))
    assert pool.stats.dropped == 2
    for j in kept:
        assert isinstance((await collect(j))[-1], Finished)


async def test_at_shutdown_background_jobs_are_stopped_and_interactive_ones_go_on(
        make_pool: MakePool, sim: SimServer, control: aiohttp.ClientSession) -> None:
    sim.settings.tpot_ms = 40  # each job streams for ~0.3 s
    pool = make_pool(workers=2, background_share=0.5)
    bg_running = background("a", "a long background job")
    assert pool.offer(bg_running)
    await next_event(bg_running, Delta)
    interactive = job("b", TEXT)
    pool.submit(interactive)
    await next_event(interactive, Delta)
    bg_queued = background("c", "never sent")
    assert pool.offer(bg_queued)  # the cap (one) is taken: it waits
    pool.close_intake()
    for j in (bg_running, bg_queued):
        end = (await collect(j))[-1]
        assert isinstance(end, Failed) and isinstance(end.error, ShuttingDown)
    assert not pool.offer(background("d", "too late")) and pool.stats.dropped == 1
    rest = await collect(interactive)
    assert isinstance(rest[-1], Finished) and rest[-1].completion.text == TEXT
    assert "never sent" not in await sim_messages(control, sim)
