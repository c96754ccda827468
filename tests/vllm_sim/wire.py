"""Talking to a simulator over TCP in tests: JSON posts, SSE streams, the request history."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from vllm_sim import SimServer

MakeSim = Callable[..., Awaitable[SimServer]]
Session = aiohttp.ClientSession
HELLO = [{"role": "user", "content": "Hello there, how are you today?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a place",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"timezone": {"type": "string"}}}}}  # fmt: skip


def chat_body(messages: list[dict[str, Any]] = HELLO, **kw: Any) -> dict[str, Any]:
    """Build a chat request body."""
    return {"model": "vllm-simulator", "messages": messages, **kw}


def ask(text: str, **kw: Any) -> dict[str, Any]:
    """A chat body with one user message."""
    return chat_body([{"role": "user", "content": text}], **kw)


async def post(
    session: Session, sim: SimServer, path: str, body: Any, **headers: str
) -> tuple[int, CIMultiDictProxy[str], Any]:
    """POST JSON to /v1/<path>; return status, headers and the parsed body."""
    async with session.post(f"{sim.url}/{path}", json=body, headers=headers) as r:
        return r.status, r.headers, orjson.loads(await r.read())


async def stream(
    session: Session, sim: SimServer, path: str, body: Any, **headers: str
) -> tuple[CIMultiDictProxy[str], list[Any]]:
    """POST a streaming request; check the SSE framing and [DONE]; return headers and chunks."""
    async with session.post(f"{sim.url}/{path}", json={**body, "stream": True},
                            headers=headers) as r:  # fmt: skip
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        raw = (await r.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
    return r.headers, [orjson.loads(e[len("data: ") :]) for e in events[:-2]]


async def history(session: Session, sim: SimServer, detail: bool = False) -> list[Any]:
    """GET /sim/requests (with ?detail=1 when asked)."""
    url = f"{sim.root_url}/sim/requests" + ("?detail=1" if detail else "")
    async with session.get(url) as r:
        assert r.status == 200
        data: list[Any] = orjson.loads(await r.read())
        return data


def is_error(status: int, body: Any, want: int = 400) -> bool:
    """True when the answer is vLLM's ErrorResponse with the wanted status."""
    kind = {400: "BadRequestError", 404: "NotFoundError"}[want]
    shape = {"object": "error", "message": body.get("message"), "type": kind, "param": None,
             "code": want}  # fmt: skip
    return status == want and body == shape and bool(body["message"])
