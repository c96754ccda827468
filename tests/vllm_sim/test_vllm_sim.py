"""Tests for the vLLM simulator over real TCP."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
import pytest_asyncio

from tests.support.paths import ROOT
from vllm_sim import SimServer, SimSettings, SimStats
from vllm_sim.engine import Scheduler, split_tokens

pytestmark = pytest.mark.asyncio
MakeSim = Callable[..., Awaitable[SimServer]]
HELLO = [{"role": "user", "content": "Hello there, how are you today?"}]


# make_sim: the shared fixture in conftest.py (fast timings, every simulator closed after).


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One keep-alive client session."""
    async with aiohttp.ClientSession() as s:
        yield s


async def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll until cond() holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def chat_body(messages: list[dict[str, Any]] = HELLO, **kw: Any) -> dict[str, Any]:
    """Build a chat request body."""
    return {"model": "vllm-simulator", "messages": messages, **kw}


Session = aiohttp.ClientSession


async def chat(session: Session, sim: SimServer, body: Any = None, **hdr: str) -> tuple[int, Any]:
    """POST a chat completion; return the status and the JSON body."""
    url, headers = f"{sim.url}/chat/completions", {k.replace("_", "-"): v for k, v in hdr.items()}
    async with session.post(url, json=chat_body() if body is None else body, headers=headers) as r:
        return r.status, orjson.loads(await r.read())


async def sse(session: Session, sim: SimServer, body: Any = None, **hdr: str) -> list[str]:
    """POST a streaming chat completion; return the SSE data payloads."""
    url, headers = f"{sim.url}/chat/completions", {k.replace("_", "-"): v for k, v in hdr.items()}
    body = chat_body(stream=True) if body is None else body
    async with session.post(url, json=body, headers=headers) as r:
        assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        lines = [line.decode().rstrip("\n") async for line in r.content]
    assert all(t.startswith("data: ") for t in lines if t)
    return [t[len("data: ") :] for t in lines if t]


async def ctl(session: Session, sim: SimServer, path: str, body: Any = None) -> tuple[int, Any]:
    """Call a /sim/* endpoint: POST with a body (or for /sim/reset), else GET."""
    method = "POST" if body is not None or path == "reset" else "GET"
    async with session.request(method, f"{sim.root_url}/sim/{path}", json=body) as r:
        return r.status, orjson.loads(await r.read())


def content_of(data: Any) -> str:
    """Text of a non-streaming reply."""
    text: str = data["choices"][0]["message"]["content"]
    return text


async def stream_text(session: Session, sim: SimServer, **kw: Any) -> str:
    """Stream a reply and return the concatenated deltas."""
    chunks = [orjson.loads(e) for e in (await sse(session, sim, chat_body(stream=True, **kw)))[:-1]]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


async def test_models_and_health(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    async with session.get(f"{sim.url}/models") as resp:
        data = await resp.json()
    assert data["object"] == "list"
    (card,) = data["data"]
    assert card["id"] == "vllm-simulator" and card["object"] == "model"
    assert card["owned_by"] == "vllm-simulator" and card["max_model_len"] == 8192
    async with session.get(f"{sim.root_url}/health") as resp:
        assert resp.status == 200 and await resp.read() == b""


async def test_non_stream_shape(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=10)
    status, data = await chat(session, sim)
    assert status == 200
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert isinstance(data["created"], int) and data["model"] == "vllm-simulator"
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    text = choice["message"]["content"]
    assert text.startswith("Simulated reply 1 to: Hello there")
    assert len(text.split()) == 10
    usage = data["usage"]
    assert usage["completion_tokens"] == 10 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 10


async def test_stream_matches_non_stream(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    _, full = await chat(session, sim)
    events = await sse(session, sim, chat_body(stream=True, stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    first, *content, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["finish_reason"] is None
    assert len(content) == 24
    assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text == content_of(full)
    assert usage["choices"] == [] and usage["usage"] == full["usage"]
    # Without include_usage there is no usage chunk.
    assert all("usage" not in orjson.loads(e) for e in (await sse(session, sim))[:-1])


async def test_max_tokens_finish_length(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    _, data = await chat(session, sim, chat_body(max_tokens=3))
    assert data["choices"][0]["finish_reason"] == "length"
    assert content_of(data) == "Simulated reply 1"
    assert data["usage"]["completion_tokens"] == 3
    chunks = [
        orjson.loads(e)
        for e in (await sse(session, sim, chat_body(max_tokens=3, stream=True)))[:-1]
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len(chunks) == 4


TRICKY = '  Héllo <b>"wörld"</b> & 日本語 🎉\n\n\tline two  \n'


async def test_echo_mode_is_exact(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(echo=True)
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                {"role": "user", "content": TRICKY}]  # fmt: skip
    assert await stream_text(session, sim, messages=messages) == TRICKY
    assert content_of((await chat(session, sim, chat_body(messages)))[1]) == TRICKY


async def test_x_sim_reply_header(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(allow_test_headers=True)
    events = await sse(session, sim, X_Sim_Reply=quote(TRICKY))
    deltas = [orjson.loads(e)["choices"][0]["delta"]["content"] for e in events[1:-1]]
    assert "".join(deltas) == TRICKY and len(deltas) > 3
    # Without allow_test_headers the header is ignored.
    _, data = await chat(session, await make_sim(), X_Sim_Reply=quote(TRICKY))
    assert content_of(data).startswith("Simulated")


BAD_BODIES = [
    (chat_body(messages=[]), 400), ({"model": "vllm-simulator"}, 400),
    (chat_body(messages=[{"role": "user"}]), 400), (chat_body(max_tokens=0), 400),
    (chat_body(max_tokens=10**6), 400), ({"model": "gpt-4", "messages": HELLO}, 404),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status"), BAD_BODIES)
async def test_validation_errors(make_sim: MakeSim, body: Any, status: int) -> None:
    async with aiohttp.ClientSession() as session:
        got, err = await chat(session, await make_sim(), body)
    kind = "NotFoundError" if status == 404 else "BadRequestError"
    assert got == status and err["object"] == "error" and err["type"] == kind
    assert err["code"] == status and err["param"] is None and err["message"]


async def test_api_key(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(api_key="sekret")
    assert await chat(session, sim) == (401, {"error": "Unauthorized"})
    assert (await chat(session, sim, Authorization="Bearer wrong"))[0] == 401
    assert (await chat(session, sim, Authorization="Bearer sekret"))[0] == 200
    async with session.get(f"{sim.root_url}/health") as resp:
        assert resp.status == 200


async def test_capacity_limits_running(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(capacity=2, ttft_ms=50, tpot_ms=2, reply_tokens=5)
    seen_waiting = 0

    async def one(stream: bool) -> str:
        async with aiohttp.ClientSession() as s:
            return await stream_text(s, sim) if stream else content_of((await chat(s, sim))[1])

    tasks = [asyncio.create_task(one(i % 2 == 0)) for i in range(6)]
    while not all(t.done() for t in tasks):
        seen_waiting = max(seen_waiting, sim.stats.waiting)
        await asyncio.sleep(0.005)
    assert len({t.result() for t in tasks}) == 1
    st = sim.stats.snapshot()
    assert st["max_running"] == 2 and st["completed"] == 6
    assert st["running"] == 0 and st["waiting"] == 0 and seen_waiting >= 1
    # Raising capacity at runtime applies to new requests.
    assert (await ctl(session, sim, "config", {"capacity": 6}))[1]["capacity"] == 6
    await asyncio.gather(*(one(False) for _ in range(6)))
    assert sim.stats.max_running == 6


async def test_waiting_client_leaves(make_sim: MakeSim) -> None:
    sim = await make_sim(capacity=1, ttft_ms=300)
    url = f"{sim.url}/chat/completions"

    async def call(s: aiohttp.ClientSession, timeout: float | None) -> int:
        async with s.post(url, json=chat_body(), timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as s1, aiohttp.ClientSession() as s2:
        first = asyncio.create_task(call(s1, None))
        await wait_for(lambda: sim.stats.running == 1)
        with pytest.raises(asyncio.TimeoutError):
            await call(s2, 0.1)
        await wait_for(lambda: sim.stats.aborted == 1 and sim.stats.waiting == 0)
        assert await first == 200
    assert sim.stats.completed == 1 and sim.stats.max_running == 1


async def test_fault_500_and_503(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(allow_test_headers=True)
    for mode in ("500", "503"):
        status, err = await chat(session, sim, chat_body(stream=True), X_Sim_Fault=mode)
        assert status == err["code"] == int(mode) and err["object"] == "error"
    assert sim.stats.faults_injected == 2


async def test_fault_reset_cuts_stream(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    faults = {"mode": "reset", "count": 1, "after_tokens": 3}
    assert (await ctl(session, sim, "faults", faults))[0] == 200
    events: list[str] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(f"{sim.url}/chat/completions", json=chat_body(stream=True)) as r:
            async for line in r.content:
                if line.strip():
                    events.append(line.decode())
    assert len(events) == 4  # role chunk + 3 tokens, no [DONE]
    st = sim.stats.snapshot()
    assert st["faults_injected"] == 1 and st["aborted"] == 0 and st["completed"] == 0
    # Non-streaming reset: the connection dies before any answer.
    await ctl(session, sim, "faults", {"mode": "reset"})
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.post(f"{sim.url}/chat/completions", json=chat_body()) as r:
            await r.read()


async def test_fault_malformed(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(allow_test_headers=True, fault_after_tokens=2)
    events = await sse(session, sim, X_Sim_Fault="malformed")
    assert len(events) == 4 and events[-1] == "{not json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(events[-1])


async def test_fault_hang_counts_abort(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(allow_test_headers=True)
    timeout = aiohttp.ClientTimeout(total=0.15)
    for mode, stream in (("hang", False), ("hang", True), ("hang_after_first", True)):
        body = chat_body(stream=stream)
        got: list[bytes] = []
        headers = {"X-Sim-Fault": mode}
        with pytest.raises(asyncio.TimeoutError):
            async with (
                aiohttp.ClientSession(timeout=timeout) as s,
                s.post(f"{sim.url}/chat/completions", json=body, headers=headers) as r,
            ):
                async for line in r.content:
                    got += [line] if line.strip() else []
        assert len(got) == (2 if mode == "hang_after_first" else 0)
    await wait_for(lambda: sim.stats.aborted == 3)
    st = sim.stats.snapshot()
    assert st["faults_injected"] == 3 and st["running"] == 0 and st["completed"] == 0


async def test_client_disconnect_mid_stream(make_sim: MakeSim) -> None:
    sim = await make_sim(reply_tokens=200, tpot_ms=10)
    async with aiohttp.ClientSession() as s:
        resp = await s.post(f"{sim.url}/chat/completions", json=chat_body(stream=True))
        for _ in range(3):
            await resp.content.readline()
        resp.close()  # drops the connection mid-stream
    await wait_for(lambda: sim.stats.aborted == 1 and sim.stats.running == 0)
    assert sim.stats.completed == 0 and sim.stats.tokens_generated < 200


async def test_sim_faults_count(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    assert (await ctl(session, sim, "faults", {"mode": "503", "count": 2}))[1]["count"] == 2
    statuses = [(await chat(session, sim))[0] for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert (await ctl(session, sim, "faults", {"mode": "bogus"}))[0] == 400
    await ctl(session, sim, "faults", {"mode": "500", "count": 5})
    assert (await ctl(session, sim, "reset"))[1]["faults_injected"] == 0
    assert (await chat(session, sim))[0] == 200


async def test_sim_requests_records(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(history_size=3)
    sent = [chat_body([{"role": "user", "content": f"msg {i}"}], temperature=0.5) for i in range(5)]
    for body in sent:
        assert (await chat(session, sim, body))[0] == 200
    assert (await ctl(session, sim, "requests"))[1] == sent[-3:]
    assert sim.stats.requests_total == 5


async def test_keep_alive_counts_one_connection(make_sim: MakeSim) -> None:
    sim = await make_sim()
    async with aiohttp.ClientSession() as s:
        for i in range(4):
            await (stream_text(s, sim) if i % 2 else chat(s, sim))
        assert (await ctl(s, sim, "stats"))[1]["connections_opened"] == 1
    async with aiohttp.ClientSession() as s:
        assert (await ctl(s, sim, "stats"))[1]["connections_opened"] == 2


async def test_runtime_config(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    status, cfg = await ctl(session, sim, "config", {"reply_tokens": 4, "echo": False})
    assert status == 200 and cfg["reply_tokens"] == 4 and cfg["api_key"] is None
    assert await stream_text(session, sim) == "Simulated reply 1 to:"
    for bad in ({"capacity": 0}, {"model": "x"}, {"echo": "yes"}):
        assert (await ctl(session, sim, "config", bad))[0] == 400


async def test_cli_starts_and_stops_cleanly() -> None:
    root = ROOT
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllm_sim", "--port", "0", "--ttft-ms", "0",
        cwd=root, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
    assert line.startswith('vLLM SIMULATOR (not a real model) serving "vllm-simulator" at http')
    url = line.split(" at ")[1].strip()
    async with aiohttp.ClientSession() as s, s.get(f"{url}/models") as resp:
        assert resp.status == 200
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_scheduler_slot_granted_then_cancelled() -> None:
    sched_stats = SimStats()
    sched = Scheduler(SimSettings(capacity=1), sched_stats)
    await sched.acquire()
    waiter = asyncio.create_task(sched.acquire())
    await asyncio.sleep(0)
    assert sched_stats.waiting == 1
    sched.release()  # hands the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (sched_stats.running, sched_stats.waiting) == (0, 0)


async def test_split_tokens_round_trip() -> None:
    for text in (TRICKY, "", "   ", "one", " a  b\n"):
        assert "".join(split_tokens(text)) == text
    assert split_tokens("Hi there you") == ["Hi", " there", " you"]
