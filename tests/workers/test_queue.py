"""workers/queue.py: the bounded, per-owner round-robin queue."""

from __future__ import annotations

import asyncio
import random

import pytest

from workers.job import CompletionRequest, Job
from workers.queue import FairQueue

REQ = CompletionRequest([{"role": "user", "content": "x"}], 1, 0.0)


def job(owner: str) -> Job:
    """A job for an owner."""
    return Job(owner=owner, request=REQ)


async def test_round_robin_order_across_owners() -> None:
    q = FairQueue(100)
    jobs = [job("a") for _ in range(3)] + [job("b")] + [job("c") for _ in range(2)]
    for j in jobs:
        q.put_nowait(j)
    order = [q.get_nowait().owner for _ in range(len(jobs))]
    assert order == ["a", "b", "c", "a", "c", "a"]


async def test_positions_predict_the_service_order() -> None:
    rng = random.Random(7)
    for _ in range(50):
        q = FairQueue(1000)
        jobs = [job(rng.choice("abcdefg")) for _ in range(rng.randint(1, 80))]
        for j in jobs:
            q.put_nowait(j)
        for j in rng.sample(jobs, len(jobs) // 5):  # some clients leave
            assert q.remove(j)
        waiting = [j for j in jobs if q.position(j) is not None]
        predicted = sorted(waiting, key=lambda j: q.position(j))  # type: ignore[arg-type,return-value]
        assert sorted(q.position(j) for j in waiting) == list(range(len(waiting)))  # type: ignore[type-var]
        served = [q.get_nowait() for _ in range(q.qsize())]
        assert served == predicted


async def test_bounded_and_removal_frees_a_slot() -> None:
    q = FairQueue(2)
    first, second = job("a"), job("a")
    q.put_nowait(first)
    q.put_nowait(second)
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(job("b"))
    assert q.remove(first) and not q.remove(first)
    q.put_nowait(job("b"))
    assert q.qsize() == 2 and q.owner_count("a") == 1 and q.owner_count("b") == 1


async def test_cancel_while_queued_removes_the_job() -> None:
    q = FairQueue(10)
    j = job("a")
    q.put_nowait(j)
    j.cancel()
    assert q.qsize() == 0 and q.position(j) is None and j.state == "done"


async def test_drain_empties_and_unblocks_join() -> None:
    q = FairQueue(10)
    for owner in "abca":
        q.put_nowait(job(owner))
    drained = q.drain()
    assert [j.owner for j in drained] == ["a", "b", "c", "a"] and q.empty()
    await asyncio.wait_for(q.join(), 1)


async def test_getter_waits_for_a_put() -> None:
    q = FairQueue(10)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    j = job("a")
    q.put_nowait(j)
    assert await asyncio.wait_for(getter, 1) is j


async def test_owner_at_running_cap_is_passed_over_and_keeps_their_turn() -> None:
    q = FairQueue(100, max_running=1)
    a1, a2, b1, c1 = job("a"), job("a"), job("b"), job("c")
    for j in (a1, a2, b1, c1):
        q.put_nowait(j)
    assert q.get_nowait() is a1  # a now runs one: at the cap
    assert q.get_nowait() is b1 and q.get_nowait() is c1
    assert q.qsize() == 1 and q.empty()  # a2 waits, but no worker may take it yet
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    q.done(a1)  # a's job ended: a waiting worker takes a2 at once
    assert await asyncio.wait_for(waiter, 1) is a2
    assert q.running("a") == 1 and q.running("b") == 1


async def test_passed_over_owner_goes_first_once_under_the_cap() -> None:
    q = FairQueue(100, max_running=1)
    q.put_nowait(job("a"))
    first = q.get_nowait()
    q.put_nowait(job("a"))
    q.put_nowait(job("b"))
    q.put_nowait(job("b"))
    assert q.get_nowait().owner == "b"  # a is passed over...
    q.done(first)
    assert q.get_nowait().owner == "a"  # ...but stays ahead in the rotation


async def test_a_jobs_own_cap_wins_over_the_queue_default() -> None:
    q = FairQueue(100, max_running=1)
    for _ in range(3):
        j = job("a")
        j.max_running = 0  # no cap for this user
        q.put_nowait(j)
    assert [q.get_nowait().owner for _ in range(3)] == ["a", "a", "a"]
    assert q.running("a") == 3


def weighed(owner: str, weight: int) -> Job:
    """A job that asks the model for `weight` sequences (an OpenAI request's n)."""
    j = job(owner)
    j.weight = weight
    return j


async def test_a_users_running_weight_counts_against_the_cap_not_their_job_count() -> None:
    q = FairQueue(100, max_running=4)
    heavy, light, other = weighed("a", 4), job("a"), job("b")
    for j in (heavy, light, other):
        q.put_nowait(j)
    assert q.get_nowait() is heavy and q.running("a") == 4  # n=4: the whole cap
    assert q.get_nowait() is other  # a's second job would take them past it: it waits
    assert q.qsize() == 1 and q.empty()
    q.done(heavy)
    assert q.get_nowait() is light and q.running("a") == 1


async def test_jobs_whose_weights_fit_the_cap_run_together() -> None:
    q = FairQueue(100, max_running=4)
    for _ in range(3):
        q.put_nowait(weighed("a", 2))
    first, second = q.get_nowait(), q.get_nowait()
    assert q.running("a") == 4 and q.qsize() == 1 and q.empty()  # 2 + 2 fit, a third not
    q.done(first)
    q.done(second)
    assert q.running("a") == 0


async def test_a_job_heavier_than_the_cap_runs_alone() -> None:
    q = FairQueue(100, max_running=4)
    huge, small = weighed("a", 64), job("a")
    q.put_nowait(huge)
    q.put_nowait(small)
    assert q.get_nowait() is huge and q.running("a") == 64  # nothing else ran: it may start
    assert q.empty()  # ...and nothing of a's runs beside it
    q.done(huge)
    assert q.get_nowait() is small and q.running("a") == 1


async def test_one_ending_job_that_frees_room_for_several_wakes_as_many_workers() -> None:
    """A job of weight 4 ends: three waiting jobs of weight 1 now fit the cap, and three idle
    workers take them, not one."""
    q = FairQueue(100, max_running=4)
    heavy = weighed("a", 4)
    q.put_nowait(heavy)
    assert q.get_nowait() is heavy
    light = [job("a") for _ in range(3)]
    for j in light:
        q.put_nowait(j)
    workers = [asyncio.create_task(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in workers)  # all three wait: a is at the cap
    q.done(heavy)
    taken = await asyncio.wait_for(asyncio.gather(*workers), 5)
    assert sorted(map(id, taken)) == sorted(map(id, light)) and q.running("a") == 3


# --- background jobs ---------------------------------------------------------------------


def background(owner: str) -> Job:
    """A low-priority job (a title, a summary) for an owner."""
    j = job(owner)
    j.background = True
    return j


async def test_interactive_jobs_are_served_before_background_ones_queued_earlier() -> None:
    q = FairQueue(100, background_cap=2)
    early = [background("a"), background("b")]
    for j in early:
        assert q.put_background(j)
    later = [job("c"), job("d")]
    for j in later:
        q.put_nowait(j)
    assert [q.get_nowait() for _ in range(4)] == [*later, *early]


async def test_a_background_job_goes_only_when_no_interactive_job_may_start() -> None:
    q = FairQueue(100, max_running=1, background_cap=1)
    first, second, bg = job("a"), job("a"), background("a")
    q.put_nowait(first)
    q.put_nowait(second)
    assert q.put_background(bg)
    assert q.get_nowait() is first
    # a's second job waits for their cap: it may not start, so the background one may...
    assert q.get_nowait() is bg
    # ...and it does not count against a's interactive running cap.
    assert q.running("a") == 1 and q.background_running == 1
    q.done(first)
    assert q.get_nowait() is second


async def test_background_jobs_running_at_once_never_pass_the_cap() -> None:
    q = FairQueue(100, background_cap=2)
    jobs = [background(owner) for owner in "abcde"]
    for j in jobs:
        assert q.put_background(j)
    taken = [q.get_nowait(), q.get_nowait()]
    assert q.background_running == 2 and q.empty() and q.background_waiting() == 3
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    interactive = job("z")
    q.put_nowait(interactive)  # the cap holds back background jobs only
    assert q.get_nowait() is interactive
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    q.done(taken[0])  # one ends: a waiting worker takes the next background job at once
    assert await asyncio.wait_for(waiter, 1) is jobs[2]
    assert q.background_running == 2


async def test_background_jobs_take_turns_across_owners() -> None:
    q = FairQueue(100, background_cap=10)
    for owner in "aaab":
        assert q.put_background(background(owner))
    assert [q.get_nowait().owner for _ in range(4)] == ["a", "b", "a", "a"]


async def test_background_jobs_have_their_own_bound_and_take_no_interactive_place() -> None:
    q = FairQueue(2, background_max=3)
    for _ in range(3):
        assert q.put_background(background("a"))
    assert not q.put_background(background("b"))  # full among themselves: not queued
    assert q.qsize() == 0 and q.owner_count("a") == 0  # no interactive place taken
    q.put_nowait(job("a"))
    q.put_nowait(job("b"))  # the interactive places are all still there
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(job("c"))
    assert q.background_waiting() == 3


async def test_a_cancelled_background_job_leaves_the_queue() -> None:
    q = FairQueue(10)
    j = background("a")
    assert q.put_background(j)
    assert q.jobs_of("a") == [j]
    j.cancel()
    assert q.background_waiting() == 0 and q.empty() and j.state == "done"
    await asyncio.wait_for(q.join(), 1)


async def test_drain_takes_background_jobs_too() -> None:
    q = FairQueue(10)
    bg, fg = background("a"), job("b")
    assert q.put_background(bg)
    q.put_nowait(fg)
    assert q.drain() == [fg, bg] and q.empty() and q.background_waiting() == 0
    await asyncio.wait_for(q.join(), 1)
