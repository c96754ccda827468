"""aiohttp app that mimics vLLM's OpenAI-compatible chat server."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .engine import BadRequest, Call, Scheduler, SimStats, parse_call
from .settings import FAULT_MODES, SimSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(message: str, status: int, kind: str) -> web.Response:
    """Return vLLM's ErrorResponse body."""
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def json_response(data: Any, status: int = 200) -> web.Response:
    """Return an orjson-encoded JSON response."""
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


@dataclass
class SimState:
    """Everything one simulator app shares between requests."""

    settings: SimSettings
    stats: SimStats = field(default_factory=SimStats)
    history: deque[Any] = field(init=False)
    fault_mode: str = "none"  # queued by POST /sim/faults
    fault_count: int = 0
    fault_after: int = 0
    seen: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        """Build the pieces that depend on settings."""
        self.scheduler = Scheduler(self.settings, self.stats)
        self.history = deque(maxlen=self.settings.history_size)
        self.rng = random.Random(self.settings.seed)


STATE = web.AppKey("vllm_sim_state", SimState)


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


async def _stream(request: web.Request, state: SimState, call: Call) -> web.StreamResponse:
    """Serve a streaming reply as server-sent events."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache"})  # fmt: skip
    await resp.prepare(request)  # vLLM sends headers before the request is scheduled
    await state.scheduler.acquire()
    try:
        await _sleep_ms(state.settings.ttft_ms)
        await _send(resp, call.chunk({"role": "assistant", "content": ""}))
        n = len(call.tokens)
        for i, tok in enumerate(call.tokens):
            if call.fault in _BREAKS and i == call.after:
                await _break_stream(request, resp, call)
                return resp
            if i:
                await _sleep_ms(state.settings.tpot_ms)
            finish = call.finish_reason if i == n - 1 else None
            await _send(resp, call.chunk({"content": tok}, finish))
            state.stats.tokens_generated += 1
            if call.fault == "hang_after_first":
                await _forever()
        if n == 0:  # an empty reply still needs its finish chunk
            await _send(resp, call.chunk({"content": ""}, call.finish_reason))
        if call.fault == "hang_after_first":
            await _forever()
        if call.fault in _BREAKS:  # reply shorter than after_tokens
            await _break_stream(request, resp, call)
            return resp
        if call.include_usage:
            await _send(resp, {**call.envelope("chat.completion.chunk", []), "usage": call.usage()})
        await resp.write(b"data: [DONE]\n\n")
        call.done = True  # the client has it all even if it hangs up now
        state.stats.completed += 1
    finally:
        state.scheduler.release()
    with suppress(ConnectionError):
        await resp.write_eof()
    return resp


async def _complete(request: web.Request, state: SimState, call: Call) -> web.StreamResponse:
    """Serve a non-streaming reply after the simulated generation time."""
    await state.scheduler.acquire()
    try:
        await _sleep_ms(state.settings.ttft_ms)
        if call.fault == "hang_after_first":
            await _forever()
        n = len(call.tokens)
        await _sleep_ms(state.settings.tpot_ms * max(n - 1, 0))
        if call.fault == "reset":
            call.done = True
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        if call.fault == "malformed":
            call.done = True
            return web.Response(body=b"{not json", content_type="application/json")
        state.stats.tokens_generated += n
        call.done = True
        state.stats.completed += 1
        return json_response(call.completion())
    finally:
        state.scheduler.release()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    state = request.app[STATE]
    state.stats.requests_total += 1
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return error_response(f"Invalid JSON body: {exc}", 400, "BadRequestError")
    state.history.append(body)
    try:
        call = parse_call(body, request.headers, state.settings)
        call.fault, call.after = pick_fault(state, request)
    except BadRequest as exc:
        return error_response(str(exc), exc.status, exc.kind)
    if call.fault != "none":
        state.stats.faults_injected += 1
    if call.fault in ("500", "503"):
        kind = "InternalServerError" if call.fault == "500" else "ServiceUnavailableError"
        return error_response(f"Simulated fault {call.fault}", int(call.fault), kind)
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


async def sim_stats(request: web.Request) -> web.Response:
    """GET /sim/stats."""
    return json_response(request.app[STATE].stats.snapshot())


async def sim_requests(request: web.Request) -> web.Response:
    """GET /sim/requests: recent request bodies, newest last."""
    return json_response(list(request.app[STATE].history))


async def sim_reset(request: web.Request) -> web.Response:
    """POST /sim/reset: zero counters, forget history and queued faults."""
    state = request.app[STATE]
    state.stats.reset()
    state.history.clear()
    state.fault_mode, state.fault_count = "none", 0
    state.settings.fault = "none"
    # Re-count live keep-alive connections from their next request on.
    state.seen = weakref.WeakSet()
    return json_response(state.stats.snapshot())


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _faults_view(state: SimState) -> dict[str, Any]:
    s = state.settings
    return {"mode": state.fault_mode, "count": state.fault_count, "after_tokens": state.fault_after,
            "global": {"mode": s.fault, "rate": s.fault_rate}}  # fmt: skip


async def sim_faults(request: web.Request) -> web.Response:
    """POST /sim/faults: queue a fault for the next `count` requests, or set a global rate."""
    state = request.app[STATE]
    if request.method == "GET":
        return json_response(_faults_view(state))
    try:
        data = await _json_object(request)
        mode = str(data.get("mode", "none"))
        after = data.get("after_tokens", state.settings.fault_after_tokens)
        count, rate = data.get("count"), data.get("rate")
        if mode not in FAULT_MODES:
            raise BadRequest(f"mode must be one of {', '.join(FAULT_MODES)}")
        if type(after) is not int or after < 0:
            raise BadRequest("after_tokens must be a non-negative integer")
        if count is not None and (type(count) is not int or count < 0):
            raise BadRequest("count must be a non-negative integer")
        if rate is not None and (not isinstance(rate, (int, float)) or not 0 <= rate <= 1):
            raise BadRequest("rate must be between 0 and 1")
    except BadRequest as exc:
        return error_response(str(exc), 400, "BadRequestError")
    if mode == "none":
        state.fault_mode, state.fault_count = "none", 0
        state.settings.fault = "none"
    elif rate is not None and count is None:
        state.settings.fault, state.settings.fault_rate = mode, float(rate)
        state.settings.fault_after_tokens = after
    else:
        state.fault_mode, state.fault_after = mode, after
        state.fault_count = 1 if count is None else count
    return json_response(_faults_view(state))


async def sim_config(request: web.Request) -> web.Response:
    """GET/POST /sim/config: read or change timing knobs at runtime."""
    state = request.app[STATE]
    if request.method == "POST":
        try:
            state.settings.apply(await _json_object(request))
        except (BadRequest, ValueError) as exc:
            return error_response(str(exc), 400, "BadRequestError")
        state.scheduler.wake()  # a bigger capacity admits waiters now
    return json_response(state.settings.public())


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count new TCP connections and enforce the API key on /v1 like vLLM."""
    state = request.app[STATE]
    transport = request.transport
    if transport is not None and transport not in state.seen:
        state.seen.add(transport)
        state.stats.connections_opened += 1
    key = state.settings.api_key
    path_guarded = request.path.startswith("/v1")
    if key and path_guarded and request.headers.get("Authorization") != f"Bearer {key}":
        return json_response({"error": "Unauthorized"}, status=401)
    return await handler(request)


async def _cancel_handlers(app: web.Application) -> None:
    """On shutdown, end hung handlers so cleanup does not wait for them."""
    for task in list(app[STATE].tasks):
        task.cancel()


def create_sim_app(settings: SimSettings) -> web.Application:
    """Build the simulator app; run it with handler_cancellation=True."""
    settings = dataclasses.replace(settings)  # private copy: /sim/config mutates it
    settings.validate()
    app = web.Application(middlewares=[_middleware])
    app[STATE] = SimState(settings)
    app.on_shutdown.append(_cancel_handlers)
    r = app.router
    r.add_get("/v1/models", list_models)
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_get("/health", health)
    r.add_get("/sim/stats", sim_stats)
    r.add_get("/sim/requests", sim_requests)
    r.add_post("/sim/reset", sim_reset)
    r.add_route("*", "/sim/faults", sim_faults)
    r.add_route("*", "/sim/config", sim_config)
    return app
