"""HTTP handlers for conversations and search."""

from __future__ import annotations

from aiohttp import web

from .. import keys
from ..auth import principal_of
from ..responses import json_response
from ..storage import conversations, search as search_store
from ..render import render_async
from ..validation import ident, query_int, read_json, render_option, text

_TITLE = frozenset({"title"})


def _conversation_id(request: web.Request) -> int:
    return ident(request.match_info["id"], "id", from_path=True)


async def list_conversations(request: web.Request) -> web.Response:
    """A cursor page of the user's conversations, newest activity first."""
    limit = query_int(request, "limit", 20, 1, 100)
    rows, cursor = await conversations.page(request.app[keys.DB], principal_of(request).user["id"],
                                            limit, request.query.get("cursor") or None)
    return json_response({"conversations": rows, "next_cursor": cursor})


async def create_conversation(request: web.Request) -> web.Response:
    """Create an empty conversation."""
    body = await read_json(request, _TITLE) if request.can_read_body else {}
    title = text(body, "title", min_len=1, max_len=200, required=False) or "New chat"
    row = await conversations.create(request.app[keys.DB], principal_of(request).user["id"], title)
    return json_response(row, status=201)


async def get_conversation(request: web.Request) -> web.Response:
    """A conversation with its messages, oldest first."""
    conv, msgs = await conversations.get(request.app[keys.DB], principal_of(request).user["id"],
                                         _conversation_id(request))
    if render_option(request.query.get("render")):
        replies = [m for m in msgs if m["role"] == "assistant"]
        for message, html in zip(replies, await render_async([m["content"] for m in replies])):
            message["html"] = html  # type: ignore[typeddict-unknown-key]
    return json_response({**conv, "messages": msgs})


async def rename_conversation(request: web.Request) -> web.Response:
    """Change the title."""
    body = await read_json(request, _TITLE)
    title = text(body, "title", min_len=1, max_len=200)
    assert title is not None
    row = await conversations.rename(request.app[keys.DB], principal_of(request).user["id"],
                                     _conversation_id(request), title)
    return json_response(row)


async def delete_conversation(request: web.Request) -> web.Response:
    """Delete a conversation and its messages."""
    await conversations.delete(request.app[keys.DB], principal_of(request).user["id"],
                               _conversation_id(request))
    return web.Response(status=204)


async def search(request: web.Request) -> web.Response:
    """Full-text search over the user's own messages, best match first."""
    q = request.query.get("q", "")
    if len(q) > 500:
        q = q[:500]
    limit = query_int(request, "limit", 20, 1, 100)
    hits = await search_store.search(request.app[keys.DB], principal_of(request).user["id"], q, limit)
    return json_response({"results": hits})
