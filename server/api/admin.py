"""HTTP handlers for /api/admin/*: parse, call the admin service, shape the answer."""

from __future__ import annotations

from aiohttp import web

from .. import keys
from ..middleware.auth import principal_of
from ..middleware.errors import invalid
from ..services.tokens import Principal
from .auth import USERNAME
from .responses import json_response
from .validation import ident, query_int, read_json, text

_CREATE = frozenset({"username", "password", "role"})


def _user_id(request: web.Request) -> int:
    return ident(request.match_info["id"], "id", from_path=True)


def _actor(request: web.Request) -> Principal:
    return principal_of(request)


async def list_users(request: web.Request) -> web.Response:
    """A page of users, by id, with this month's usage and last activity."""
    limit = query_int(request, "limit", 50, 1, 200)
    rows, cursor = await request.app[keys.ADMIN].list_users(
        _actor(request), limit, request.query.get("cursor") or None)
    return json_response({"users": rows, "next_cursor": cursor})


async def create_user(request: web.Request) -> web.Response:
    """Create an account (its password is generated, and shown once, unless given)."""
    body = await read_json(request, _CREATE)
    username = text(body, "username", min_len=3, max_len=64, pattern=USERNAME,
                    hint="may contain only letters, digits, '_', '.' and '-'")
    password = text(body, "password", min_len=8, max_len=1024, required=False)
    role = body.get("role", "user")
    if role not in ("user", "admin"):
        raise invalid("'role' must be \"user\" or \"admin\"", "role")
    assert username is not None
    created = await request.app[keys.ADMIN].create_user(_actor(request), username, password,
                                                        role)
    answer: dict[str, object] = {"user": created.user}
    if created.password is not None:
        answer["password"] = created.password
    return json_response(answer, status=201, headers={"Cache-Control": "no-store"})


async def approve(request: web.Request) -> web.Response:
    """Let a pending account in."""
    user = await request.app[keys.ADMIN].approve(_actor(request), _user_id(request))
    return json_response({"user": user})


async def disable(request: web.Request) -> web.Response:
    """Disable an account: its credentials die and its jobs stop at once."""
    user = await request.app[keys.ADMIN].disable(_actor(request), _user_id(request))
    return json_response({"user": user})


async def enable(request: web.Request) -> web.Response:
    """Enable a disabled account."""
    user = await request.app[keys.ADMIN].enable(_actor(request), _user_id(request))
    return json_response({"user": user})


async def delete_user(request: web.Request) -> web.Response:
    """Delete an account and everything it owns."""
    user_id = _user_id(request)
    await request.app[keys.ADMIN].delete(_actor(request), user_id)
    request.app[keys.PROFILES].forget(user_id)  # their cached settings and memories too
    return web.Response(status=204)


async def set_limits(request: web.Request) -> web.Response:
    """Replace a user's cap overrides ({} = the config's defaults)."""
    user_id = _user_id(request)
    body = await read_json(request, frozenset({"limits"}))
    limits = body.get("limits")
    if not isinstance(limits, dict):
        raise invalid("'limits' must be an object of cap names to whole numbers", "limits")
    user = await request.app[keys.ADMIN].set_limits(_actor(request), user_id, limits)
    return json_response({"user": user})


async def reset_password(request: web.Request) -> web.Response:
    """A temporary password, shown once; the user must change it at next login."""
    user, password = await request.app[keys.ADMIN].reset_password(_actor(request),
                                                                  _user_id(request))
    return json_response({"user": user, "password": password},
                         headers={"Cache-Control": "no-store"})


async def audit(request: web.Request) -> web.Response:
    """A page of the audit log, newest first."""
    limit = query_int(request, "limit", 50, 1, 200)
    rows, cursor = await request.app[keys.ADMIN].audit(
        _actor(request), limit, request.query.get("cursor") or None)
    return json_response({"entries": rows, "next_cursor": cursor})
