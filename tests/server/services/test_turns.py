"""server/services/turns.py and registry.py: a turn's numbered events, read by any number of
followers from wherever each wants, and the stop of a turn nobody follows."""

from __future__ import annotations

import asyncio

import pytest

from server.services import turns
from server.services.registry import TurnNotFound, TurnRegistry
from server.storage.rows import MessageRow
from workers.errors import JobCancelled
from workers.job import Completion, CompletionRequest, Delta, Finished, Job

REQ = CompletionRequest([{"role": "user", "content": "x"}], 1, 0.0)
MESSAGE: MessageRow = {"id": 1, "role": "user", "content": "x", "status": "complete",
                       "created_at": "2026-01-01T00:00:00.000Z"}
STORED: MessageRow = {**MESSAGE, "id": 2, "role": "assistant", "content": "abc"}


def new_turn(ends: list[turns.Outcome] | None = None, registry: TurnRegistry | None = None,
             user_id: int = 7) -> turns.Turn:
    """A turn whose job is already running (never queued, so no positions)."""
    job = Job(owner=user_id, request=REQ)
    job.state = "running"
    turn = turns.Turn(f"t{id(job)}", 1, MESSAGE, job, lambda j: None,
                      lambda t, outcome: (ends if ends is not None else []).append(outcome),
                      user_id, None, registry.attached if registry else None,
                      registry.detached if registry else None)
    if registry is not None:
        registry.add(turn)
    return turn


async def read(follower: object, count: int) -> list[turns.TurnEvent]:
    """The next `count` events of a follower."""
    return [await asyncio.wait_for(follower.__anext__(), 5)  # type: ignore[attr-defined]
            for _ in range(count)]


async def test_events_are_numbered_and_a_late_reader_gets_what_it_missed_in_one_piece() -> None:
    ends: list[turns.Outcome] = []
    turn = new_turn(ends)
    for text in ("a", "b", "c"):
        turn.job.emit(Delta(text))
    turn.job.emit(Finished(Completion("abc", "stop", {})))
    turn.job.emit(Finished(Completion("abc", "stop", {})))
    # The end goes to the owner, once; the followers see it once it is stored.
    assert ends == [Finished(Completion("abc", "stop", {}))] and turn.outcome == ends[0]
    assert turn.running
    turn.push(turns.Done(STORED, {}, "stop"))
    assert not turn.running and turn.end_id == 4
    assert [e async for e in turn.follow()] == [turns.Delta("abc", 3),
                                                turns.Done(STORED, {}, "stop")]
    # After any event: only what came after it, from the one string the reply became.
    assert [e async for e in turn.follow(1)] == [turns.Delta("bc", 3),
                                                 turns.Done(STORED, {}, "stop")]
    assert [e async for e in turn.follow(3)] == [turns.Done(STORED, {}, "stop")]
    assert [e async for e in turn.follow(99)] == [turns.Done(STORED, {}, "stop")]
    assert turn.job.partial == ["abc"]
    kept = turn.replay()  # what the registry keeps of it: the same events from any point
    for after in (0, 1, 3, 99):
        assert [e async for e in kept.follow(after)] == [e async for e in turn.follow(after)]


async def test_two_followers_get_the_same_reply_live() -> None:
    turn = new_turn()
    first, second = turn.follow(), turn.follow()
    turn.job.emit(Delta("he"))
    assert await read(first, 1) == [turns.Delta("he", 1)]
    turn.job.emit(Delta("llo"))
    assert await read(second, 1) == [turns.Delta("hello", 2)]  # what it missed, merged
    assert await read(first, 1) == [turns.Delta("llo", 2)]
    assert turn.followers == 2
    turn.job.emit(Finished(Completion("hello", "stop", {})))
    turn.push(turns.Done(STORED, {}, "stop"))
    assert await read(first, 1) == await read(second, 1) == [turns.Done(STORED, {}, "stop")]


async def test_a_follower_that_leaves_does_not_stop_the_turn_the_owner_hears_it() -> None:
    left: list[turns.Turn] = []
    job = Job(owner=7, request=REQ)
    job.state = "running"
    turn = turns.Turn("t", 1, MESSAGE, job, lambda j: None, lambda t, o: None, 7, None,
                      None, left.append)
    turn.job.emit(Delta("a"))
    follower = turn.follow()
    assert await read(follower, 1) == [turns.Delta("a", 1)]
    await follower.aclose()  # type: ignore[attr-defined]
    assert turn.job.state == "running" and left == [turn] and turn.followers == 0


async def test_a_turn_nobody_follows_is_stopped_after_the_grace_period() -> None:
    registry = TurnRegistry(grace_s=0.2, finished_ttl_s=60, max_detached=4)
    ends: list[turns.Outcome] = []
    turn = new_turn(ends, registry)
    follower = turn.follow()
    turn.job.emit(Delta("a"))
    await read(follower, 1)
    await follower.aclose()  # type: ignore[attr-defined]
    again = turn.follow(1)  # a reloaded page comes back in time: no stop
    turn.job.emit(Delta("b"))
    assert await read(again, 1) == [turns.Delta("b", 2)]
    await asyncio.sleep(0.4)
    assert turn.job.state == "running"
    await again.aclose()  # type: ignore[attr-defined]
    for _ in range(100):  # a safety net, not a timing assertion
        if turn.job.state == "done":
            break
        await asyncio.sleep(0.05)
    assert turn.job.state == "done" and isinstance(ends[0].error, JobCancelled)  # type: ignore[union-attr]
    assert ends[0].partial == "ab"  # type: ignore[union-attr]


async def test_past_the_users_unfollowed_turns_one_more_stops_at_once() -> None:
    registry = TurnRegistry(grace_s=60, finished_ttl_s=60, max_detached=2)
    made = [new_turn(registry=registry) for _ in range(3)]
    other = new_turn(registry=registry, user_id=8)
    for turn in [*made, other]:
        follower = turn.follow()
        turn.job.emit(Delta("x"))
        await read(follower, 1)
        await follower.aclose()  # type: ignore[attr-defined]
    assert [t.job.state for t in made] == ["running", "running", "done"]
    assert other.job.state == "running"  # another user's own allowance


async def test_a_turn_is_found_by_its_owner_only_and_forgotten_after_its_time() -> None:
    registry = TurnRegistry(grace_s=60, finished_ttl_s=0.2, max_detached=4)
    turn = new_turn(registry=registry)
    assert registry.find(7, turn.id) is turn and registry.running_in(1) is turn
    with pytest.raises(TurnNotFound):
        registry.find(8, turn.id)  # another user's: as if it did not exist
    turn.job.emit(Finished(Completion("", "stop", {})))
    registry.ended(turn)
    assert registry.running_in(1) is None
    turn.push(turns.Done(STORED, {}, "stop"))
    registry.finished(turn)
    kept = registry.find(7, turn.id)  # still followable for a while: what is left of it
    assert kept.id == turn.id and not kept.running and kept.end_id == turn.end_id
    assert [e async for e in kept.follow()] == [turns.Done(STORED, {}, "stop")]
    await asyncio.sleep(0.3)
    with pytest.raises(TurnNotFound):
        registry.find(7, turn.id)
