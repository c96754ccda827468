"""server/services/ratelimit.py: per-key GCRA limits with bounded memory."""

from __future__ import annotations

from server.services.ratelimit import KeyedRateLimiter


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_one_per_interval() -> None:
    clock = Clock()
    limiter = KeyedRateLimiter(6, clock=clock)  # 6 a minute: one every 10 s, burst of 6
    assert [limiter.hit("a") for _ in range(6)] == [None] * 6
    retry = limiter.hit("a")
    assert retry is not None and 9.9 < retry <= 10.0
    assert limiter.hit("b") is None  # keys are independent
    clock.now += 10
    assert limiter.hit("a") is None and limiter.hit("a") is not None


def test_memory_stays_bounded_under_a_flood_of_keys() -> None:
    clock = Clock()
    limiter = KeyedRateLimiter(10, clock=clock, max_keys=1000)
    for i in range(50_000):
        limiter.hit(f"ip{i}")
    assert len(limiter._tat) <= 1000
    clock.now += 60
    for i in range(10):
        assert limiter.hit(f"new{i}") is None
