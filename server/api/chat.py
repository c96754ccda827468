"""HTTP handler for POST /api/chat: JSON or a server-sent event stream."""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp_sse import sse_response

from .. import keys
from ..middleware.auth import principal_of
from ..middleware.errors import ApiError, from_domain, invalid
from ..services.turns import Delta, Done, Failed, Followable, Queued, Turn
from .responses import dumps, json_response
from .snapshots import Snapshots
from .validation import boolean, ident, new_settings, number, read_json, render_option, text

_FIELDS = frozenset({"message", "conversation_id", "stream", "max_tokens", "temperature",
                     "regenerate", "edit_message_id", "message_id", "render", "model",
                     "settings"})
MAX_MESSAGE_CHARS = 100_000
PING_S = 10.0


@dataclass(frozen=True, slots=True)
class ChatBody:
    """A validated POST /api/chat body."""

    message: str | None
    conversation_id: int | None
    stream: bool
    html: bool
    max_tokens: int | None
    temperature: float | None
    regenerate: bool
    edit_message_id: int | None
    model: str | None
    message_id: int | None = None  # with regenerate: the message to answer again
    settings: dict[str, Any] | None = None  # a new conversation's own settings


async def chat(request: web.Request) -> web.StreamResponse:
    """Accept a message, queue it for the model, and answer with the stored reply.

    If the client leaves, the turn's follower is closed: the chat service stops the job and
    stores what was generated; nothing here stores anything.
    """
    body = parse(await read_json(request, _FIELDS))
    principal = principal_of(request)
    turn = await request.app[keys.CHAT].start(
        principal.user["id"], body.message, body.conversation_id, body.max_tokens,
        body.temperature, regenerate=body.regenerate, edit_message_id=body.edit_message_id,
        message_id=body.message_id, key_id=principal.key.id if principal.key else None,
        limits=principal.user.get("limits"), model=body.model, settings=body.settings)
    try:
        if body.stream:
            return await _stream(request, turn, body.html)
        return await _whole(request, turn, body.html)
    finally:
        request[keys.UPSTREAM_S] = turn.job.times.upstream_s


async def models(request: web.Request) -> web.Response:
    """The models a chat may use (the first is the default) and whether each answers now."""
    principal_of(request)  # signed in only
    return json_response({"models": await request.app[keys.CHAT].models()})


def parse(body: dict[str, Any]) -> ChatBody:
    """Check the fields and how they combine; every failure names the field."""
    regenerate = boolean(body, "regenerate")
    edit = body.get("edit_message_id")
    edit_id = None if edit is None else ident(edit, "edit_message_id")
    message = text(body, "message", min_len=1, max_len=MAX_MESSAGE_CHARS, required=not regenerate)
    if regenerate and message is not None:
        raise invalid("'message' must be absent when 'regenerate' is true", "message")
    if regenerate and edit_id is not None:
        raise invalid("use either 'regenerate' or 'edit_message_id'", "edit_message_id")
    asked = body.get("message_id")
    message_id = None if asked is None else ident(asked, "message_id")
    if message_id is not None and not regenerate:
        raise invalid("'message_id' is only used with 'regenerate'", "message_id")
    conv = body.get("conversation_id")
    conversation_id = None if conv is None else ident(conv, "conversation_id")
    if conversation_id is None and (regenerate or edit_id is not None):
        raise invalid("'conversation_id' is required to regenerate or edit", "conversation_id")
    if conversation_id is not None and body.get("settings") is not None:
        raise invalid("'settings' is only for a new conversation (no 'conversation_id'); "
                      "change a conversation's settings with PATCH /api/conversations/{id}",
                      "settings")
    settings = new_settings(body.get("settings"))  # checked as PATCH checks them
    max_tokens = number(body, "max_tokens", low=1, high=32768, integer=True)
    temperature = number(body, "temperature", low=0, high=2)
    return ChatBody(message, conversation_id, boolean(body, "stream"),
                    render_option(body.get("render")),
                    None if max_tokens is None else int(max_tokens),
                    None if temperature is None else float(temperature), regenerate, edit_id,
                    text(body, "model", min_len=1, max_len=200, required=False), message_id,
                    settings or None)


async def _whole(request: web.Request, turn: Turn, html: bool) -> web.Response:
    async with aclosing(turn.follow()) as events:
        async for event in events:
            if isinstance(event, Done):
                message: dict[str, Any] = dict(event.message)
                if html:
                    message["html"] = await _html(request, event)
                return json_response({"conversation_id": turn.conversation_id,
                                      "message": message, "usage": event.usage,
                                      "finish_reason": event.finish_reason})
            if isinstance(event, Failed):
                raise _error(event, turn)
    raise ApiError(500, "internal_error", "the reply ended without a result")


async def follow(request: web.Request) -> web.StreamResponse:
    """GET /api/turns/{turn_id}/events: follow a running (or just finished) turn again, from
    after `Last-Event-ID` (header, or `last_event_id` in the query), else from its start."""
    principal = principal_of(request)
    turn = await request.app[keys.CHAT].find(principal.user["id"],
                                             request.match_info["turn_id"])
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    after = None
    if raw is not None:
        if not raw.isdigit() or len(raw) > 12:
            raise invalid("Last-Event-ID must be an event id of this turn (a number)",
                          "last_event_id")
        after = int(raw)
    return await _stream(request, turn, request.query.get("render") == "html", after)


async def stop(request: web.Request) -> web.Response:
    """POST /api/turns/{turn_id}/stop: stop generating; what came is stored `incomplete`."""
    principal = principal_of(request)
    stopped = await request.app[keys.CHAT].stop(principal.user["id"],
                                                 request.match_info["turn_id"])
    return json_response({"stopped": stopped}, status=202)


async def _stream(request: web.Request, turn: Followable, html: bool,
                  after: int | None = None) -> web.StreamResponse:
    """The turn's events as SSE, each of the reply's with its id; from the start (`meta`
    first) unless `after` names the last event the client has."""
    async with sse_response(request) as sse:
        sse.ping_interval = PING_S
        # `meta` goes out at once, not with the first token: a page reloaded before it comes
        # must already know the conversation and the turn to come back to.
        pending = b""
        # The text so far rendered now and then, when the whole reply goes through here.
        interval = request.app[keys.CONFIG].render.stream_interval_s
        snapshots = Snapshots(request, interval) if html and interval > 0 and not after \
            else None
        if after is None:
            await sse.write(_event(
                "meta", {"conversation_id": turn.conversation_id, "turn_id": turn.id,
                         "user_message_id": turn.user_message["id"],
                         "model": turn.model or None}, 0))
        try:
            async with aclosing(turn.follow(after or 0)) as events:
                async for event in events:
                    if isinstance(event, Delta):
                        pending += _event(None, {"delta": event.text}, event.id)
                        if snapshots is not None:
                            rendered = snapshots.ready()
                            if rendered is not None:  # before this delta: its text is not in it
                                pending = _event("render", {"upto": rendered[0],
                                                            "html": rendered[1]}) + pending
                            snapshots.grow(event.text)
                    elif isinstance(event, Queued):
                        pending += _event("queued", {"position": event.position})
                    elif isinstance(event, Done):
                        done: dict[str, Any] = {"message_id": event.message["id"],
                                                "usage": event.usage,
                                                "finish_reason": event.finish_reason}
                        if html:
                            done["html"] = await _html(request, event)
                        pending += _event("done", done, turn.end_id)
                    elif isinstance(event, Failed):
                        pending += _event("error", _error(event, turn).body(), turn.end_id)
                    await sse.write(pending)
                    pending = b""
            if pending:
                await sse.write(pending)
        finally:
            if snapshots is not None:
                snapshots.close()
    return sse


async def _html(request: web.Request, done: Done) -> str | None:
    """The reply's HTML, rendered once and cached for later reads (None if declined)."""
    return await request.app[keys.RENDERER].one(principal_of(request).user["id"],
                                                done.message["id"], done.message["content"])


def _event(name: str | None, data: Any, event_id: int | None = None) -> bytes:
    """One server-sent event; orjson output has no newlines, so one data line suffices."""
    head = b"id: %d\r\n" % event_id if event_id is not None else b""
    if name:
        head += b"event: " + name.encode() + b"\r\n"
    return head + b"data: " + dumps(data) + b"\r\n\r\n"


def _error(event: Failed, turn: Followable) -> ApiError:
    mapped = from_domain(event.error) or ApiError(502, "upstream_unavailable", str(event.error))
    mapped.extra["conversation_id"] = turn.conversation_id
    mapped.extra["user_message_id"] = turn.user_message["id"]
    if event.message is not None:
        mapped.extra["partial_message_id"] = event.message["id"]
    return mapped
