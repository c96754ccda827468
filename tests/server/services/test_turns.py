"""server/services/turns.py: a turn's events as its follower reads them."""

from __future__ import annotations

from server.services import turns
from server.storage.rows import MessageRow
from workers.job import Completion, CompletionRequest, Delta, Finished, Job

REQ = CompletionRequest([{"role": "user", "content": "x"}], 1, 0.0)
MESSAGE: MessageRow = {"id": 1, "role": "user", "content": "x", "status": "complete",
                       "created_at": "2026-01-01T00:00:00.000Z"}


def new_turn(ends: list[turns.Outcome] | None = None) -> turns.Turn:
    """A turn whose job is already running (never queued, so no positions)."""
    job = Job(owner="u", request=REQ)
    job.state = "running"
    return turns.Turn(1, MESSAGE, job, lambda j: None,
                      lambda turn, outcome: (ends if ends is not None else []).append(outcome))


async def test_waiting_deltas_merge_but_only_consecutive_ones() -> None:
    ends: list[turns.Outcome] = []
    turn = new_turn(ends)
    for text in ("a", "b", "c"):
        turn.job.emit(Delta(text))
    turn.job.emit(Finished(Completion("abc", "stop", {})))
    turn.job.emit(Finished(Completion("abc", "stop", {})))
    # The end goes to the owner, once, not to the follower.
    assert ends == [Finished(Completion("abc", "stop", {}))] and turn.outcome == ends[0]
    stored: MessageRow = {**MESSAGE, "id": 2, "role": "assistant", "content": "abc"}
    turn.push(turns.Done(stored, {}, "stop"))
    turn.push(turns.Delta("z"))  # nothing after the end is read
    seen = [event async for event in turn.follow()]
    assert seen == [turns.Delta("abc"), turns.Done(stored, {}, "stop")]


async def test_a_follower_that_leaves_stops_the_job() -> None:
    ends: list[turns.Outcome] = []
    turn = new_turn(ends)
    turn.job.emit(Delta("a"))
    follower = turn.follow()
    assert await follower.__anext__() == turns.Delta("a")
    await follower.aclose()
    assert turn.job.state == "done" and len(ends) == 1
    outcome = ends[0]
    assert not isinstance(outcome, Finished) and outcome.partial == "a"
