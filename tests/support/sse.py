"""Reading server-sent events in tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """Yield (event name, parsed data) per SSE event; unnamed events are 'message'."""
    name, data = "message", []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def collect(resp: aiohttp.ClientResponse) -> list[tuple[str, Any]]:
    """All events of a stream."""
    return [event async for event in events(resp)]


def text_of(stream: list[tuple[str, Any]]) -> str:
    """The concatenated deltas of a stream."""
    return "".join(data["delta"] for name, data in stream if name == "message")


async def numbered(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any, int | None]]:
    """Yield (event name, parsed data, its `id:` or None) per SSE event."""
    name, data, ident = "message", [], None
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield name, json.loads("\n".join(data)), ident
            name, data, ident = "message", [], None
        elif line.startswith(":"):
            continue
        elif line.startswith("id:"):
            ident = int(line[3:].strip())
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
