"""HTTP handlers for /api/memories: a user's long-term memories."""

from __future__ import annotations

from aiohttp import web

from .. import keys
from ..middleware.auth import principal_of
from ..middleware.errors import invalid
from ..services.memories import MAX_MEMORY_CHARS
from .responses import json_response
from .validation import ident, read_json, text

_CREATE = frozenset({"content"})
_PATCH = frozenset({"content", "enabled"})
# Generous on the wire: surrounding spaces and invisible characters are dropped, then the
# service holds the kept text to MAX_MEMORY_CHARS.
_RAW_MAX = 4 * MAX_MEMORY_CHARS


def _memory_id(request: web.Request) -> int:
    return ident(request.match_info["id"], "id", from_path=True)


def _user_id(request: web.Request) -> int:
    return principal_of(request).user["id"]


async def list_memories(request: web.Request) -> web.Response:
    """Every memory of the user, newest first."""
    rows = await request.app[keys.MEMORIES].all(_user_id(request))
    return json_response({"memories": rows})


async def create_memory(request: web.Request) -> web.Response:
    """A new active memory."""
    body = await read_json(request, _CREATE)
    content = text(body, "content", max_len=_RAW_MAX)
    assert content is not None
    user = principal_of(request).user
    row = await request.app[keys.MEMORIES].add(user["id"], content, user.get("limits"))
    return json_response(row, status=201)


async def update_memory(request: web.Request) -> web.Response:
    """Change a memory's text and/or switch it on or off."""
    body = await read_json(request, _PATCH)
    if "content" not in body and "enabled" not in body:
        raise invalid("give 'content', 'enabled' or both", "content")
    content = text(body, "content", max_len=_RAW_MAX, required=False)
    enabled = body.get("enabled")
    if "enabled" in body and not isinstance(enabled, bool):
        raise invalid("'enabled' must be true or false", "enabled")
    if "content" in body and content is None:
        raise invalid("'content' must be a string", "content")
    user = principal_of(request).user
    row = await request.app[keys.MEMORIES].update(user["id"], _memory_id(request), content,
                                                  enabled, user.get("limits"))
    return json_response(row)


async def accept_memory(request: web.Request) -> web.Response:
    """A proposed memory becomes active (rejecting one is deleting it)."""
    row = await request.app[keys.MEMORIES].accept(_user_id(request), _memory_id(request))
    return json_response(row)


async def delete_memory(request: web.Request) -> web.Response:
    """Delete a memory."""
    await request.app[keys.MEMORIES].delete(_user_id(request), _memory_id(request))
    return web.Response(status=204)
