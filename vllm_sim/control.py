"""The /sim/* control endpoints: counters, history, faults, runtime knobs, down/up."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import orjson
from aiohttp import web

from .engine import BadRequest
from .settings import FAULT_MODES
from .state import STATE, SimState, Switch, error_response, json_response


async def sim_stats(request: web.Request) -> web.Response:
    """GET /sim/stats."""
    return json_response(request.app[STATE].stats.snapshot())


async def sim_requests(request: web.Request) -> web.Response:
    """GET /sim/requests: recent request bodies, newest last; ?detail=1 adds path, id and raw."""
    history = request.app[STATE].history
    if request.query.get("detail", "") not in ("", "0", "false"):
        return json_response([r.detail() for r in history])
    return json_response([r.body for r in history])


async def sim_reset(request: web.Request) -> web.Response:
    """POST /sim/reset: zero counters, forget history and queued faults."""
    state = request.app[STATE]
    state.stats.reset()
    state.history.clear()
    state.fault_mode, state.fault_count = "none", 0
    state.settings.fault = "none"
    state.prefix.clear()
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


def _replica_view(index: int, switch: Switch) -> dict[str, Any]:
    return {"index": index, "url": switch.root_url, "up": switch.is_up}


async def _power(request: web.Request, switch: Switch, action: str) -> web.Response:
    """Take `switch` down (after this answer is sent) or bring it up."""
    seconds: float | None = None
    if action == "down":
        try:
            raw = (await _json_object(request)).get("seconds")
            if raw is not None and (not isinstance(raw, (int, float)) or isinstance(raw, bool)
                                    or raw < 0):  # fmt: skip
                raise BadRequest("seconds must be a non-negative number")
        except BadRequest as exc:
            return error_response(str(exc), 400, "BadRequestError")
        seconds = None if raw is None else float(raw)
    state = request.app[STATE]
    going_down = action == "down"

    async def flip() -> None:
        await asyncio.sleep(0.05)  # let this answer reach the client first
        await (switch.down(seconds) if going_down else switch.up())

    task = asyncio.get_running_loop().create_task(flip())
    state.background.add(task)
    task.add_done_callback(state.background.discard)
    resp = json_response({"action": action, "url": switch.root_url, "seconds": seconds})
    resp.force_close()  # do not keep a connection the replica is about to cut
    return resp


async def sim_down(request: web.Request) -> web.Response:
    """POST /sim/down: stop listening ({"seconds": s} comes back up by itself after s)."""
    switch = request.app[STATE].switch
    if switch is None:
        return error_response("not started with start_simulator", 409, "ConflictError")
    return await _power(request, switch, "down")


async def sim_replicas(request: web.Request) -> web.Response:
    """GET /sim/replicas: the replicas started together; POST .../{index}/{down,up} flips one."""
    siblings = request.app[STATE].siblings
    if request.method == "GET":
        return json_response([_replica_view(i, s) for i, s in enumerate(siblings)])
    index, action = request.match_info["index"], request.match_info["action"]
    if not index.isdigit() or int(index) >= len(siblings):
        return error_response(f"no replica {index}", 404, "NotFoundError")
    return await _power(request, siblings[int(index)], action)


def add_control_routes(router: web.UrlDispatcher) -> None:
    """Mount the /sim/* endpoints."""
    router.add_get("/sim/stats", sim_stats)
    router.add_get("/sim/requests", sim_requests)
    router.add_post("/sim/reset", sim_reset)
    router.add_route("*", "/sim/faults", sim_faults)
    router.add_route("*", "/sim/config", sim_config)
    router.add_post("/sim/down", sim_down)
    router.add_get("/sim/replicas", sim_replicas)
    router.add_post("/sim/replicas/{index}/{action:down|up}", sim_replicas)
