"""HTTP handlers for conversations and search."""

from __future__ import annotations

from aiohttp import web

from .. import keys
from ..middleware.auth import principal_of
from ..middleware.errors import invalid
from ..services.text import visible
from .responses import json_response
from .validation import (
    conversation_settings,
    ident,
    query_int,
    read_json,
    render_option,
    text,
)

_TITLE = frozenset({"title"})
_BRANCH = frozenset({"message_id"})
_PATCH = frozenset({"title", "settings"})


def _conversation_id(request: web.Request) -> int:
    return ident(request.match_info["id"], "id", from_path=True)


def _title(body: dict[str, object], required: bool) -> str | None:
    """The title without bidi controls or other invisible characters (they spoof labels);
    one with nothing visible left is "New chat", as if none had been given."""
    raw = text(body, "title", min_len=1, max_len=200, required=required)
    if raw is None:
        return None
    return visible(raw) or "New chat"


def _user_id(request: web.Request) -> int:
    return principal_of(request).user["id"]


def _limits(request: web.Request) -> dict[str, int] | None:
    """The user's overrides of the caps, if any."""
    return principal_of(request).user.get("limits")


async def list_conversations(request: web.Request) -> web.Response:
    """A cursor page of the user's conversations, newest activity first."""
    limit = query_int(request, "limit", 20, 1, 100)
    rows, cursor = await request.app[keys.CONVERSATIONS].page(
        _user_id(request), limit, request.query.get("cursor") or None)
    running = await request.app[keys.CHAT].running_turn_ids([row["id"] for row in rows])
    return json_response({"conversations": [{**row, "running_turn_id": turn_id}
                                            for row, turn_id in zip(rows, running, strict=True)],
                          "next_cursor": cursor})


async def create_conversation(request: web.Request) -> web.Response:
    """Create an empty conversation."""
    body = await read_json(request, _TITLE) if request.body_exists else {}
    given = _title(body, required=False)
    row = await request.app[keys.CONVERSATIONS].create(_user_id(request), given or "New chat",
                                                       _limits(request), given is not None)
    return json_response({**row, "running_turn_id": None}, status=201)


async def get_conversation(request: web.Request) -> web.Response:
    """A conversation with the messages of its branch on show, oldest first."""
    return await _conversation(request, _conversation_id(request))


async def show_branch(request: web.Request) -> web.Response:
    """Show the branch through a message; answer with the conversation as GET does."""
    body = await read_json(request, _BRANCH)
    if "message_id" not in body:
        raise invalid("'message_id' is required", "message_id")
    conv_id = _conversation_id(request)
    await request.app[keys.CONVERSATIONS].show_branch(
        _user_id(request), conv_id, ident(body["message_id"], "message_id"))
    return await _conversation(request, conv_id)


async def delete_branch(request: web.Request) -> web.Response:
    """Delete a message and everything under it (not while a reply runs in the conversation:
    409); answer with the conversation as GET does (on the branch left beside it)."""
    conv_id = _conversation_id(request)
    message_id = ident(request.match_info["message_id"], "message_id", from_path=True)
    request.app[keys.CHAT].check_idle(_user_id(request), conv_id)  # 409 while a reply runs
    await request.app[keys.CONVERSATIONS].delete_branch(_user_id(request), conv_id, message_id)
    return await _conversation(request, conv_id)


async def _conversation(request: web.Request, conversation_id: int) -> web.Response:
    html = render_option(request.query.get("render"))
    conversation = await request.app[keys.CONVERSATIONS].get(
        _user_id(request), conversation_id, html)
    # A reply being generated now: a page that loads the conversation follows it live.
    [running] = await request.app[keys.CHAT].running_turn_ids([conversation["id"]])
    return json_response({**conversation, "running_turn_id": running})


async def rename_conversation(request: web.Request) -> web.Response:
    """Change the title and/or the conversation's own settings."""
    body = await read_json(request, _PATCH)
    if "title" not in body and "settings" not in body:
        raise invalid("give 'title', 'settings' or both", "title")
    title = _title(body, required="title" in body)  # given: it must be a title
    changes = conversation_settings(body.get("settings")) if "settings" in body else None
    conversations, user_id = request.app[keys.CONVERSATIONS], _user_id(request)
    conv_id = _conversation_id(request)
    if title is not None:
        row = await conversations.rename(user_id, conv_id, title, _limits(request))
    if changes is not None:
        row = await conversations.configure(user_id, conv_id, changes, _limits(request))
    [running] = await request.app[keys.CHAT].running_turn_ids([row["id"]])
    return json_response({**row, "running_turn_id": running})


async def delete_conversation(request: web.Request) -> web.Response:
    """Delete a conversation and its messages."""
    await request.app[keys.CONVERSATIONS].delete(_user_id(request), _conversation_id(request))
    return web.Response(status=204)


async def search(request: web.Request) -> web.Response:
    """Full-text search over the user's own messages, best match first."""
    limit = query_int(request, "limit", 20, 1, 100)
    hits = await request.app[keys.CONVERSATIONS].search(
        _user_id(request), request.query.get("q", ""), limit)
    return json_response({"results": hits})
