"""workers/upstream.py: UpstreamClient against the vLLM simulator over real TCP."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from vllm_sim import SimServer
from workers.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from workers.job import Completion, CompletionRequest
from workers.upstream import UpstreamClient, UpstreamSettings, create_session

TEXT = "one two three four five six seven eight"
WORDS = ["one", " two", " three", " four", " five", " six", " seven", " eight"]
REQ = CompletionRequest([{"role": "user", "content": TEXT}], 64, 0.0)

MakeSim = Callable[..., Awaitable[SimServer]]
MakeClient = Callable[..., UpstreamClient]


@pytest.fixture
def make_sim(make_sim: MakeSim) -> MakeSim:
    """conftest's simulators, echoing the last user message by default here."""

    async def _make(**kw: Any) -> SimServer:
        kw.setdefault("echo", True)
        return await make_sim(**kw)

    return _make


@pytest_asyncio.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """UpstreamClients over sessions from create_session; the sessions are closed afterwards."""
    sessions: list[aiohttp.ClientSession] = []

    def _make(base_url: str, pool_size: int = 4, **kw: Any) -> UpstreamClient:
        kw.setdefault("retry_backoff_s", 0.01)
        settings = UpstreamSettings(base_url=base_url, **kw)
        session = create_session(pool_size, settings)
        sessions.append(session)
        return UpstreamClient(session, settings)

    yield _make
    for session in sessions:
        await session.close()


@pytest_asyncio.fixture
async def control() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain session for the simulator's /sim/* control endpoints."""
    async with aiohttp.ClientSession() as s:
        yield s


async def fault(control: aiohttp.ClientSession, sim: SimServer, mode: str, count: int = 1,
                after_tokens: int = 0) -> None:
    """Queue a fault for the simulator's next `count` chat requests."""
    body = {"mode": mode, "count": count, "after_tokens": after_tokens}
    async with control.post(f"{sim.root_url}/sim/faults", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def sim_requests(control: aiohttp.ClientSession, sim: SimServer) -> list[dict[str, Any]]:
    """The chat request bodies the simulator received, oldest first."""
    async with control.get(f"{sim.root_url}/sim/requests") as resp:
        assert resp.status == 200
        data: list[dict[str, Any]] = await resp.json()
        return data


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until cond() holds (a safety net, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def run(client: UpstreamClient, request: CompletionRequest = REQ,
              **kw: Any) -> tuple[Completion, list[str]]:
    """complete() collecting the deltas."""
    deltas: list[str] = []
    ending = await client.complete(request, deltas.append, **kw)
    # The client keeps no text of its own: the reply is what it handed out, piece by piece.
    return Completion("".join(deltas), ending.finish_reason, ending.usage), deltas


def free_port() -> int:
    """A local port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- streaming -----------------------------------------------------------------------------


async def test_complete_streams_deltas_that_add_up_to_the_text(make_sim: MakeSim,
                                                               make_client: MakeClient) -> None:
    sim = await make_sim(tpot_ms=5)
    client = make_client(sim.url, model="vllm-simulator")
    completion, deltas = await run(client)
    assert deltas and all(deltas)
    assert "".join(deltas) == completion.text == TEXT
    assert completion.finish_reason == "stop"
    assert completion.usage["completion_tokens"] == len(WORDS)
    assert completion.usage["prompt_tokens"] > 0
    assert completion.usage["total_tokens"] == (completion.usage["prompt_tokens"]
                                                + completion.usage["completion_tokens"])
    assert sim.stats.requests_total == 1 and sim.stats.completed == 1


async def test_request_body_is_a_streaming_chat_request(make_sim: MakeSim, make_client: MakeClient,
                                                         control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator")
    request = CompletionRequest([{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": TEXT}], 50, 0.25)
    await run(client, request)
    [body] = await sim_requests(control, sim)
    assert body["messages"] == request.messages
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 50 and body["temperature"] == 0.25


async def test_max_tokens_reaches_the_model_and_finishes_with_length(
        make_sim: MakeSim, make_client: MakeClient, control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator")
    completion, deltas = await run(client, CompletionRequest(REQ.messages, 3, 0.0))
    assert [body["max_tokens"] for body in await sim_requests(control, sim)] == [3]
    assert completion.finish_reason == "length"
    assert completion.text == "".join(deltas) == "".join(WORDS[:3])
    assert completion.usage["completion_tokens"] == 3


# --- model and auth ------------------------------------------------------------------------


async def test_resolve_model_learns_the_served_model(make_sim: MakeSim,
                                                     make_client: MakeClient) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="")
    assert client.model == ""
    assert await client.resolve_model() == "vllm-simulator"
    assert client.model == "vllm-simulator"


async def test_probe_learns_the_model_when_unset(make_sim: MakeSim,
                                                 make_client: MakeClient) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="")
    assert await client.probe() == "vllm-simulator"
    assert client.model == "vllm-simulator"


async def test_unset_model_is_resolved_before_the_first_request(
        make_sim: MakeSim, make_client: MakeClient, control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="")
    completion, _ = await run(client)
    assert completion.text == TEXT
    assert [body["model"] for body in await sim_requests(control, sim)] == ["vllm-simulator"]


async def test_configured_model_is_sent_as_is(make_sim: MakeSim, make_client: MakeClient,
                                              control: aiohttp.ClientSession) -> None:
    sim = await make_sim(model="served-name")
    client = make_client(sim.url, model="served-name")
    await run(client)
    assert [body["model"] for body in await sim_requests(control, sim)] == ["served-name"]
    # A configured name is never replaced by what the server lists.
    other = make_client(sim.url, model="my-alias")
    assert await other.resolve_model() == "my-alias"
    assert await other.probe() == "my-alias"
    with pytest.raises(UpstreamRejected) as info:  # the simulator 404s an unknown model
        await run(other)
    assert info.value.status == 404
    assert [body["model"] for body in await sim_requests(control, sim)] == ["served-name",
                                                                            "my-alias"]


async def test_api_key_is_sent_as_a_bearer(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = await make_sim(api_key="s3cret")
    client = make_client(sim.url, model="", api_key="s3cret")
    assert await client.probe() == "vllm-simulator"
    completion, _ = await run(client)
    assert completion.text == TEXT
    assert sim.stats.requests_total == 1


async def test_wrong_or_missing_api_key_is_rejected(make_sim: MakeSim,
                                                    make_client: MakeClient) -> None:
    sim = await make_sim(api_key="s3cret")
    for key in ("wrong", ""):
        client = make_client(sim.url, model="vllm-simulator", api_key=key, retries=2)
        attempts: list[int] = []

        async def count(attempts: list[int] = attempts) -> None:
            attempts.append(1)

        with pytest.raises(UpstreamRejected) as info:
            await run(client, before_attempt=count)
        assert info.value.status == 401
        assert len(attempts) == 1  # a 401 is not retried
        with pytest.raises(UpstreamError):
            await make_client(sim.url, model="", api_key=key).probe()
    assert sim.stats.requests_total == 0  # refused before the handler


# --- retries -------------------------------------------------------------------------------


async def test_503_twice_then_success_with_two_retries(make_sim: MakeSim, make_client: MakeClient,
                                                       control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator", retries=2)
    await fault(control, sim, "503", count=2)
    completion, deltas = await run(client)
    assert completion.text == "".join(deltas) == TEXT
    assert sim.stats.requests_total == 3 and sim.stats.completed == 1


async def test_503_more_often_than_retries_fails(make_sim: MakeSim, make_client: MakeClient,
                                                 control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator", retries=2)
    await fault(control, sim, "503", count=5)
    with pytest.raises(UpstreamError) as info:
        await run(client)
    assert not isinstance(info.value, (UpstreamRejected, UpstreamTimeout))
    assert "503" in str(info.value)
    assert sim.stats.requests_total == 3


async def test_retries_zero_means_one_attempt(make_sim: MakeSim, make_client: MakeClient,
                                              control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator", retries=0)
    await fault(control, sim, "503", count=1)
    with pytest.raises(UpstreamError):
        await run(client)
    assert sim.stats.requests_total == 1


async def test_500_is_not_retried(make_sim: MakeSim, make_client: MakeClient,
                                  control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator", retries=2)
    await fault(control, sim, "500", count=1)
    with pytest.raises(UpstreamError) as info:
        await run(client)
    assert not isinstance(info.value, (UpstreamRejected, UpstreamTimeout))
    assert sim.stats.requests_total == 1


async def test_reset_before_the_first_token_is_retried(make_sim: MakeSim, make_client: MakeClient,
                                                       control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator", retries=2)
    await fault(control, sim, "reset", count=1, after_tokens=0)
    completion, deltas = await run(client)
    assert completion.text == "".join(deltas) == TEXT
    assert sim.stats.requests_total == 2 and sim.stats.completed == 1


async def test_reset_after_tokens_is_not_retried(make_sim: MakeSim, make_client: MakeClient,
                                                 control: aiohttp.ClientSession) -> None:
    sim = await make_sim(tpot_ms=5)
    client = make_client(sim.url, model="vllm-simulator", retries=2)
    await fault(control, sim, "reset", count=1, after_tokens=3)
    deltas: list[str] = []
    with pytest.raises(UpstreamError) as info:
        await client.complete(REQ, deltas.append)
    assert not isinstance(info.value, UpstreamTimeout)
    assert "".join(deltas) == "".join(WORDS[:3])  # what was generated reached the caller
    assert sim.stats.requests_total == 1


async def test_malformed_stream_fails(make_sim: MakeSim, make_client: MakeClient,
                                      control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator", retries=2)
    await fault(control, sim, "malformed", count=1, after_tokens=2)
    deltas: list[str] = []
    with pytest.raises(UpstreamError) as info:
        await client.complete(REQ, deltas.append)
    assert not isinstance(info.value, (UpstreamRejected, UpstreamTimeout))
    assert "malformed" in str(info.value)
    assert sim.stats.requests_total == 1  # not retried: tokens had been streamed


async def test_malformed_before_the_first_token_fails(make_sim: MakeSim, make_client: MakeClient,
                                                      control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator", retries=2)
    await fault(control, sim, "malformed", count=1, after_tokens=0)
    deltas: list[str] = []
    with pytest.raises(UpstreamError) as info:
        await client.complete(REQ, deltas.append)
    assert not isinstance(info.value, (UpstreamRejected, UpstreamTimeout))
    assert deltas == []


async def test_malformed_stream_keeps_the_tokens_before_it(
        make_sim: MakeSim, make_client: MakeClient, control: aiohttp.ClientSession) -> None:
    """Tokens that arrived before the bad line were generated and must reach the caller
    (they become the job's partial reply), as they do before a reset."""
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator", retries=2)
    await fault(control, sim, "malformed", count=1, after_tokens=2)
    deltas: list[str] = []
    with pytest.raises(UpstreamError):
        await client.complete(REQ, deltas.append)
    assert "".join(deltas) == "".join(WORDS[:2])


async def test_connection_refused_fails_after_retries(make_client: MakeClient) -> None:
    client = make_client(f"http://127.0.0.1:{free_port()}/v1", model="m", retries=2)
    attempts: list[int] = []

    async def count() -> None:
        attempts.append(1)

    with pytest.raises(UpstreamError) as info:
        await run(client, before_attempt=count)
    assert not isinstance(info.value, (UpstreamRejected, UpstreamTimeout))
    assert len(attempts) == 3  # the first try and two retries


async def test_probe_of_an_absent_server_is_an_upstream_error(make_client: MakeClient) -> None:
    client = make_client(f"http://127.0.0.1:{free_port()}/v1", model="")
    with pytest.raises(UpstreamError):
        await client.probe()
    assert client.model == ""


# --- timeouts and aborts -------------------------------------------------------------------


async def test_hang_times_out_and_the_model_sees_the_abort(
        make_sim: MakeSim, make_client: MakeClient, control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator", first_token_timeout_s=0.3, retries=2)
    await fault(control, sim, "hang", count=1)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await run(client)
    assert time.monotonic() - started >= 0.29
    await wait_for(lambda: sim.stats.aborted == 1)
    assert sim.stats.requests_total == 1  # a timeout is not retried


async def test_hang_after_first_token_times_out(make_sim: MakeSim, make_client: MakeClient,
                                                control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="vllm-simulator", first_token_timeout_s=0.3)
    await fault(control, sim, "hang_after_first", count=1)
    deltas: list[str] = []
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await client.complete(REQ, deltas.append)
    assert time.monotonic() - started >= 0.29
    assert "".join(deltas) == WORDS[0]
    await wait_for(lambda: sim.stats.aborted == 1 and sim.stats.running == 0)


async def test_cancelling_mid_stream_aborts_the_generation(make_sim: MakeSim,
                                                           make_client: MakeClient) -> None:
    sim = await make_sim(tpot_ms=100)
    client = make_client(sim.url, model="vllm-simulator")
    first = asyncio.Event()
    deltas: list[str] = []

    def on_delta(text: str) -> None:
        deltas.append(text)
        first.set()

    task = asyncio.create_task(client.complete(REQ, on_delta))
    await asyncio.wait_for(first.wait(), 5)
    assert sim.stats.running == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: sim.stats.aborted == 1 and sim.stats.running == 0)
    assert sim.stats.completed == 0
    assert "".join(deltas) != TEXT


async def test_sequential_calls_reuse_one_connection(make_sim: MakeSim, make_client: MakeClient,
                                                     control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    client = make_client(sim.url, model="")  # the first call also probes GET /models
    await run(client)
    assert sim.stats.connections_opened == 1
    async with control.post(f"{sim.root_url}/sim/reset") as resp:  # re-counts live connections
        assert resp.status == 200
    for _ in range(4):
        completion, _ = await run(client)
        assert completion.text == TEXT
    assert sim.stats.requests_total == 4
    assert sim.stats.connections_opened == 1
