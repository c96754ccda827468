"""A client that streams a chat and, when its connection breaks, resumes the turn through the
load balancer (GET /api/turns/{id}/events with Last-Event-ID), as docs/api.md tells clients."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.support.app import User
from tests.support.sse import numbered

BROKEN = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
          aiohttp.ClientConnectionError, asyncio.IncompleteReadError)


@dataclass
class Streamed:
    """What one client saw of one turn, over however many connections."""

    message: str
    status: int = 0  # of the POST (0: its connection broke before an answer)
    meta: dict[str, Any] | None = None  # the acknowledgement: the message is stored
    last_id: int = 0
    text: str = ""
    end: str | None = None  # "done" or "error"; None while cut off
    end_data: dict[str, Any] = field(default_factory=dict)
    deltas: int = 0
    cuts: int = 0  # connections that broke mid-stream
    first_delta: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def acknowledged(self) -> bool:
        """The server said it stored the message (the stream's meta event)."""
        return self.meta is not None

    def apply(self, name: str, data: Any, ident: int | None) -> None:
        """Take one event in."""
        if ident is not None:
            self.last_id = ident
        if name == "meta":
            self.meta = data
        elif name == "message":
            self.text += data["delta"]
            self.deltas += 1
            self.first_delta.set()
        elif name in ("done", "error"):
            self.end, self.end_data = name, data


async def _read(resp: aiohttp.ClientResponse, turn: Streamed) -> None:
    try:
        async for name, data, ident in numbered(resp):
            turn.apply(name, data, ident)
    except BROKEN:
        turn.cuts += 1


async def stream_chat(base: str, user: User, message: str, turn: Streamed | None = None,
                      **fields: Any) -> Streamed:
    """POST /api/chat with stream: true; read until the end or until the connection breaks
    (into `turn`, if given, so the caller can watch it meanwhile)."""
    turn = turn or Streamed(message)
    async with aiohttp.ClientSession(base) as s:
        try:
            async with s.post("/api/chat", json={"message": message, "stream": True, **fields},
                              headers=user.headers) as resp:
                turn.status = resp.status
                if resp.status == 200:
                    await _read(resp, turn)
                else:
                    turn.end_data = await resp.json()
        except BROKEN:
            turn.cuts += 1
    return turn


async def resume(base: str, user: User, turn: Streamed, timeout: float = 60) -> Streamed:
    """Follow a cut turn again from its last event, through `base`, until it ends; a broken
    connection or a 5xx (a node going away under us) is retried until `timeout`."""
    assert turn.meta is not None, "only an acknowledged turn can be resumed"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession(base) as s:
        while turn.end is None:
            assert loop.time() < deadline, f"turn {turn.meta['turn_id']} never ended"
            headers = dict(user.headers, **{"Last-Event-ID": str(turn.last_id)})
            try:
                async with s.get(f"/api/turns/{turn.meta['turn_id']}/events",
                                 headers=headers) as resp:
                    if resp.status >= 500:
                        await resp.read()
                    else:
                        assert resp.status == 200, (resp.status, await resp.text())
                        await _read(resp, turn)
                        continue
            except BROKEN:
                turn.cuts += 1
            await asyncio.sleep(0.1)
    return turn


async def conversation(base: str, user: User, conversation_id: int) -> dict[str, Any]:
    """GET /api/conversations/{id} through `base`."""
    async with aiohttp.ClientSession(base) as s:
        async with s.get(f"/api/conversations/{conversation_id}", headers=user.headers) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())
