"""aiohttp app that mimics vLLM's OpenAI-compatible server: routes and streaming."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any

import orjson
from aiohttp import web

from .calls import Call
from .chat import parse_call
from .completions import parse_completion
from .control import add_control_routes
from .engine import BadRequest
from .metrics import metrics
from .settings import FAULT_MODES, SimSettings
from .state import (
    PREFIX_HIT,
    REQUEST_ID,
    STATE,
    Received,
    SimState,
    error_response,
    json_response,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Parser = Callable[[Any, Mapping[str, str], SimSettings, str], Call]

__all__ = ["STATE", "create_sim_app", "error_response", "json_response"]


def pick_fault(state: SimState, request: web.Request) -> tuple[str, int]:
    """Choose this request's fault: test header, then queued faults, then the global dice."""
    s = state.settings
    header = request.headers.get("X-Sim-Fault") if s.allow_test_headers else None
    if header is not None:
        mode = header.strip().lower()
        if mode not in FAULT_MODES:
            raise BadRequest(f"unknown X-Sim-Fault mode {mode!r}")
        return mode, s.fault_after_tokens
    if state.fault_count > 0:
        state.fault_count -= 1
        return state.fault_mode, state.fault_after
    if s.fault != "none" and state.rng.random() < s.fault_rate:
        return s.fault, s.fault_after_tokens
    return "none", 0


_BREAKS = ("reset", "malformed")  # faults that cut an open stream


async def _sleep_ms(ms: float) -> None:
    await asyncio.sleep(ms / 1000.0)


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()  # until the client leaves


async def _send(resp: web.StreamResponse, obj: dict[str, Any]) -> None:
    await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")


async def _break_stream(request: web.Request, resp: web.StreamResponse, call: Call) -> None:
    """Inject the reset or malformed fault into an open stream."""
    call.done = True  # ending on purpose: a fault, not a client abort
    if call.fault == "reset":
        if request.transport is not None:
            request.transport.abort()  # RST-like close, no chunked terminator
        return
    await resp.write(b"data: {not json\n\n")
    resp.force_close()
    with suppress(ConnectionError):
        await resp.write_eof()


def _finished(state: SimState, call: Call) -> None:
    """Count a completed call and cache its prompt followed by its reply."""
    state.stats.completed += 1
    reply = call.reply_segment()
    if call.segments and reply is not None:
        state.prefix.remember([*call.segments, reply])


def _look_up_prefix(request: web.Request, state: SimState, call: Call) -> None:
    """Ask the prefix cache about this prompt; a hit shortens the time to first token."""
    if not call.segments or state.prefix.size == 0:
        return
    call.prefix_hit = state.prefix.query(call.segments)
    state.stats.prefix_cache_queries += 1
    state.stats.prefix_cache_hits += call.prefix_hit
    request[PREFIX_HIT] = call.prefix_hit


async def _stream(request: web.Request, state: SimState, call: Call) -> web.StreamResponse:
    """Serve a streaming reply as server-sent events, one generation step at a time."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache"})  # fmt: skip
    await resp.prepare(request)  # vLLM sends headers before the request is scheduled
    await state.scheduler.acquire()
    try:
        await _sleep_ms(state.settings.ttft_for(call.prefix_hit))
        for chunk in call.opening():
            await _send(resp, chunk)
        n = call.steps()
        for i in range(n):
            if call.fault in _BREAKS and i == call.after:
                await _break_stream(request, resp, call)
                return resp
            if i:
                await _sleep_ms(state.settings.tpot())
            chunks, made = call.step(i)
            for chunk in chunks:
                await _send(resp, chunk)
            state.stats.tokens_generated += made
            if call.fault == "hang_after_first":
                await _forever()
        if n == 0:  # an empty reply still needs its finish chunks
            for chunk in call.step(0)[0]:
                await _send(resp, chunk)
        if call.fault == "hang_after_first":
            await _forever()
        if call.fault in _BREAKS:  # reply shorter than after_tokens
            await _break_stream(request, resp, call)
            return resp
        if call.include_usage:
            await _send(resp, call.usage_chunk())
        await resp.write(b"data: [DONE]\n\n")
        call.done = True  # the client has it all even if it hangs up now
        _finished(state, call)
    finally:
        state.scheduler.release()
    with suppress(ConnectionError):
        await resp.write_eof()
    return resp


async def _complete(request: web.Request, state: SimState, call: Call) -> web.StreamResponse:
    """Serve a non-streaming reply after the simulated generation time."""
    await state.scheduler.acquire()
    try:
        await _sleep_ms(state.settings.ttft_for(call.prefix_hit))
        if call.fault == "hang_after_first":
            await _forever()
        await _sleep_ms(state.settings.tpot() * max(call.steps() - 1, 0))
        if call.fault == "reset":
            call.done = True
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        if call.fault == "malformed":
            call.done = True
            return web.Response(body=b"{not json", content_type="application/json")
        state.stats.tokens_generated += call.completion_tokens()
        call.done = True
        _finished(state, call)
        return json_response(call.completion())
    finally:
        state.scheduler.release()


async def _serve(request: web.Request, parse: Parser) -> web.StreamResponse:
    """Answer one generation request, counting it in flight until its handler ends."""
    state = request.app[STATE]
    counted = [state.stats] if state.group is None else [state.stats, state.group]
    for stats in counted:
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        return await _answer(request, parse)
    finally:
        for stats in counted:
            stats.in_flight -= 1


async def _answer(request: web.Request, parse: Parser) -> web.StreamResponse:
    """Record, parse, fault and answer one generation request."""
    state = request.app[STATE]
    state.stats.requests_total += 1
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return error_response(f"Invalid JSON body: {exc}", 400, "BadRequestError")
    request_id = request[REQUEST_ID]
    state.history.append(Received(request.path, request_id, body, raw.decode(errors="replace")))
    try:
        call = parse(body, request.headers, state.settings, request_id)
        call.fault, call.after = pick_fault(state, request)
    except BadRequest as exc:
        return error_response(str(exc), exc.status, exc.kind)
    if call.fault != "none":
        state.stats.faults_injected += 1
    if call.fault in _STATUS_FAULTS:
        return error_response(f"Simulated fault {call.fault}", int(call.fault),
                              _STATUS_FAULTS[call.fault])
    _look_up_prefix(request, state, call)
    task = asyncio.current_task()
    if task is not None:
        state.tasks.add(task)
    try:
        if call.fault == "hang":
            await _forever()
        return await (_stream if call.stream else _complete)(request, state, call)
    except asyncio.CancelledError:
        # handler_cancellation turns a client hang-up into a cancellation.
        if not call.done:
            state.stats.aborted += 1
        raise
    except ConnectionResetError:
        # A write raced the hang-up; nothing can reach the client any more.
        if not call.done:
            state.stats.aborted += 1
        return web.Response(status=499)
    finally:
        if task is not None:
            state.tasks.discard(task)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    return await _serve(request, parse_call)


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions (legacy text completions)."""
    return await _serve(request, parse_completion)


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models."""
    state = request.app[STATE]
    card = {"id": state.settings.model, "object": "model", "created": state.created,
            "owned_by": "vllm-simulator", "root": state.settings.model, "parent": None,
            "max_model_len": state.settings.max_model_len}  # fmt: skip
    return json_response({"object": "list", "data": [card]})


async def health(request: web.Request) -> web.Response:
    """GET /health: 200 with an empty body, like vLLM."""
    return web.Response(status=200)


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count new TCP connections, name /v1 requests and enforce the API key there like vLLM."""
    state = request.app[STATE]
    transport = request.transport
    if transport is not None and transport not in state.seen:
        state.seen.add(transport)
        state.stats.connections_opened += 1
    if not request.path.startswith("/v1"):
        return await handler(request)
    # vLLM names the request after X-Request-Id (chatcmpl-<id>) and, with
    # --enable-request-id-headers, answers with the same header.
    request[REQUEST_ID] = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    key = state.settings.api_key
    if key and request.headers.get("Authorization") != f"Bearer {key}":
        return json_response({"error": "Unauthorized"}, status=401)
    return await handler(request)


async def _tag_response(request: web.Request, response: web.StreamResponse) -> None:
    """Echo the request id on every /v1 response, streams included (before headers go)."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id
    hit = request.get(PREFIX_HIT)
    if hit is not None:
        response.headers["X-Sim-Prefix-Cache"] = "hit" if hit else "miss"


async def _cancel_handlers(app: web.Application) -> None:
    """On shutdown, end hung handlers and pending down/up flips."""
    state = app[STATE]
    for task in [*state.tasks, *state.background]:
        task.cancel()


_STATUS_FAULTS = {"500": "InternalServerError", "503": "ServiceUnavailableError",
                  "429": "RateLimitError"}  # faults answered with a status at once


def create_sim_app(settings: SimSettings) -> web.Application:
    """Build the simulator app; run it with handler_cancellation=True."""
    settings = dataclasses.replace(settings)  # private copy: /sim/config mutates it
    settings.validate()
    app = web.Application(middlewares=[_middleware])
    app[STATE] = SimState(settings)
    app.on_shutdown.append(_cancel_handlers)
    app.on_response_prepare.append(_tag_response)
    r = app.router
    r.add_get("/v1/models", list_models)
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_post("/v1/completions", completions)
    r.add_get("/health", health)
    r.add_get("/metrics", metrics)
    add_control_routes(r)
    return app
