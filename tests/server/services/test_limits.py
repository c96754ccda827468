"""server/services/limits.py: a request's checks applied together, in this process."""

from __future__ import annotations

import asyncio

import pytest

from server.services.caps import ConversationsTooFast
from server.services.limits import Backoff, Budget, LocalLimits, Rate, check_and_admit
from server.services.ratelimit import FailureBackoff, KeyedRateLimiter, RateLimited
from server.services.usage import QuotaExceeded


def limits(used: int = 0) -> LocalLimits:
    async def month_used(user_id: int) -> int:
        return used

    return LocalLimits(month_used, FailureBackoff(1, 300))


async def test_a_refused_check_charges_none_of_the_others() -> None:
    local = limits()
    chat = Rate("chat", 1, 5, "slow down")
    new = Rate("conversations", 1, 1, "too fast", error=ConversationsTooFast)
    await local.check(chat, new)
    for _ in range(3):  # the conversation rate refuses: the chat rate is not charged
        with pytest.raises(ConversationsTooFast):
            await local.check(chat, new)
    for _ in range(4):  # so four more chat turns pass (5 a minute), then none
        await local.check(chat)
    with pytest.raises(RateLimited):
        await local.check(chat)


async def test_over_budget_refuses_and_charges_nothing() -> None:
    local = limits(used=100)
    chat = Rate("chat", 1, 1, "slow down")
    with pytest.raises(QuotaExceeded):
        await local.check(chat, Budget(1, 100))
    await local.check(chat, Budget(1, 0))  # 0: no budget; the rate was not charged before


async def test_a_backoff_and_a_rate_together() -> None:
    local = limits()
    await local.check(Rate("login", "10.0.0.1", 10, "m"), Backoff("alice", "wait"))
    with pytest.raises(RateLimited, match="wait"):  # one free failure, then 1 s of backoff
        await local.check(Rate("login", "10.0.0.1", 10, "m"), Backoff("alice", "wait"))
    local.succeeded("alice")
    await local.check(Backoff("alice", "wait"))


def test_tokens_taken_up_front_and_given_back() -> None:
    clock = [0.0]
    tokens = KeyedRateLimiter(600, clock=lambda: clock[0])  # 600 tokens a minute
    assert tokens.wait("k", 500) is None
    tokens.charge("k", 500)
    assert tokens.wait("k", 500) is not None  # 100 left
    tokens.give_back("k", 450)  # used 50 of the 500
    assert tokens.wait("k", 500) is None
    assert tokens.wait("k", 5000) is not None  # more than the whole allowance: only when full
    tokens.give_back("k", 1000)  # never beyond full
    assert tokens.wait("k", 5000) is None and tokens.wait("k", 600) is None


class Place:
    """An admission's place (as workers.pool.Place): given back once."""

    def __init__(self) -> None:
        self.released = 0

    def release(self) -> None:
        self.released += 1


class QueueFull(Exception):
    """The admission's refusal."""


@pytest.mark.parametrize("together", [True, False])
async def test_the_limits_refuse_first_and_an_admission_made_meanwhile_goes_back(
        together: bool) -> None:
    # Asked together (with Redis: one round trip) or one after the other, the outcome is the
    # same: the limits' refusal wins, and a place taken meanwhile is given back.
    local, chat = limits(), Rate("chat", 1, 1, "slow down")
    places: list[Place] = []

    async def admit() -> Place:
        places.append(Place())
        return places[-1]

    async def full() -> Place:
        raise QueueFull

    assert await check_and_admit(local, (chat,), admit, together) is places[0]
    with pytest.raises(RateLimited):  # over the rate: the place taken (if any) goes back
        await check_and_admit(local, (chat,), admit, together)
    assert [p.released for p in places] == ([0, 1] if together else [0])
    with pytest.raises(RateLimited):  # over the rate and the queue full: the rate's refusal
        await check_and_admit(local, (chat,), full, together)
    other = Rate("chat", 2, 1, "slow down")
    with pytest.raises(QueueFull):  # the queue refuses: the limits stay charged, as before
        await check_and_admit(local, (other,), full, together)
    with pytest.raises(RateLimited):
        await local.check(other)


async def test_a_request_that_leaves_gives_its_admission_back() -> None:
    gate, admitted = asyncio.Event(), asyncio.Event()
    place = Place()

    async def month_used(user_id: int) -> int:
        await gate.wait()  # the budget's read hangs: the request leaves meanwhile
        return 0

    local = LocalLimits(month_used, FailureBackoff(1, 300))

    async def admit() -> Place:
        admitted.set()
        return place

    task = asyncio.ensure_future(check_and_admit(local, (Budget(1, 10),), admit, True))
    await admitted.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(10):  # the give-back is a callback of the admission's task: soon
        if place.released:
            break
        await asyncio.sleep(0)
    assert place.released == 1
