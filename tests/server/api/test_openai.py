"""The /v1 front door driven by the official `openai` package, as a team's programs use it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from server import keys
from server.runner import Running, start
from tests.support.app import User, make_config
from vllm_sim import SimServer

MODEL = "vllm-simulator"
MESSAGES = [{"role": "user", "content": "hello there"}]
MakeKey = Callable[..., Awaitable[str]]


@pytest.fixture
async def make_key(server: Running, register: Callable[..., Awaitable[User]]) -> MakeKey:
    """A new API key (of a new user unless one is given) with the given limits."""

    async def make(user: User | None = None, **fields: Any) -> str:
        owner = user or await register()
        async with aiohttp.ClientSession(server.url) as s:
            async with s.post("/api/keys", json={"name": "test", **fields},
                              headers=owner.headers) as resp:
                assert resp.status == 201, await resp.text()
                return str((await resp.json())["key"])

    return make


def client(server: Running, key: str) -> openai.AsyncOpenAI:
    """The official client, pointed at chatgate, without retries (so errors show)."""
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


async def last_request(sim: SimServer) -> dict[str, Any]:
    """The body the simulator last received."""
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{sim.root_url}/sim/requests") as resp:
            entries = await resp.json()
    entries = entries.get("requests", entries) if isinstance(entries, dict) else entries
    return entries[-1]


async def test_models_list_is_the_model_servers(server: Running, make_key: MakeKey) -> None:
    models = await client(server, await make_key()).models.list()
    assert [m.id for m in models.data] == [MODEL]


async def test_chat_completion_and_its_usage(server: Running, make_key: MakeKey) -> None:
    reply = await client(server, await make_key()).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
    assert reply.object == "chat.completion" and reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


async def test_unknown_fields_reach_the_model_server_untouched(
        server: Running, simulator: SimServer, make_key: MakeKey) -> None:
    extra = {"top_k": 7, "min_p": 0.05, "repetition_penalty": 1.1, "guided_choice": ["a", "b"],
             "chatgate_never_heard_of_this": {"nested": [1, 2]}}
    await client(server, await make_key()).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, seed=42, stop=["zzz"], user="u-1",
        response_format={"type": "text"}, extra_body=extra)  # type: ignore[arg-type]
    sent = await last_request(simulator)
    body = sent.get("body", sent)
    for name, value in {**extra, "seed": 42, "stop": ["zzz"], "user": "u-1",
                        "response_format": {"type": "text"}, "max_tokens": 3}.items():
        assert body[name] == value, name
    assert body["messages"] == MESSAGES and body["model"] == MODEL


async def test_stream_without_usage_asked_shows_none_but_counts_it(
        server: Running, make_key: MakeKey, register: Callable[..., Awaitable[User]]) -> None:
    user = await register()
    stream = await client(server, await make_key(user)).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, stream=True)  # type: ignore[arg-type]
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)  # no usage-only chunk was passed on
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text and chunks[-1].choices[0].finish_reason == "length"
    async with aiohttp.ClientSession(server.url) as s:
        async with s.get("/api/usage", headers=user.headers) as resp:
            usage = await resp.json()
    assert usage["totals"]["requests"] == 1 and usage["totals"]["completion_tokens"] == 4
    assert usage["days"][0]["key_id"] > 0  # counted per key


async def test_stream_with_usage_asked_gets_it(server: Running, make_key: MakeKey) -> None:
    stream = await client(server, await make_key()).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, stream=True,
        stream_options={"include_usage": True})  # type: ignore[arg-type]
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].choices == []


async def test_wrong_key_is_authentication_error(server: Running) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        await client(server, "cg-000000000000nope").models.list()
    assert info.value.status_code == 401
    assert info.value.body["code"] == "unauthorized"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        await client(server, "not-even-a-key").chat.completions.create(
            model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]


async def test_unknown_model_is_404_model_not_found(server: Running, make_key: MakeKey) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client(server, await make_key()).chat.completions.create(
            model="gpt-nope", messages=MESSAGES)  # type: ignore[arg-type]
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    assert body["type"] == "invalid_request_error" and body["param"] == "model"


async def test_requests_per_minute_is_rate_limit_error_with_retry_after(
        server: Running, make_key: MakeKey) -> None:
    api = client(server, await make_key(rpm=2))
    for _ in range(2):
        await api.chat.completions.create(model=MODEL, messages=MESSAGES,
                                          max_tokens=1)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as info:
        await api.chat.completions.create(model=MODEL, messages=MESSAGES,
                                          max_tokens=1)  # type: ignore[arg-type]
    retry = info.value.response.headers.get("Retry-After")
    assert retry is not None and int(retry) >= 1


async def test_tokens_per_minute_counts_max_tokens_up_front(
        server: Running, make_key: MakeKey) -> None:
    api = client(server, await make_key(tpm=100))
    await api.chat.completions.create(model=MODEL, messages=MESSAGES,
                                      max_tokens=60)  # type: ignore[arg-type]
    # 60 asked, 8 used: the rest is given back, so a second 60 fits...
    await api.chat.completions.create(model=MODEL, messages=MESSAGES,
                                      max_tokens=60)  # type: ignore[arg-type]
    # ...but not two at once: a burst cannot overrun the allowance.
    with pytest.raises(openai.RateLimitError):
        await api.chat.completions.create(model=MODEL, messages=MESSAGES,
                                          max_tokens=95)  # type: ignore[arg-type]


async def test_a_deleted_key_is_dead_at_once_even_when_cached(
        server: Running, register: Callable[..., Awaitable[User]]) -> None:
    user = await register()
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/keys", json={"name": "doomed"}, headers=user.headers) as resp:
            created = await resp.json()
        api = client(server, created["key"])
        await api.models.list()  # now cached
        async with s.get("/api/keys", headers=user.headers) as resp:
            listed = (await resp.json())["keys"]
        assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
        assert listed[0]["last_used_at"] is not None
        async with s.delete(f"/api/keys/{created['id']}", headers=user.headers) as resp:
            assert resp.status == 204
    with pytest.raises(openai.AuthenticationError):
        await api.models.list()


async def test_another_users_key_id_is_404(server: Running,
                                           register: Callable[..., Awaitable[User]]) -> None:
    owner, other = await register(), await register()
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/keys", json={"name": "mine"}, headers=owner.headers) as resp:
            key_id = (await resp.json())["id"]
        async with s.delete(f"/api/keys/{key_id}", headers=other.headers) as resp:
            assert resp.status == 404
        async with s.get("/api/keys", headers=owner.headers) as resp:
            assert [k["id"] for k in (await resp.json())["keys"]] == [key_id]


async def test_a_key_works_wherever_a_token_does(server: Running, make_key: MakeKey) -> None:
    key = await make_key()
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/chat", json={"message": "via a key"}, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        async with s.get("/api/auth/verify", headers=headers) as resp:
            assert resp.status == 200


@pytest.fixture
async def budget_server(tmp_path: Path, simulator: SimServer) -> AsyncIterator[Running]:
    """A server whose users may use 10 tokens a month."""
    running = await start(make_config(tmp_path, simulator.url,
                                      limits={"monthly_tokens_per_user": 10}))
    yield running
    await running.stop()


async def test_over_the_monthly_budget_is_429_quota_exceeded_on_both_apis(
        budget_server: Running) -> None:
    async with aiohttp.ClientSession(budget_server.url) as s:
        async with s.post("/api/auth/register",
                          json={"username": "spender", "password": "pass phrase"}) as resp:
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with s.post("/api/keys", json={"name": "k"}, headers=headers) as resp:
            key = (await resp.json())["key"]
        api = client(budget_server, key)
        await api.chat.completions.create(model=MODEL, messages=MESSAGES,
                                          max_tokens=15)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as info:
            await api.chat.completions.create(model=MODEL, messages=MESSAGES,
                                              max_tokens=1)  # type: ignore[arg-type]
        assert info.value.body["code"] == "quota_exceeded"  # type: ignore[index]
        assert info.value.body["type"] == "insufficient_quota"  # type: ignore[index]
        async with s.post("/api/chat", json={"message": "more?"}, headers=headers) as resp:
            assert resp.status == 429
            assert (await resp.json())["error"]["code"] == "quota_exceeded"


@pytest.fixture
async def full_server(tmp_path: Path, make_sim: Callable[..., Awaitable[SimServer]]
                      ) -> AsyncIterator[Running]:
    """A server with one worker, a queue of one, and a slow model."""
    sim = await make_sim(ttft_ms=2000, reply_tokens=2)
    running = await start(make_config(tmp_path, sim.url,
                                      queue={"workers": 1, "max_size": 1, "max_per_user": 0}))
    yield running
    await running.stop()


async def test_a_full_queue_is_a_503_the_client_maps(full_server: Running) -> None:
    async with aiohttp.ClientSession(full_server.url) as s:
        async with s.post("/api/auth/register",
                          json={"username": "crowd", "password": "pass phrase"}) as resp:
            token = (await resp.json())["access_token"]
        async with s.post("/api/keys", json={"name": "k"},
                          headers={"Authorization": f"Bearer {token}"}) as resp:
            key = (await resp.json())["key"]
    api = client(full_server, key)
    pool = full_server.app[keys.POOL]

    async def until(cond: Callable[[], bool]) -> None:
        for _ in range(1000):  # a safety net, not a timing assertion
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("never reached")

    running = []
    for wanted in (lambda: pool.stats.running == 1, lambda: pool.queue.qsize() == 1):
        running.append(asyncio.create_task(api.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=2)))  # type: ignore[arg-type]
        await until(wanted)  # one runs, then one waits: the queue is full
    with pytest.raises(openai.InternalServerError) as info:
        await api.chat.completions.create(model=MODEL, messages=MESSAGES,
                                          max_tokens=2)  # type: ignore[arg-type]
    assert info.value.status_code == 503
    assert info.value.body["code"] == "queue_full"  # type: ignore[index]
    for task in running:
        await task


async def test_legacy_completions_stream_and_not(server: Running, make_key: MakeKey) -> None:
    api = client(server, await make_key())
    whole = await api.completions.create(model=MODEL, prompt="Once upon", max_tokens=3)
    assert whole.object == "text_completion" and whole.choices[0].text
    assert whole.usage is not None and whole.usage.completion_tokens == 3
    stream = await api.completions.create(model=MODEL, prompt="Once upon", max_tokens=3,
                                          stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert all(c.usage is None for c in chunks)  # usage was not asked for


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


async def test_tool_calls_n_and_logprobs_come_back_as_the_model_sent_them(
        server: Running, simulator: SimServer, make_key: MakeKey) -> None:
    api = client(server, await make_key())
    called = await api.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required")  # type: ignore[arg-type]
    call = called.choices[0].message.tool_calls
    assert called.choices[0].finish_reason == "tool_calls"
    assert call and call[0].function.name == "get_weather"
    stream = await api.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice="required",
        stream=True)  # type: ignore[arg-type]
    deltas = [c.choices[0].delta for c in [chunk async for chunk in stream] if c.choices]
    assert any(d.tool_calls and d.tool_calls[0].function
               and d.tool_calls[0].function.name == "get_weather" for d in deltas)
    many = await api.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=2, logprobs=True, top_logprobs=2,
        max_tokens=3)  # type: ignore[arg-type]
    assert [c.index for c in many.choices] == [0, 1]
    assert all(c.logprobs and c.logprobs.content for c in many.choices)
    # Byte for byte what the simulator answers the same (seeded) request directly.
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "seed": 7, "n": 2}
    key = await make_key()
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{simulator.url}/chat/completions", json=body,
                          headers={"X-Request-Id": "same"}) as resp:
            direct = await resp.json()
        async with s.post(f"{server.url}/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {key}",
                                   "X-Request-Id": "same"}) as resp:
            through = await resp.json()
    for answer in (direct, through):
        answer.pop("created", None)
    assert through == direct


async def test_a_failed_request_counts_no_usage_and_is_a_502(
        server: Running, simulator: SimServer, register: Callable[..., Awaitable[User]]) -> None:
    user = await register()
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{simulator.root_url}/sim/faults",
                          json={"mode": "500", "count": 3}) as resp:
            assert resp.status == 200
    with pytest.raises(openai.InternalServerError) as info:
        await client(server, await make_key_for(server, user)).chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    assert info.value.status_code == 502
    async with aiohttp.ClientSession(server.url) as s:
        async with s.get("/api/usage", headers=user.headers) as resp:
            assert (await resp.json())["totals"]["requests"] == 0


async def make_key_for(server: Running, user: User) -> str:
    """A key of the given user."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/keys", json={"name": "k"}, headers=user.headers) as resp:
            return str((await resp.json())["key"])


async def test_a_client_that_leaves_mid_stream_stops_the_model(
        server: Running, simulator: SimServer, register: Callable[..., Awaitable[User]]) -> None:
    async with aiohttp.ClientSession() as s:
        for path, body in (("/sim/config", {"tpot_ms": 30, "reply_tokens": 200}),
                           ("/sim/reset", {})):
            async with s.post(f"{simulator.root_url}{path}", json=body) as resp:
                assert resp.status == 200
    user = await register()
    key = await make_key_for(server, user)
    async with aiohttp.ClientSession(server.url) as s:
        resp = await s.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": MODEL, "messages": MESSAGES, "stream": True})
        assert resp.status == 200
        seen = 0
        async for line in resp.content:
            seen += line.startswith(b"data: ")
            if seen == 3:
                break
        resp.close()
        for _ in range(200):
            async with s.get(f"{simulator.root_url}/sim/stats") as r:
                stats = await r.json()
            if stats["aborted"] == 1 and stats["running"] == 0:
                break
            await asyncio.sleep(0.02)
    assert stats["aborted"] == 1 and stats["completed"] == 0


async def test_stream_options_that_are_not_an_object_are_a_400_and_hold_no_place(
        server: Running, make_key: MakeKey) -> None:
    """A bad `stream_options` was a 500 after the request had taken its place in the queue,
    a place never given back: past `queue.max_per_user` such requests the user could never
    queue again (and the whole queue shrank for everyone)."""
    key = await make_key()
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(server.url) as s:
        for _ in range(server.app[keys.CONFIG].queue.max_per_user + 1):
            async with s.post("/v1/chat/completions", headers=headers, json={
                    "model": MODEL, "messages": MESSAGES, "stream": True,
                    "stream_options": [1]}) as resp:
                assert resp.status == 400, await resp.text()
                body = await resp.json()
                assert body["error"]["param"] == "stream_options", body
    reply = await client(server, key).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
    assert reply.choices[0].message.content

