"""Helpers for the routing tests: replica configs, chats, /ready as admin, /metrics, polling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp

from server.runner import Running
from tests.support.app import User
from tests.support.sse import events
from vllm_sim import STATE, SimServer


def model(name: str, sims: Iterable[SimServer], served_name: str | None = None,
          **fields: Any) -> dict[str, Any]:
    """A `models:` entry serving `name` on these simulators (served as the first one's model,
    unless `served_name` says otherwise)."""
    sims = list(sims)
    return {"name": name, "served_name": served_name or sims[0].settings.model,
            "replicas": [{"url": s.url} for s in sims], **fields}


async def chat(server: Running, user: User, message: str,
               **fields: Any) -> tuple[int, dict[str, Any]]:
    """POST /api/chat (whole reply); the status and the JSON body."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/chat", json={"message": message, **fields},
                          headers=user.headers) as resp:
            return resp.status, await resp.json()


async def get(server: Running, path: str, user: User | None = None) -> tuple[int, Any]:
    """GET a JSON path (as `user`, if given); the status and the body."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.get(path, headers=user.headers if user else None) as resp:
            return resp.status, await resp.json()


async def metrics_text(server: Running) -> str:
    """GET /metrics (the tests connect from loopback, which it allows)."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.get("/metrics") as resp:
            assert resp.status == 200
            return await resp.text()


def replica_of(ready: dict[str, Any], model_name: str, sim: SimServer) -> dict[str, Any]:
    """One replica's entry in an admin's /ready body."""
    for entry in ready["models"]:
        if entry["name"] == model_name:
            for replica in entry["replicas"]:
                if replica["url"].endswith(f":{sim.port}/v1"):
                    return dict(replica)
    raise AssertionError(f"no replica on port {sim.port} of {model_name} in {ready}")


def seen_by(sim: SimServer) -> list[dict[str, Any]]:
    """The request bodies the simulator kept (its last `history_size`)."""
    return [received.body for received in sim.app[STATE].history]


async def until(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll a check (sync or async) until it returns something true; that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert loop.time() < deadline, f"gave up waiting: {what or check}"
        await asyncio.sleep(0.05)


async def chat_stream(server: Running, user: User, message: str,
                      **fields: Any) -> tuple[int, dict[str, Any], int]:
    """POST /api/chat as a stream: its status (502 for an `error` event), the `done` data with
    the conversation id (or the error body) and how many deltas came before the end."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/api/chat", json={"message": message, "stream": True, **fields},
                          headers=user.headers) as resp:
            if resp.status != 200:
                return resp.status, await resp.json(), 0
            conv, deltas = None, 0
            async for name, data in events(resp):
                if name == "meta":
                    conv = data["conversation_id"]
                elif name == "message":
                    deltas += 1
                elif name == "done":
                    return 200, {"conversation_id": conv, "message": data}, deltas
                elif name == "error":
                    return 502, data, deltas
    raise AssertionError("the stream ended without done or error")
