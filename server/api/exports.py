"""HTTP handlers for exporting and importing conversations."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from aiohttp import web

from .. import keys
from ..middleware.auth import principal_of
from ..middleware.errors import ApiError, invalid
from ..services.transfer import account_filename
from .responses import json_response
from .validation import ident

_FORMATS = ("json", "md")
# What an import may be sent as: JSON, JSON Lines (a browser's file upload may say either).
_IMPORT_TYPES = frozenset({"application/json", "application/x-ndjson", "application/jsonl",
                           "application/x-jsonlines"})


def _attachment(name: str) -> str:
    return f'attachment; filename="{name}"'


async def export_conversation(request: web.Request) -> web.Response:
    """One conversation as a download: chatgate's JSON or Markdown."""
    fmt = request.query.get("format", "json")
    if fmt not in _FORMATS:
        raise invalid("'format' must be 'json' or 'md'", "format")
    user = principal_of(request).user
    download = await request.app[keys.TRANSFER].export_one(
        user["id"], ident(request.match_info["id"], "id", from_path=True), fmt)
    return web.Response(body=download.body, content_type=download.content_type,
                        charset="utf-8",
                        headers={"Content-Disposition": _attachment(download.filename),
                                 "Cache-Control": "no-store"})


async def export_all(request: web.Request) -> web.StreamResponse:
    """Every conversation of the account as JSON Lines, streamed a page at a time."""
    user = principal_of(request).user
    response = web.StreamResponse(headers={
        "Content-Type": "application/x-ndjson; charset=utf-8",
        "Content-Disposition": _attachment(account_filename(user["username"])),
        "Cache-Control": "no-store"})
    async with aclosing(request.app[keys.TRANSFER].export_all(user["id"])) as lines:
        first = await anext(lines, None)  # a storage error before any byte: a JSON error
        await response.prepare(request)
        try:
            if first is not None:
                await response.write(first)
                async for chunk in lines:
                    await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:  # the client went away: nothing more to send
            pass
    return response


async def import_conversations(request: web.Request) -> web.Response:
    """Import chatgate's JSON (one, or JSON Lines) or ChatGPT's conversations.json."""
    if request.content_type not in _IMPORT_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       "send the file as application/json (or application/x-ndjson)")
    config = request.app[keys.CONFIG]
    cap = config.limits.max_import_bytes
    try:
        raw = await _read_capped(request, cap, config.server.body_timeout_s)
    except ApiError as err:  # 408, 413: the rest of the body is not worth reading
        response = err.response()
        response.force_close()
        return response
    if not raw.strip():
        raise invalid("the body is empty: send an export file")
    principal = principal_of(request)
    result = await request.app[keys.TRANSFER].import_body(
        principal.user["id"], raw, principal.user.get("limits"))
    return json_response(result, status=207 if result["rejected"] else 200)


import_conversations.reads_own_body = True  # type: ignore[attr-defined]


async def _read_capped(request: web.Request, cap: int, timeout_s: float) -> bytes:
    """The body, at most `cap` bytes (413 beyond) and within the body deadline (408)."""
    too_large = ApiError(413, "payload_too_large",
                         f"an import may be at most {cap:,} bytes (limits.max_import_bytes)")
    if request.content_length is not None and request.content_length > cap:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > cap:
                    raise too_large
    except TimeoutError as err:
        raise ApiError(408, "request_timeout",
                       f"the request body did not arrive within {timeout_s:g} s") from err
    except web.HTTPException as err:
        raise invalid("the request body is malformed") from err
    return bytes(body)
