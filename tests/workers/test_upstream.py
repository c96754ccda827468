"""workers/upstream.py: one UpstreamClient attempt against the vLLM simulator over real TCP.

Retries and failover are the router's: tests/workers/test_retries.py and test_router.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.procs import free_port
from tests.support.routing import TEXT, WORDS, Routes, fault, sim_requests, wait_for
from vllm_sim import DEFAULT_MODEL, SimServer
from workers.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from workers.job import Completion, CompletionRequest, ForwardRequest
from workers.stream import Progress
from workers.upstream import Retryable, Unreachable, UpstreamClient

REQ = CompletionRequest([{"role": "user", "content": TEXT}], 64, 0.0)

MakeSim = Callable[..., Awaitable[SimServer]]


async def run(client: UpstreamClient, request: CompletionRequest = REQ,
              model: str = DEFAULT_MODEL, deltas: list[str] | None = None,
              progress: Progress | None = None) -> Completion:
    """One complete() attempt; the reply is the text it handed out, piece by piece."""
    deltas = [] if deltas is None else deltas
    ending = await client.complete(model, request, deltas.append, progress or Progress())
    return Completion("".join(deltas), ending.finish_reason, ending.usage)


async def retryable(client: UpstreamClient, deltas: list[str] | None = None) -> Retryable:
    """The Retryable that one attempt raises (a failure before the first token)."""
    progress = Progress()
    with pytest.raises(Retryable) as info:
        await run(client, deltas=deltas, progress=progress)
    assert not progress.sent
    return info.value


# --- streaming -----------------------------------------------------------------------------


async def test_complete_streams_deltas_that_add_up_to_the_text(make_sim: MakeSim,
                                                               routes: Routes) -> None:
    sim = await make_sim(tpot_ms=5)
    client = routes.replica(sim.url).client
    deltas: list[str] = []
    progress = Progress()
    completion = await run(client, deltas=deltas, progress=progress)
    assert deltas and all(deltas)
    assert completion.text == TEXT
    assert progress.sent and progress.first is not None
    assert completion.finish_reason == "stop"
    assert completion.usage["completion_tokens"] == len(WORDS)
    assert completion.usage["prompt_tokens"] > 0
    assert completion.usage["total_tokens"] == (completion.usage["prompt_tokens"]
                                                + completion.usage["completion_tokens"])
    assert sim.stats.requests_total == 1 and sim.stats.completed == 1


async def test_request_body_is_a_streaming_chat_request(make_sim: MakeSim, routes: Routes,
                                                         control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    request = CompletionRequest([{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": TEXT}], 50, 0.25)
    await run(routes.replica(sim.url).client, request)
    [body] = await sim_requests(control, sim)
    assert body["model"] == DEFAULT_MODEL and body["messages"] == request.messages
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 50 and body["temperature"] == 0.25


async def test_max_tokens_reaches_the_model_and_finishes_with_length(
        make_sim: MakeSim, routes: Routes, control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    completion = await run(routes.replica(sim.url).client, CompletionRequest(REQ.messages, 3, 0))
    assert [body["max_tokens"] for body in await sim_requests(control, sim)] == [3]
    assert completion.finish_reason == "length"
    assert completion.text == "".join(WORDS[:3])
    assert completion.usage["completion_tokens"] == 3


# --- model and auth ------------------------------------------------------------------------


async def test_list_models_gives_the_served_name(make_sim: MakeSim, routes: Routes) -> None:
    sim = await make_sim(model="served-name")
    assert await routes.replica(sim.url).client.list_models() == ["served-name"]


async def test_the_model_is_sent_as_given(make_sim: MakeSim, routes: Routes,
                                          control: aiohttp.ClientSession) -> None:
    sim = await make_sim(model="served-name")
    client = routes.replica(sim.url).client
    await run(client, model="served-name")
    with pytest.raises(UpstreamRejected) as info:  # the simulator 404s an unknown model
        await run(client, model="my-alias")
    assert info.value.status == 404
    assert [b["model"] for b in await sim_requests(control, sim)] == ["served-name", "my-alias"]


async def test_api_key_is_sent_as_a_bearer(make_sim: MakeSim, routes: Routes) -> None:
    sim = await make_sim(api_key="s3cret")
    client = routes.replica(sim.url, api_key="s3cret").client
    assert await client.list_models() == [DEFAULT_MODEL]
    assert (await run(client)).text == TEXT
    assert sim.stats.requests_total == 1


async def test_wrong_or_missing_api_key_is_rejected(make_sim: MakeSim, routes: Routes) -> None:
    sim = await make_sim(api_key="s3cret")
    for key in ("wrong", ""):
        client = routes.replica(sim.url, api_key=key).client
        with pytest.raises(UpstreamRejected) as info:
            await run(client)
        assert info.value.status == 401
        with pytest.raises(UpstreamRejected) as listed:
            await client.list_models()
        assert listed.value.status == 401
    assert sim.stats.requests_total == 0  # refused before the handler


# --- failures: retryable before the first token, final after it ---------------------------


async def test_503_is_retryable(make_sim: MakeSim, routes: Routes,
                                control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    await fault(control, sim, "503")
    retry = await retryable(routes.replica(sim.url).client)
    assert retry.reason == "status" and "503" in str(retry.error)
    assert not isinstance(retry.error, (UpstreamRejected, UpstreamTimeout))


async def test_500_is_final(make_sim: MakeSim, routes: Routes,
                            control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    await fault(control, sim, "500")
    with pytest.raises(UpstreamError) as info:
        await run(routes.replica(sim.url).client)
    assert not isinstance(info.value, (UpstreamRejected, UpstreamTimeout))
    assert "500" in str(info.value)


async def test_reset_before_the_first_token_is_retryable(
        make_sim: MakeSim, routes: Routes, control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    await fault(control, sim, "reset", after_tokens=0)
    deltas: list[str] = []
    retry = await retryable(routes.replica(sim.url).client, deltas)
    assert retry.reason == "reset" and deltas == []


async def test_reset_after_tokens_is_final_and_keeps_them(
        make_sim: MakeSim, routes: Routes, control: aiohttp.ClientSession) -> None:
    sim = await make_sim(tpot_ms=5)
    await fault(control, sim, "reset", after_tokens=3)
    deltas: list[str] = []
    with pytest.raises(UpstreamError) as info:
        await run(routes.replica(sim.url).client, deltas=deltas)
    assert not isinstance(info.value, UpstreamTimeout)
    assert "".join(deltas) == "".join(WORDS[:3])  # what was generated reached the caller


async def test_malformed_stream_fails_and_keeps_the_tokens_before_it(
        make_sim: MakeSim, routes: Routes, control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    await fault(control, sim, "malformed", after_tokens=2)
    deltas: list[str] = []
    with pytest.raises(UpstreamError) as info:
        await run(routes.replica(sim.url).client, deltas=deltas)
    assert not isinstance(info.value, (UpstreamRejected, UpstreamTimeout))
    assert "malformed" in str(info.value)
    assert "".join(deltas) == "".join(WORDS[:2])


async def test_malformed_before_the_first_token_is_final(
        make_sim: MakeSim, routes: Routes, control: aiohttp.ClientSession) -> None:
    """A server that sends garbage is broken, not busy: trying again would not help."""
    sim = await make_sim()
    await fault(control, sim, "malformed", after_tokens=0)
    deltas: list[str] = []
    with pytest.raises(UpstreamError) as info:
        await run(routes.replica(sim.url).client, deltas=deltas)
    assert not isinstance(info.value, (UpstreamRejected, UpstreamTimeout))
    assert deltas == []


async def test_connection_refused_is_retryable_as_connect(routes: Routes) -> None:
    retry = await retryable(routes.replica(f"http://127.0.0.1:{free_port()}/v1").client)
    assert retry.reason == "connect"
    assert not isinstance(retry.error, (UpstreamRejected, UpstreamTimeout))


async def test_listing_the_models_of_an_absent_server_is_unreachable(routes: Routes) -> None:
    client = routes.replica(f"http://127.0.0.1:{free_port()}/v1").client
    with pytest.raises(Unreachable):
        await client.list_models()
    with pytest.raises(UpstreamError):
        await client.load()


# --- timeouts and aborts -------------------------------------------------------------------


async def test_hang_times_out_retryably_and_the_model_sees_the_abort(
        make_sim: MakeSim, routes: Routes, control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    await fault(control, sim, "hang")
    retry = await retryable(routes.replica(sim.url, first_token_timeout_s=1.0).client)
    assert retry.reason == "timeout" and isinstance(retry.error, UpstreamTimeout)
    await wait_for(lambda: sim.stats.aborted == 1)
    assert sim.stats.requests_total == 1


async def test_hang_after_first_token_times_out_finally(
        make_sim: MakeSim, routes: Routes, control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    await fault(control, sim, "hang_after_first")
    deltas: list[str] = []
    with pytest.raises(UpstreamTimeout):
        await run(routes.replica(sim.url, first_token_timeout_s=1.0).client, deltas=deltas)
    assert "".join(deltas) == WORDS[0]
    await wait_for(lambda: sim.stats.aborted == 1 and sim.stats.running == 0)


async def test_cancelling_mid_stream_aborts_the_generation(make_sim: MakeSim,
                                                           routes: Routes) -> None:
    sim = await make_sim(tpot_ms=100)
    client = routes.replica(sim.url).client
    first = asyncio.Event()
    deltas: list[str] = []

    def on_delta(text: str) -> None:
        deltas.append(text)
        first.set()

    task = asyncio.create_task(client.complete(DEFAULT_MODEL, REQ, on_delta, Progress()))
    await asyncio.wait_for(first.wait(), 30)
    assert sim.stats.running == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: sim.stats.aborted == 1 and sim.stats.running == 0)
    assert sim.stats.completed == 0
    assert "".join(deltas) != TEXT


async def test_sequential_calls_reuse_one_connection(make_sim: MakeSim, routes: Routes) -> None:
    sim = await make_sim()
    client = routes.replica(sim.url).client
    for _ in range(4):
        assert (await run(client)).text == TEXT
    assert sim.stats.requests_total == 4
    assert sim.stats.connections_opened == 1


async def test_load_reads_the_metrics_beside_v1(make_sim: MakeSim, routes: Routes) -> None:
    sim = await make_sim(api_key="s3cret")  # /metrics is outside /v1: no key needed there
    text = await routes.replica(sim.url).client.load()
    assert text is not None and "vllm:num_requests_running" in text


# --- passing OpenAI requests on --------------------------------------------------------------


def forward_request(stream: bool, hide_usage: bool = False) -> ForwardRequest:
    body: dict[str, Any] = {"model": "my-alias", "messages": REQ.messages, "stream": stream}
    if hide_usage:
        body["stream_options"] = {"include_usage": True}
    return ForwardRequest("/chat/completions", body, stream, hide_usage, "req-1")


async def test_forward_passes_a_whole_answer_on_for_the_served_name(
        make_sim: MakeSim, routes: Routes, control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    raw: list[bytes] = []
    progress = Progress()
    client = routes.replica(sim.url).client
    ending = await client.forward(DEFAULT_MODEL, forward_request(False), raw.append, progress)
    [body] = raw
    answer = orjson.loads(body)
    assert answer["choices"][0]["message"]["content"] == TEXT and progress.sent
    assert ending.usage == answer["usage"] and ending.finish_reason == "stop"
    async with control.get(f"{sim.root_url}/sim/requests?detail=1") as resp:
        [seen] = await resp.json()
    assert seen["body"]["model"] == DEFAULT_MODEL and seen["request_id"] == "req-1"


async def test_forward_streams_the_events_without_the_usage_asked_for_us(
        make_sim: MakeSim, routes: Routes) -> None:
    sim = await make_sim()
    raw: list[bytes] = []
    client = routes.replica(sim.url).client
    ending = await client.forward(DEFAULT_MODEL, forward_request(True, hide_usage=True),
                                  raw.append, Progress())
    events = b"".join(raw).split(b"\n\n")
    assert events[-2] == b"data: [DONE]" and events[-1] == b""
    chunks = [orjson.loads(e[5:]) for e in events[:-2]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"])
    assert text == TEXT
    assert not [c for c in chunks if c.get("usage") and not c["choices"]]  # kept for us only
    assert ending.usage["completion_tokens"] == len(WORDS)


async def test_forward_of_a_503_is_retryable(make_sim: MakeSim, routes: Routes,
                                             control: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    await fault(control, sim, "503")
    raw: list[bytes] = []
    with pytest.raises(Retryable) as info:
        await routes.replica(sim.url).client.forward(DEFAULT_MODEL, forward_request(True),
                                                     raw.append, Progress())
    assert info.value.reason == "status" and raw == []
