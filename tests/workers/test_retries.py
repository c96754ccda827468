"""workers/router.py: retries on a model with one replica, against the simulator over real TCP.

Before the first token a failed attempt is tried again (within `retries`); after it, never.
A refused connection or key takes the only replica out at once, so the model is unavailable;
a first-token timeout is never retried on the replica that timed out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.support.procs import free_port
from tests.support.routing import TEXT, WORDS, Routes, fault, job, run_job, sim_requests, wait_for
from vllm_sim import SimServer
from workers.errors import ModelUnavailable, UpstreamError, UpstreamRejected, UpstreamTimeout
from workers.router import Router

MakeSim = Callable[..., Awaitable[SimServer]]


def one(routes: Routes, url: str, retries: int = 2, served_name: str = "vllm-simulator",
        **upstream: Any) -> Router:
    """A router over one model with one replica at `url`."""
    route = routes.route([routes.replica(url, **upstream)], served_name=served_name)
    return routes.router(route, retries=retries)


class Counter:
    """A before_attempt hook that counts the attempts."""

    def __init__(self) -> None:
        self.n = 0

    async def __call__(self) -> None:
        self.n += 1


async def test_503_twice_then_success_with_two_retries(make_sim: MakeSim, routes: Routes,
                                                       control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    router = one(routes, sim.url, retries=2)
    await fault(control, sim, "503", count=2)
    j = job()
    assert (await run_job(router, j)).text == TEXT
    assert sim.stats.requests_total == 3 and sim.stats.completed == 1
    assert j.failovers == 0  # tried again on the same replica: there is no other
    [replica] = router.default.replicas
    assert replica.state == "healthy" and replica.errors["status"] == 2


async def test_503_more_often_than_retries_fails(make_sim: MakeSim, routes: Routes,
                                                 control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    router = one(routes, sim.url, retries=2)
    await fault(control, sim, "503", count=5)
    with pytest.raises(UpstreamError) as info:
        await run_job(router, job())
    assert not isinstance(info.value, (UpstreamRejected, UpstreamTimeout, ModelUnavailable))
    assert "503" in str(info.value)
    assert sim.stats.requests_total == 3
    # The last replica of a model is never cooled down: the next request goes through.
    assert router.default.replicas[0].state == "healthy"
    assert (await run_job(router, job())).text == TEXT


async def test_retries_zero_means_one_attempt(make_sim: MakeSim, routes: Routes,
                                              control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    router = one(routes, sim.url, retries=0)
    await fault(control, sim, "503")
    with pytest.raises(UpstreamError):
        await run_job(router, job())
    assert sim.stats.requests_total == 1


async def test_429_from_the_model_server_is_retried(make_sim: MakeSim, routes: Routes,
                                                    control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    router = one(routes, sim.url, retries=2)
    await fault(control, sim, "429", count=1)
    assert (await run_job(router, job())).text == TEXT  # it was busy, not we wrong
    assert sim.stats.requests_total == 2


async def test_500_is_not_retried(make_sim: MakeSim, routes: Routes,
                                  control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    router = one(routes, sim.url)
    await fault(control, sim, "500")
    with pytest.raises(UpstreamError) as info:
        await run_job(router, job())
    assert not isinstance(info.value, (UpstreamRejected, UpstreamTimeout, ModelUnavailable))
    assert sim.stats.requests_total == 1


async def test_reset_before_the_first_token_is_retried(make_sim: MakeSim, routes: Routes,
                                                       control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    router = one(routes, sim.url)
    await fault(control, sim, "reset", after_tokens=0)
    j = job()
    assert (await run_job(router, j)).text == TEXT == "".join(j.partial)
    assert sim.stats.requests_total == 2 and sim.stats.completed == 1


async def test_reset_after_tokens_is_not_retried(make_sim: MakeSim, routes: Routes,
                                                 control: aiohttp.ClientSession) -> None:
    sim = await make_sim(tpot_ms=5)
    router = one(routes, sim.url)
    await fault(control, sim, "reset", after_tokens=3)
    j = job()
    with pytest.raises(UpstreamError) as info:
        await run_job(router, j)
    assert not isinstance(info.value, UpstreamTimeout)
    assert "".join(j.partial) == "".join(WORDS[:3])  # what was generated is kept
    assert sim.stats.requests_total == 1


@pytest.mark.parametrize("after", [0, 2])
async def test_malformed_stream_is_not_retried(make_sim: MakeSim, routes: Routes,
                                               control: aiohttp.ClientSession,
                                               after: int) -> None:
    sim = await make_sim()
    router = one(routes, sim.url)
    await fault(control, sim, "malformed", after_tokens=after)
    j = job()
    with pytest.raises(UpstreamError) as info:
        await run_job(router, j)
    assert "malformed" in str(info.value)
    assert "".join(j.partial) == "".join(WORDS[:after])
    assert sim.stats.requests_total == 1


async def test_connection_refused_takes_the_only_replica_out_at_once(routes: Routes) -> None:
    router = one(routes, f"http://127.0.0.1:{free_port()}/v1", retries=2)
    attempts = Counter()
    with pytest.raises(ModelUnavailable):
        await run_job(router, job(), attempts)
    assert attempts.n == 1  # nothing listens there: no point knocking again
    [replica] = router.default.replicas
    assert replica.state == "down" and replica.errors["connect"] == 1
    with pytest.raises(ModelUnavailable):  # and the next request fails fast
        router.check(router.default)
    with pytest.raises(ModelUnavailable):
        await run_job(router, job(), attempts)
    assert attempts.n == 1


async def test_a_wrong_key_takes_the_only_replica_out(make_sim: MakeSim, routes: Routes) -> None:
    sim = await make_sim(api_key="s3cret")
    router = one(routes, sim.url, api_key="wrong")
    attempts = Counter()
    with pytest.raises(ModelUnavailable):
        await run_job(router, job(), attempts)
    assert attempts.n == 1  # a 401 is not tried again
    [replica] = router.default.replicas
    assert replica.state == "down" and "401" in replica.reason
    assert sim.stats.requests_total == 0  # refused before the handler


async def test_a_request_the_model_refuses_is_not_retried(make_sim: MakeSim, routes: Routes,
                                                          control: aiohttp.ClientSession) -> None:
    """A 400 is the request's own fault: raised as is, and the replica stays in."""
    sim = await make_sim(max_model_len=16)
    router = one(routes, sim.url)
    with pytest.raises(UpstreamRejected) as info:
        await run_job(router, job(text="word " * 64))
    assert info.value.status == 400
    assert len(await sim_requests(control, sim)) == 1
    assert router.default.replicas[0].state == "healthy"


async def test_hang_times_out_once_and_the_model_sees_the_abort(
        make_sim: MakeSim, routes: Routes, control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    router = one(routes, sim.url, retries=2, first_token_timeout_s=1.0)
    await fault(control, sim, "hang")
    with pytest.raises(UpstreamTimeout):
        await run_job(router, job())
    await wait_for(lambda: sim.stats.aborted == 1)
    # A first-token timeout is not retried on the replica that timed out (the only one).
    assert sim.stats.requests_total == 1
    assert router.default.replicas[0].state == "healthy"


async def test_hang_after_the_first_token_is_not_retried(
        make_sim: MakeSim, routes: Routes, control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    router = one(routes, sim.url, first_token_timeout_s=1.0)
    await fault(control, sim, "hang_after_first")
    j = job()
    with pytest.raises(UpstreamTimeout):
        await run_job(router, j)
    assert "".join(j.partial) == WORDS[0]
    await wait_for(lambda: sim.stats.aborted == 1 and sim.stats.running == 0)
    assert sim.stats.requests_total == 1


async def test_an_unnamed_model_learns_its_name_before_the_first_request(
        make_sim: MakeSim, routes: Routes, control: aiohttp.ClientSession) -> None:
    sim = await make_sim(model="served-name")
    router = one(routes, sim.url, served_name="")
    assert (await run_job(router, job())).text == TEXT
    assert router.default.served_name == "served-name"
    assert sim.stats.connections_opened == 1  # the model list and the chat shared it
    assert [b["model"] for b in await sim_requests(control, sim)] == ["served-name"]


async def test_a_configured_name_the_server_lacks_takes_it_out(
        make_sim: MakeSim, routes: Routes) -> None:
    """The simulator 404s a model it does not serve: the replica is misconfigured."""
    sim = await make_sim(model="served-name")
    router = one(routes, sim.url, served_name="my-alias")
    with pytest.raises(ModelUnavailable):
        await run_job(router, job())
    [replica] = router.default.replicas
    assert replica.state == "down" and "404" in replica.reason
    assert router.default.served_name == "my-alias"  # a configured name is never replaced
