"""Turns that outlive their connection: numbered events, re-attaching, stopping, the grace
period, against the real app and the echo simulator over TCP."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.support.app import User, error_of
from tests.support.sse import numbered
from vllm_sim import SimServer

WORDS = " ".join(f"w{i}" for i in range(40))  # the echo simulator sends it back word by word
Event = tuple[str, Any, int | None]


async def configure(simulator: SimServer, **knobs: Any) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{simulator.root_url}/sim/config", json=knobs) as resp:
            assert resp.status == 200, await resp.text()
        async with s.post(f"{simulator.root_url}/sim/reset", json={}) as resp:
            assert resp.status == 200


async def stats(simulator: SimServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{simulator.root_url}/sim/stats") as resp:
            data: dict[str, Any] = await resp.json()
            return data


async def start_turn(s: aiohttp.ClientSession, user: User, take: int,
                     **body: Any) -> tuple[list[Event], aiohttp.ClientResponse]:
    """POST /api/chat streamed; its events up to the `take`-th delta (meta first, queue
    positions skipped), the response open."""
    resp = await s.post("/api/chat", json={"message": WORDS, "stream": True, **body},
                        headers=user.headers)
    assert resp.status == 200, await resp.text()
    got: list[Event] = []
    async for event in numbered(resp):
        if event[0] != "queued":
            got.append(event)
        if sum(1 for name, _, _ in got if name == "message") >= take:
            break
    return got, resp


async def follow(s: aiohttp.ClientSession, user: User, turn_id: str,
                 last: int | None = None) -> list[Event]:
    """GET /api/turns/{id}/events to the end."""
    headers = dict(user.headers)
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    async with s.get(f"/api/turns/{turn_id}/events", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return [event async for event in numbered(resp)]


def text(events: list[Event]) -> str:
    return "".join(data["delta"] for name, data, _ in events if name == "message")


def ids(events: list[Event]) -> list[int]:
    return [ident for name, _, ident in events if ident is not None]


async def until(cond: Any, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.05)):  # a safety net, not a timing assertion
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_re_attaching_after_a_drop_gets_the_rest_nothing_doubled(
        http: aiohttp.ClientSession, register: Any, simulator: SimServer) -> None:
    await configure(simulator, echo=True, tpot_ms=15, ttft_ms=5)
    user = await register()
    first, resp = await start_turn(http, user, 3)
    resp.close()  # the page went away mid-reply
    name, meta, ident = first[0]
    assert name == "meta" and ident == 0 and meta["turn_id"]
    assert [n for n, _, _ in first[1:]] == ["message"] * 3
    rest = await follow(http, user, meta["turn_id"], ids(first)[-1])
    assert rest[-1][0] == "done" and all(n != "meta" for n, _, _ in rest)
    assert text(first) + text(rest) == WORDS  # nothing doubled, nothing missing
    every = ids(first) + ids(rest)
    assert every == sorted(set(every)) and every[0] == 0  # increasing within the turn
    stored = await http.get(f"/api/conversations/{meta['conversation_id']}",
                            headers=user.headers)
    body = await stored.json()
    assert body["messages"][-1]["content"] == WORDS and body["running_turn_id"] is None


async def test_re_attaching_without_an_id_gets_the_whole_reply_and_two_followers_agree(
        http: aiohttp.ClientSession, register: Any, simulator: SimServer) -> None:
    await configure(simulator, echo=True, tpot_ms=15, ttft_ms=5)
    user = await register()
    first, resp = await start_turn(http, user, 3)
    turn_id, conv = first[0][1]["turn_id"], first[0][1]["conversation_id"]
    async with http.get(f"/api/conversations/{conv}", headers=user.headers) as got:
        assert (await got.json())["running_turn_id"] == turn_id  # a loaded page attaches
    async with http.get("/api/conversations", headers=user.headers) as got:
        assert (await got.json())["conversations"][0]["running_turn_id"] == turn_id
    tab1, tab2 = await asyncio.gather(follow(http, user, turn_id), follow(http, user, turn_id))
    resp.close()
    for tab in (tab1, tab2):
        assert tab[0][0] == "meta" and tab[0][1]["turn_id"] == turn_id
        assert text(tab) == WORDS and tab[-1][0] == "done"
    # A finished turn can be followed a while longer: the same reply, at once.
    again = await follow(http, user, turn_id)
    assert text(again) == WORDS and again[-1][0] == "done"


async def test_a_turn_nobody_comes_back_for_is_aborted_after_the_grace_period(
        http: aiohttp.ClientSession, register: Any, simulator: SimServer) -> None:
    await configure(simulator, echo=True, tpot_ms=40, ttft_ms=5)
    user = await register()
    first, resp = await start_turn(http, user, 3)
    resp.close()
    conv = first[0][1]["conversation_id"]

    async def aborted() -> bool:
        return bool((await stats(simulator))["aborted"] == 1)

    await until(aborted)  # the test config's grace period is 0.3 s
    async with http.get(f"/api/conversations/{conv}", headers=user.headers) as got:
        reply = (await got.json())["messages"][-1]
    assert reply["status"] == "incomplete" and WORDS.startswith(reply["content"])
    assert 0 < len(reply["content"]) < len(WORDS)


async def test_stop_aborts_at_once_and_keeps_what_came(
        http: aiohttp.ClientSession, register: Any, simulator: SimServer) -> None:
    await configure(simulator, echo=True, tpot_ms=40, ttft_ms=5)
    user, other = await register(), await register()
    first, resp = await start_turn(http, user, 3)
    turn_id, conv = first[0][1]["turn_id"], first[0][1]["conversation_id"]
    for path in (f"/api/turns/{turn_id}/events", f"/api/turns/{turn_id}/stop"):
        method = http.post if path.endswith("stop") else http.get
        async with method(path, headers=other.headers) as got:
            await error_of(got, 404, "turn_not_found")  # another's turn: as if none
    async with http.post(f"/api/turns/{turn_id}/stop", headers=user.headers) as got:
        assert got.status == 202 and await got.json() == {"stopped": True}
    rest = [event async for event in numbered(resp)]
    assert rest[-1][0] == "error" and rest[-1][1]["error"]["code"] == "cancelled"
    assert (await stats(simulator))["aborted"] == 1
    async with http.post(f"/api/turns/{turn_id}/stop", headers=user.headers) as got:
        assert got.status == 202 and await got.json() == {"stopped": False}
    async with http.get(f"/api/conversations/{conv}", headers=user.headers) as got:
        reply = (await got.json())["messages"][-1]
    assert reply["status"] == "incomplete" and reply["content"] == text(first) + text(rest)


async def test_a_bad_last_event_id_is_a_400_and_an_unknown_turn_a_404(
        http: aiohttp.ClientSession, register: Any, simulator: SimServer) -> None:
    await configure(simulator, echo=True, tpot_ms=1, ttft_ms=1)
    user = await register()
    async with http.get("/api/turns/nope/events", headers=user.headers) as got:
        await error_of(got, 404, "turn_not_found")
    first, resp = await start_turn(http, user, 1)
    resp.close()
    turn_id = first[0][1]["turn_id"]
    for bad in ("x", "-1", "1e3", "9" * 20):
        async with http.get(f"/api/turns/{turn_id}/events", params={"last_event_id": bad},
                            headers=user.headers) as got:
            await error_of(got, 400, "invalid_request")
