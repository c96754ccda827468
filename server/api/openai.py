"""The OpenAI-compatible front door: /v1/chat/completions, /v1/completions, /v1/models.

Bodies go to the model server as the client sent them (but for `stream_options`, when we need
the usage); answers come back as the model server sent them. Errors use OpenAI's shape.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import orjson
from aiohttp import web

from .. import keys
from ..middleware.access import request_id_of
from ..middleware.auth import principal_of
from ..middleware.errors import ApiError, from_domain, invalid
from ..services.completions import MAX_SEQUENCES, Forwarded
from .responses import json_response

_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def models(request: web.Request) -> web.Response:
    """The configured models (the names clients send as `model`)."""
    return json_response(await request.app[keys.COMPLETIONS].models())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    return await _forward(request, "/chat/completions", "messages")


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions (legacy text completions)."""
    return await _forward(request, "/completions", "prompt")


async def _forward(request: web.Request, path: str, needed: str) -> web.StreamResponse:
    body = await _body(request, needed)
    principal = principal_of(request)
    forwarded = await request.app[keys.COMPLETIONS].start(
        principal.user["id"], principal.key, path, body, request_id_of(request),
        limits=principal.user.get("limits"), session=request.headers.get("X-Session-Id"))
    try:
        if forwarded.stream:
            return await _stream(request, forwarded)
        return await _whole(forwarded)
    finally:
        request[keys.UPSTREAM_S] = forwarded.job.times.upstream_s


async def _whole(forwarded: Forwarded) -> web.Response:
    parts: list[bytes] = []
    async with aclosing(forwarded.follow()) as items:  # leaving early stops the job
        async for item in items:
            if isinstance(item, bytes):
                parts.append(item)
            else:
                raise _error(item.error)
    return web.Response(body=b"".join(parts), content_type="application/json")


async def _stream(request: web.Request, forwarded: Forwarded) -> web.StreamResponse:
    response: web.StreamResponse | None = None
    # A client that leaves makes a write fail: closing the follower then stops the job.
    async with aclosing(forwarded.follow()) as items:
        async for item in items:
            if isinstance(item, bytes):
                if response is None:  # headers only once the model answers: errors stay HTTP
                    response = web.StreamResponse(headers=_SSE_HEADERS)
                    await response.prepare(request)
                await response.write(item)
            elif response is None:
                raise _error(item.error)
            else:  # after the first byte the status is sent: the error goes in-band, [DONE]
                error = orjson.dumps(_error(item.error).openai_body())
                await response.write(b"data: " + error + b"\n\ndata: [DONE]\n\n")
                break
    if response is None:
        raise ApiError(502, "upstream_unavailable", "the model server sent nothing")
    await response.write_eof()
    return response


async def _body(request: web.Request, needed: str) -> dict[str, Any]:
    """The JSON object as sent, checked only for what chatgate itself reads."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "send the body as JSON with Content-Type: application/json")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as err:
        raise invalid(f"request body is not valid JSON: {err.msg}") from err
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise invalid("you must provide a model parameter", "model")
    if body.get(needed) is None:
        raise invalid(f"'{needed}' is required", needed)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("'stream' must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):  # we may add include_usage
        raise invalid("'stream_options' must be an object", "stream_options")
    for name in ("n", "best_of"):  # each sequence weighs on the user's running cap
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not 1 <= value <= MAX_SEQUENCES):
            raise invalid(f"'{name}' must be a whole number from 1 to {MAX_SEQUENCES}", name)
    return body


def _error(error: Exception) -> ApiError:
    return from_domain(error) or ApiError(502, "upstream_unavailable", str(error))
