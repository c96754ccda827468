"""workers/job.py: a job's events, state transitions, partial text and cancellation."""

from __future__ import annotations

import asyncio

from workers.errors import JobCancelled, UpstreamError
from workers.job import (
    Completion,
    CompletionRequest,
    Delta,
    Ending,
    Event,
    Failed,
    Finished,
    Job,
    Started,
)
from workers.queue import FairQueue

REQ = CompletionRequest([{"role": "user", "content": "x"}], 8, 0.0)
DONE = Completion("ab", "stop", {"completion_tokens": 2})


def drain(job: Job) -> list[Event]:
    """Every event the job has emitted so far."""
    out: list[Event] = []
    while not job.events.empty():
        out.append(job.events.get_nowait())
    return out


async def test_new_job_is_queued_and_silent() -> None:
    job = Job(owner="a", request=REQ)
    assert job.state == "queued" and job.partial == [] and job.task is None
    assert job.events.empty()


async def test_emit_delivers_events_in_order_and_finished_ends_the_job() -> None:
    job = Job(owner="a", request=REQ)
    job.emit(Started())
    assert job.state == "queued"  # the worker sets "running"; Started alone does not end it
    job.emit(Delta("a"))
    job.emit(Delta("b"))
    assert job.state != "done"
    job.emit(Finished(DONE))
    assert job.state == "done"
    assert drain(job) == [Started(), Delta("a"), Delta("b"), Finished(DONE)]


async def test_partial_accumulates_deltas_and_fail_reports_it() -> None:
    job = Job(owner="a", request=REQ)
    job.state = "running"
    for piece in ("Hel", "lo", ", ", "world"):
        job.emit(Delta(piece))
    assert "".join(job.partial) == "Hello, world"
    err = UpstreamError("boom")
    job.fail(err)
    assert job.state == "done"
    events = drain(job)
    assert events[-1] == Failed(err, "Hello, world")
    assert events[-1].error is err  # type: ignore[union-attr]


async def test_fail_without_deltas_has_empty_partial() -> None:
    job = Job(owner="a", request=REQ)
    err = UpstreamError("down")
    job.fail(err)
    assert job.state == "done" and drain(job) == [Failed(err, "")]


async def test_fail_after_finished_is_a_no_op() -> None:
    job = Job(owner="a", request=REQ)
    job.emit(Delta("x"))
    job.emit(Finished(DONE))
    drain(job)
    job.fail(UpstreamError("late"))
    assert job.state == "done" and job.events.empty()


async def test_fail_twice_emits_one_failed() -> None:
    job = Job(owner="a", request=REQ)
    first = UpstreamError("first")
    job.fail(first)
    job.fail(UpstreamError("second"))
    events = drain(job)
    assert len(events) == 1 and isinstance(events[0], Failed) and events[0].error is first


async def test_cancel_while_queued_calls_the_queue_removal() -> None:
    removed: list[Job] = []
    job = Job(owner="a", request=REQ)
    job.on_cancel_queued = lambda j: removed.append(j) or True
    job.cancel()
    assert removed == [job]
    assert job.state == "done"
    events = drain(job)
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert isinstance(events[0].error, JobCancelled) and events[0].partial == ""


async def test_cancel_while_queued_leaves_a_real_fair_queue() -> None:
    q = FairQueue(4)
    job, other = Job(owner="a", request=REQ), Job(owner="a", request=REQ)
    q.put_nowait(job)
    q.put_nowait(other)
    job.cancel()
    assert q.qsize() == 1 and q.owner_count("a") == 1 and q.position(job) is None
    assert q.get_nowait() is other
    assert isinstance(drain(job)[-1], Failed)


async def test_cancel_while_running_cancels_the_task_and_keeps_partial() -> None:
    removed: list[Job] = []
    job = Job(owner="a", request=REQ)
    job.on_cancel_queued = lambda j: removed.append(j) or True
    job.task = asyncio.create_task(asyncio.sleep(3600))
    job.state = "running"
    job.emit(Started())
    job.emit(Delta("par"))
    job.emit(Delta("tial"))
    job.cancel()
    assert removed == []  # a running job is not in the queue any more
    assert job.state == "done"
    await asyncio.wait({job.task})
    assert job.task.cancelled()
    events = drain(job)
    assert events[:3] == [Started(), Delta("par"), Delta("tial")]
    assert len(events) == 4 and isinstance(events[3], Failed)
    assert isinstance(events[3].error, JobCancelled) and events[3].partial == "partial"


async def test_cancel_after_done_does_nothing() -> None:
    removed: list[Job] = []
    job = Job(owner="a", request=REQ)
    job.on_cancel_queued = lambda j: removed.append(j) or True
    job.task = asyncio.create_task(asyncio.sleep(3600))
    job.emit(Finished(DONE))
    drain(job)
    job.cancel()
    assert removed == [] and job.events.empty()
    assert not job.task.cancelled() and not job.task.done()
    job.task.cancel()
    await asyncio.wait({job.task})


async def test_finish_joins_the_deltas_once_and_ends_the_job() -> None:
    job = Job(owner="a", request=REQ)
    job.state = "running"
    job.emit(Delta("a"))
    job.emit(Delta("b"))
    job.finish(Ending("stop", {"completion_tokens": 2}))
    assert job.state == "done"
    assert drain(job) == [Delta("a"), Delta("b"), Finished(DONE)]
    job.finish(Ending("length", {}))  # a second end is ignored
    job.fail(UpstreamError("late"))
    assert job.events.empty()
