"""HTTP handlers for /api/keys: create (the key shown once), list, delete."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from .. import keys
from ..middleware.auth import principal_of
from ..middleware.errors import invalid
from ..services.text import visible
from .responses import json_response
from .validation import ident, number, read_json, text

_FIELDS = frozenset({"name", "expires_at", "rpm", "tpm"})


def _expiry(value: object) -> int | None:
    """`expires_at`: absent/null, epoch seconds, or an ISO 8601 time; in the future."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        when = value
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as err:
            raise invalid("'expires_at' must be an ISO 8601 time or epoch seconds",
                          "expires_at") from err
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        when = int(parsed.timestamp())
    else:
        raise invalid("'expires_at' must be an ISO 8601 time or epoch seconds", "expires_at")
    if when <= dt.datetime.now(dt.UTC).timestamp():
        raise invalid("'expires_at' must be in the future", "expires_at")
    return when


async def create_key(request: web.Request) -> web.Response:
    """A new API key; the answer is the only place the key is ever shown."""
    body = await read_json(request, _FIELDS)
    raw = text(body, "name", min_len=1, max_len=100)
    assert raw is not None
    name = visible(raw)  # bidi controls and invisible characters spoof labels, as in titles
    if not name:
        raise invalid("'name' must have a visible character", "name")
    rpm = number(body, "rpm", low=1, high=1_000_000, integer=True)
    tpm = number(body, "tpm", low=1, high=1_000_000_000, integer=True)
    user = principal_of(request).user
    row, key = await request.app[keys.API_KEYS].create(
        user["id"], name, _expiry(body.get("expires_at")),
        None if rpm is None else int(rpm), None if tpm is None else int(tpm),
        limits=user.get("limits"))
    return json_response({**row, "key": key}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """The caller's keys, newest first, without secrets."""
    rows = await request.app[keys.API_KEYS].list(principal_of(request).user["id"])
    return json_response({"keys": rows})


async def delete_key(request: web.Request) -> web.Response:
    """Delete a key: dead at once, cached or not."""
    key_id = ident(request.match_info["id"], "id", from_path=True)
    await request.app[keys.API_KEYS].delete(principal_of(request).user["id"], key_id)
    return web.Response(status=204)
