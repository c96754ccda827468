"""deploy/haproxy.cfg itself, run by Debian's HAProxy in front of stand-in nodes: what it
retries and what it never replays, SSE passed through unbuffered, a draining node's stream
left to finish, a reload that drops no stream, and failing open when every check fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.haproxy import HAProxy, start_haproxy
from tests.support.sse import events
from tests.support.standin import StandIn, start_standins

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def nodes() -> AsyncIterator[list[StandIn]]:
    """Three stand-in nodes, all ready."""
    started = await start_standins()
    yield started
    for node in started:
        await node.close()


async def _proxy(tmp_path: Path, nodes: list[StandIn], check_inter: str) -> HAProxy:
    proxy = await start_haproxy(tmp_path / "haproxy", [n.address for n in nodes], check_inter)
    if check_inter == "200ms":  # with slow checks, nodes stay "UP 1/2" until their first
        await proxy.wait_states({"node1": "UP", "node2": "UP", "node3": "UP"})
    return proxy


@pytest.fixture
async def proxy(tmp_path: Path, nodes: list[StandIn]) -> AsyncIterator[HAProxy]:
    """HAProxy from deploy/haproxy.cfg with fast checks."""
    running = await _proxy(tmp_path, nodes, "200ms")
    yield running
    await running.stop()


async def _send(proxy: HAProxy, method: str, count: int) -> list[int]:
    """Each request's status; 0 for a connection closed with no answer (what HAProxy does,
    as a server closing a kept-alive connection would, when a request that was not a
    connection's first failed: the client may not assume it was processed)."""
    statuses = []
    async with aiohttp.ClientSession(proxy.url) as s:
        for i in range(count):
            try:
                async with s.request(method, f"/api/x{i}", json={"n": i}) as resp:
                    await resp.read()
                    statuses.append(resp.status)
            except aiohttp.ServerDisconnectedError:
                statuses.append(0)
    return statuses


async def test_a_post_that_reached_a_node_is_never_replayed(proxy: HAProxy,
                                                             nodes: list[StandIn]) -> None:
    """A node that read a POST and died without answering: the client gets 502 (or its
    connection closed with no answer), and no other
    node ever sees that request (it may have been stored and acknowledged). A GET is
    replayed on another node."""
    nodes[0].die_after_read = True
    statuses = await _send(proxy, "POST", 9)
    posts = [seen for node in nodes for seen in node.seen]
    assert len(posts) == 9, posts  # each POST reached exactly one node, once
    died = len(nodes[0].seen)
    assert died >= 1, "the dying node got no POST: leastconn should spread them"
    assert statuses.count(200) == 9 - died, statuses
    assert statuses.count(502) + statuses.count(0) == died, statuses
    for node in nodes:
        node.seen.clear()
    assert await _send(proxy, "GET", 9) == [200] * 9
    assert nodes[0].seen, "no GET reached the dying node"


async def test_a_refused_connection_is_retried_elsewhere_even_for_post(
        tmp_path: Path, nodes: list[StandIn]) -> None:
    """A node that stopped listening, before its checks noticed: nothing was sent to it, so
    HAProxy sends the POST to another node and the client never sees the failure."""
    proxy = await _proxy(tmp_path, nodes, "60s")  # no check during the test
    try:
        await nodes[0].close()
        assert await _send(proxy, "POST", 9) == [200] * 9
        assert not nodes[0].seen
        assert len(nodes[1].seen) + len(nodes[2].seen) == 9
    finally:
        await proxy.stop()


async def _first_event(resp: aiohttp.ClientResponse) -> dict[str, object]:
    async for name, data in events(resp):
        assert name == "message"
        return dict(data)
    raise AssertionError("the stream ended before its first event")


async def test_sse_passes_unbuffered_and_a_reload_drops_no_stream(
        proxy: HAProxy, nodes: list[StandIn]) -> None:
    """The node sends its second event only after the client saw the first through HAProxy
    (buffering would hang here); HAProxy is reloaded between the two and the stream goes on;
    new requests are served by the new worker."""
    async with aiohttp.ClientSession(proxy.url) as s:
        async with s.get("/stream") as resp:
            assert resp.status == 200
            first = await _first_event(resp)
            node = next(n for n in nodes if n.name == first["node"])
            await proxy.reload()
            assert await _send(proxy, "GET", 3) == [200] * 3
            node.step.set()
            rest = [data async for _, data in events(resp)]
            assert rest == [{"n": 2, "node": node.name}]


async def test_a_draining_node_leaves_the_rotation_and_its_stream_finishes(
        proxy: HAProxy, nodes: list[StandIn]) -> None:
    """/ready 503 (a node told SIGTERM): HAProxy marks it down and sends it nothing new, but
    does not cut the stream it is serving (rolling deploys drop no stream)."""
    async with aiohttp.ClientSession(proxy.url) as s:
        async with s.get("/stream") as resp:
            first = await _first_event(resp)
            node = next(n for n in nodes if n.name == first["node"])
            node.ready = 503
            await proxy.wait_states({node.name: "DOWN"})
            for other in nodes:
                other.seen.clear()
            assert await _send(proxy, "GET", 6) == [200] * 6
            assert not node.seen
            node.step.set()
            rest = [data async for _, data in events(resp)]
            assert rest == [{"n": 2, "node": node.name}]


async def test_every_node_failing_its_check_fails_open(proxy: HAProxy,
                                                       nodes: list[StandIn]) -> None:
    """All three /ready 503 (say the model servers are down): requests still reach chatgate,
    whose own answer (a JSON 503 with a code, or sign-in and history that need no model) is
    better than the load balancer's error page."""
    for node in nodes:
        node.ready = 503
    await proxy.wait_states({"node1": "DOWN", "node2": "DOWN", "node3": "DOWN"})
    assert await _send(proxy, "GET", 6) == [200] * 6
    assert sum(len(n.seen) for n in nodes) == 6
