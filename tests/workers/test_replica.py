"""workers/replica.py: a replica's health and load, fed directly with request and probe results.

The router and prober feed these same calls from real traffic: test_failover.py, test_probe.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support.procs import free_port
from tests.support.routing import Knobs, Routes, wait_for
from workers.replica import PROBE_FAILURES_TO_DOWN, Replica


def make(routes: Routes, **knobs: Any) -> Replica:
    """A replica at an address nothing listens on: only its bookkeeping is used here."""
    return routes.replica(f"http://127.0.0.1:{free_port()}/v1", knobs=Knobs(**knobs))


def fail(replica: Replica, times: int, reason: str = "status", may_cool: bool = True) -> None:
    for _ in range(times):
        replica.failed(reason, "answered 503", may_cool)


def spell(replica: Replica) -> str:
    """The cool-down's length as its reason tells it."""
    assert replica.state == "cooling", replica.reason
    return replica.reason.split(" s:", 1)[0].rsplit(" ", 1)[1]


async def test_a_new_replica_is_healthy_with_room(routes: Routes) -> None:
    replica = make(routes)
    assert replica.state == "healthy" and replica.routable and replica.has_room
    assert replica.reason == "" and replica.load is None


async def test_max_concurrency_bounds_the_room(routes: Routes) -> None:
    replica = routes.replica("http://127.0.0.1:1/v1", max_concurrency=2)
    replica.in_flight = 1
    assert replica.has_room
    replica.in_flight = 2
    assert not replica.has_room
    unlimited = routes.replica("http://127.0.0.1:1/v1")
    unlimited.in_flight = 1000
    assert unlimited.has_room


async def test_failures_cool_it_down_only_when_most_recent_requests_failed(
        routes: Routes) -> None:
    replica = make(routes)
    fail(replica, 2)
    assert replica.state == "healthy"  # fewer than failure_min_requests: not judged yet
    replica.succeeded(0.1)
    replica.succeeded(0.1)
    assert replica.state == "healthy"  # 2 of 4 is not most
    fail(replica, 1)
    assert replica.state == "cooling" and not replica.routable
    assert "3 of its last 5 requests failed" in replica.reason and "503" in replica.reason
    assert replica.errors["status"] == 3


async def test_the_cool_down_grows_while_it_keeps_failing_and_resets_on_success(
        routes: Routes) -> None:
    replica = make(routes, cooldown_s=5.0, max_cooldown_s=30.0)
    spells = []
    for _ in range(5):
        fail(replica, 3)  # the window starts afresh after each cool-down
        spells.append(spell(replica))
    assert spells == ["5", "10", "20", "30", "30"]  # doubling, up to max_cooldown_s
    replica.succeeded(None)
    fail(replica, 3)
    assert spell(replica) == "5"


async def test_a_cool_down_runs_out_by_itself(routes: Routes) -> None:
    replica = make(routes, cooldown_s=0.2)
    fail(replica, 3)
    assert replica.state == "cooling"
    await wait_for(lambda: replica.state == "healthy")
    assert replica.routable


async def test_the_last_routable_replica_is_never_cooled_down(routes: Routes) -> None:
    replica = make(routes)
    fail(replica, 20, may_cool=False)
    assert replica.state == "healthy" and replica.routable
    assert replica.errors["status"] == 20


@pytest.mark.parametrize("reason", ["connect", "auth", "model"])
async def test_a_refused_connection_key_or_model_takes_it_down_at_once(
        routes: Routes, reason: str) -> None:
    replica = make(routes)
    replica.failed(reason, "why it failed", may_cool=False)  # even the last one: it is gone
    assert replica.state == "down" and not replica.routable
    assert replica.reason == "why it failed"


async def test_failures_older_than_the_window_are_forgotten(routes: Routes) -> None:
    replica = make(routes, failure_window_s=0.2)
    fail(replica, 2)
    await asyncio.sleep(0.3)
    fail(replica, 1)
    assert replica.state == "healthy"  # one recent failure: not judged yet
    fail(replica, 2)
    assert replica.state == "cooling"


async def test_probes_take_it_down_after_repeated_failures_and_bring_it_back(
        routes: Routes) -> None:
    replica = make(routes)
    assert PROBE_FAILURES_TO_DOWN == 2
    assert replica.probed("probe failed: timed out", "probe") is False
    assert replica.state == "healthy"  # one slow probe is not a dead server
    assert replica.probed("probe failed: timed out", "probe") is True
    assert replica.state == "down" and "timed out" in replica.reason
    assert replica.probed(None) is True
    assert replica.state == "healthy" and replica.reason == ""
    assert replica.probed(None) is False


@pytest.mark.parametrize("reason", ["connect", "auth", "model"])
async def test_one_probe_that_finds_it_gone_takes_it_down(routes: Routes, reason: str) -> None:
    replica = make(routes)
    assert replica.probed("it does not answer", reason) is True
    assert replica.state == "down"


async def test_a_healthy_probe_ends_down_but_not_a_cool_down(routes: Routes) -> None:
    """A probe shows the server answers, not that requests stopped failing."""
    replica = make(routes)
    fail(replica, 3)
    assert replica.probed(None) is False
    assert replica.state == "cooling"


async def test_the_score_is_own_in_flight_plus_fresh_metrics_per_weight(routes: Routes) -> None:
    replica = routes.replica("http://127.0.0.1:1/v1", weight=2.0)
    assert replica.score(time.monotonic()) == 0.0
    replica.in_flight = 2
    assert replica.score(time.monotonic()) == 1.0
    # vLLM runs 5, two of them ours (counted once), 3 wait, the KV cache is half full.
    replica.observe(running=5, waiting=3, kv_cache=0.5)
    assert replica.score(time.monotonic()) == (2 + (5 - 2) + 2 * 3 + 0.5) / 2.0


async def test_stale_metrics_are_not_counted(routes: Routes) -> None:
    replica = make(routes, metrics_max_age_s=0.1)
    replica.observe(running=9, waiting=9, kv_cache=1.0)
    await wait_for(lambda: replica.score(time.monotonic()) == 0.0)


async def test_time_to_first_token_is_a_moving_average(routes: Routes) -> None:
    replica = make(routes)
    replica.succeeded(1.0)
    assert replica.ttft_s == 1.0
    replica.succeeded(None)  # no token (a refused request): no change
    replica.succeeded(2.0)
    assert replica.ttft_s == pytest.approx(1.2)
