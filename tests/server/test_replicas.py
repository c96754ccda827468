"""Several replicas of a model, through the real app and simulator replicas on real TCP:
failover when one dies under load, least load, affinity, a wrong key, per-replica limits and
the routing's /ready and /metrics (never a credential)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from server.runner import Running
from tests.support.app import User, register_over_http
from tests.support.replicas import (
    chat,
    chat_stream,
    get,
    metrics_text,
    model,
    replica_of,
    seen_by,
    until,
)
from vllm_sim import SimCluster

Serve = Callable[..., Awaitable[Running]]
Sims = Callable[..., Awaitable[SimCluster]]
# Small probe interval: a replica that dies or comes back is seen within a fraction of a second.
ROUTING = {"probe_interval_s": 0.3}


async def users_of(server: Running, n: int) -> tuple[User, list[User]]:
    """The admin (the first account) and n more users."""
    admin = await register_over_http(server.url, "admin")
    return admin, [await register_over_http(server.url, f"user{i}") for i in range(n)]


async def test_a_replica_killed_under_load_loses_no_request_before_its_first_token(
        sim_cluster: Sims, serve: Serve) -> None:
    # ~30 ms to the first token, ~150 ms of tokens: the kill finds requests in both phases.
    sims = await sim_cluster(2, ttft_ms=30, tpot_ms=10, reply_tokens=16)
    server = await serve([model("chat", sims)], routing=ROUTING,
                         queue={"workers": 12, "max_size": 512, "max_running_per_user": 12})
    admin, users = await users_of(server, 6)
    total, tickets = 200, itertools.count()
    # (ticket, status, body, owner, deltas before the end: None when not streamed)
    done: list[tuple[int, int, dict[str, Any], User, int | None]] = []
    killed_at: list[int] = []  # the first ticket handed out after the kill

    async def client(n: int) -> None:
        user, conv, turn = users[n % len(users)], None, 0
        while (ticket := next(tickets)) < total:
            fields: dict[str, Any] = {} if conv is None else {"conversation_id": conv}
            text = f"client {n} ticket {ticket}"
            deltas: int | None = None
            if n % 2:  # half the clients stream: they see whether a token came before a failure
                status, body, deltas = await chat_stream(server, user, text, **fields)
            else:
                status, body = await chat(server, user, text, **fields)
            done.append((ticket, status, body, user, deltas))
            turn += 1
            conv = None if turn % 3 == 0 else body.get("conversation_id", conv)

    async def kill() -> None:
        await until(lambda: len(done) >= 50, what="50 chats answered")
        await sims[0].down()
        killed_at.append(next(tickets))  # every later ticket starts after the kill

    before = sims[1].stats.completed
    await asyncio.gather(kill(), *(client(n) for n in range(10)))
    assert len(done) == total - 1  # one ticket went to mark the kill

    failed = [(s, b, u, d) for _, s, b, u, d in done if s != 200]
    for status, body, owner, deltas in failed:  # only a reply cut mid-stream may fail
        assert status == 502, body
        assert deltas is None or deltas > 0, body  # a streamed one had had a token
        assert "partial_message_id" in body["error"], body  # ...and what came is kept
        _, conv = await get(server, f"/api/conversations/{body['error']['conversation_id']}",
                            owner)
        kept = [m for m in conv["messages"] if m["id"] == body["error"]["partial_message_id"]]
        assert kept and kept[0]["status"] == "error" and kept[0]["content"], conv
    after_kill = [b for t, _, b, _, _ in done if t > killed_at[0]]
    assert after_kill and all("message" in b for b in after_kill)
    # The survivor carried everything sent after the kill.
    assert sims[1].stats.completed - before >= len(after_kill)
    _, ready = await get(server, "/ready", admin)
    assert ready["status"] == "degraded" and replica_of(ready, "chat", sims[0])["state"] == "down"

    # Back up: it gets traffic again within seconds, without a restart.
    served = sims[0].stats.requests_total
    await sims[0].up()

    async def traffic() -> bool:
        await asyncio.gather(*(chat(server, u, "are you back?") for u in users))
        return sims[0].stats.requests_total > served

    await until(traffic, timeout=20, what="the revived replica served a request")
    print(f"\n{len(failed)} of {len(done)} chats cut mid-stream by the kill, "
          f"{ready['models'][0]['failovers']} attempts moved to the survivor (cut before a "
          f"token, or refused); "
          f"{len(after_kill)} sent after it all answered")


async def test_a_slow_replica_gets_few_of_the_new_requests(sim_cluster: Sims,
                                                           serve: Serve) -> None:
    sims = await sim_cluster(2, ttft_ms=5, tpot_ms=2, reply_tokens=10)
    async with aiohttp.ClientSession() as s:  # 10x the time per token, at run time
        async with s.post(f"{sims[0].root_url}/sim/config", json={"slowdown": 10}) as resp:
            assert resp.status == 200
    server = await serve([model("chat", sims)], routing=ROUTING,
                         queue={"workers": 16, "max_running_per_user": 16})
    _, users = await users_of(server, 4)

    async def client(n: int) -> None:
        for i in range(10):
            status, body = await chat(server, users[n % 4], f"client {n} chat {i}")
            assert status == 200, body

    await asyncio.gather(*(client(n) for n in range(8)))
    slow, fast = sims[0].stats.completed, sims[1].stats.completed
    assert slow + fast == 80
    assert fast >= 0.7 * 80, (slow, fast)
    print(f"\nslow replica {slow}, fast replica {fast} of 80 chats")


@pytest.mark.parametrize("affinity", [True, False])
async def test_a_conversation_stays_on_one_replica_and_hits_its_prefix_cache(
        sim_cluster: Sims, serve: Serve, affinity: bool) -> None:
    sims = await sim_cluster(2, ttft_ms=40, prefix_hit_ttft_ms=1, tpot_ms=1, reply_tokens=6)
    # No system prompt: a first turn shares no prefix with anything, so it never hits.
    server = await serve([model("chat", sims)], routing={**ROUTING, "affinity": affinity},
                         memory={"system_prompt": ""})
    _, users = await users_of(server, 2)
    convs, turns = 4, 4
    # One request at a time: both replicas equally idle, so only affinity keeps a
    # conversation in place (least load alone takes turns between them).
    for n in range(convs):
        conv = None
        for t in range(turns):
            fields = {} if conv is None else {"conversation_id": conv}
            status, body = await chat(server, users[n % 2], f"conv {n} turn {t}", **fields)
            assert status == 200, body
            conv = body["conversation_id"]
    places = [{i for i, sim in enumerate(sims) for body in seen_by(sim)
               if body["messages"][0]["content"] == f"conv {n} turn 0"} for n in range(convs)]
    hits = sum(sim.stats.prefix_cache_hits for sim in sims)
    assert sum(sim.stats.prefix_cache_queries for sim in sims) == convs * turns
    sticky = _value(await metrics_text(server),
                    'chatgate_model_affinity_total{model="chat",result="hit"}')
    print(f"\naffinity {affinity}: prefix-cache hits {hits} of {convs * (turns - 1)} later "
          f"turns; replicas per conversation {[len(p) for p in places]}")
    if affinity:  # every turn of a conversation reached one replica, each later one a hit
        assert all(len(p) == 1 for p in places), places
        assert hits == convs * (turns - 1) and sticky == convs * (turns - 1)
    else:
        assert any(len(p) == 2 for p in places), places
        assert hits < convs * (turns - 1) and sticky == 0


async def test_a_replica_refusing_our_key_is_out_at_once_and_ready_says_why(
        sim_cluster: Sims, serve: Serve) -> None:
    sims = await sim_cluster(2)
    sims[0].settings.api_key = "the-right-key"  # the simulator wants this; we send another
    entry = model("chat", sims)
    entry["replicas"][0]["api_key"] = "a-wrong-key"
    server = await serve([entry], routing=ROUTING)
    admin, users = await users_of(server, 2)
    for i in range(6):
        status, body = await chat(server, users[i % 2], f"hello {i}")
        assert status == 200, body
    assert sims[0].stats.requests_total == 0 and sims[1].stats.completed == 6
    status, ready = await get(server, "/ready", admin)
    assert status == 200 and ready["status"] == "degraded", ready
    out = replica_of(ready, "chat", sims[0])
    assert out["state"] == "down" and "401" in out["reason"] and "key" in out["reason"], out
    assert replica_of(ready, "chat", sims[1])["state"] == "healthy"
    assert {"kind": "model_degraded", "detail": "model chat: 1 of 2 replicas out"} \
        in ready["problems"]
    status, anonymous = await get(server, "/ready")  # everyone else learns only the status
    assert status == 200 and anonymous == {"status": "degraded"}
    assert "a-wrong-key" not in str(ready) and "the-right-key" not in str(ready)


async def test_a_replica_that_starts_refusing_our_key_is_out_after_one_request(
        sim_cluster: Sims, serve: Serve) -> None:
    sims = await sim_cluster(2)
    # Probes far apart: only the requests themselves can find the rotated key.
    server = await serve([model("chat", sims)], routing={"probe_interval_s": 60})
    admin, users = await users_of(server, 2)
    sims[0].settings.api_key = "rotated-under-us"
    for i in range(8):
        status, body = await chat(server, users[i % 2], f"hello {i}")
        assert status == 200, body  # the 401 is retried on the other replica
    _, ready = await get(server, "/ready", admin)
    out = replica_of(ready, "chat", sims[0])
    assert out["state"] == "down" and "401" in out["reason"], out
    assert out["errors"] == {"auth": 1}  # out at the first refusal, tried no more
    assert ready["models"][0]["failovers"] == 1 and ready["status"] == "degraded"
    assert "rotated-under-us" not in str(ready)


async def test_per_replica_concurrency_is_never_exceeded(sim_cluster: Sims,
                                                         serve: Serve) -> None:
    sims = await sim_cluster(2, ttft_ms=5, tpot_ms=2, reply_tokens=12)
    entry = model("chat", sims)
    entry["replicas"][0]["max_concurrency"] = 3
    entry["replicas"][1]["max_concurrency"] = 5
    server = await serve([entry], routing=ROUTING,
                         queue={"workers": 8, "max_size": 512, "max_running_per_user": 8})
    _, users = await users_of(server, 4)
    peak = 0
    sampling = True

    async def sample() -> None:  # both replicas at once: within the worker pool
        nonlocal peak
        while sampling:
            peak = max(peak, sims[0].stats.in_flight + sims[1].stats.in_flight)
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*(chat(server, users[i % 4], f"load {i}")
                                     for i in range(60)))
    sampling = False
    await sampler
    assert all(status == 200 for status, _ in results), results
    assert sims[0].stats.max_in_flight <= 3 and sims[1].stats.max_in_flight <= 5
    assert peak <= 8
    # The load was larger than the limits: the busier replica reached its own.
    assert max(sims[0].stats.max_in_flight, sims[1].stats.max_in_flight) >= 3
    print(f"\nmost in flight: {sims[0].stats.max_in_flight} of 3, "
          f"{sims[1].stats.max_in_flight} of 5, {peak} together of 8 workers")


@pytest.mark.parametrize("where", ["userinfo", "api_key"])
async def test_metrics_show_each_replica_and_no_credential_anywhere(
        sim_cluster: Sims, serve: Serve, caplog: pytest.LogCaptureFixture, where: str) -> None:
    caplog.set_level(logging.DEBUG)
    sims = await sim_cluster(2)
    secret = "s3cret-Pa55word-xyz"
    entry = model("chat", sims)
    first = entry["replicas"][0]
    if where == "userinfo":
        first["url"] = f"http://alice:{secret}@127.0.0.1:{sims[0].port}/v1"
    else:
        sims[0].settings.api_key = secret
        first["api_key"] = secret
    server = await serve([entry], routing=ROUTING)
    admin, users = await users_of(server, 2)
    # A 503 before the first token is moved to the other replica: a failover to count.
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{sims[0].root_url}/sim/faults",
                          json={"mode": "503", "count": 2}) as resp:
            assert resp.status == 200

    async def failed_over() -> bool:
        status, body = await chat(server, users[0], "hello")
        assert status == 200, body
        return _value(await metrics_text(server),
                      'chatgate_model_failovers_total{model="chat"}') >= 1

    await until(failed_over, what="a failover")
    await sims[0].down()  # its state and reason now reach /ready, /metrics and the log
    _, ready = await until(lambda: _down(server, admin, sims), what="replica 0 seen down")
    text = await metrics_text(server)
    shown = f"http://{'***@' if where == 'userinfo' else ''}127.0.0.1:{sims[0].port}/v1"
    labels = f'model="chat",replica="{shown}"'
    assert f'chatgate_replica_state{{{labels},state="down"}} 1.0' in text
    assert _value(text, f"chatgate_replica_requests_total{{{labels}}}") >= 1
    other = f'model="chat",replica="http://127.0.0.1:{sims[1].port}/v1"'
    assert _value(text, f"chatgate_replica_first_token_seconds_count{{{other}}}") >= 1
    assert 'chatgate_model_affinity_total{model="chat",result="new"}' in text
    assert replica_of(ready, "chat", sims[0])["url"] == shown
    for place, content in (("/metrics", text), ("/ready", str(ready)), ("log", caplog.text)):
        assert secret not in content, place
        assert "alice" not in content, place


async def _down(server: Running, admin: User, sims: SimCluster) -> Any:
    _, ready = await get(server, "/ready", admin)
    return (True, ready) if replica_of(ready, "chat", sims[0])["state"] == "down" else None


def _value(text: str, series: str) -> float:
    """A sample's value in Prometheus text (0 when absent)."""
    match = re.search(re.escape(series) + r" ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
