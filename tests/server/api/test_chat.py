"""POST /api/chat end to end: real app, real SQLite, the simulator over TCP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server import keys
from server.runner import start
from tests.support.app import User, error_of, make_config
from tests.support.sse import collect, events, text_of
from vllm_sim import SimServer


async def sim(simulator: SimServer, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the simulator's control API."""
    async with aiohttp.ClientSession() as s:
        if body is None:
            async with s.get(simulator.root_url + path) as resp:
                return await resp.json()
        async with s.post(simulator.root_url + path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()




async def chat(s: aiohttp.ClientSession, user: User, **body: Any) -> aiohttp.ClientResponse:
    """POST /api/chat as the user."""
    return await s.post("/api/chat", json=body, headers=user.headers)


async def messages_of(s: aiohttp.ClientSession, user: User, conv: int) -> list[dict[str, Any]]:
    """The stored messages of a conversation."""
    async with s.get(f"/api/conversations/{conv}", headers=user.headers) as resp:
        assert resp.status == 200
        return (await resp.json())["messages"]


async def test_reply_is_stored_and_history_is_sent(http, register, simulator) -> None:
    user = await register()
    async with await chat(http, user, message="My name is Ada.") as resp:
        assert resp.status == 200
        first = await resp.json()
    conv = first["conversation_id"]
    assert first["message"]["role"] == "assistant" and first["message"]["status"] == "complete"
    assert first["usage"]["completion_tokens"] > 0
    async with await chat(http, user, message="What is my name?", conversation_id=conv) as resp:
        second = await resp.json()
    sent = (await sim(simulator, "/sim/requests"))[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "My name is Ada."
    assert sent[2]["content"] == first["message"]["content"]
    assert sent[3]["content"] == "What is my name?"
    stored = await messages_of(http, user, conv)
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "My name is Ada."), ("assistant", first["message"]["content"]),
        ("user", "What is my name?"), ("assistant", second["message"]["content"])]
    async with http.get(f"/api/conversations/{conv}", headers=user.headers) as resp:
        assert (await resp.json())["title"] == "My name is Ada."


async def test_stream_events_and_stored_reply(http, register) -> None:
    user = await register()
    async with await chat(http, user, message="stream please", stream=True) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        stream = await collect(resp)
    names = [name for name, _ in stream]
    assert names[0] == "meta" and names[-1] == "done"
    assert "message" in names and "error" not in names
    meta, done = stream[0][1], stream[-1][1]
    stored = await messages_of(http, user, meta["conversation_id"])
    assert stored[0]["id"] == meta["user_message_id"]
    assert stored[1]["id"] == done["message_id"]
    assert stored[1]["content"] == text_of(stream) != ""
    assert done["finish_reason"] == "stop" and done["usage"]["total_tokens"] > 0


async def test_two_users_never_mix(http, register, simulator) -> None:
    await sim(simulator, "/sim/config", {"echo": True})
    alice, bob = await register(), await register()

    async def talk(user: User, n: int) -> tuple[int, list[str]]:
        conv, said = None, []
        for i in range(n):
            text = f"{user.name} says {i}"
            body: dict[str, Any] = {"message": text}
            if conv:
                body["conversation_id"] = conv
            async with await chat(http, user, **body) as resp:
                reply = await resp.json()
            assert reply["message"]["content"] == text  # echo: our own words come back
            conv = reply["conversation_id"]
            said.append(text)
        return conv, said

    (ca, sa), (cb, sb) = await asyncio.gather(talk(alice, 6), talk(bob, 6))
    for user, conv, said in ((alice, ca, sa), (bob, cb, sb)):
        contents = [m["content"] for m in await messages_of(http, user, conv)]
        assert contents == [x for t in said for x in (t, t)]
    async with http.get(f"/api/conversations/{cb}", headers=alice.headers) as resp:
        await error_of(resp, 404, "not_found")


async def test_queue_full_is_immediate_503_and_stores_nothing(custom, register,
                                                                simulator) -> None:
    await sim(simulator, "/sim/config", {"ttft_ms": 2000})
    running = await custom(queue={"workers": 1, "max_size": 2, "max_per_user": 0})
    user = await register()
    async with aiohttp.ClientSession(running.url) as s:
        pool = running.app[keys.POOL]
        busy = [asyncio.create_task(chat(s, user, message="running"))]
        while pool.stats.running < 1:
            await asyncio.sleep(0.01)
        busy += [asyncio.create_task(chat(s, user, message=f"waiting {i}")) for i in range(2)]
        while pool.queue.qsize() < 2:
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        began = loop.time()
        async with await chat(s, user, message="one too many") as resp:
            error = await error_of(resp, 503, "queue_full")
            assert resp.headers["Retry-After"]
        assert loop.time() - began < 1.5  # answered without waiting for the 2 s model
        # Refused before it was stored: no dangling message, the client simply resends.
        assert "user_message_id" not in error
        async with s.get("/api/search?q=many", headers=user.headers) as resp:
            assert (await resp.json())["results"] == []
        async with s.get("/api/conversations", headers=user.headers) as resp:
            assert len((await resp.json())["conversations"]) == 3
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)


async def test_a_stored_message_always_has_its_place(custom, register, simulator) -> None:
    """Places are reserved before storing, so the store can never be followed by queue_full."""
    await sim(simulator, "/sim/config", {"ttft_ms": 300})
    running = await custom(queue={"workers": 1, "max_size": 5, "max_per_user": 0})
    users = [await register() for _ in range(3)]
    async with aiohttp.ClientSession(running.url) as s:
        async def one(i: int) -> dict[str, Any]:
            async with await chat(s, users[i % 3], message=f"race {i}") as resp:
                return {"status": resp.status, **(await resp.json())}
        results = await asyncio.gather(*(one(i) for i in range(30)))
    refused = [r for r in results if r["status"] == 503]
    assert refused and all("user_message_id" not in r["error"] for r in refused)
    assert sum(1 for r in results if r["status"] == 200) == 30 - len(refused)


async def test_upstream_concurrency_never_exceeds_workers(custom, register, simulator) -> None:
    await sim(simulator, "/sim/config", {"ttft_ms": 100})
    running = await custom(queue={"workers": 3, "max_size": 64})
    await sim(simulator, "/sim/reset", {})
    users = [await register() for _ in range(4)]
    async with aiohttp.ClientSession(running.url) as s:
        async def one(user: User, i: int) -> int:
            async with await chat(s, user, message=f"hi {i}") as resp:
                return resp.status
        statuses = await asyncio.gather(*(one(users[i % 4], i) for i in range(16)))
    assert statuses == [200] * 16
    assert simulator.stats.max_running == 3
    # One keep-alive pool shared by all workers: a connection per worker, reused (and the
    # replica prober's own two, for the model list and /metrics).
    assert simulator.stats.connections_opened <= 3 + 2


async def test_disconnect_while_queued_never_reaches_upstream(custom, register, simulator) -> None:
    await sim(simulator, "/sim/config", {"ttft_ms": 800})
    running = await custom(queue={"workers": 1})
    await sim(simulator, "/sim/reset", {})
    user = await register()
    async with aiohttp.ClientSession(running.url) as s:
        first = asyncio.create_task(chat(s, user, message="first"))
        pool = running.app[keys.POOL]
        while pool.stats.running < 1:
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession(running.url) as leaver:
            resp = await chat(leaver, user, message="second", stream=True)
            async for name, data in events(resp):
                if name == "queued":
                    assert data["position"] == 0
                    break
            resp.close()  # the client goes away while its job waits
        while pool.queue.qsize():
            await asyncio.sleep(0.01)
        async with await first as resp:
            assert resp.status == 200
        await asyncio.sleep(0.2)
    stats = await sim(simulator, "/sim/stats")
    assert stats["requests_total"] == 1


async def test_disconnect_while_streaming_aborts_upstream(http, register, simulator,
                                                          server) -> None:
    await sim(simulator, "/sim/config", {"tpot_ms": 30, "reply_tokens": 200})
    await sim(simulator, "/sim/reset", {})
    user = await register()
    resp = await chat(http, user, message="long story", stream=True)
    deltas, conv = 0, None
    async for name, data in events(resp):
        if name == "meta":
            conv = data["conversation_id"]
        if name == "message":
            deltas += 1
            if deltas == 3:
                break
    resp.close()
    for _ in range(200):
        stats = await sim(simulator, "/sim/stats")
        if stats["aborted"] == 1 and stats["running"] == 0:
            break
        await asyncio.sleep(0.02)
    assert stats["aborted"] == 1 and stats["completed"] == 0
    for _ in range(100):
        stored = await messages_of(http, user, conv)
        if len(stored) == 2:
            break
        await asyncio.sleep(0.02)
    assert stored[1]["role"] == "assistant" and stored[1]["status"] == "incomplete"
    assert stored[1]["content"].startswith("Simulated")


async def test_retries_before_first_token(http, register, simulator) -> None:
    await sim(simulator, "/sim/reset", {})
    await sim(simulator, "/sim/faults", {"mode": "503", "count": 2})
    user = await register()
    async with await chat(http, user, message="try again") as resp:
        assert resp.status == 200
    assert (await sim(simulator, "/sim/stats"))["requests_total"] == 3
    await sim(simulator, "/sim/faults", {"mode": "reset", "count": 1, "after_tokens": 0})
    async with await chat(http, user, message="reset before any token") as resp:
        assert resp.status == 200
    assert (await sim(simulator, "/sim/stats"))["requests_total"] == 5


async def test_no_retry_after_first_token(http, register, simulator) -> None:
    await sim(simulator, "/sim/reset", {})
    await sim(simulator, "/sim/faults", {"mode": "reset", "count": 1, "after_tokens": 3})
    user = await register()
    async with await chat(http, user, message="cut me off", stream=True) as resp:
        stream = await collect(resp)
    assert stream[-1][0] == "error"
    assert stream[-1][1]["error"]["code"] == "upstream_unavailable"
    assert (await sim(simulator, "/sim/stats"))["requests_total"] == 1
    stored = await messages_of(http, user, stream[0][1]["conversation_id"])
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["status"] == "error" and stored[1]["content"] == text_of(stream) != ""
    assert stream[-1][1]["error"]["partial_message_id"] == stored[1]["id"]


@pytest.mark.parametrize(("mode", "status", "code"), [
    ("500", 502, "upstream_unavailable"),
    ("hang", 504, "upstream_timeout"),
])
async def test_upstream_failure_statuses_keep_user_message(
        custom, register, simulator, mode: str, status: int, code: str) -> None:
    running = await custom(llm={"first_token_timeout_s": 0.5, "retries": 0})
    await sim(simulator, "/sim/reset", {})
    await sim(simulator, "/sim/faults", {"mode": mode, "count": 1})
    user = await register()
    async with aiohttp.ClientSession(running.url) as s:
        async with await chat(s, user, message=f"fault {mode}") as resp:
            error = await error_of(resp, status, code)
        stored = await messages_of(s, user, error["conversation_id"])
    # The failure is kept with the message, so a page loaded later shows it (and Retry).
    assert [(m["role"], m["content"]) for m in stored] == [("user", f"fault {mode}"),
                                                            ("assistant", "")]
    assert stored[1]["status"] == "error"
    assert stored[1]["error"] == {"code": code, "message": error["message"]}
    assert error["partial_message_id"] == stored[1]["id"]


@pytest.mark.parametrize(("mode", "code"), [
    ("malformed", "upstream_unavailable"),
    ("hang_after_first", "upstream_timeout"),
])
async def test_stream_faults_end_with_error_event(custom, register, simulator, mode: str,
                                                  code: str) -> None:
    running = await custom(llm={"first_token_timeout_s": 0.5})
    await sim(simulator, "/sim/faults", {"mode": mode, "count": 1, "after_tokens": 2})
    user = await register()
    async with aiohttp.ClientSession(running.url) as s:
        async with await chat(s, user, message=f"fault {mode}", stream=True) as resp:
            stream = await collect(resp)
        assert stream[-1][0] == "error" and stream[-1][1]["error"]["code"] == code
        stored = await messages_of(s, user, stream[0][1]["conversation_id"])
    assert stored[-1]["role"] == "assistant" and stored[-1]["status"] == "error"
    assert stored[-1]["content"] == text_of(stream) != ""
    assert running.app[keys.POOL].live_workers == 4


async def test_per_user_rate_limit(custom, register) -> None:
    running = await custom(limits={"chat_per_user_per_minute": 2})
    alice, bob = await register(), await register()
    async with aiohttp.ClientSession(running.url) as s:
        for _ in range(2):
            async with await chat(s, alice, message="hi") as resp:
                assert resp.status == 200
        async with await chat(s, alice, message="hi again") as resp:
            await error_of(resp, 429, "rate_limited")
            assert int(resp.headers["Retry-After"]) >= 1
        async with await chat(s, bob, message="my turn") as resp:
            assert resp.status == 200


async def test_upstream_down_is_a_quick_503_that_stores_nothing(tmp_path: Path,
                                                               register) -> None:
    running = await start(make_config(tmp_path, "http://127.0.0.1:9/v1"))
    try:
        async with aiohttp.ClientSession(running.url) as s:
            async with s.post("/api/auth/register",
                              json={"username": "lonely", "password": "quiet-lantern-42"}) as resp:
                user = User(await resp.json(), "quiet-lantern-42")
            async with await chat(s, user, message="anyone there?") as resp:
                error = await error_of(resp, 503, "model_unavailable")
                assert resp.headers["Retry-After"] == "5" and "conversation_id" not in error
            async with s.get("/api/conversations", headers=user.headers) as resp:
                assert (await resp.json())["conversations"] == []  # refused before storing
            async with s.get("/ready") as resp:
                body = await resp.json()
                assert resp.status == 503 and body == {"status": "unavailable"}
    finally:
        await running.stop()


async def test_shutdown_finishes_running_and_refuses_queued(custom, register, simulator) -> None:
    await sim(simulator, "/sim/config", {"tpot_ms": 20, "reply_tokens": 30})
    running = await custom(queue={"workers": 1})
    user = await register()
    async with aiohttp.ClientSession(running.url) as s:
        first = await chat(s, user, message="finish me", stream=True)
        pool = running.app[keys.POOL]
        while pool.stats.running < 1:
            await asyncio.sleep(0.01)
        second = await chat(s, user, message="queued behind", stream=True)
        while pool.queue.qsize() < 1:
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(running.stop())
        first_stream, second_stream = await asyncio.gather(collect(first), collect(second))
        await stopping
    assert first_stream[-1][0] == "done"
    assert second_stream[-1] == ("error", {"error": {
        "code": "shutting_down", "message": "the server is shutting down",
        "conversation_id": second_stream[0][1]["conversation_id"],
        "user_message_id": second_stream[0][1]["user_message_id"]}})


@pytest.mark.parametrize("body", [
    {}, {"message": ""}, {"message": 5}, {"message": "x" * 100_001}, {"message": "a\x00b"},
    {"message": "hi", "conversation_id": "abc"}, {"message": "hi", "conversation_id": -1},
    {"message": "hi", "stream": "yes"}, {"message": "hi", "max_tokens": 0},
    {"message": "hi", "max_tokens": 1.5}, {"message": "hi", "temperature": 3},
    {"message": "hi", "extra": 1},
])
async def test_invalid_chat_bodies(http, register, body: dict[str, Any]) -> None:
    user = await register()
    async with await chat(http, user, **body) as resp:
        await error_of(resp, 400, "invalid_request")


async def test_chat_in_someone_elses_conversation_is_404(http, register) -> None:
    alice, bob = await register(), await register()
    async with await chat(http, alice, message="private") as resp:
        conv = (await resp.json())["conversation_id"]
    async with await chat(http, bob, message="let me in", conversation_id=conv) as resp:
        await error_of(resp, 404, "not_found")
    assert [m["content"] for m in await messages_of(http, alice, conv)][0] == "private"
    assert len(await messages_of(http, alice, conv)) == 2


async def test_regenerate_keeps_the_last_reply_as_an_alternative(http, register,
                                                                 simulator) -> None:
    user = await register()
    async with await chat(http, user, message="first question") as resp:
        conv = (await resp.json())["conversation_id"]
    async with await chat(http, user, message="second question", conversation_id=conv) as resp:
        old = (await resp.json())["message"]
    async with await chat(http, user, conversation_id=conv, regenerate=True) as resp:
        assert resp.status == 200
        new = (await resp.json())["message"]
    stored = await messages_of(http, user, conv)
    assert [m["content"] for m in stored][:3] == ["first question", stored[1]["content"],
                                                  "second question"]
    assert len(stored) == 4 and stored[3]["id"] == new["id"] != old["id"]
    assert stored[3]["siblings"] == [old["id"], new["id"]]
    sent = (await sim(simulator, "/sim/requests"))[-1]["messages"]
    assert [m["content"] for m in sent][-1] == "second question"
    assert sum(1 for m in sent if m["content"] == "second question") == 1


async def test_edit_a_user_message_and_resend(http, register, simulator) -> None:
    user = await register()
    async with await chat(http, user, message="typo qestion") as resp:
        conv = (await resp.json())["conversation_id"]
    stored = await messages_of(http, user, conv)
    async with await chat(http, user, conversation_id=conv, message="fixed question",
                          edit_message_id=stored[0]["id"], stream=True) as resp:
        stream = await collect(resp)
    assert stream[-1][0] == "done"
    after = await messages_of(http, user, conv)
    assert [m["content"] for m in after][:1] == ["fixed question"]
    assert after[0]["siblings"] == [stored[0]["id"], after[0]["id"]]
    assert len(after) == 2 and after[1]["id"] == stream[-1][1]["message_id"]
    async with http.get("/api/search?q=qestion", headers=user.headers) as resp:
        # The old version is kept, on its own branch, and still found.
        assert stored[0]["id"] in [h["message_id"] for h in (await resp.json())["results"]]
    # Only a user's message can be edited; a reply is 404, as is another's conversation.
    async with await chat(http, user, conversation_id=conv, message="x",
                          edit_message_id=after[1]["id"]) as resp:
        await error_of(resp, 404)
    bob = await register()
    async with await chat(http, bob, conversation_id=conv, regenerate=True) as resp:
        await error_of(resp, 404)
    async with await chat(http, bob, conversation_id=conv, message="x",
                          edit_message_id=after[0]["id"]) as resp:
        await error_of(resp, 404)
    assert len(await messages_of(http, user, conv)) == 2


async def test_render_html_is_sanitised(http, register, simulator) -> None:
    await sim(simulator, "/sim/config", {"echo": True})
    user = await register()
    hostile = "**bold** <img src=x onerror=alert(1)> [a](javascript:alert(1)) [b](https://ok.example)"
    async with await chat(http, user, message=hostile, render="html") as resp:
        reply = await resp.json()
    html = reply["message"]["html"]
    assert "<strong>bold</strong>" in html and "<img" not in html
    assert "&lt;img" in html and 'href="javascript' not in html
    assert 'href="https://ok.example"' in html and 'rel="noopener noreferrer"' in html
    async with http.get(f"/api/conversations/{reply['conversation_id']}?render=html",
                        headers=user.headers) as resp:
        messages = (await resp.json())["messages"]
    assert "html" not in messages[0] and messages[1]["html"] == html


async def test_deleting_the_conversation_mid_stream_ends_the_stream(http, register,
                                                                    simulator) -> None:
    await sim(simulator, "/sim/config", {"tpot_ms": 20, "reply_tokens": 20})
    user = await register()
    async with await chat(http, user, message="going away", stream=True) as resp:
        stream = []
        async for name, data in events(resp):
            stream.append((name, data))
            if name == "message" and len(stream) == 3:
                async with http.delete(f"/api/conversations/{stream[0][1]['conversation_id']}",
                                       headers=user.headers) as deleted:
                    assert deleted.status == 204
    assert stream[-1][0] == "error" and stream[-1][1]["error"]["code"] == "not_found"


async def test_too_many_tokens_for_the_model_is_the_clients_400(http, register) -> None:
    user = await register()
    async with await chat(http, user, message="long please", max_tokens=32768) as resp:
        error = await error_of(resp, 400, "upstream_rejected")
    assert error["user_message_id"] and error["conversation_id"]


async def test_usage_is_stored_with_the_reply(http, register) -> None:
    user = await register()
    async with await chat(http, user, message="count my tokens") as resp:
        reply = await resp.json()
    stored = await messages_of(http, user, reply["conversation_id"])
    assert "usage" not in stored[0]
    assert stored[1]["usage"] == reply["usage"] == reply["message"]["usage"]
    assert stored[1]["usage"]["completion_tokens"] > 0


async def test_reply_finished_while_the_client_left_is_kept_complete(http, register,
                                                                    server) -> None:
    """The job finished, but its last events never reached the client before it went away."""
    user = await register()
    service = server.app[keys.CHAT]
    turn = await service.start(user.id, "leave early", None)
    follower = turn.follow()
    async for _ in follower:
        break  # the first piece reached the client, then the client stalls...
    while turn.job.state != "done":
        await asyncio.sleep(0.01)
    await follower.aclose()  # ...and goes away
    await follower.aclose()  # twice, even: stored once (by the turn's owner, not the follower)
    stored = await messages_of(http, user, turn.conversation_id)
    for _ in range(500):  # the owner stores just after the job's end; wait for it (bounded)
        if len(stored) > 1:
            break
        await asyncio.sleep(0.01)
        stored = await messages_of(http, user, turn.conversation_id)
    assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"),
                                                          ("assistant", "complete")]
    assert stored[1]["content"].startswith("Simulated") and stored[1]["usage"]
